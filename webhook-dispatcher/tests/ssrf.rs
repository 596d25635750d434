//! The SSRF guard through the real endpoint API: with only 127.0.0.1 allow-listed, an
//! endpoint on 127.0.0.1 is registered and every other internal destination (other loopback
//! addresses, 169.254.x, 10.x, 172.16.x, 192.168.x, IPv6 loopback and link-local, the
//! unspecified address, multicast) is refused with 400 `bad_request`, before any connection
//! is made. A refused name resolves to loopback. Registering nothing there, the test sends
//! no traffic anywhere but loopback.
//!
//! Needs the service binaries (see tests/delivery.rs).

mod common;

use common::{key_env, kv, webhooks_api, Sink};
use reqwest::Method;
use serde_json::json;
use switchboard_config::names::SB_WEBHOOK_ALLOW_NETS;
use switchboard_credentials::api_keys::{mint, Scope};
use switchboard_test_support::{Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_destinations_are_refused_unless_allow_listed() {
    let sink = Sink::start();
    let (key, entry) = mint("backend", vec![Scope::WebhooksManage], 0.0).unwrap();
    let stack = Stack::start(StackOptions {
        socket_servers: 1,
        registries: 1,
        health_checkers: 0,
        managers: 1,
        webhook_dispatcher: true,
        extra_env: vec![
            key_env(&[&entry]),
            kv(SB_WEBHOOK_ALLOW_NETS, "127.0.0.1/32"),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();

    let register = |url: String| {
        let stack = &stack;
        let key = &key;
        async move {
            webhooks_api(
                stack,
                Some(key),
                Method::POST,
                "/server/v1/webhooks",
                Some(json!({"url": url, "event_types": ["message.created"]})),
            )
            .await
        }
    };

    let (status, allowed) = register(sink.url("/hook")).await;
    assert_eq!(status, 201, "the allow-listed loopback address: {allowed}");

    for url in [
        "http://127.0.0.2:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://10.255.255.254:8080/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.1/hook",
        "http://[::1]:9/hook",
        "http://[fe80::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "http://0.0.0.0:9/hook",
        "http://224.0.0.1/hook",
        "ftp://127.0.0.1/hook",
        "http://user:pass@127.0.0.1:9/hook",
    ] {
        let (status, body) = register(url.to_owned()).await;
        assert_eq!(status, 400, "{url} was not refused: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{url}: {body}");
    }
    let (_, listed) =
        webhooks_api(&stack, Some(&key), Method::GET, "/server/v1/webhooks", None).await;
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 1, "{listed}");
    sink.stop().await;
}
