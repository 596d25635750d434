//! Attachments on a real S3-compatible store (Garage, started by the stack) and message
//! search, through nginx and the socket servers as a client uses them (issue 28 parts 2 and
//! 3; docs/protocol.md, "Attachments" and "Search").
//!
//! - `attachments_are_verified_before_the_message_is_acknowledged`: an upload through the
//!   pre-signed URL, then a send naming it is acknowledged and history carries it (with the
//!   image's width and height and a working download URL); the store itself refuses a wrong
//!   size on the signed URL; a send naming another conversation's attachment, one never
//!   uploaded, one replaced behind the service's back by an object of another size, or one
//!   whose URL expired before the upload is refused with its stable code and never
//!   numbered; a non-member gets no download URL; a decompression bomb (a PNG declaring
//!   20000 x 20000 pixels) is refused from its header and the service goes on.
//! - `search_covers_only_the_callers_conversations_and_pages`: a stranger's matching message
//!   never appears; results are ranked, highlighted and paged.

use std::time::Duration;

use reqwest::Method;
use rusty_s3::S3Action;
use serde_json::{json, Value};
use switchboard_config::names::{SB_ATTACHMENT_SWEEP_INTERVAL_SECS, SB_ATTACHMENT_URL_EXPIRY_SECS};
use switchboard_protocol::frames::ServerFrame;
use switchboard_protocol::ErrorCode;
use switchboard_test_support::{Stack, StackOptions};

use crate::client::{api, create_conversation, http, token_for, WsClient, WAIT};

/// Upload URLs live this long in this test (the expired-URL case waits it out).
const URL_EXPIRY_SECS: u64 = 3;

async fn attachment_stack() -> Stack {
    Stack::start(StackOptions {
        object_store: true,
        socket_servers: 1,
        registries: 1,
        health_checkers: 1,
        managers: 1,
        extra_env: vec![
            (
                SB_ATTACHMENT_URL_EXPIRY_SECS.into(),
                URL_EXPIRY_SECS.to_string(),
            ),
            // The sweeper must not race the test's own checks.
            (SB_ATTACHMENT_SWEEP_INTERVAL_SECS.into(), "3600".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap()
}

/// Asks for an upload URL: (status, answer).
async fn ticket(
    http: &reqwest::Client,
    stack: &Stack,
    token: &str,
    conversation: &str,
    filename: &str,
    content_type: &str,
    size: usize,
) -> (u16, Value) {
    api(
        http,
        stack,
        token,
        Method::POST,
        &format!("/api/v1/conversations/{conversation}/attachments"),
        Some(json!({"filename": filename, "content_type": content_type, "size": size})),
    )
    .await
}

/// PUTs `bytes` to a ticket's URL with its headers: the store's status.
async fn upload(http: &reqwest::Client, ticket: &Value, bytes: Vec<u8>) -> u16 {
    let mut request = http.put(ticket["upload_url"].as_str().unwrap());
    for (name, value) in ticket["upload_headers"].as_object().unwrap() {
        if name != "content-length" {
            request = request.header(name.as_str(), value.as_str().unwrap());
        }
    }
    request.body(bytes).send().await.unwrap().status().as_u16()
}

/// Sends a message naming `attachments` and answers the `sent` or `error` it got.
async fn send_with(
    ws: &mut WsClient,
    conversation: &str,
    client_msg_id: &str,
    attachments: &[&str],
) -> ServerFrame {
    // As JSON, the way any client writes it (the field is additive).
    ws.send_json(json!({
        "type": "send",
        "conversation_id": conversation,
        "client_msg_id": client_msg_id,
        "body": format!("files: {client_msg_id}"),
        "attachments": attachments,
    }))
    .await;
    loop {
        match ws.next_frame(WAIT).await {
            Some(frame @ ServerFrame::Sent { .. }) | Some(frame @ ServerFrame::Error { .. }) => {
                return frame
            }
            Some(_) => continue,
            None => panic!("no answer to {client_msg_id}"),
        }
    }
}

fn refused_with(frame: &ServerFrame, code: ErrorCode) {
    match frame {
        ServerFrame::Error {
            code: got,
            client_msg_id,
            message,
        } => {
            assert_eq!(*got, code, "refused with {got:?}: {message}");
            assert!(client_msg_id.is_some());
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A real RGB PNG of `width` x `height` whose image data is `rows` (zlib with stored blocks:
/// no compressor needed).
fn png(width: u32, height: u32, rows: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = rows.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in rows {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A 3 x 2 red image.
fn small_png() -> Vec<u8> {
    // Each row: filter byte 0, then three RGB pixels.
    let row = [0, 255, 0, 0, 255, 0, 0, 255, 0, 0];
    png(3, 2, &[row, row].concat())
}

/// A decompression bomb: it declares 20000 x 20000 RGB pixels (1.2 GB decoded) and carries
/// the first rows' data only; decoding it would allocate the whole frame.
fn bomb_png() -> Vec<u8> {
    png(20_000, 20_000, &vec![0u8; 60_001])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attachments_are_verified_before_the_message_is_acknowledged() {
    let stack = attachment_stack().await;
    let http = http();
    let (alice, bob, carol) = (
        token_for(&stack, "alice"),
        token_for(&stack, "bob"),
        token_for(&stack, "carol"),
    );
    let ab = create_conversation(
        &http,
        &stack,
        &alice,
        json!({"kind":"direct","members":["bob"]}),
    )
    .await;
    let ac = create_conversation(
        &http,
        &stack,
        &alice,
        json!({"kind":"direct","members":["carol"]}),
    )
    .await;
    let url = stack.socket_servers[0].ws_url();
    let mut ws = WsClient::connect(&url, &alice).await.unwrap();

    // Upload through the pre-signed URL, then send: acknowledged.
    let image = small_png();
    let (status, good) = ticket(
        &http,
        &stack,
        &alice,
        &ab,
        "red.png",
        "image/png",
        image.len(),
    )
    .await;
    assert_eq!(status, 201, "{good}");
    let good_id = good["attachment_id"].as_str().unwrap().to_owned();
    assert!(good["upload_url"]
        .as_str()
        .unwrap()
        .contains(&format!("c/{ab}/{good_id}")));
    // The signature covers the length: the store refuses a body of another size.
    let mut longer = image.clone();
    longer.push(0);
    assert_ne!(
        upload(&http, &good, longer).await,
        200,
        "a wrong size is refused by the store"
    );
    assert_eq!(upload(&http, &good, image.clone()).await, 200);
    let sent = send_with(&mut ws, &ab, "with-image", &[&good_id]).await;
    assert!(matches!(sent, ServerFrame::Sent { seq: 1, .. }), "{sent:?}");

    // History carries it, with the image's dimensions and a download URL that works.
    let messages = loop {
        let (status, page) = api(
            &http,
            &stack,
            &bob,
            Method::GET,
            &format!("/api/v1/conversations/{ab}/messages"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        if !page["messages"].as_array().unwrap().is_empty() {
            break page["messages"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attachment = &messages[0]["attachments"][0];
    assert_eq!(attachment["id"], good_id.as_str());
    assert_eq!(attachment["filename"], "red.png");
    assert_eq!(attachment["size"], image.len());
    assert_eq!(
        (attachment["width"].clone(), attachment["height"].clone()),
        (json!(3), json!(2))
    );
    let downloaded = http
        .get(attachment["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.status(), 200);
    assert_eq!(downloaded.bytes().await.unwrap().to_vec(), image);
    // The redirect route, for a member; a non-member gets no URL.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let path = format!(
        "{}/api/v1/conversations/{ab}/attachments/{good_id}",
        stack.nginx_url()
    );
    let redirect = no_redirect
        .get(&path)
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 302);
    assert!(redirect.headers()["location"]
        .to_str()
        .unwrap()
        .contains("X-Amz-Signature"));
    let stranger = no_redirect
        .get(&path)
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 403);
    let body: Value = stranger.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_a_member");
    let (status, body) = ticket(&http, &stack, &carol, &ab, "x.txt", "text/plain", 1).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("not_a_member"))
    );

    // Another conversation's attachment: refused, not numbered.
    let (_, other) = ticket(&http, &stack, &alice, &ac, "a.txt", "text/plain", 5).await;
    assert_eq!(upload(&http, &other, b"hello".to_vec()).await, 200);
    let other_id = other["attachment_id"].as_str().unwrap();
    refused_with(
        &send_with(&mut ws, &ab, "foreign", &[other_id]).await,
        ErrorCode::AttachmentNotFound,
    );

    // Never uploaded.
    let (_, missing) = ticket(&http, &stack, &alice, &ab, "m.txt", "text/plain", 5).await;
    let missing_id = missing["attachment_id"].as_str().unwrap();
    refused_with(
        &send_with(&mut ws, &ab, "missing", &[missing_id]).await,
        ErrorCode::AttachmentNotFound,
    );

    // Replaced behind the service's back by an object of another size (written with the
    // store's own key, as no client could).
    let (_, swapped) = ticket(&http, &stack, &alice, &ab, "s.txt", "text/plain", 5).await;
    assert_eq!(upload(&http, &swapped, b"hello".to_vec()).await, 200);
    let swapped_id = swapped["attachment_id"].as_str().unwrap();
    let store = stack.object_store.as_ref().unwrap();
    let bucket = rusty_s3::Bucket::new(
        store.endpoint().parse().unwrap(),
        rusty_s3::UrlStyle::Path,
        store.bucket.clone(),
        switchboard_test_support::object_store::REGION,
    )
    .unwrap();
    let credentials =
        rusty_s3::Credentials::new(store.access_key_id.clone(), store.secret_access_key.clone());
    let key = format!("c/{ab}/{swapped_id}");
    let put = bucket
        .put_object(Some(&credentials), &key)
        .sign(Duration::from_secs(60));
    let status = http
        .put(put)
        .header("content-type", "text/plain")
        .body("hello, longer")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    refused_with(
        &send_with(&mut ws, &ab, "swapped", &[swapped_id]).await,
        ErrorCode::AttachmentMismatch,
    );

    // An upload URL used after it expired: the store refuses it, and so does the send.
    let (_, late) = ticket(&http, &stack, &alice, &ab, "l.txt", "text/plain", 5).await;
    tokio::time::sleep(Duration::from_secs(URL_EXPIRY_SECS + 2)).await;
    // The socket answered no heartbeat while the test slept (the stack's fast timings close
    // such a client within 4 s): a new one.
    ws = WsClient::connect(&url, &alice).await.unwrap();
    let status = upload(&http, &late, b"hello".to_vec()).await;
    // Garage answers 400 (AWS S3 403): a refusal either way.
    assert!(
        (400..500).contains(&status),
        "an expired URL is refused: {status}"
    );
    let late_id = late["attachment_id"].as_str().unwrap();
    refused_with(
        &send_with(&mut ws, &ab, "late", &[late_id]).await,
        ErrorCode::AttachmentNotFound,
    );

    // A decompression bomb: refused from its header; the service goes on.
    let bomb = bomb_png();
    let (_, boom) = ticket(
        &http,
        &stack,
        &alice,
        &ab,
        "bomb.png",
        "image/png",
        bomb.len(),
    )
    .await;
    assert_eq!(upload(&http, &boom, bomb).await, 200);
    let boom_id = boom["attachment_id"].as_str().unwrap();
    refused_with(
        &send_with(&mut ws, &ab, "bomb", &[boom_id]).await,
        ErrorCode::AttachmentRefused,
    );
    // A type outside the allow-list never gets a URL.
    let (status, body) = ticket(&http, &stack, &alice, &ab, "x.html", "text/html", 10).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (422, json!("attachment_refused"))
    );

    // Nothing refused was numbered: the next plain message is seq 2, and it is stored.
    let sent = send_with(&mut ws, &ab, "plain", &[]).await;
    assert!(matches!(sent, ServerFrame::Sent { seq: 2, .. }), "{sent:?}");
    let ready = http
        .get(format!(
            "{}/ready",
            stack.message_service.as_ref().unwrap().url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_covers_only_the_callers_conversations_and_pages() {
    let stack = Stack::start(StackOptions {
        socket_servers: 1,
        registries: 1,
        health_checkers: 1,
        managers: 1,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let http = http();
    let (alice, carol) = (token_for(&stack, "alice"), token_for(&stack, "carol"));
    let ab = create_conversation(
        &http,
        &stack,
        &alice,
        json!({"kind":"direct","members":["bob"]}),
    )
    .await;
    let cd = create_conversation(
        &http,
        &stack,
        &carol,
        json!({"kind":"direct","members":["dave"]}),
    )
    .await;
    let url = stack.socket_servers[0].ws_url();
    let mut a = WsClient::connect(&url, &alice).await.unwrap();
    let mut c = WsClient::connect(&url, &carol).await.unwrap();
    for (i, body) in [
        "the quick brown fox",
        "lunch at noon?",
        "quick question about the report",
        "<script>alert(1)</script> quick",
    ]
    .iter()
    .enumerate()
    {
        a.send_message(&ab, &format!("a{i}"), body).await;
    }
    c.send_message(&cd, "c0", "quick quick quick: a stranger's secret")
        .await;
    let search = |token: String, query: String| {
        let http = http.clone();
        let stack = &stack;
        async move {
            api(
                &http,
                stack,
                &token,
                Method::GET,
                &format!("/api/v1/search?{query}"),
                None,
            )
            .await
        }
    };
    // Wait until ingest has stored everything (the store trails the log).
    let mut found = Value::Null;
    for _ in 0..200 {
        let (status, page) = search(alice.clone(), "q=quick&limit=50".into()).await;
        assert_eq!(status, 200, "{page}");
        let (_, theirs) = search(carol.clone(), "q=quick".into()).await;
        if page["results"].as_array().unwrap().len() == 3
            && theirs["results"].as_array().unwrap().len() == 1
        {
            found = page;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let results = found["results"].as_array().expect("alice's three matches");
    assert!(
        results.iter().all(|r| r["conversation_id"] == ab.as_str()),
        "{found}"
    );
    assert!(
        !found.to_string().contains("stranger"),
        "a stranger's message leaked: {found}"
    );
    // Highlights are segments; the matched word is marked, markup stays text.
    let highlight = results[0]["highlight"].as_array().unwrap();
    assert!(highlight
        .iter()
        .any(|s| s["match"] == true && s["text"].as_str().unwrap().eq_ignore_ascii_case("quick")));
    // Pages of one: three pages, then none.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            None => "q=quick&limit=1".to_owned(),
            Some(c) => format!("q=quick&limit=1&cursor={c}"),
        };
        let (status, page) = search(alice.clone(), query).await;
        assert_eq!(status, 200);
        let results = page["results"].as_array().unwrap();
        assert_eq!(results.len(), 1);
        seen.push(results[0]["message_id"].as_str().unwrap().to_owned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "every match once across pages");
    // One conversation: one's own, yes; a stranger's, refused.
    let (status, page) = search(alice.clone(), format!("q=lunch&conversation_id={ab}")).await;
    assert_eq!(
        (status, page["results"].as_array().unwrap().len()),
        (200, 1)
    );
    let (status, page) = search(alice.clone(), format!("q=quick&conversation_id={cd}")).await;
    assert_eq!(
        (status, page["error"]["code"].clone()),
        (403, json!("not_a_member"))
    );
    let (status, _) = search(alice.clone(), "q=".into()).await;
    assert_eq!(status, 400);
}
