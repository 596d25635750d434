//! Message search: `GET /api/v1/search?q=...&conversation_id=...` over the conversations the
//! caller is an active member of (docs/protocol.md, "Search").
//!
//! The whole query lives here, behind [`search`], so it can move to a dedicated engine: today
//! PostgreSQL full-text search over `messages.search`, a `tsvector` that PostgreSQL keeps
//! itself (a stored generated column of the body, `simple` configuration, GIN index;
//! migration 0008), so ingest writes it with the row and an edit or an erased body updates it
//! in the same statement. Membership is a join *inside* the query: a stranger's message is
//! never read, ranked or counted, so nothing about it can leak, not even through a page's
//! length. Ranked by `ts_rank` (then newest first), paged with an opaque cursor, highlighted
//! by `ts_headline`; the highlight is answered as segments (`{"text","match"}`) rather than
//! markup, so no client has to trust the body as HTML. docs/architecture.md ("Search") says
//! how this moves to a search engine at scale.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use switchboard_protocol::error_code::ErrorBody;
use switchboard_protocol::frames::is_storable_text;
use switchboard_protocol::{ConversationId, ErrorCode, MessageId, UserId};
use switchboard_service_kit::http::ApiError;

use crate::auth::AuthUser;
use crate::state::AppState;

/// The longest query, in bytes.
const MAX_QUERY_BYTES: usize = 256;
/// The largest page.
const MAX_LIMIT: i64 = 50;
/// How deep paging goes: past this many results, refine the query.
const MAX_DEPTH: i64 = 1000;
/// Markers `ts_headline` puts around matches (private-use characters, split out below).
const START: char = '\u{E000}';
const STOP: char = '\u{E001}';

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/search", web::get().to(search_route));
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(search_route))]
struct SearchApi;

/// The search route's part of the public OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    SearchApi::openapi()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SearchQuery {
    /// Words to find (web-search syntax: `"a phrase"`, `-not`, `or`); 1-256 bytes.
    pub q: String,
    /// Only this conversation (one the caller is a member of).
    pub conversation_id: Option<String>,
    /// Results per page, 1-50 (default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A piece of a highlight: matched words have `match: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Segment {
    pub text: String,
    #[serde(rename = "match")]
    pub matched: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    #[schema(value_type = String)]
    pub conversation_id: ConversationId,
    #[schema(value_type = String)]
    pub message_id: MessageId,
    pub seq: i64,
    #[schema(value_type = String)]
    pub sender_id: UserId,
    pub created_at: String,
    pub rank: f32,
    /// The best fragment of the body, as segments.
    pub highlight: Vec<Segment>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResults {
    pub results: Vec<SearchHit>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/api/v1/search", tag = "search",
    params(SearchQuery),
    responses(
        (status = 200, description = "matching messages of the caller's conversations, best first", body = SearchResults),
        (status = 400, description = "a missing or bad `q`, `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "`conversation_id` names a conversation the caller is not in (`not_a_member`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn search_route(
    user: AuthUser,
    state: web::Data<AppState>,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let q = query.q.trim();
    if q.is_empty() || q.len() > MAX_QUERY_BYTES || !is_storable_text(q) {
        return Err(ApiError::bad_request("q must be 1-256 bytes of text"));
    }
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1-50"));
    }
    let offset = match &query.cursor {
        None => 0,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|o| (1..MAX_DEPTH).contains(o))
            .ok_or_else(|| ApiError::bad_request("a bad cursor"))?,
    };
    if let Some(c) = &query.conversation_id {
        if !is_storable_text(c) {
            return Err(ApiError::bad_request("the conversation id contains U+0000"));
        }
    }
    let pool = state.store.pool();
    if let Some(c) = &query.conversation_id {
        // Asked for one conversation: say so when the caller is not in it (the results
        // query would only be empty).
        let member: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2 AND state = 'active'",
        )
        .bind(c)
        .bind(&user.0)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        if member.is_none() {
            return Err(ApiError::new(
                ErrorCode::NotAMember,
                "you are not a member of this conversation",
            ));
        }
    }
    let page = search(
        pool,
        &user.0,
        q,
        query.conversation_id.as_deref(),
        limit,
        offset,
    )
    .await
    .map_err(db_error)?;
    Ok(HttpResponse::Ok().json(page))
}

fn db_error(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::unavailable("the database is unavailable, retry shortly")
}

/// One page of `user`'s matches for `q` (optionally in one conversation), from `offset`.
pub async fn search(
    pool: &PgPool,
    user: &str,
    q: &str,
    conversation_id: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<SearchResults, sqlx::Error> {
    let limit = limit.min(MAX_DEPTH - offset).max(0);
    // One more than the page tells whether there is a next one.
    let rows = sqlx::query(
        "WITH query AS (SELECT websearch_to_tsquery('simple', $2) AS q),
              hits AS (
                SELECT m.conversation_id, m.message_id, m.seq, m.sender_id, m.created_at, m.body,
                       ts_rank(m.search, query.q) AS rank, query.q
                  FROM query, messages m
                  JOIN members mb ON mb.conversation_id = m.conversation_id
                                 AND mb.user_id = $1 AND mb.state = 'active'
                 WHERE m.search @@ query.q
                   AND ($3::text IS NULL OR m.conversation_id = $3)
                 ORDER BY rank DESC, m.created_at DESC, m.message_id DESC
                 LIMIT $4 OFFSET $5)
         SELECT conversation_id, message_id, seq, sender_id, created_at, rank,
                ts_headline('simple', body, q,
                            'StartSel=\u{E000}, StopSel=\u{E001}, MaxWords=24, MinWords=8, MaxFragments=2, FragmentDelimiter=\" … \"') AS headline
           FROM hits
          ORDER BY rank DESC, created_at DESC, message_id DESC",
    )
    .bind(user)
    .bind(q)
    .bind(conversation_id)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let more = rows.len() as i64 > limit;
    let results: Vec<SearchHit> = rows
        .into_iter()
        .take(limit as usize)
        // Ids checked as they are read: a row that breaks a rule is an error, not a panic.
        .map(|row| {
            Ok(SearchHit {
                conversation_id: row.try_get("conversation_id")?,
                message_id: row.try_get("message_id")?,
                seq: row.try_get("seq")?,
                sender_id: row.try_get("sender_id")?,
                created_at: crate::store::rfc3339(row.try_get("created_at")?),
                rank: row.try_get("rank")?,
                highlight: segments(&row.try_get::<String, _>("headline")?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    let next = offset + results.len() as i64;
    Ok(SearchResults {
        next_cursor: (more && next < MAX_DEPTH).then(|| next.to_string()),
        results,
    })
}

/// `ts_headline`'s text split at its markers.
fn segments(headline: &str) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut text = String::new();
    let mut matched = false;
    let flush = |text: &mut String, matched: bool, out: &mut Vec<Segment>| {
        if !text.is_empty() {
            out.push(Segment {
                text: std::mem::take(text),
                matched,
            });
        }
    };
    for c in headline.chars() {
        match c {
            START => {
                flush(&mut text, matched, &mut out);
                matched = true;
            }
            STOP => {
                flush(&mut text, matched, &mut out);
                matched = false;
            }
            c => text.push(c),
        }
    }
    flush(&mut text, matched, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_markers_become_segments() {
        let s = segments("the \u{E000}quick\u{E001} fox");
        assert_eq!(
            s,
            vec![
                Segment {
                    text: "the ".into(),
                    matched: false
                },
                Segment {
                    text: "quick".into(),
                    matched: true
                },
                Segment {
                    text: " fox".into(),
                    matched: false
                },
            ]
        );
        assert!(segments("").is_empty());
    }
}
