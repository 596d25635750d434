//! REST through the front door: the registry and the message service.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchboard_protocol::conversations::{
    Conversation, ConversationList, ConversationSummary, CreateConversation, MessagePage, Presence,
    PresenceList, Role, SetRole, StoredMessage,
};
use switchboard_protocol::registry::{Assignment, DevTokenResponse, ServerList};
use switchboard_protocol::token::{TokenError, TokenKeys};
use switchboard_protocol::UserId;

use crate::error::{Error, Result};
use crate::urls;
use crate::ws::Connection;

/// The largest history page the message service answers.
const HISTORY_PAGE: u32 = 1000;

/// A token for `user_id` signed with the shared secret, valid for `ttl` (what the dev
/// endpoint does, without the round trip).
pub fn mint_token(secret: &[u8], user_id: &str, ttl: chrono::Duration) -> Result<String> {
    let user_id = UserId::parse(user_id).map_err(|_| TokenError::BadUserId)?;
    Ok(TokenKeys::new(secret).mint(&user_id, ttl)?.0)
}

/// REST calls against one base URL (nginx, which routes to the registry and the message
/// service), optionally as a user ([`Api::as_user`]). Cheap to clone: the HTTP client is
/// shared.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base_url: Arc<str>,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base_url", &self.base_url)
            .field("as_user", &self.token.is_some())
            .finish()
    }
}

impl Api {
    /// With a fresh HTTP client ([`Api::default_http`]).
    pub fn new(base_url: &str) -> Api {
        Api::with_http(Api::default_http(), base_url)
    }

    /// With `http`, so its pool and timeouts are shared with other callers.
    pub fn with_http(http: reqwest::Client, base_url: &str) -> Api {
        Api {
            http,
            base_url: base_url.trim_end_matches('/').into(),
            token: None,
        }
    }

    /// 10 s per request, 64 idle connections per host.
    pub fn default_http() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .expect("an HTTP client without TLS always builds")
    }

    /// The same API, calling with `token` as a bearer.
    pub fn as_user(&self, token: &str) -> Api {
        Api {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        urls::join(&self.base_url, path)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`; a success status is the body as `T`, any other an [`Error::Api`].
    async fn finish<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T> {
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            return Err(Error::api(status.as_u16(), &String::from_utf8_lossy(&body)));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Like [`Api::finish`] for answers without a body (204).
    async fn finish_empty(request: reqwest::RequestBuilder) -> Result<()> {
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Error::api(status.as_u16(), &body));
        }
        Ok(())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Self::finish(self.request(Method::GET, path)).await
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        Self::finish(self.request(method, path).json(body)).await
    }

    /// Any call, untyped: the status and the body's text, whatever they are. For tests of
    /// the refusals themselves; everything else has a typed method.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String)> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    // The registry.

    /// `GET /api/v1/socket-server`: the socket server to connect to.
    pub async fn assign(&self) -> Result<Assignment> {
        self.get(urls::ASSIGN).await
    }

    /// `GET /api/v1/socket-servers`.
    pub async fn servers(&self) -> Result<ServerList> {
        self.get(urls::SERVERS).await
    }

    /// `POST /api/v1/dev/token` (dev mode only; `dev_mode_disabled` otherwise).
    pub async fn dev_token(&self, user_id: &str) -> Result<DevTokenResponse> {
        // The id as given, unchecked: tests use this client to send what a server must refuse.
        let body = serde_json::json!({ "user_id": user_id });
        self.send(Method::POST, urls::DEV_TOKEN, &body).await
    }

    /// A token for `user_id`: minted with the shared `secret` when given, otherwise from the
    /// dev endpoint (dev mode).
    pub async fn token(
        &self,
        user_id: &str,
        secret: Option<&[u8]>,
        ttl: chrono::Duration,
    ) -> Result<String> {
        match secret {
            Some(secret) => mint_token(secret, user_id, ttl),
            None => Ok(self.dev_token(user_id).await?.token),
        }
    }

    /// Assigns a server and connects to it with `token`; ready once `hello` arrived.
    pub async fn connect(&self, token: &str) -> Result<Connection> {
        let assignment = self.assign().await?;
        Connection::connect(&assignment.url, token).await
    }

    // The message service; every call needs [`Api::as_user`].

    /// `POST /api/v1/conversations`.
    pub async fn create(&self, body: &CreateConversation) -> Result<Conversation> {
        self.send(Method::POST, urls::CONVERSATIONS, body).await
    }

    /// The caller's direct conversation with `other` (created, or the existing one).
    pub async fn create_direct(&self, other: &str) -> Result<Conversation> {
        self.create(&CreateConversation {
            kind: "direct".into(),
            name: None,
            members: vec![other.to_owned()],
        })
        .await
    }

    /// A new group named `name` of the caller (its owner) and `members`.
    pub async fn create_group<I, S>(&self, name: &str, members: I) -> Result<Conversation>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.create(&CreateConversation {
            kind: "group".into(),
            name: Some(name.to_owned()),
            members: members.into_iter().map(Into::into).collect(),
        })
        .await
    }

    /// `GET /api/v1/conversations`: the caller's conversations.
    pub async fn conversations(&self) -> Result<Vec<ConversationSummary>> {
        let list: ConversationList = self.get(urls::CONVERSATIONS).await?;
        Ok(list.conversations)
    }

    /// One page of history: at most `limit` (the service caps it at 1000) messages with
    /// `seq > after_seq`, ascending.
    pub async fn history(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>> {
        let page: MessagePage = self
            .get(&urls::history(conversation_id, after_seq, limit))
            .await?;
        Ok(page.messages)
    }

    /// The whole history after `after_seq`, following pages.
    pub async fn history_all(
        &self,
        conversation_id: &str,
        after_seq: u64,
    ) -> Result<Vec<StoredMessage>> {
        let mut all = Vec::new();
        let mut after = after_seq;
        loop {
            let page = self.history(conversation_id, after, HISTORY_PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(all);
            };
            after = u64::try_from(last.seq).unwrap_or(0).max(after + 1);
            all.extend(page);
        }
    }

    /// `GET /api/v1/presence` of 1-500 users (the caller, and users sharing a conversation
    /// with the caller).
    pub async fn presence<S: AsRef<str>>(&self, users: &[S]) -> Result<Vec<Presence>> {
        let list: PresenceList = self.get(&urls::presence(users)).await?;
        Ok(list.presence)
    }

    /// Adds `user_id` to a group (its owner and admins); answers the group.
    pub async fn add_member(&self, conversation_id: &str, user_id: &str) -> Result<Conversation> {
        // The id as given, unchecked (see `dev_token`).
        let body = serde_json::json!({ "user_id": user_id });
        self.send(Method::POST, &urls::members(conversation_id), &body)
            .await
    }

    /// Removes `user_id` from a group (the caller's own id: leaves it).
    pub async fn remove_member(&self, conversation_id: &str, user_id: &str) -> Result<()> {
        Self::finish_empty(self.request(Method::DELETE, &urls::member(conversation_id, user_id)))
            .await
    }

    /// The owner names (`Admin`) or unnames (`Member`) an admin; answers the group.
    pub async fn set_role(
        &self,
        conversation_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<Conversation> {
        self.send(
            Method::PUT,
            &urls::member_role(conversation_id, user_id),
            &SetRole { role },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_on_the_base() {
        let api = Api::new("http://127.0.0.1:8080/");
        assert_eq!(api.base_url(), "http://127.0.0.1:8080");
        assert_eq!(
            api.url(urls::ASSIGN),
            "http://127.0.0.1:8080/api/v1/socket-server"
        );
        assert!(format!("{api:?}").contains("as_user: false"));
        let alice = api.as_user("secret-token");
        let shown = format!("{alice:?}");
        assert!(shown.contains("as_user: true") && !shown.contains("secret-token"));
    }

    #[test]
    fn minted_tokens_verify() {
        let token = mint_token(b"secret", "alice", chrono::Duration::hours(1)).unwrap();
        assert_eq!(TokenKeys::new(b"secret").verify(&token).unwrap(), "alice");
        assert!(matches!(
            mint_token(b"secret", "bad id", chrono::Duration::hours(1)),
            Err(Error::Token(_))
        ));
    }
}
