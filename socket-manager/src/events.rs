//! Message events on the send path (issue 28): edits, deletes, reactions and replies are
//! numbered in the conversation's sequence exactly like messages (same lease, idempotency by
//! `client_msg_id`, epoch, `acks=all`, fan-out), so a device catches up through `after_seq`
//! alone. This module only decides, before numbering, whether each may be done.
//!
//! **Where the check happens.** Authorship, the target's existence and deletion, a member's
//! role (owners and admins delete anyone's message), the edit window, the number of edits and
//! the reactions of a message are the message service's data (`messages`, `members`): the
//! manager's mirror holds members only. So the manager asks the message service
//! (`POST /internal/v1/conversations/{id}/events/check`) once per conversation batch that
//! holds events, before the lease is taken, and answers a refusal with its stable code
//! (`not_author`, `message_not_found`, ...) and the frame's `client_msg_id`; only the admitted
//! ones are numbered. Refusing before numbering is what lets the sender see the refusal: a
//! record in the log is `sent`. Ingest still applies each event by the rules that follow from
//! the log alone (the target exists, is a message of the conversation, is not deleted, the
//! author or a `moderated` delete), so a race the check could not see (a delete numbered
//! before an edit of the same message) ends the same on every device and in history.
//!
//! **Plain messages do no extra work**: the check is whether a conversation batch holds a
//! send with an event.

use std::time::Duration;

use switchboard_credentials::cluster::ClusterCredential;
use switchboard_message_log::RecordEvent;
use switchboard_protocol::frames::{is_storable_text, is_valid_emoji, RecordKind, ServerFrame};
use switchboard_protocol::internal::{EventCheck, EventCheckItem, EventVerdicts};
use switchboard_protocol::token::path_segment;
use switchboard_protocol::{ConversationId, ErrorCode, MessageId};

use crate::sequencer::SendRequest;

/// How long one conversation batch's check may take (the message service waits up to
/// 2 s for a target that ingest has not stored yet).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// An edit, delete, reaction or reply as the client's frame gives it: its target message
/// not checked yet ([`ClientEvent::check`] makes it a log record's [`RecordEvent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientEvent {
    pub kind: RecordKind,
    pub target_id: String,
    pub emoji: Option<String>,
}

impl ClientEvent {
    /// The event with its target checked, or why it is refused ([`refuse_event`]). A client
    /// never sets `moderated`: the message service's verdict does.
    pub(crate) fn check(self) -> Result<RecordEvent, (ErrorCode, String)> {
        if let Some(refused) = refuse_event(&self) {
            return Err(refused);
        }
        let target_id = MessageId::parse(self.target_id).map_err(|_| target_not_found())?;
        Ok(RecordEvent {
            kind: self.kind,
            target_id,
            emoji: self.emoji,
            moderated: false,
        })
    }
}

/// What a target that is no message id gets: it names no message the sender can see.
fn target_not_found() -> (ErrorCode, String) {
    (
        ErrorCode::MessageNotFound,
        "message_id names no message of this conversation".into(),
    )
}

/// Why an event is malformed, if it is (checked when the batch is planned): a target that is
/// no message id (message ids are ULIDs), an emoji that cannot be one.
pub(crate) fn refuse_event(event: &ClientEvent) -> Option<(ErrorCode, String)> {
    if !MessageId::is_valid(&event.target_id) {
        return Some(target_not_found());
    }
    if let Some(emoji) = &event.emoji {
        if !is_valid_emoji(emoji) || !is_storable_text(emoji) {
            return Some((
                ErrorCode::BadRequest,
                format!(
                    "emoji must be 1-{} bytes without whitespace or control characters",
                    switchboard_protocol::frames::MAX_EMOJI_BYTES
                ),
            ));
        }
    }
    None
}

/// Asks the message service whether a batch's events may be numbered.
#[derive(Clone)]
pub(crate) struct Checker {
    http: reqwest::Client,
    message_service_url: String,
    credential: ClusterCredential,
}

impl Checker {
    pub fn new(message_service_url: String, credential: ClusterCredential) -> Self {
        Checker {
            http: reqwest::Client::builder()
                .timeout(CHECK_TIMEOUT)
                .build()
                .expect("http client"),
            message_service_url,
            credential,
        }
    }

    /// Splits a conversation's sends into those that may be numbered (in their order; an
    /// owner's or admin's delete of another member's message marked `moderated`) and the
    /// refused ones, answered with their places. Without events, the group passes untouched.
    pub async fn admit(
        &self,
        conversation_id: &ConversationId,
        mut group: Vec<(usize, SendRequest)>,
    ) -> (Vec<(usize, SendRequest)>, Vec<(usize, ServerFrame)>) {
        if group.iter().all(|(_, s)| s.event.is_none()) {
            return (group, Vec::new());
        }
        let items: Vec<EventCheckItem> = group
            .iter()
            .filter_map(|(_, s)| {
                let event = s.event.as_ref()?;
                Some(EventCheckItem {
                    sender_id: s.sender_id.to_string(),
                    client_msg_id: s.client_msg_id.to_string(),
                    kind: event.kind,
                    target_id: event.target_id.to_string(),
                    emoji: event.emoji.clone(),
                })
            })
            .collect();
        let verdicts = match self.check(conversation_id, items.clone()).await {
            Ok(verdicts) if verdicts.verdicts.len() == items.len() => verdicts.verdicts,
            outcome => {
                let error = match outcome {
                    Err(e) => e,
                    Ok(v) => format!("{} verdicts for {} items", v.verdicts.len(), items.len()),
                };
                tracing::warn!(%error, %conversation_id, "the event check failed; its sends answer unavailable");
                let mut admitted = Vec::with_capacity(group.len());
                let mut refused = Vec::new();
                for (index, send) in group {
                    if send.event.is_none() {
                        admitted.push((index, send));
                    } else {
                        refused.push((
                            index,
                            ServerFrame::Error {
                                code: ErrorCode::Unavailable,
                                message: "the message could not be checked now: retry".into(),
                                client_msg_id: Some(send.client_msg_id.to_string()),
                            },
                        ));
                    }
                }
                return (admitted, refused);
            }
        };
        let mut verdicts = verdicts.into_iter();
        let mut admitted = Vec::with_capacity(group.len());
        let mut refused = Vec::new();
        for (index, mut send) in group.drain(..) {
            let Some(event) = send.event.as_mut() else {
                admitted.push((index, send));
                continue;
            };
            let verdict = verdicts.next().unwrap_or_default();
            match verdict.refused {
                None => {
                    event.moderated = verdict.moderated && event.kind == RecordKind::Delete;
                    admitted.push((index, send));
                }
                Some(detail) => refused.push((
                    index,
                    ServerFrame::Error {
                        code: detail.code,
                        message: detail.message,
                        client_msg_id: Some(send.client_msg_id.to_string()),
                    },
                )),
            }
        }
        (admitted, refused)
    }

    async fn check(
        &self,
        conversation_id: &ConversationId,
        items: Vec<EventCheckItem>,
    ) -> Result<EventVerdicts, String> {
        let url = format!(
            "{}/internal/v1/conversations/{}/events/check",
            self.message_service_url.trim_end_matches('/'),
            path_segment(conversation_id.as_str())
        );
        let call = self
            .credential
            .apply(self.http.post(url))
            .json(&EventCheck { items })
            .send();
        let response = tokio::time::timeout(CHECK_TIMEOUT, call)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "the message service answered {}",
                response.status()
            ));
        }
        response
            .json::<EventVerdicts>()
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(target: &str, emoji: Option<&str>) -> ClientEvent {
        ClientEvent {
            kind: RecordKind::Reaction,
            target_id: target.into(),
            emoji: emoji.map(str::to_owned),
        }
    }

    #[test]
    fn malformed_events_are_refused_before_anything_is_asked() {
        let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        assert_eq!(refuse_event(&event(id, Some("\u{1F44D}"))), None);
        assert_eq!(refuse_event(&event(id, None)), None);
        assert_eq!(
            refuse_event(&event("not-a-ulid", None)).map(|r| r.0),
            Some(ErrorCode::MessageNotFound)
        );
        assert_eq!(
            refuse_event(&event(id, Some("two words"))).map(|r| r.0),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            refuse_event(&event(id, Some(""))).map(|r| r.0),
            Some(ErrorCode::BadRequest)
        );
    }
}
