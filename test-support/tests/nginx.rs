//! nginx from the repository template, in front of a dummy (absent) upstream.

use switchboard_test_support::{free_port, Nginx};

#[tokio::test]
async fn serves_static_json_404_and_json_503() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = free_port(); // nothing listens there (nor on the second one)
    let nginx = Nginx::start(dir.path(), free_port(), &[upstream, free_port()])
        .await
        .unwrap();
    let http = reqwest::Client::new();

    let resp = http.get(format!("{}/", nginx.url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("Switchboard"));

    for path in [
        "/api/v1/nope",
        "/api/v1/nope.html",
        "/api/v1/socket-serverX",
    ] {
        let resp = http
            .get(format!("{}{path}", nginx.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/json",
            "{path}"
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(body["error"]["message"], "no such route");
    }

    // The registry upstream is down: nginx answers with the JSON error shape.
    let resp = http
        .get(format!("{}/api/v1/socket-server", nginx.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
}
