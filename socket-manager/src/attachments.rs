//! Attachments on the send path: a send that references attachment ids is verified before it
//! is numbered, so a `sent` never vouches for a message whose files are missing, belong to
//! another conversation or differ from what was declared (docs/architecture.md,
//! "Attachments").
//!
//! The manager holds no object-store credentials: it asks the message service
//! (`POST /internal/v1/conversations/{id}/attachments/claim`), which checks its own record of
//! each attachment, `HEAD`s the object through the S3 API and claims the attachments for this
//! send. One call per send that has attachments, the sends of a conversation batch side by
//! side, each bounded by [`VERIFY_TIMEOUT`]: a slow store costs those sends an `unavailable`
//! (the client resends), never the lease of the conversation (verification runs before it is
//! taken) nor the sends without attachments, for which this module does nothing but look at
//! an empty list.

use std::time::Duration;

use switchboard_credentials::cluster::ClusterCredential;
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::internal::{AttachmentClaim, AttachmentVerdict};
use switchboard_protocol::token::path_segment;
use switchboard_protocol::{ConversationId, ErrorCode};

use crate::sequencer::SendRequest;

/// The most attachments one message may reference.
pub const MAX_ATTACHMENTS: usize = 10;

/// How long one send's verification may take (the message service's `HEAD`s included).
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a send's attachment list is malformed, if it is (checked when the batch is planned,
/// before anything else is done for it): more than [`MAX_ATTACHMENTS`], a repeat, or an id
/// that is not a ULID (attachment ids are the ULIDs the message service hands out).
pub(crate) fn refuse_ids(ids: &[String]) -> Option<(ErrorCode, String)> {
    if ids.len() > MAX_ATTACHMENTS {
        return Some((
            ErrorCode::BadRequest,
            format!(
                "{} attachments; a message takes at most {MAX_ATTACHMENTS}",
                ids.len()
            ),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        if ulid::Ulid::from_string(id).is_err() {
            return Some((
                ErrorCode::BadRequest,
                "attachment ids are the ids POST .../attachments answered".into(),
            ));
        }
        if ids[..i].contains(id) {
            return Some((
                ErrorCode::BadRequest,
                "an attachment is listed twice".into(),
            ));
        }
    }
    None
}

/// Asks the message service to verify and claim attachments.
#[derive(Clone)]
pub(crate) struct Verifier {
    http: reqwest::Client,
    message_service_url: String,
    credential: ClusterCredential,
}

impl Verifier {
    pub fn new(message_service_url: String, credential: ClusterCredential) -> Self {
        Verifier {
            http: reqwest::Client::builder()
                .timeout(VERIFY_TIMEOUT)
                .build()
                .expect("http client"),
            message_service_url,
            credential,
        }
    }

    /// Splits a conversation's sends into those that may be numbered (in their order) and the
    /// refused ones, answered with their places. Sends without attachments pass untouched.
    pub async fn admit(
        &self,
        conversation_id: &ConversationId,
        group: Vec<(usize, SendRequest)>,
    ) -> (Vec<(usize, SendRequest)>, Vec<(usize, ServerFrame)>) {
        if group.iter().all(|(_, s)| s.attachments.is_empty()) {
            return (group, Vec::new());
        }
        let verdicts = futures_util::future::join_all(group.iter().map(|(_, send)| async move {
            if send.attachments.is_empty() {
                None
            } else {
                self.verify(conversation_id, send).await.err()
            }
        }))
        .await;
        let mut admitted = Vec::with_capacity(group.len());
        let mut refused = Vec::new();
        for ((index, send), verdict) in group.into_iter().zip(verdicts) {
            match verdict {
                None => admitted.push((index, send)),
                Some((code, message)) => refused.push((
                    index,
                    ServerFrame::Error {
                        code,
                        message,
                        client_msg_id: Some(send.client_msg_id.to_string()),
                    },
                )),
            }
        }
        (admitted, refused)
    }

    /// One send's verification: `Err` with the refusal to answer.
    async fn verify(
        &self,
        conversation_id: &ConversationId,
        send: &SendRequest,
    ) -> Result<(), (ErrorCode, String)> {
        let unavailable = |e: String| {
            tracing::warn!(error = %e, %conversation_id, client_msg_id = %send.client_msg_id, "attachment verification failed");
            (
                ErrorCode::Unavailable,
                "attachments could not be verified now: retry".to_owned(),
            )
        };
        let url = format!(
            "{}/internal/v1/conversations/{}/attachments/claim",
            self.message_service_url.trim_end_matches('/'),
            path_segment(conversation_id.as_str())
        );
        let body = AttachmentClaim {
            sender_id: send.sender_id.to_string(),
            client_msg_id: send.client_msg_id.to_string(),
            attachments: send.attachments.clone(),
        };
        let call = self
            .credential
            .apply(self.http.post(url))
            .json(&body)
            .send();
        let response = tokio::time::timeout(VERIFY_TIMEOUT, call)
            .await
            .map_err(|_| unavailable("timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!(
                "message service answered {}",
                response.status()
            )));
        }
        let verdict: AttachmentVerdict = response
            .json()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match verdict.refused {
            None => Ok(()),
            Some(detail) => Err((detail.code, detail.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lists_are_refused() {
        let id = || ulid::Ulid::new().to_string();
        assert!(refuse_ids(&[]).is_none());
        assert!(refuse_ids(&[id(), id()]).is_none());
        assert!(refuse_ids(&(0..11).map(|_| id()).collect::<Vec<_>>()).is_some());
        assert!(refuse_ids(&["../x".into()]).is_some());
        let same = id();
        assert!(refuse_ids(&[same.clone(), same]).is_some());
    }
}
