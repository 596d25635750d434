//! The identity provider's JWKS over https: rustls, with a private CA given in
//! `SB_JWT_JWKS_CA_FILE`, against a real TLS server (`openssl s_server`) on loopback.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_service_kit::config::JwksSource;
use switchboard_service_kit::jwks;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA, and a certificate it signed for 127.0.0.1.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=switchboard test CA",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
}

/// `openssl s_server -WWW`: serves the files of `dir` over TLS.
struct TlsServer(Child);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, port: u16) -> TlsServer {
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-WWW",
            "-quiet",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    TlsServer(child)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "current_thread")]
async fn a_jwks_over_https_is_fetched_with_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    std::fs::write(
        dir.path().join("jwks.json"),
        include_str!("../../protocol/tests/fixtures/jwks.json"),
    )
    .unwrap();
    let port = free_port();
    let _server = serve(dir.path(), port);
    let url = format!("https://127.0.0.1:{port}/jwks.json");

    let trusted = JwksSource {
        url: url.clone(),
        refresh: Duration::from_secs(300),
        ca_file: Some(dir.path().join("ca.pem").display().to_string()),
    };
    let set = jwks::fetch(&jwks::client(&trusted).unwrap(), &url)
        .await
        .expect("the JWKS over https, trusted through the test CA");
    assert_eq!(set.keys.len(), 2);

    // Without the CA, the server's certificate is not trusted.
    let untrusted = JwksSource {
        ca_file: None,
        ..trusted
    };
    let refused = jwks::fetch(&jwks::client(&untrusted).unwrap(), &url).await;
    assert!(refused.is_err(), "{refused:?}");
}
