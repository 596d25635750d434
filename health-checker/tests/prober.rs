//! The fast tier for the health checker: `Application::build` on port 0 with a short probe
//! interval, against the test binary's shared Redis (`switchboard_test_support::shared`), each
//! test under its own key prefix. Directory entries are written the way socket servers write
//! them (`ServerDirectory::register`), pointing at a closed port or at a tiny live server.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use health_checker::config::HELP_TABLES;
use health_checker::{Application, HealthCheckerConfig};
use switchboard_protocol::registry::Registration;
use switchboard_redis::SentinelRedis;
use switchboard_server_directory::ServerDirectory;
use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_test_support::free_port;
use switchboard_test_support::shared;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The checker for the test `id`, running until the test ends; its base URL.
async fn spawn_checker(id: &str) -> String {
    let config = shared::health_checker_vars(id, Duration::from_millis(100))
        .config(HELP_TABLES, HealthCheckerConfig::from_lookup);
    let app = Application::build(config)
        .await
        .expect("the health checker builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(CancellationToken::new()));
    url
}

/// A socket server's view of the directory under the test's prefix.
fn directory(id: &str) -> ServerDirectory {
    ServerDirectory::new(SentinelRedis::new(shared::redis_config(
        "socket-server",
        id,
    )))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn register(directory: &ServerDirectory, server_id: &str, health_url: &str) {
    let registration = Registration {
        server_id: switchboard_protocol::ServerId::parse(server_id).unwrap(),
        url: format!("ws://127.0.0.1:1/ws/{server_id}"),
        health_url: health_url.into(),
        max_connections: 100,
    };
    directory
        .register(&registration, 0, now_ms())
        .await
        .expect("registered");
}

/// A tiny HTTP server answering every request `200 ok`; its `/live` URL.
async fn live_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                // A probe sends one request; answer it and close.
                if socket.read(&mut buf).await.unwrap_or(0) > 0 {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}/live")
}

async fn ids(directory: &ServerDirectory) -> Vec<String> {
    let mut ids: Vec<String> = directory
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.server_id.into_string())
        .collect();
    ids.sort();
    ids
}

async fn wait_for_ids(directory: &ServerDirectory, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = ids(directory).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the directory holds {now:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_dead_server_is_evicted_and_a_live_one_is_kept() {
    let id = shared::unique("evict");
    let directory = directory(&id);
    let live = live_server().await;
    register(&directory, "alive", &live).await;
    let closed = format!("http://127.0.0.1:{}/live", free_port());
    register(&directory, "dead", &closed).await;
    assert_eq!(ids(&directory).await, ["alive", "dead"]);

    spawn_checker(&id).await;
    wait_for_ids(&directory, &["alive"]).await;
    // Several more rounds (100 ms apart): the live one stays.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ids(&directory).await, ["alive"]);
}

#[tokio::test]
async fn an_entry_without_a_health_url_is_evicted() {
    let id = shared::unique("no-health-url");
    let directory = directory(&id);
    register(&directory, "mute", "").await;
    spawn_checker(&id).await;
    wait_for_ids(&directory, &[]).await;
}

#[tokio::test]
async fn live_ready_and_metrics_answer() {
    let id = shared::unique("ready");
    let url = spawn_checker(&id).await;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = http
            .get(format!("{url}/ready"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live = http.get(format!("{url}/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("health_registered_servers"), "{metrics}");
}
