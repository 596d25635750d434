//! Consent and limits of issue 24 that the creating routes share: nobody is put in a
//! conversation with a user who blocks them, and creating conversations and adding members
//! takes from per-minute quotas, refused with 429 and `Retry-After` (an answer [`ApiError`]
//! cannot carry, hence [`Refused`]).

use actix_web::HttpResponse;
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::ErrorCode;
use switchboard_service_kit::http::ApiError;

use crate::config::GroupAddPolicy;
use crate::http_common::db_error;
use crate::state::AppState;
use crate::store::MemberState;

/// A refusal the handler answers itself (a status or header [`ApiError`] cannot carry).
pub(super) enum Refused {
    Api(ApiError),
    /// 429 `rate_limited` with `Retry-After` (seconds).
    Quota {
        what: &'static str,
        retry_after: u64,
    },
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Api(e)
    }
}

pub(super) type Answer = Result<HttpResponse, Refused>;

pub(super) fn into_answer(result: Answer) -> HttpResponse {
    match result {
        Ok(resp) => resp,
        Err(Refused::Api(e)) => actix_web::ResponseError::error_response(&e),
        Err(Refused::Quota { what, retry_after }) => HttpResponse::TooManyRequests()
            .insert_header((
                actix_web::http::header::RETRY_AFTER,
                retry_after.to_string(),
            ))
            .json(ErrorBody::new(
                ErrorCode::RateLimited,
                format!("too many {what} per minute; retry in {retry_after} s"),
            )),
    }
}

/// A per-minute quota: its kind in the store, how a refusal names it, and its setting.
#[derive(Clone, Copy)]
pub(super) struct Quota {
    kind: &'static str,
    what: &'static str,
    per_minute: u32,
}

impl Quota {
    /// Conversations a user creates (`SB_CONVERSATIONS_PER_MINUTE`).
    pub(super) fn conversations(state: &AppState) -> Self {
        Quota {
            kind: "conversation",
            what: "conversations created",
            per_minute: state.config.conversations_per_minute,
        }
    }

    /// Members a user adds to groups (`SB_MEMBERS_ADDED_PER_MINUTE`).
    pub(super) fn members_added(state: &AppState) -> Self {
        Quota {
            kind: "member",
            what: "members added",
            per_minute: state.config.members_added_per_minute,
        }
    }
}

/// Takes one of the caller's per-minute `quota` events, or refuses with `Retry-After`.
pub(super) async fn take_quota(state: &AppState, user: &str, quota: Quota) -> Result<(), Refused> {
    match state
        .store
        .take_quota(user, quota.kind, quota.per_minute)
        .await
        .map_err(db_error)?
    {
        None => Ok(()),
        Some(retry_after) => Err(Refused::Quota {
            what: quota.what,
            retry_after,
        }),
    }
}

/// 403 `forbidden` when any of `users` blocks `caller` (named, so the caller knows whom).
pub(super) async fn refuse_if_blocked(
    state: &AppState,
    users: &[String],
    caller: &str,
) -> Result<(), ApiError> {
    let others: Vec<String> = users.iter().filter(|u| *u != caller).cloned().collect();
    if others.is_empty() {
        return Ok(());
    }
    let blocking = state
        .store
        .blocking(&others, caller)
        .await
        .map_err(db_error)?;
    match blocking.first() {
        None => Ok(()),
        Some(who) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{who:?} does not accept conversations with you"),
        )),
    }
}

/// What a user put in a group by someone else becomes under `SB_GROUP_ADD_POLICY`.
pub(super) fn added_state(state: &AppState) -> MemberState {
    match state.config.group_add_policy {
        GroupAddPolicy::Open => MemberState::Active,
        GroupAddPolicy::Invite => MemberState::Invited,
    }
}
