//! One owner of "this socket server is alive" (issue 25 item 2): the directory. A server the
//! directory lists keeps its link to the managers (its topic and routes) with no heartbeat of
//! its own to them; once the directory drops it (a health checker's eviction), the managers'
//! janitor reaps its routes (and, where the broker allows, its topic) within a bound; and a
//! server that comes back registers again, links again and re-reports its users, so its routes
//! return. Runs the manager on port 0 against the test binary's shared Redis, PostgreSQL and
//! broker, the directory written the way the registry and the health checker write it.

// Tests and tools spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use switchboard_chat_state::presence::ServerMap;
use switchboard_config::names::SB_HANDLER_TTL_MS;
use switchboard_protocol::internal::{
    RenewRequest, ServerBatch, ServerBatchReply, ServerItem, ServerRegistration,
};
use switchboard_protocol::registry::{Registration, CLUSTER_SECRET_HEADER};
use switchboard_redis::SentinelRedis;
use switchboard_server_directory::ServerDirectory;
use switchboard_test_support::shared::{self, CLUSTER_SECRET};

/// How long a server may be missing from the directory before it is reaped, here.
const GRACE_MS: u64 = 1_000;

struct TestApp {
    manager: String,
    http: reqwest::Client,
    /// The directory, as the registry and the health checkers write it.
    directory: ServerDirectory,
    /// The managers' routes, read as the managers read them.
    servers: ServerMap,
}

async fn spawn_apps(name: &str) -> TestApp {
    // Log lines for the test; no span exporter here, so nothing to hold until exit.
    let _ = switchboard_service_kit::telemetry::init("membership-test");
    let grace = GRACE_MS.to_string();
    let apps = common::spawn_apps(name, &[(SB_HANDLER_TTL_MS, grace.as_str())]).await;
    TestApp {
        manager: apps.manager,
        http: apps.http,
        directory: ServerDirectory::new(SentinelRedis::new(shared::redis_config(
            "health-checker",
            &apps.id,
        ))),
        servers: ServerMap::new(
            SentinelRedis::new(shared::redis_config("socket-manager", &apps.id)),
            60_000,
            GRACE_MS as i64,
        ),
    }
}

impl TestApp {
    /// Registers `server` in the directory, as the registry does for a socket server.
    async fn join_directory(&self, server: &str) {
        let registration = Registration {
            server_id: switchboard_protocol::ServerId::parse(server).unwrap(),
            url: format!("ws://{server}.test/ws"),
            health_url: format!("http://{server}.test/live"),
            max_connections: 1_000,
        };
        let now = chrono::Utc::now().timestamp_millis();
        self.directory
            .register(&registration, 0, now)
            .await
            .expect("registered in the directory");
    }

    /// Links `server` to the managers; the status answered.
    async fn link(&self, server: &str) -> u16 {
        self.http
            .post(format!("{}/internal/v1/handlers", self.manager))
            .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
            .json(&ServerRegistration {
                server_id: switchboard_protocol::ServerId::parse(server).unwrap(),
            })
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Reports a device of `user` connected on `server`; the batch's status.
    async fn connect(&self, server: &str, user: &str) -> u16 {
        let resp = self
            .http
            .post(format!(
                "{}/internal/v1/handlers/{server}/batch",
                self.manager
            ))
            .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
            .json(&ServerBatch {
                // As the wire has it (the id's Rust type is being made typed).
                items: vec![serde_json::from_value::<ServerItem>(serde_json::json!({
                    "kind": "connected",
                    "connection_id": 1,
                    "user_id": user,
                }))
                .unwrap()],
            })
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if status == 200 {
            let reply: ServerBatchReply = resp.json().await.unwrap();
            assert_eq!(reply.replies, [None]);
        }
        status
    }

    /// Whether `user` is routed to `server` and `server` is linked (has a topic).
    async fn routed(&self, server: &str, user: &str) -> (bool, bool) {
        let routes = self.servers.servers_for(&[user.to_owned()]).await.unwrap();
        let linked = self.servers.registered_servers().await.unwrap();
        (
            routes.contains_key(server),
            linked.iter().any(|s| s == server),
        )
    }
}

async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No second heartbeat: a server the directory lists, linked once and never heard from by the
/// managers again, keeps its routes well past the managers' grace (it used to lose them when
/// a liveness key at the managers, renewed only by a heartbeat to them, expired). Once the
/// directory drops it, as a health checker's eviction does, its routes and its link go
/// within a bound; a register then links it again and re-reported users are routed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_alone_keeps_a_server_linked_and_its_eviction_reaps_it() {
    let app = spawn_apps("one-membership").await;
    let server = "socket-one-membership";
    app.join_directory(server).await;
    assert_eq!(app.link(server).await, 200);
    assert_eq!(app.connect(server, "alice").await, 200);
    assert_eq!(app.routed(server, "alice").await, (true, true));

    // Four graces with no heartbeat to the managers: still linked, still routed, and its
    // batches answered.
    tokio::time::sleep(Duration::from_millis(4 * GRACE_MS)).await;
    assert_eq!(
        app.routed(server, "alice").await,
        (true, true),
        "a server the directory lists is not reaped for want of a heartbeat to the managers"
    );
    assert_eq!(app.connect(server, "bob").await, 200);

    // The health checker's eviction: the directory entry goes; routes and link follow within
    // the grace plus a sweep or two.
    let evicted_at = Instant::now();
    assert!(app
        .directory
        .remove(&server.parse().unwrap())
        .await
        .unwrap());
    let reaped = eventually(Duration::from_millis(5 * GRACE_MS), || async {
        app.routed(server, "alice").await == (false, false)
    })
    .await;
    assert!(reaped, "the evicted server's routes were reaped");
    let took = evicted_at.elapsed();
    assert!(
        took >= Duration::from_millis(GRACE_MS),
        "not before the grace (a failover may have lost the entry): {took:?}"
    );
    assert!(app.routed(server, "bob").await == (false, false));

    // It was only paused: it finds itself gone from the directory, registers again, links
    // again and re-reports its users.
    app.join_directory(server).await;
    assert_eq!(app.link(server).await, 200);
    let resp = app
        .http
        .post(format!(
            "{}/internal/v1/handlers/{server}/renew",
            app.manager
        ))
        .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
        .json(&RenewRequest {
            users: vec!["alice".into(), "bob".into()],
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.routed(server, "alice").await, (true, true));
    assert_eq!(app.routed(server, "bob").await, (true, true));
    // And stays: it is in the directory again.
    tokio::time::sleep(Duration::from_millis(3 * GRACE_MS)).await;
    assert_eq!(app.routed(server, "alice").await, (true, true));
}

/// A server absent from the directory only for a moment (re-registering after a failover
/// lost its entry) is not reaped; a deregistration reaps at once, directory or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brief_absence_is_not_reaped_and_a_deregistration_reaps_at_once() {
    let app = spawn_apps("brief-absence").await;
    let server = "socket-brief-absence";
    app.join_directory(server).await;
    assert_eq!(app.link(server).await, 200);
    assert_eq!(app.connect(server, "carol").await, 200);
    assert!(app
        .directory
        .remove(&server.parse().unwrap())
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(GRACE_MS * 2 / 5)).await;
    app.join_directory(server).await;
    tokio::time::sleep(Duration::from_millis(3 * GRACE_MS)).await;
    assert_eq!(
        app.routed(server, "carol").await,
        (true, true),
        "absent for less than the grace"
    );

    let resp = app
        .http
        .delete(format!("{}/internal/v1/handlers/{server}", app.manager))
        .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(app.routed(server, "carol").await, (false, false));
    // The heartbeat route, kept for older servers, renews nothing and says it is unlinked.
    let resp = app
        .http
        .post(format!(
            "{}/internal/v1/handlers/{server}/heartbeat",
            app.manager
        ))
        .header(CLUSTER_SECRET_HEADER, CLUSTER_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
