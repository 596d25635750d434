//! Timestamps as they travel: RFC 3339 in UTC with milliseconds (`2026-12-01T22:00:41.123Z`),
//! the form every frame, REST body and log record uses. [`Timestamp`] is that text checked
//! and parsed once: it orders, converts to milliseconds, and writes itself back in the same
//! form, so a value survives any number of round trips unchanged.

use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// An instant at millisecond precision (finer parts are dropped when one is made, so what is
/// written is exactly what is read back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timestamp(DateTime<Utc>);

/// Text that is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 timestamp")]
pub struct TimestampError(String);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_datetime(Utc::now())
    }

    /// Milliseconds since the Unix epoch; `None` outside chrono's range.
    pub fn from_millis(ms: i64) -> Option<Timestamp> {
        Utc.timestamp_millis_opt(ms).single().map(Timestamp)
    }

    pub fn from_datetime(at: DateTime<Utc>) -> Timestamp {
        Timestamp::from_millis(at.timestamp_millis()).unwrap_or(Timestamp(at))
    }

    /// Any RFC 3339 text (any offset; converted to UTC, cut to milliseconds).
    pub fn parse(text: &str) -> Result<Timestamp, TimestampError> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Timestamp::from_datetime(t.with_timezone(&Utc)))
            .map_err(|_| TimestampError(text.chars().take(64).collect()))
    }

    pub fn millis(self) -> i64 {
        self.0.timestamp_millis()
    }

    pub fn datetime(self) -> DateTime<Utc> {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl TryFrom<String> for Timestamp {
    type Error = TimestampError;
    fn try_from(text: String) -> Result<Timestamp, TimestampError> {
        Timestamp::parse(&text)
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(text: &str) -> Result<Timestamp, TimestampError> {
        Timestamp::parse(text)
    }
}

impl From<Timestamp> for String {
    fn from(at: Timestamp) -> String {
        at.to_string()
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(at: DateTime<Utc>) -> Timestamp {
        Timestamp::from_datetime(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_in_the_wire_form_and_read_back_unchanged() {
        let at = Timestamp::from_millis(1_796_162_441_123).unwrap();
        assert_eq!(at.to_string(), "2026-12-01T22:00:41.123Z");
        let json = serde_json::to_string(&at).unwrap();
        assert_eq!(json, r#""2026-12-01T22:00:41.123Z""#);
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), at);
        let now = Timestamp::now();
        assert_eq!(Timestamp::parse(&now.to_string()).unwrap(), now);
    }

    #[test]
    fn any_offset_is_read_as_utc_at_millisecond_precision() {
        let at = Timestamp::parse("2026-12-01T23:00:41.123456+01:00").unwrap();
        assert_eq!(at.to_string(), "2026-12-01T22:00:41.123Z");
        assert_eq!(at.millis(), 1_796_162_441_123);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "1796162441123"] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Timestamp>(r#""soon""#).is_err());
    }
}
