//! Abuse limits, with the production defaults a test stack otherwise turns off: per-address
//! rate limits on assignment and on WebSocket upgrades, a cap on one address's outstanding
//! slot reservations, and a cap on one user's devices per server. The flood comes from
//! 127.0.0.2 (still loopback), the real client from 127.0.0.1. And Redis itself: a password,
//! and a service with the wrong one says so.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use switchboard_config::names::{
    SB_ASSIGN_BURST_PER_IP, SB_ASSIGN_RATE_PER_IP, SB_CONNECTS_BURST_PER_IP,
    SB_CONNECTS_PER_IP_PER_SEC, SB_REDIS_PASSWORD, SB_REDIS_SENTINEL_PASSWORD, SB_REGISTRY_BIND,
    SB_RESERVATIONS_PER_IP,
};
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{assign, token_for, Connect, WsClient};

/// The defaults of the registry and the socket server (see their config docs).
fn production_limits() -> Vec<(String, String)> {
    [
        (SB_ASSIGN_RATE_PER_IP, "20"),
        (SB_ASSIGN_BURST_PER_IP, "100"),
        (SB_RESERVATIONS_PER_IP, "100"),
        (SB_CONNECTS_PER_IP_PER_SEC, "20"),
        (SB_CONNECTS_BURST_PER_IP, "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn flood_client() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Fires `total` GETs at `url` from 127.0.0.2, 64 at a time, spread over about `over`;
/// answers how many got each status.
async fn flood(url: &str, total: usize, over: Duration) -> std::collections::BTreeMap<u16, usize> {
    let http = flood_client();
    let started = Instant::now();
    let per_request = over.div_f64(total as f64);
    let statuses: Vec<u16> = futures_util::stream::iter(0..total)
        .map(|i| {
            let http = http.clone();
            let url = url.to_owned();
            async move {
                // Paced so the flood lasts `over` rather than finishing in a burst.
                let due = started + per_request * i as u32;
                tokio::time::sleep_until(due.into()).await;
                match http.get(&url).send().await {
                    Ok(resp) => resp.status().as_u16(),
                    Err(_) => 0,
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut counts = std::collections::BTreeMap::new();
    for status in statuses {
        *counts.entry(status).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_anonymous_assigns_leaves_a_real_client_a_server() {
    // 3 servers x 300 slots: 900 reservations would fill the cluster for 10 s.
    let stack = Stack::start(StackOptions {
        max_connections: 300,
        extra_env: production_limits(),
        ..StackOptions::without_messaging()
    })
    .await
    .unwrap();
    let url = format!("{}/api/v1/socket-server", stack.nginx_url());
    let counts = flood(&url, 20_000, Duration::from_secs(10)).await;
    println!("20,000 anonymous assigns from one address: {counts:?}");
    let assigned = counts.get(&200).copied().unwrap_or(0);
    let limited = counts.get(&429).copied().unwrap_or(0);
    // Two registries, each allowing one address 100 unexpired reservations (10 s each; the
    // flood outlasts the first ones by a little).
    assert!(assigned <= 400, "one address reserved {assigned} slots");
    assert!(
        limited >= 19_000,
        "the flood was refused with 429: {counts:?}"
    );
    assert_eq!(
        counts.get(&503),
        None,
        "the cluster never ran out: {counts:?}"
    );

    // A real client (another address) gets a server and connects, at once.
    let http = crate::client::http();
    let assignment = assign(&http, &stack)
        .await
        .expect("a real client is assigned");
    let mut client = WsClient::connect(&assignment.url, &token_for(&stack, "real-user"))
        .await
        .expect("and connects");
    assert!(client.ping_pong().await);

    // The refusal is the documented error (the bucket refills at 20/s meanwhile, so a short
    // burst finds it empty again).
    let flooder = flood_client();
    let mut refusal = None;
    for _ in 0..500 {
        let resp = flooder.get(&url).send().await.unwrap();
        if resp.status() == 429 {
            refusal = Some(resp.json::<serde_json::Value>().await.unwrap());
            break;
        }
    }
    let body = refusal.expect("a burst from one address is refused with 429");
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_floods_and_device_hoarding_are_refused_without_harming_others() {
    let stack = Stack::start(StackOptions {
        extra_env: production_limits(),
        ..StackOptions::without_messaging()
    })
    .await
    .unwrap();
    let server = &stack.socket_servers[0];
    let ws = server.ws_url();
    // Upgrade attempts from one address (plain GETs: the limit is checked before anything
    // else, so a refused one costs no signature check).
    let http_url = format!(
        "{}?token={}",
        ws.replacen("ws://", "http://", 1),
        token_for(&stack, "flooder")
    );
    let counts = flood(&http_url, 1_000, Duration::from_secs(2)).await;
    println!("1,000 upgrade attempts in 2 s from one address: {counts:?}");
    let limited = counts.get(&429).copied().unwrap_or(0);
    assert!(limited >= 800, "upgrade flood refused with 429: {counts:?}");

    // Another address connects normally meanwhile.
    let mut other = WsClient::connect(&ws, &token_for(&stack, "bystander"))
        .await
        .expect("another address connects");
    assert!(other.ping_pong().await);

    // One user may hold 10 devices on a server; the 11th is refused with 429.
    let token = token_for(&stack, "hoarder");
    let mut devices = Vec::new();
    for _ in 0..10 {
        devices.push(WsClient::connect(&ws, &token).await.expect("devices 1-10"));
    }
    match WsClient::try_connect(&format!("{ws}?token={token}"), None).await {
        Ok(Connect::Refused(status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert!(body.contains("rate_limited"), "{body}");
        }
        Ok(Connect::Open(_)) => panic!("an 11th device was accepted"),
        Err(e) => panic!("connect failed: {e}"),
    }
    // Leaving frees a place.
    devices.pop().unwrap().close().await;
    let freed = crate::client::eventually(Duration::from_secs(5), || {
        let (ws, token) = (ws.clone(), token.clone());
        async move { WsClient::connect(&ws, &token).await.is_ok() }
    })
    .await;
    assert!(freed, "a device may connect again once another left");
}

/// Redis and the Sentinels require a password (`requirepass`, in every test stack and the
/// local stack). A service given the wrong one stays unready and says why in its log,
/// naming the setting to fix; the right one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_the_wrong_redis_password_is_unready_and_says_why() {
    use switchboard_test_support::redis_cluster::REDIS_PASSWORD;
    use switchboard_test_support::{bin_path, free_port, ManagedProcess};

    let stack = Stack::start(StackOptions {
        socket_servers: 1,
        registries: 1,
        health_checkers: 1,
        ..StackOptions::without_messaging()
    })
    .await
    .unwrap();
    // Without credentials nobody gets in.
    let port = stack.redis.server_ports()[0];
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(mut conn) => redis::cmd("GET")
            .arg("sb:anything")
            .query_async::<Option<String>>(&mut conn)
            .await
            .is_err(),
    };
    assert!(refused, "Redis answers without a password");
    // Each service runs as its own ACL user: the system's keys only, nothing dangerous.
    {
        use switchboard_test_support::redis_cluster::{service_password, service_user};
        let user = service_user("registry");
        let mut conn = redis::Client::open(format!(
            "redis://{user}:{}@127.0.0.1:{port}/",
            service_password("registry")
        ))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the registry's ACL user logs in");
        let own: redis::RedisResult<()> = redis::cmd("SET")
            .arg("sb:server:acl-probe")
            .arg("1")
            .query_async(&mut conn)
            .await;
        assert!(own.is_ok(), "{user} writes the directory: {own:?}");
        for (what, cmd) in [
            (
                "another key space",
                redis::cmd("SET").arg("other:key").arg("1").clone(),
            ),
            (
                "another service's keys (a sequence lease)",
                redis::cmd("SET").arg("sb:lock:conv:x").arg("1").clone(),
            ),
            ("FLUSHALL", redis::cmd("FLUSHALL").clone()),
            (
                "CONFIG SET",
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory")
                    .arg("0")
                    .clone(),
            ),
        ] {
            let denied: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
            let err = denied.expect_err(what);
            assert!(
                err.to_string().contains("NOPERM"),
                "{user} must not run {what}: {err}"
            );
        }
    }

    // Least privilege between services (issue 24, item 12): the membership mirror the managers
    // authorize sends with is writable only by its owner, the message service; a socket
    // server (internet-facing) cannot touch it, nor any sequence key.
    {
        use switchboard_test_support::redis_cluster::{service_password, service_user};
        let login = |service: &'static str| {
            let url = format!(
                "redis://{}:{}@127.0.0.1:{port}/",
                service_user(service),
                service_password(service)
            );
            async move {
                redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap()
            }
        };
        let sadd = redis::cmd("SADD")
            .arg("sb:members:x")
            .arg("mallory")
            .clone();
        let mut owner = login("message-service").await;
        let written: redis::RedisResult<i64> = sadd.query_async(&mut owner).await;
        assert!(written.is_ok(), "the mirror's owner writes it: {written:?}");
        let mut manager = login("socket-manager").await;
        let read: redis::RedisResult<Vec<String>> = redis::cmd("SMEMBERS")
            .arg("sb:members:x")
            .query_async(&mut manager)
            .await;
        assert!(read.is_ok(), "a manager reads the mirror: {read:?}");
        let denied: redis::RedisResult<i64> = sadd.query_async(&mut manager).await;
        assert!(denied.is_err(), "a manager must not write the mirror");
        let mut socket = login("socket-server").await;
        for (what, cmd) in [
            ("write the mirror", sadd.clone()),
            (
                "read the mirror",
                redis::cmd("SMEMBERS").arg("sb:members:x").clone(),
            ),
            (
                "take a sequence lease",
                redis::cmd("SET").arg("sb:lock:conv:x").arg("1").clone(),
            ),
            ("move a counter", redis::cmd("INCR").arg("sb:seq:x").clone()),
        ] {
            let denied: redis::RedisResult<redis::Value> = cmd.query_async(&mut socket).await;
            let err = denied.expect_err(what);
            assert!(
                err.to_string().contains("NOPERM"),
                "a socket server must not {what}: {err}"
            );
        }
    }
    // The services' Sentinel user only asks where the master is: no credential a service holds
    // can point the cluster at another "master" (which would then get every password).
    {
        use switchboard_test_support::redis_cluster::{
            SENTINEL_CLIENT_PASSWORD, SENTINEL_CLIENT_USER,
        };
        let sentinel = stack.redis.sentinel_ports()[0];
        let mut conn = redis::Client::open(format!(
            "redis://{SENTINEL_CLIENT_USER}:{SENTINEL_CLIENT_PASSWORD}@127.0.0.1:{sentinel}/"
        ))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
        let master: redis::RedisResult<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(stack.redis.master_name())
            .query_async(&mut conn)
            .await;
        assert!(master.is_ok(), "{master:?}");
        for args in [
            vec!["MONITOR", "evil", "127.0.0.1", "1", "1"],
            vec!["REMOVE", stack.redis.master_name()],
            vec!["FAILOVER", stack.redis.master_name()],
            vec![
                "SET",
                stack.redis.master_name(),
                "down-after-milliseconds",
                "1",
            ],
        ] {
            let denied: redis::RedisResult<redis::Value> = redis::cmd("SENTINEL")
                .arg(&args)
                .query_async(&mut conn)
                .await;
            let err = denied.expect_err(args[0]);
            assert!(
                err.to_string().contains("NOPERM"),
                "SENTINEL {}: {err}",
                args[0]
            );
        }
    }

    let http = crate::client::http();
    for (name, redis_password, sentinel_password, setting) in [
        (
            "wrong-redis-pw",
            "not-the-password",
            REDIS_PASSWORD,
            SB_REDIS_PASSWORD,
        ),
        (
            "wrong-sentinel-pw",
            REDIS_PASSWORD,
            "not-the-password",
            SB_REDIS_SENTINEL_PASSWORD,
        ),
        ("right-pw", REDIS_PASSWORD, REDIS_PASSWORD, ""),
    ] {
        let port = free_port();
        let mut env = stack.service_env();
        env.extend([
            (SB_REGISTRY_BIND.to_owned(), format!("127.0.0.1:{port}")),
            (SB_REDIS_PASSWORD.to_owned(), redis_password.to_owned()),
            (
                SB_REDIS_SENTINEL_PASSWORD.to_owned(),
                sentinel_password.to_owned(),
            ),
        ]);
        let process = ManagedProcess::spawn(
            &format!("registry-{name}"),
            bin_path("registry"),
            &[] as &[&str],
            &env,
            stack.log_dir(),
        )
        .unwrap();
        let ready_url = format!("http://127.0.0.1:{port}/ready");
        let mut last = (0, String::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(resp) = http.get(&ready_url).send().await {
                last = (
                    resp.status().as_u16(),
                    resp.text().await.unwrap_or_default(),
                );
                if setting.is_empty() && last.0 == 200 {
                    break;
                }
                if !setting.is_empty() && last.0 == 503 && last.1.contains(setting) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if setting.is_empty() {
            assert_eq!(last.0, 200, "the right password is ready: {}", last.1);
            continue;
        }
        assert_eq!(last.0, 503, "{name}: {}", last.1);
        assert!(
            last.1.contains(setting),
            "{name}: /ready names {setting}: {}",
            last.1
        );
        let log = process.log_tail(50);
        assert!(
            log.contains("no Redis master reachable") && log.contains(setting),
            "{name}: the log says why and what to fix:\n{log}"
        );
    }
}
