//! PostgreSQL over TLS: a real server with `ssl=on` and a certificate from a test CA made at
//! test time. With `SB_POSTGRES_SSLMODE=verify-full` and the CA in `SB_POSTGRES_CA_FILE` the
//! URL the pools use ([`PostgresTls::apply`], what the message service and the webhook
//! dispatcher parse) connects over TLS; with another CA it is refused, the error naming
//! `SB_POSTGRES_CA_FILE`.

use sqlx::Connection;
use switchboard_config::lookup::from_pairs;
use switchboard_config::names::{SB_POSTGRES_CA_FILE, SB_POSTGRES_SSLMODE};
use switchboard_service_kit::tls::PostgresTls;
use switchboard_test_support::tls::TestCertificates;
use switchboard_test_support::{free_port, Postgres};

fn settings(vars: &[(&str, &str)]) -> PostgresTls {
    PostgresTls::from_lookup(&from_pairs(vars)).unwrap()
}

/// Connects to `url` and answers whether the session runs over TLS.
async fn session_uses_tls(url: &str) -> Result<bool, String> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| PostgresTls::explain(&e.to_string()))?;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(ssl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_with_the_ca_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::make(&dir.path().join("certs")).unwrap();
    let port = free_port();
    let pg = Postgres::start_tls(
        &dir.path().join("pg"),
        port,
        &dir.path().join("logs"),
        &certs.cert,
        &certs.key,
    )
    .await
    .unwrap();
    let url = pg.url();
    let ca = certs.ca.display().to_string();
    let wrong_ca = certs.wrong_ca.display().to_string();

    let verified = settings(&[
        (SB_POSTGRES_SSLMODE, "verify-full"),
        (SB_POSTGRES_CA_FILE, &ca),
    ]);
    assert_eq!(session_uses_tls(&verified.apply(&url)).await, Ok(true));
    // A CA file alone means verify-full.
    let ca_only = settings(&[(SB_POSTGRES_CA_FILE, &ca)]);
    assert!(ca_only.apply(&url).contains("sslmode=verify-full"));
    assert_eq!(session_uses_tls(&ca_only.apply(&url)).await, Ok(true));

    let wrong = settings(&[
        (SB_POSTGRES_SSLMODE, "verify-full"),
        (SB_POSTGRES_CA_FILE, &wrong_ca),
    ]);
    let refused = session_uses_tls(&wrong.apply(&url)).await.unwrap_err();
    assert!(refused.contains(SB_POSTGRES_CA_FILE), "{refused}");

    // Unset: the URL as given (sqlx's prefer), which still negotiates TLS here, unverified.
    assert_eq!(session_uses_tls(&settings(&[]).apply(&url)).await, Ok(true));
    let off = settings(&[(SB_POSTGRES_SSLMODE, "disable")]);
    assert_eq!(session_uses_tls(&off.apply(&url)).await, Ok(false));
}
