//! The object store's CORS rule (issue 28): the demo page, served by nginx, uploads to the
//! store's pre-signed URLs from another origin, so the stack's bucket must answer a browser's
//! preflight for the page's origin, and for no other. The stack sets the rule through
//! test-support's `object_store::put_bucket_cors`, the one place that writes it (the devstack
//! and compose's `garage-setup` set the same rule).
//!
//! - `store_answers_the_pages_preflight_and_refuses_other_origins`: a real upload ticket from
//!   the message service; the preflight (`OPTIONS`, `Origin`, `Access-Control-Request-Method:
//!   PUT`, `Access-Control-Request-Headers: content-type`) for nginx's origin, its localhost
//!   alias and an origin named by `SB_S3_CORS_ORIGINS` is allowed; a foreign origin's is
//!   refused (403, no allowed method, never its origin echoed); the upload itself with the page's `Origin` is allowed and
//!   exposes the `ETag`.

use reqwest::Method;
use serde_json::{json, Value};
use switchboard_config::names::SB_S3_CORS_ORIGINS;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{api, create_conversation, http, token_for};

const EXTRA_ORIGIN: &str = "https://chat.example.com";

/// The preflight a browser sends before the page's upload: (status, allowed origin, allowed
/// methods).
async fn preflight(
    http: &reqwest::Client,
    url: &str,
    origin: &str,
) -> (u16, Option<String>, String) {
    let response = http
        .request(Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    (
        response.status().as_u16(),
        header("access-control-allow-origin"),
        header("access-control-allow-methods").unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_answers_the_pages_preflight_and_refuses_other_origins() {
    let stack = Stack::start(StackOptions {
        object_store: true,
        socket_servers: 1,
        registries: 1,
        health_checkers: 1,
        managers: 1,
        extra_env: vec![(SB_S3_CORS_ORIGINS.into(), EXTRA_ORIGIN.into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let http = http();
    let alice = token_for(&stack, "alice");
    let conversation = create_conversation(
        &http,
        &stack,
        &alice,
        json!({"kind":"direct","members":["bob"]}),
    )
    .await;
    let (status, ticket): (u16, Value) = api(
        &http,
        &stack,
        &alice,
        Method::POST,
        &format!("/api/v1/conversations/{conversation}/attachments"),
        Some(json!({"filename": "a.txt", "content_type": "text/plain", "size": 5})),
    )
    .await;
    assert_eq!(status, 201, "{ticket}");
    let url = ticket["upload_url"].as_str().unwrap();

    let page = stack.nginx_url();
    let port = page.rsplit(':').next().unwrap();
    for origin in [
        page.clone(),
        format!("http://localhost:{port}"),
        EXTRA_ORIGIN.to_owned(),
    ] {
        let (status, allowed, methods) = preflight(&http, url, &origin).await;
        assert_eq!(status, 200, "preflight from {origin}");
        assert_eq!(allowed.as_deref(), Some(origin.as_str()), "from {origin}");
        assert!(methods.contains("PUT"), "from {origin}: methods {methods}");
    }

    // Another origin (or the page's host on another port) is refused: a browser fails a
    // preflight that is not 2xx, and no method is allowed. Garage puts a blanket
    // `Access-Control-Allow-Origin: *` on every S3 error (so pages can read error bodies),
    // never the asking origin.
    for origin in ["https://evil.example", "http://127.0.0.1:1"] {
        let (status, allowed, methods) = preflight(&http, url, origin).await;
        assert_eq!(status, 403, "preflight from {origin}");
        assert_ne!(allowed.as_deref(), Some(origin), "preflight from {origin}");
        assert!(methods.is_empty(), "from {origin}: methods {methods}");
    }

    // The upload itself, as the browser sends it after the preflight: the page may read the
    // answer and its ETag.
    let response = http
        .put(url)
        .header("origin", &page)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(
        header("access-control-allow-origin").as_deref(),
        Some(page.as_str())
    );
    assert!(
        header("access-control-expose-headers").is_some_and(|h| h.contains("etag")),
        "expose headers: {:?}",
        header("access-control-expose-headers")
    );
}
