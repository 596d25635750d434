//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the `traceparent` value that
//! carries one send's trace from the sender's socket server through a manager, the message
//! log and the socket servers' topics to every process that handles it.
//!
//! `traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase. A value
//! that is not one (a bad length, an upper-case or non-hex digit, version `ff`, an all-zero
//! id) is treated as absent, as the spec asks: the receiver starts a trace of its own rather
//! than refusing the request or the record.
//!
//! Pure: parsing and formatting only (ids are made by `service-kit`'s telemetry). Held by
//! value (25 bytes, `Copy`), and written into a record without an allocation of its own.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The HTTP header that carries a [`TraceParent`].
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// The `sampled` flag (bit 0 of the flags).
pub const SAMPLED: u8 = 0x01;

/// A trace's id: 16 bytes, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// One step's (span's) id within a trace: 8 bytes, 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// A parsed `traceparent`: the trace, the step that sent it (the receiver's parent) and the
/// flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    /// A traceparent, or `None` if either id is all zeros (the spec's invalid ids).
    pub fn new(trace_id: TraceId, parent_id: SpanId, flags: u8) -> Option<Self> {
        (trace_id.0 != [0; 16] && parent_id.0 != [0; 8]).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Reads a `traceparent` value; `None` for anything the spec calls invalid. A later
    /// version's value is read by its version-00 prefix when what follows is `-`-separated
    /// (the spec's forward compatibility); version `ff` never is.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim_matches([' ', '\t']);
        let bytes = value.as_bytes();
        if bytes.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        let exact = bytes.len() == TRACEPARENT_LEN;
        match version {
            0 if !exact => return None,
            0xff => return None,
            _ if !exact && bytes[TRACEPARENT_LEN] != b'-' => return None,
            _ => {}
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, out) in parent_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        TraceParent::new(TraceId(trace_id), SpanId(parent_id), flags)
    }

    /// The same trace with `step` as the parent: what a step sends onward.
    pub fn child(self, step: SpanId) -> Self {
        TraceParent {
            parent_id: step,
            ..self
        }
    }

    /// Whether the sender recorded (sampled) its part of the trace.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// One byte from two lowercase hex digits (the spec allows no upper case).
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The header value: `00-<trace id>-<parent id>-<flags>`.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Written as its header value (straight into the output, no string of its own).
impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Strict: a value that is not a valid `traceparent` is an error. Records use [`lenient`].
impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        TraceParent::parse(&text).ok_or_else(|| serde::de::Error::custom("not a traceparent"))
    }
}

/// `#[serde(deserialize_with = "lenient")]` for an `Option<TraceParent>` field of a record or
/// body: an invalid value reads as absent, so a bad trace never makes a record unreadable.
pub fn lenient<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TraceParent>, D::Error> {
    let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
    Ok(text.as_deref().and_then(TraceParent::parse))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn the_specs_example_round_trips() {
        let tp = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(tp.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.parent_id.to_string(), "b7ad6b7169203331");
        assert_eq!(tp.flags, 1);
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), EXAMPLE);
        assert_eq!(tp.to_string().len(), TRACEPARENT_LEN);
        let child = tp.child(SpanId([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(
            child.to_string(),
            "00-0af7651916cd43dd8448eb211c80319c-0102030405060708-01"
        );
        assert_eq!(
            TraceParent::parse(" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00 ")
                .map(|t| t.sampled()),
            Some(false),
            "surrounding blanks are allowed (an HTTP header's OWS)"
        );
    }

    #[test]
    fn invalid_values_are_absent() {
        let bad = [
            "",
            "00",
            // wrong version: ff is forbidden, and not hex
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // version 00 with more after it
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            // all-zero ids
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // bad lengths
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            // upper case, other digits, wrong separators
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            // a multi-byte character where a digit should be
            "00-0af7651916cd43dd8448eb211c8031é-b7ad6b7169203331-01",
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_prefix() {
        let later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more";
        assert_eq!(
            TraceParent::parse(later).map(|t| t.to_string()).as_deref(),
            Some(EXAMPLE)
        );
        assert_eq!(
            TraceParent::parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x"),
            None
        );
    }

    #[test]
    fn records_read_a_bad_value_as_absent() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Record {
            #[serde(default, deserialize_with = "lenient")]
            traceparent: Option<TraceParent>,
        }
        let good: Record =
            serde_json::from_str(&format!(r#"{{"traceparent":"{EXAMPLE}"}}"#)).unwrap();
        assert_eq!(good.traceparent, TraceParent::parse(EXAMPLE));
        assert_eq!(
            serde_json::to_string(&good).unwrap(),
            format!(r#"{{"traceparent":"{EXAMPLE}"}}"#)
        );
        for body in [
            r#"{"traceparent":"nonsense"}"#,
            r#"{"traceparent":null}"#,
            "{}",
        ] {
            let read: Record = serde_json::from_str(body).unwrap();
            assert_eq!(read.traceparent, None, "{body}");
        }
        assert!(serde_json::from_str::<TraceParent>(r#""nonsense""#).is_err());
    }
}
