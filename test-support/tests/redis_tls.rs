//! Redis and Sentinel over TLS: a real master, two replicas and three Sentinels with
//! `tls-port`s (and `tls-replication yes`, so the Sentinels name the master's TLS port), a test
//! CA made at test time, and [`SentinelRedis`] finding and using the master through the
//! Sentinels' TLS ports, as a service does with `SB_REDIS_TLS=true`. A client that trusts
//! another CA is refused, and the error (and `/ready`'s failing check) names
//! `SB_REDIS_TLS_CA_FILE`.

use std::time::Duration;

use switchboard_config::lookup::from_pairs;
use switchboard_config::names::{
    SB_REDIS_MASTER_NAME, SB_REDIS_PASSWORD, SB_REDIS_SENTINELS, SB_REDIS_SENTINEL_TLS,
    SB_REDIS_TLS, SB_REDIS_TLS_CA_FILE,
};
use switchboard_redis::{RedisConfig, SentinelRedis};
use switchboard_test_support::redis_cluster::{RedisTlsFiles, MASTER_NAME, REDIS_PASSWORD};
use switchboard_test_support::tls::TestCertificates;
use switchboard_test_support::RedisSentinelCluster;

fn config(sentinels: &str, vars: &[(&str, &str)]) -> RedisConfig {
    let mut all: Vec<(&str, &str)> = vec![
        (SB_REDIS_SENTINELS, sentinels),
        (SB_REDIS_MASTER_NAME, MASTER_NAME),
        (SB_REDIS_PASSWORD, REDIS_PASSWORD),
    ];
    all.extend_from_slice(vars);
    let config = RedisConfig::from_lookup(&from_pairs(&all)).unwrap();
    config
}

/// Asks until `redis` answers or `tries` seconds pass (the first resolve may race the
/// Sentinels' first look at the master); the last result.
async fn ping(redis: &SentinelRedis, tries: u32) -> Result<(), String> {
    let mut last = Err(String::new());
    for _ in 0..tries {
        last = redis.ping().await.map_err(|e| e.to_string());
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_is_reached_through_tls_sentinels_and_a_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::make(&dir.path().join("certs")).unwrap();
    let files = RedisTlsFiles {
        cert: certs.cert.clone(),
        key: certs.key.clone(),
        ca: certs.ca.clone(),
    };
    let cluster = RedisSentinelCluster::start_tls(dir.path(), &files)
        .await
        .unwrap();
    let sentinels = cluster.tls_sentinels_env();
    let ca = certs.ca.display().to_string();
    let wrong_ca = certs.wrong_ca.display().to_string();

    // Trusting the test CA: the Sentinels' TLS ports name the master's TLS port, and
    // commands run there (a plain connection to either would fail).
    let trusted = SentinelRedis::new(config(
        &sentinels,
        &[(SB_REDIS_TLS, "true"), (SB_REDIS_TLS_CA_FILE, &ca)],
    ));
    ping(&trusted, 20).await.expect("the master through TLS");
    let _: () = trusted
        .query(redis::cmd("SET").arg(trusted.key("tls")).arg("on"))
        .await
        .unwrap();
    let got: String = trusted
        .query(redis::cmd("GET").arg(trusted.key("tls")))
        .await
        .unwrap();
    assert_eq!(got, "on");
    (switchboard_service_kit::redis::readiness_check(&trusted))()
        .await
        .expect("ready");

    // Trusting another CA: refused, and the error says which setting to check.
    let wrong = SentinelRedis::new(config(
        &sentinels,
        &[(SB_REDIS_TLS, "true"), (SB_REDIS_TLS_CA_FILE, &wrong_ca)],
    ));
    let refused = ping(&wrong, 1).await.unwrap_err();
    assert!(refused.contains(SB_REDIS_TLS_CA_FILE), "{refused}");
    let not_ready = (switchboard_service_kit::redis::readiness_check(&wrong))()
        .await
        .unwrap_err();
    assert!(not_ready.contains(SB_REDIS_TLS_CA_FILE), "{not_ready}");

    // The public web roots alone do not know the test CA either.
    let public_roots = SentinelRedis::new(config(&sentinels, &[(SB_REDIS_TLS, "true")]));
    let refused = ping(&public_roots, 1).await.unwrap_err();
    assert!(refused.contains(SB_REDIS_TLS_CA_FILE), "{refused}");

    // TLS off toward TLS Sentinels: no answer, and no master.
    let plain = SentinelRedis::new(config(
        &sentinels,
        &[(SB_REDIS_SENTINEL_TLS, "false"), (SB_REDIS_TLS, "false")],
    ));
    assert!(ping(&plain, 1).await.is_err());
}
