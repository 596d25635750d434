//! A conversation's sends split into lease holds of bounded pending bytes, so no one
//! conversation's pending numbers can hold more than [`MAX_PENDING_BYTES_PER_HOLD`] of Redis
//! while their append is in doubt.

use super::SendRequest;

/// The pending entries of one lease hold carry at most about this many bytes of bodies (as
/// JSON: a control character takes 6 bytes escaped). A conversation's sends beyond it are
/// numbered in further holds, in order, so no one conversation's pending numbers can hold
/// more than this of Redis while their append is in doubt.
const MAX_PENDING_BYTES_PER_HOLD: usize = 1024 * 1024;

/// Splits a conversation's sends into lease holds of at most [`MAX_PENDING_BYTES_PER_HOLD`]
/// encoded body bytes (at least one send each), in order.
pub(super) fn holds(sends: &[SendRequest]) -> Vec<&[SendRequest]> {
    let mut holds = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, send) in sends.iter().enumerate() {
        let size = json_escaped_len(&send.body) + 200;
        if i > start && bytes + size > MAX_PENDING_BYTES_PER_HOLD {
            holds.push(&sends[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sends.len() {
        holds.push(&sends[start..]);
    }
    holds
}

/// The length of `text` as a JSON string's contents, escapes included (serde_json's escapes).
fn json_escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::{ClientMsgId, ConversationId, ServerId, UserId};

    fn send(body: String) -> SendRequest {
        SendRequest {
            server_id: ServerId::parse("h1").unwrap(),
            connection_id: 1,
            sender_id: UserId::parse("alice").unwrap(),
            conversation_id: ConversationId::parse("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap(),
            client_msg_id: ClientMsgId::parse("m1").unwrap(),
            body,
            attachments: Vec::new(),
            event: None,
            traceparent: None,
        }
    }

    #[test]
    fn escaped_lengths_match_serde_json() {
        for text in [
            "plain",
            "\u{1}\u{1f}",
            "\"quoted\" \\ \n\t\r",
            "\u{8}\u{c}é😀",
            "",
        ] {
            let encoded = serde_json::to_string(text).unwrap();
            assert_eq!(json_escaped_len(text), encoded.len() - 2, "{text:?}");
        }
    }

    #[test]
    fn a_conversations_sends_are_held_in_bounded_pending_bytes_in_order() {
        // Six bodies of 43,000 U+0001: 258 KB each as JSON, so four to a hold at most.
        let poison: Vec<SendRequest> = (0..6).map(|_| send("\u{1}".repeat(43_000))).collect();
        let sizes: Vec<usize> = holds(&poison).iter().map(|h| h.len()).collect();
        assert_eq!(sizes, [4, 2]);
        for hold in holds(&poison) {
            let bytes: usize = hold.iter().map(|s| json_escaped_len(&s.body)).sum();
            assert!(bytes <= MAX_PENDING_BYTES_PER_HOLD);
        }
        let small: Vec<SendRequest> = (0..256).map(|i| send(format!("hi {i}"))).collect();
        assert_eq!(holds(&small).len(), 1, "the common case is one hold");
        // One send larger than a hold still goes, on its own.
        let huge = vec![
            send("x".repeat(2 * MAX_PENDING_BYTES_PER_HOLD)),
            send("y".into()),
        ];
        assert_eq!(
            holds(&huge).iter().map(|h| h.len()).collect::<Vec<_>>(),
            [1, 1]
        );
        assert!(holds(&[]).is_empty());
    }
}
