//! Conversation members, from the Redis mirror the message service keeps, falling back to the
//! message service itself (which refills the mirror) when the mirror is cold.

use std::time::Duration;

use switchboard_chat_state::membership::MembershipMirror;
use switchboard_credentials::cluster::ClusterCredential;
use switchboard_protocol::token::path_segment;
use switchboard_protocol::ConversationId;
use switchboard_redis::SentinelRedis;
use switchboard_service_kit::internal::{Failover, InternalClient};

#[derive(Clone)]
pub struct Members {
    mirror: MembershipMirror,
    /// The message service's cluster-only routes, through the one internal client.
    message_service: InternalClient,
}

#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    #[error("membership unavailable: {0}")]
    Unavailable(String),
}

use switchboard_protocol::internal::{Contacts, ConversationMembers};
pub use switchboard_protocol::internal::{SettledLog, SettledMessage};

impl Members {
    pub fn new(
        redis: SentinelRedis,
        message_service_url: String,
        credential: ClusterCredential,
    ) -> Self {
        Members {
            mirror: MembershipMirror::new(redis),
            message_service: InternalClient::new(
                vec![message_service_url],
                credential,
                Duration::from_secs(3),
            ),
        }
    }

    /// The Redis key of the conversation's mirrored members, for scripts that read them.
    pub fn mirror_key(&self, conversation_id: &ConversationId) -> String {
        self.mirror.key(conversation_id)
    }

    /// Members of the conversation; empty when it does not exist.
    pub async fn of(&self, conversation_id: &ConversationId) -> Result<Vec<String>, MembersError> {
        let cached = self
            .mirror
            .mirrored(conversation_id)
            .await
            .map_err(|e| MembersError::Unavailable(e.to_string()))?;
        if !cached.is_empty() {
            return Ok(cached);
        }
        Ok(self.ask_message_service(conversation_id).await?.members)
    }

    /// The highest `seq` the message service has stored for the conversation (0 for none): a
    /// receipt's bound when the conversation has no counter in Redis (idle past its expiry).
    /// A read, not a fence.
    pub async fn last_stored_seq(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<u64, MembersError> {
        Ok(self.ask_message_service(conversation_id).await?.last_seq)
    }

    /// Users who share a conversation of at most `max_group` members with `user`.
    pub async fn contacts_of(
        &self,
        user: &str,
        max_group: usize,
    ) -> Result<Vec<String>, MembersError> {
        let found: Contacts = self
            .get_internal(&format!(
                "/internal/v1/users/{}/contacts?max_group={max_group}",
                path_segment(user)
            ))
            .await?;
        Ok(found.contacts)
    }

    /// Fences the conversation's log under a new epoch and answers once the message service
    /// has stored everything before the fence: the floor for a sequence counter, the epoch
    /// to number under, and the newest stored messages above `after_seq` (bounded) with
    /// their senders and `client_msg_id`s. `partitions`: the log's partition count, so the
    /// fence lands in the conversation's own partition.
    pub async fn settled_log(
        &self,
        conversation_id: &ConversationId,
        after_seq: u64,
        partitions: i32,
    ) -> Result<SettledLog, MembersError> {
        self.call_internal(
            reqwest::Method::POST,
            &format!(
                "/internal/v1/conversations/{conversation_id}/settled-last-seq?after_seq={after_seq}&partitions={partitions}"
            ),
        )
        .await
    }

    async fn ask_message_service(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<ConversationMembers, MembersError> {
        self.get_internal(&format!(
            "/internal/v1/conversations/{conversation_id}/members"
        ))
        .await
    }

    /// GET a cluster-only route of the message service.
    async fn get_internal<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, MembersError> {
        self.call_internal(reqwest::Method::GET, path).await
    }

    /// Calls a cluster-only route of the message service.
    async fn call_internal<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<T, MembersError> {
        self.message_service
            .call::<(), T>(method, path, None, &[], Failover::ONCE)
            .await
            .map_err(|e| MembersError::Unavailable(e.to_string()))
    }
}
