//! A session's token after the upgrade (docs/protocol.md, "Token lifetime"), against real
//! processes of the fast tier: the message service, two socket managers and the registry
//! in-process beside two socket servers (`Application::build` on port 0), the test binary's
//! shared Redis, PostgreSQL and broker. Clients are real WebSockets.
//!
//! - An expiring token gets `token_expiring`, then the connection is closed with 4401.
//! - A `refresh` with a fresh token of the same user keeps it open past the old `exp`; one
//!   of another user is `forbidden`, a bad one `unauthorized`, and neither changes anything.
//! - The end-sessions route closes every socket of a user on both servers within a second
//!   (4403), another user's stay open; the old token is then refused at the upgrade and in a
//!   refresh, and a token issued after the mark works.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_config::names::{SB_MANAGER_ID, SB_SERVER_ID};
use switchboard_protocol::registry::{CLUSTER_SECRET_HEADER, CLUSTER_SERVICE_HEADER};
use switchboard_protocol::sessions::{end_sessions_path, SessionsEnded};
use switchboard_protocol::token::{path_segment, Claims, TokenKeys};
use switchboard_protocol::UserId;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_test_support::shared;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The cluster: two managers, two socket servers (the first sends through the managers in
/// order, the second in the other order).
struct Cluster {
    managers: Vec<String>,
    /// `ws://…/ws` of each socket server.
    sockets: Vec<String>,
    /// `http://…` of each socket server's operations port.
    ops: Vec<String>,
    http: reqwest::Client,
}

async fn cluster(name: &str) -> Cluster {
    shared::warm_up();
    let id = shared::unique(name);
    let messages = common::spawn_message_service(&id).await;
    let mut managers = Vec::new();
    for n in 0..2 {
        let vars =
            shared::manager_vars(&id, &messages).with(SB_MANAGER_ID, format!("manager-{id}-{n}"));
        managers.push(common::spawn_manager(vars).await);
    }
    let registry_url = common::spawn_registry(&id).await;

    let mut sockets = Vec::new();
    let mut ops = Vec::new();
    for (n, order) in [[0, 1], [1, 0]].into_iter().enumerate() {
        let urls: Vec<String> = order.iter().map(|i| managers[*i].clone()).collect();
        let config = shared::socket_server_vars(&id, &registry_url, &urls)
            .with(SB_SERVER_ID, format!("socket-{id}-{n}"))
            .config(
                socket_server::config::HELP_TABLES,
                socket_server::SocketServerConfig::from_lookup,
            );
        let app = socket_server::Application::build(config)
            .await
            .expect("the socket server builds");
        sockets.push(format!("ws://127.0.0.1:{}/ws", app.port()));
        ops.push(format!("http://127.0.0.1:{}", app.ops_port()));
        tokio::spawn(app.run_until_stopped(CancellationToken::new()));
    }
    let cluster = Cluster {
        managers,
        sockets,
        ops,
        // Idle connections are dropped after 1 s, before the servers' 5 s keep-alive closes
        // them: reusing one the server closed at that moment fails the request
        // (`IncompleteMessage`, seen once on a /metrics read in a full run).
        http: reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    };
    // Ready once registered, linked to a manager and assigned its topic.
    let deadline = Instant::now() + Duration::from_secs(30);
    for ops in &cluster.ops {
        loop {
            let resp = cluster
                .http
                .get(format!("{ops}/ready"))
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{ops} never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    cluster
}

fn keys() -> TokenKeys {
    TokenKeys::new(shared::JWT_SECRET.as_bytes())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token of `user` issued now, valid for `secs`.
fn token(user: &str, secs: i64) -> String {
    let now = now();
    keys().sign_claims(&Claims::new(user, now + secs, now))
}

async fn connect(socket: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{socket}?token={token}"))
        .await
        .expect("upgraded");
    assert_eq!(
        next_frame(&mut ws, Duration::from_secs(5)).await["type"],
        "hello"
    );
    ws
}

/// The upgrade's HTTP status when refused (panics when it is accepted).
async fn refused_status(socket: &str, token: &str) -> u16 {
    match tokio_tungstenite::connect_async(format!("{socket}?token={token}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => panic!("the upgrade was accepted"),
        Err(e) => panic!("the upgrade failed otherwise: {e}"),
    }
}

/// What ended a wait for a frame.
#[derive(Debug)]
enum Next {
    Frame(Value),
    Closed(Option<u16>),
}

/// The next text frame or the close, within `within` (panics on a timeout).
async fn next(ws: &mut Ws, within: Duration) -> Next {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("nothing within {within:?}"));
        match message {
            Some(Ok(WsMessage::Text(text))) => {
                return Next::Frame(serde_json::from_str(&text).unwrap())
            }
            Some(Ok(WsMessage::Close(close))) => {
                return Next::Closed(close.map(|c| u16::from(c.code)))
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Next::Closed(None),
        }
    }
}

async fn next_frame(ws: &mut Ws, within: Duration) -> Value {
    match next(ws, within).await {
        Next::Frame(frame) => frame,
        Next::Closed(code) => panic!("closed ({code:?}) instead of a frame"),
    }
}

/// The close code the server sends next, frames before it skipped.
async fn close_code(ws: &mut Ws, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Next::Closed(code) = next(ws, left).await {
            return code;
        }
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(WsMessage::Text(frame.to_string())).await.unwrap();
}

/// `ping` answered with `pong`: the connection is open and served.
async fn still_open(ws: &mut Ws) {
    send(ws, json!({"type": "ping"})).await;
    let frame = next_frame(ws, Duration::from_secs(5)).await;
    assert_eq!(frame["type"], "pong", "{frame}");
}

async fn metric(cluster: &Cluster, server: usize, name: &str) -> f64 {
    let text = cluster
        .http
        .get(format!("{}/metrics", cluster.ops[server]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("switchboard_{name} ")))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// `POST` of the end-sessions route on manager `n`, as the message service calls it; `user`
/// as given (the route must refuse text that is no user id).
async fn end_sessions(cluster: &Cluster, n: usize, user: &str) -> reqwest::Response {
    cluster
        .http
        .post(format!(
            "{}/internal/v1/users/{}/sessions/end",
            cluster.managers[n],
            path_segment(user)
        ))
        .header(CLUSTER_SERVICE_HEADER, "message-service")
        .header(CLUSTER_SECRET_HEADER, shared::CLUSTER_SECRET)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_noticed_then_closed_with_4401() {
    let cluster = cluster("token-expiry").await;
    // 5 s: the notice a tenth of that before `exp`.
    let exp = now() + 5;
    let mut ws = connect(&cluster.sockets[0], &token("alice", 5)).await;
    let frame = next_frame(&mut ws, Duration::from_secs(8)).await;
    assert_eq!(frame["type"], "token_expiring", "{frame}");
    let expires_at = chrono::DateTime::parse_from_rfc3339(frame["expires_at"].as_str().unwrap())
        .expect("RFC 3339");
    assert_eq!(expires_at.timestamp(), exp);
    assert!(now() <= exp, "the notice came before exp, not after it");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4401)
    );
    let late_ms = chrono::Utc::now().timestamp_millis() - exp * 1000;
    assert!(
        (-100..2_000).contains(&late_ms),
        "closed {late_ms} ms after exp"
    );
    assert_eq!(metric(&cluster, 0, "socket_token_expired_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_keeps_the_connection_past_the_old_exp_and_a_wrong_one_is_refused() {
    let cluster = cluster("token-refresh").await;
    let old_exp = now() + 4;
    let mut ws = connect(&cluster.sockets[0], &token("alice", 4)).await;

    // Another user's token: `forbidden`, and nothing changes.
    send(
        &mut ws,
        json!({"type": "refresh", "token": token("bob", 600)}),
    )
    .await;
    let frame = next_frame(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{frame}"
    );
    // A bad and an expired one: `unauthorized`.
    let expired = keys().sign_claims(&Claims::new("alice", now() - 60, now() - 120));
    for bad in ["not-a-jwt".to_owned(), expired] {
        send(&mut ws, json!({"type": "refresh", "token": bad})).await;
        let frame = next_frame(&mut ws, Duration::from_secs(3)).await;
        assert_eq!(frame["code"], "unauthorized", "{frame}");
    }

    let new_exp = now() + 600;
    send(
        &mut ws,
        json!({"type": "refresh", "token": token("alice", 600)}),
    )
    .await;
    let frame = next_frame(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(frame["type"], "token_refreshed", "{frame}");
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(frame["expires_at"].as_str().unwrap()).unwrap();
    assert!((expires_at.timestamp() - new_exp).abs() <= 1);

    // Past the old exp (and its notice time), answering pings: nothing but pongs.
    while now() <= old_exp + 2 {
        still_open(&mut ws).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    still_open(&mut ws).await;
    assert_eq!(metric(&cluster, 0, "socket_token_expired_total").await, 0.0);

    // A token that would close at once without the refresh: the same without one.
    let mut unrefreshed = connect(&cluster.sockets[0], &token("alice", 2)).await;
    assert_eq!(
        close_code(&mut unrefreshed, Duration::from_secs(5)).await,
        Some(4401)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_users_sessions_closes_them_on_every_server_within_a_second() {
    let cluster = cluster("end-sessions").await;
    let old = token("alice", 600);
    let bobs = token("bob", 600);
    let mut alice = Vec::new();
    let mut bob = Vec::new();
    for socket in &cluster.sockets {
        alice.push(connect(socket, &old).await);
        bob.push(connect(socket, &bobs).await);
    }
    alice.push(connect(&cluster.sockets[1], &old).await);

    // The route wants a cluster credential and a valid user id.
    let anonymous = cluster
        .http
        .post(format!(
            "{}{}",
            cluster.managers[0],
            end_sessions_path(&UserId::parse("alice").unwrap())
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(end_sessions(&cluster, 0, "not a user").await.status(), 400);

    let started = Instant::now();
    let resp = end_sessions(&cluster, 0, "alice").await;
    assert_eq!(resp.status(), 200);
    let ended: SessionsEnded = resp.json().await.unwrap();
    assert_eq!(ended.user_id, "alice");
    assert_eq!(ended.servers, 2);
    assert!((ended.ended_before - now()).abs() <= 1);
    for ws in &mut alice {
        let left = Duration::from_secs(1).saturating_sub(started.elapsed());
        assert_eq!(close_code(ws, left).await, Some(4403));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    for ws in &mut bob {
        still_open(ws).await;
    }
    assert_eq!(
        metric(&cluster, 0, "socket_sessions_ended_total").await,
        1.0
    );
    assert_eq!(
        metric(&cluster, 1, "socket_sessions_ended_total").await,
        2.0
    );

    // The old token is refused at the upgrade, on every server.
    for socket in &cluster.sockets {
        assert_eq!(refused_status(socket, &old).await, 401);
    }
    // A token issued after the mark (in a later second: `iat` counts whole seconds) works,
    // and the old token is refused in a refresh too.
    while now() <= ended.ended_before {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = connect(&cluster.sockets[1], &token("alice", 600)).await;
    still_open(&mut again).await;
    send(&mut again, json!({"type": "refresh", "token": old})).await;
    let frame = next_frame(&mut again, Duration::from_secs(3)).await;
    assert_eq!(frame["code"], "unauthorized", "{frame}");
    still_open(&mut again).await;
    // Ending them through the other manager reaches every server as well.
    let started = Instant::now();
    assert_eq!(end_sessions(&cluster, 1, "alice").await.status(), 200);
    assert_eq!(
        close_code(&mut again, Duration::from_secs(1)).await,
        Some(4403)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    for ws in &mut bob {
        still_open(ws).await;
    }
}
