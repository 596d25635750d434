//! `POST /internal/v1/server-send` (cluster-only, the message service's credential): one
//! server-API message (docs/server-api.md) numbered through the sequencer like a client's
//! send, so it shares the conversation's gapless `seq` order, the durable append (`acks=all`)
//! and the fan-out of an ordinary `message` frame.
//!
//! Idempotency uses the managers' own records (`idem:{c}:{sender}:{client_msg_id}`, kept
//! `SB_IDEMPOTENCY_TTL_SECS`), with the `Idempotency-Key` namespaced into a `client_msg_id`
//! no client can produce: `srv.` and the hex SHA-256 of a random secret every manager shares
//! (`idem:server-api-namespace`, made once, kept in Redis; clients never read Redis) and the
//! key. A replay after a manager died (kill -9 included) is numbered by another manager from
//! the same record, so it answers the same `seq`.
//!
//! What a key was first used for is kept beside it (`idem:server-api:{c}:{namespaced key}`,
//! the SHA-256 of sender and body, same expiry), so the same key with another sender or body
//! is refused `idempotency_conflict` (422) instead of answering a message it did not send.

use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};
use switchboard_chat_state::sequence::SequenceKeys;
use switchboard_credentials::cluster::ServiceRole;
use switchboard_protocol::frames::{is_storable_text, ServerFrame};
use switchboard_protocol::server_api::{
    valid_idempotency_key, InternalServerSend, InternalServerSent,
};
use switchboard_protocol::{ClientMsgId, ConversationId, ErrorCode, UserId};
use switchboard_redis::SentinelRedis;
use switchboard_service_kit::http::ApiError;

use crate::state::AppState;

pub use switchboard_protocol::server_api::INTERNAL_SERVER_SEND_PATH as PATH;

/// The namespace secret, once read (it never changes while Redis keeps its data).
static NAMESPACE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

fn hex_sha256(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        // Length-prefixed, so no two lists of parts hash the same text.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The shared namespace secret: read, or made (`SET NX`) by the first manager that needs it.
async fn namespace(redis: &SentinelRedis, keys: &SequenceKeys) -> Result<String, ApiError> {
    NAMESPACE
        .get_or_try_init(|| async {
            let key = keys.server_api_namespace();
            // Two ULIDs: 160 bits from the thread's CSPRNG.
            let fresh = format!("{}{}", ulid::Ulid::new(), ulid::Ulid::new());
            let _: Option<String> = redis
                .query(redis::cmd("SET").arg(&key).arg(&fresh).arg("NX"))
                .await?;
            let stored: Option<String> = redis.query(redis::cmd("GET").arg(&key)).await?;
            stored.ok_or_else(|| {
                ApiError::unavailable("the idempotency namespace is not kept yet, retry")
            })
        })
        .await
        .cloned()
}

/// The `client_msg_id` of a server-API key: `srv.` + 64 hex digits.
fn namespaced(namespace: &str, idempotency_key: &str) -> ClientMsgId {
    ClientMsgId::parse(format!("srv.{}", hex_sha256(&[namespace, idempotency_key])))
        .expect("68 ASCII bytes are a client_msg_id")
}

pub async fn server_send(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<InternalServerSend>,
) -> Result<HttpResponse, ApiError> {
    state
        .config
        .common
        .cluster
        .require(&req, &[ServiceRole::MessageService])?;
    let send = body.into_inner();
    let conversation_id = send.conversation_id.clone();
    let sender_id = send.sender_id.clone();
    if !valid_idempotency_key(&send.idempotency_key) {
        return Err(ApiError::bad_request(
            "the idempotency key must be 1-255 bytes of visible ASCII",
        ));
    }
    if send.body.len() > state.config.max_body_bytes {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "body is {} bytes; the limit is {}",
                send.body.len(),
                state.config.max_body_bytes
            ),
        ));
    }
    if !is_storable_text(&send.body) {
        return Err(ApiError::bad_request(
            "body contains U+0000 (NUL), which cannot be stored",
        ));
    }
    // Answered on the message path's runtime, like a batch (`routes::batch`): it runs to its
    // end (lease released, pending numbers cleared) even if the caller stops waiting.
    let work = answer(state.clone(), conversation_id, sender_id, send);
    let answer = state
        .runtime
        .spawn(work)
        .await
        .map_err(|e| ApiError::unavailable(format!("the send's task failed: {e}")))??;
    Ok(HttpResponse::Ok().json(answer))
}

async fn answer(
    state: web::Data<AppState>,
    conversation_id: ConversationId,
    sender_id: UserId,
    send: InternalServerSend,
) -> Result<InternalServerSent, ApiError> {
    let sequencer = &state.sequencer;
    let redis = &sequencer.redis;
    let client_msg_id = namespaced(
        &namespace(redis, &sequencer.keys).await?,
        &send.idempotency_key,
    );
    let request_hash = hex_sha256(&[&send.sender_id, &send.body]);
    let record = sequencer
        .keys
        .server_api_request(&conversation_id, &client_msg_id);
    let first: Option<String> = redis
        .query(
            redis::cmd("SET")
                .arg(&record)
                .arg(&request_hash)
                .arg("NX")
                .arg("EX")
                .arg(sequencer.idempotency_ttl_secs),
        )
        .await?;
    let replayed = first.is_none();
    if replayed {
        let stored: Option<String> = redis.query(redis::cmd("GET").arg(&record)).await?;
        if stored.is_some_and(|stored| stored != request_hash) {
            return Err(ApiError::new(
                ErrorCode::IdempotencyConflict,
                "this Idempotency-Key was used for another message (another sender or body) \
                 in this conversation",
            ));
        }
    }
    let frame = sequencer
        .send_for_server(
            &conversation_id,
            sender_id,
            client_msg_id,
            send.body,
            send.reserved_sender,
        )
        .await;
    match frame {
        ServerFrame::Sent {
            message_id,
            seq,
            created_at,
            ..
        } => Ok(InternalServerSent {
            message_id,
            seq,
            created_at,
            replayed,
        }),
        ServerFrame::Error { code, message, .. } => Err(ApiError::new(code, message)),
        other => {
            tracing::error!(frame = ?other, "a server send answered an unexpected frame");
            Err(ApiError::new(ErrorCode::Internal, "unexpected answer"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_keys_are_client_msg_ids_that_differ_per_namespace_and_key() {
        let a = namespaced("ns1", "order-1");
        assert!(a.starts_with("srv."));
        assert_eq!(a.len(), 68);
        assert_eq!(a, namespaced("ns1", "order-1"));
        assert_ne!(a, namespaced("ns2", "order-1"));
        assert_ne!(a, namespaced("ns1", "order-2"));
        // Length-prefixed parts: moving a boundary changes the hash.
        assert_ne!(hex_sha256(&["ab", "c"]), hex_sha256(&["a", "bc"]));
    }
}
