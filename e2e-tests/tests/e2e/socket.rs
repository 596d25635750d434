//! The socket server's WebSocket contract: tokens before the upgrade, frames, heartbeat.

use std::time::Duration;

use serde_json::json;
use switchboard_config::names::{
    SB_ALLOWED_ORIGINS, SB_JWT_AUDIENCE, SB_JWT_ISSUER, SB_JWT_JWKS_URL, SB_JWT_SECRET,
};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::token::{Claims, TokenKeys};
use switchboard_protocol::ErrorCode;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{
    alice_and_bob, api, eventually, history_with, scores, sent_of, token_for, Connect, WsClient,
    WAIT,
};

async fn small_stack() -> Stack {
    Stack::start(StackOptions {
        socket_servers: 1,
        registries: 1,
        health_checkers: 1,
        ..StackOptions::without_messaging()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_401_before_the_upgrade() {
    let stack = small_stack().await;
    let url = stack.socket_servers[0].ws_url();
    let now = chrono::Utc::now().timestamp();
    let keys = stack.token_keys();
    let expired = keys.sign_claims(&Claims::new("alice", now - 60, now - 120));
    let wrongly_signed = TokenKeys::new(b"not-the-secret")
        .mint(
            &switchboard_protocol::UserId::parse("alice").unwrap(),
            chrono::Duration::hours(1),
        )
        .unwrap()
        .0;
    let cases = [
        ("missing", url.clone()),
        ("empty", format!("{url}?token=")),
        ("malformed", format!("{url}?token=not.a.jwt")),
        ("expired", format!("{url}?token={expired}")),
        ("wrongly signed", format!("{url}?token={wrongly_signed}")),
    ];
    for (what, attempt) in cases {
        match WsClient::try_connect(&attempt, None).await.unwrap() {
            Connect::Refused(status, body) => {
                assert_eq!(status, 401, "{what} token");
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized", "{what} token");
            }
            Connect::Open(_) => panic!("{what} token was accepted"),
        }
    }
    // A good token works both ways: query string and Authorization header.
    let token = token_for(&stack, "alice");
    match WsClient::try_connect(&url, Some(&token)).await.unwrap() {
        Connect::Open(client) => client.close().await,
        Connect::Refused(status, body) => panic!("bearer refused {status}: {body}"),
    }
    WsClient::connect(&url, &token).await.unwrap().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_connection_stays_usable() {
    let stack = small_stack().await;
    let url = stack.socket_servers[0].ws_url();
    let mut client = WsClient::connect(&url, &token_for(&stack, "alice"))
        .await
        .unwrap();
    assert!(client.ping_pong().await);

    for bad in [
        "not json at all",
        r#"{"type":"dance"}"#,
        r#"{"type":"send"}"#,
        r#"{"no_type":true}"#,
        r#"[1,2,3]"#,
    ] {
        client.send_text(bad).await;
        match client.next_frame(WAIT).await {
            Some(ServerFrame::Error { code, message, .. }) => {
                assert_eq!(code, ErrorCode::BadRequest, "for {bad}");
                assert!(!message.is_empty());
            }
            other => panic!("expected bad_request for {bad}, got {other:?}"),
        }
        assert!(client.ping_pong().await, "still usable after {bad}");
    }
    client.send_binary(vec![1, 2, 3]).await;
    assert!(matches!(
        client.next_frame(WAIT).await,
        Some(ServerFrame::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
    assert!(client.ping_pong().await);

    // A body over the configured limit is refused with too_large, tagged with its id.
    client
        .send_json(json!({"type":"send","conversation_id":"c","client_msg_id":"big","body":"x".repeat(70_000)}))
        .await;
    match client.next_frame(WAIT).await {
        Some(ServerFrame::Error {
            code,
            client_msg_id,
            ..
        }) => {
            assert_eq!(code, ErrorCode::TooLarge);
            assert_eq!(client_msg_id.as_deref(), Some("big"));
        }
        other => panic!("expected too_large, got {other:?}"),
    }
    assert!(client.ping_pong().await);

    // A frame over the frame cap closes the connection with 1009 after a too_large error.
    client.send_text(&"y".repeat(300 * 1024)).await;
    assert!(matches!(
        client.next_frame(WAIT).await,
        Some(ServerFrame::Error {
            code: ErrorCode::TooLarge,
            ..
        })
    ));
}

/// U+0000 is the one character PostgreSQL TEXT cannot store: a send carrying it would be
/// numbered and then poison ingest, so the edge refuses it (bad_request, with its
/// client_msg_id) before it is numbered. The REST side refuses it in stored names too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_the_database_cannot_store_is_refused_at_the_edge_and_never_numbered() {
    let stack = Stack::start(StackOptions {
        socket_servers: 1,
        registries: 1,
        health_checkers: 1,
        managers: 1,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let (http, alice_t, bob_t, conv) = alice_and_bob(&stack).await;
    let mut alice = WsClient::connect(&stack.socket_servers[0].ws_url(), &alice_t)
        .await
        .unwrap();

    alice.send_message(&conv, "nul", "a\u{0}b").await;
    let refused = |f: &ServerFrame| matches!(f, ServerFrame::Error { client_msg_id: Some(id), .. } if id == "nul");
    let frames = alice
        .collect_until(WAIT, |frames| frames.iter().any(refused))
        .await;
    match frames.into_iter().find(refused) {
        Some(ServerFrame::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("U+0000"), "{message}");
        }
        other => panic!("expected bad_request for the NUL body, got {other:?}"),
    }

    // The refused send took no seq: the next one in the conversation gets 1.
    alice.send_message(&conv, "ok", "ab").await;
    let frames = alice
        .collect_until(WAIT, |frames| sent_of(frames).contains_key("ok"))
        .await;
    assert_eq!(sent_of(&frames)["ok"].0, 1, "{frames:?}");
    let stored = history_with(&http, &stack, &bob_t, &conv, 1).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["body"], "ab");

    let (status, body) = api(
        &http,
        &stack,
        &alice_t,
        reqwest::Method::POST,
        "/api/v1/conversations",
        Some(json!({"kind": "group", "name": "a\u{0}b", "members": ["bob"]})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_by_the_heartbeat_and_scores_follow() {
    let stack = small_stack().await;
    let server = &stack.socket_servers[0];
    let talking = WsClient::connect(&server.ws_url(), &token_for(&stack, "talker"))
        .await
        .unwrap();
    // This client never reads again, so it never answers the server's pings.
    let silent = WsClient::connect(&server.ws_url(), &token_for(&stack, "silent"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            scores(&stack).await.get(&server.server_id) == Some(&2.0)
        })
        .await
    );
    // The talking client keeps answering pings (by reading) while the silent one times out.
    let mut talking = talking;
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    let mut dropped = false;
    while std::time::Instant::now() < deadline {
        assert!(talking.ping_pong().await, "the live client keeps working");
        if scores(&stack).await.get(&server.server_id) == Some(&1.0) {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(dropped, "silent client dropped: {:?}", scores(&stack).await);
    drop(silent);
}

/// With `SB_ALLOWED_ORIGINS` set, a browser page from another origin cannot open a WebSocket
/// (so a foreign page cannot ride a visitor's token); the allowed origin and non-browser
/// clients (no `Origin` header) can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_from_foreign_origins_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let stack = Stack::start(StackOptions {
        socket_servers: 1,
        registries: 1,
        health_checkers: 1,
        extra_env: vec![(SB_ALLOWED_ORIGINS.into(), "https://chat.example.com".into())],
        ..StackOptions::without_messaging()
    })
    .await
    .unwrap();
    let url = format!(
        "{}?token={}",
        stack.socket_servers[0].ws_url(),
        token_for(&stack, "alice")
    );
    let attempt = |origin: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut request = url.into_client_request().unwrap();
            if let Some(origin) = origin {
                request
                    .headers_mut()
                    .insert("origin", origin.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(request).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("connect failed: {e}"),
            }
        }
    };
    assert_eq!(attempt(Some("https://evil.example")).await, 403);
    assert_eq!(attempt(Some("https://chat.example.com")).await, 101);
    assert_eq!(attempt(None).await, 101, "not a browser: not checked");

    // The REST API (through nginx) grants CORS to the same origins only.
    let http = crate::client::http();
    let url = format!("{}/api/v1/socket-servers", stack.nginx_url());
    let grant = |resp: &reqwest::Response| {
        resp.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://chat.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        grant(&preflight).as_deref(),
        Some("https://chat.example.com")
    );
    let allowed = http
        .get(&url)
        .header("origin", "https://chat.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(grant(&allowed).as_deref(), Some("https://chat.example.com"));
    for method in [reqwest::Method::GET, reqwest::Method::OPTIONS] {
        let foreign = http
            .request(method.clone(), &url)
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap();
        assert_eq!(grant(&foreign), None, "{method} from a foreign origin");
    }
}

/// Serves `body` as JSON to every request on a loopback port (a stand-in identity provider's
/// JWKS endpoint); answers its URL.
async fn serve_json(body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

/// A team plugs in its identity provider: RS256/ES256 tokens verified with the provider's
/// JWKS, `iss` and `aud` enforced, on the WebSocket and on the REST API alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_provider_tokens_are_verified_with_its_jwks_and_policy() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let jwks_url = serve_json(include_str!("../../../protocol/tests/fixtures/jwks.json")).await;
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let stack = Stack::start(StackOptions {
        socket_servers: 1,
        extra_env: vec![
            env(SB_JWT_JWKS_URL, &jwks_url),
            env(SB_JWT_ISSUER, "https://idp.example.com/"),
            env(SB_JWT_AUDIENCE, "switchboard"),
            // The shared-secret mode: every service holds this secret, which must not verify.
            env(SB_JWT_SECRET, "an-hs256-secret-every-service-holds-0123"),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    let sign = |algorithm: Algorithm, kid: &str, sub: &str, iss: &str, aud: &str| {
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(include_bytes!(
                "../../../protocol/tests/fixtures/rsa-private.pem"
            ))
            .unwrap(),
            _ => EncodingKey::from_ec_pem(include_bytes!(
                "../../../protocol/tests/fixtures/ec-private.pem"
            ))
            .unwrap(),
        };
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.into());
        let claims = Claims {
            iss: Some(iss.into()),
            aud: Some(aud.into()),
            ..Claims::new(sub, now + 600, now)
        };
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let issuer = "https://idp.example.com/";
    let rs = sign(
        Algorithm::RS256,
        "rsa-1",
        "idp-alice",
        issuer,
        "switchboard",
    );
    let ws = stack.socket_servers[0].ws_url();
    // The keys load in the background at start.
    let connected = eventually(Duration::from_secs(10), || {
        let (ws, rs) = (ws.clone(), rs.clone());
        async move { WsClient::connect(&ws, &rs).await.is_ok() }
    })
    .await;
    assert!(
        connected,
        "an RS256 token from the provider opens a WebSocket"
    );

    // REST through nginx takes an ES256 token of the same provider.
    let es = sign(Algorithm::ES256, "ec-1", "idp-bob", issuer, "switchboard");
    let http = crate::client::http();
    let (status, body) = api(
        &http,
        &stack,
        &es,
        reqwest::Method::GET,
        "/api/v1/conversations",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Another audience or issuer, or a key the provider does not publish: 401 before the
    // upgrade, with the reason.
    for (token, reason) in [
        (
            sign(Algorithm::RS256, "rsa-1", "idp-eve", issuer, "another-app"),
            "audience",
        ),
        (
            sign(
                Algorithm::RS256,
                "rsa-1",
                "idp-eve",
                "https://evil.example.com/",
                "switchboard",
            ),
            "issuer",
        ),
        (
            sign(Algorithm::RS256, "rsa-9", "idp-eve", issuer, "switchboard"),
            "wrongly signed",
        ),
    ] {
        match WsClient::try_connect(&format!("{ws}?token={token}"), None)
            .await
            .unwrap()
        {
            Connect::Refused(status, body) => {
                assert_eq!(status, 401, "{body}");
                assert!(body.contains(reason), "{reason}: {body}");
            }
            Connect::Open(_) => panic!("a token naming {reason} was accepted"),
        }
        let (status, _) = api(
            &http,
            &stack,
            &token,
            reqwest::Method::GET,
            "/api/v1/conversations",
            None,
        )
        .await;
        assert_eq!(status, 401);
    }
    // HS256 tokens signed with the cluster's secret are refused with a JWKS (SB_JWT_HS256 is
    // auto: off), bare or with the right issuer and audience: the secret is in every
    // service, so it must not be able to forge a user's token.
    let secret = b"an-hs256-secret-every-service-holds-0123".to_vec();
    let bare = TokenKeys::new(&secret)
        .mint(
            &switchboard_protocol::UserId::parse("carol").unwrap(),
            chrono::Duration::minutes(5),
        )
        .unwrap()
        .0;
    let dressed = TokenKeys::with_policy(
        &secret,
        switchboard_protocol::token::TokenPolicy {
            issuer: Some(issuer.into()),
            audience: Some("switchboard".into()),
            ..Default::default()
        },
    )
    .mint(
        &switchboard_protocol::UserId::parse("carol").unwrap(),
        chrono::Duration::minutes(5),
    )
    .unwrap()
    .0;
    for token in [bare, dressed] {
        let (status, _) = api(
            &http,
            &stack,
            &token,
            reqwest::Method::GET,
            "/api/v1/conversations",
            None,
        )
        .await;
        assert_eq!(status, 401);
    }
}
