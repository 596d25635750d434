//! The broker over TLS: the real broker (tansu) behind stunnel, which terminates TLS with a
//! certificate from a test CA made at test time; tansu advertises stunnel's port, so every
//! connection librdkafka makes (bootstrap and the partition leader's) goes through TLS. The
//! services' producer and consumer settings ([`KafkaConfig`] with
//! `SB_KAFKA_SECURITY_PROTOCOL=ssl` and `SB_KAFKA_CA_FILE`) produce and consume one record;
//! trusting another CA is refused with an error naming `SB_KAFKA_CA_FILE`.
//!
//! SASL: a second broker requires client authentication (`tansu --authentication`, with a
//! SCRAM-SHA-512 user made by `tansu user create`), and the clients log in with `sasl_ssl` and
//! SCRAM-SHA-512 through the same TLS terminator; a wrong password is refused, naming the SASL
//! settings. tansu offers no PLAIN (its SASL handshake answers "no shared mechanism"), so
//! PLAIN is configured but not tested here (docs/deploy.md says so).

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use switchboard_config::lookup::from_pairs;
use switchboard_config::names::{
    SB_KAFKA_BROKERS, SB_KAFKA_CA_FILE, SB_KAFKA_SASL_MECHANISM, SB_KAFKA_SASL_PASSWORD,
    SB_KAFKA_SASL_USERNAME, SB_KAFKA_SECURITY_PROTOCOL,
};
use switchboard_kafka::KafkaConfig;
use switchboard_test_support::broker::tansu_path;
use switchboard_test_support::tls::TestCertificates;
use switchboard_test_support::{free_port, ManagedProcess};

/// The SASL user's password on the authenticating broker.
const PASSWORD: &str = "switchboard-test-scram-password";

fn config(vars: &[(&str, &str)]) -> KafkaConfig {
    KafkaConfig::from_lookup(&from_pairs(vars)).unwrap()
}

async fn wait_listening(port: u16, process: &ManagedProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline && process.is_running(),
            "{} did not listen on {port}:\n{}",
            process.name(),
            process.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// tansu on a port of its own, advertising `advertised` (stunnel's), and stunnel terminating
/// TLS on `advertised` in front of it. Dropping them stops both.
struct TlsBroker {
    /// tansu's own plain port (for `tansu user create`; clients use stunnel's).
    plain: u16,
    _tansu: ManagedProcess,
    _stunnel: ManagedProcess,
}

async fn start(
    dir: &Path,
    certs: &TestCertificates,
    name: &str,
    extra: &[&str],
) -> (TlsBroker, u16) {
    let (plain, tls) = (free_port(), free_port());
    let logs = dir.join("logs");
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let mut args = vec![
        "broker".to_owned(),
        "--listener-url".to_owned(),
        format!("tcp://127.0.0.1:{plain}"),
        "--advertised-listener-url".to_owned(),
        format!("tcp://127.0.0.1:{tls}"),
        "--storage-engine".to_owned(),
        // tansu drops one leading slash of the path, so an absolute path needs four.
        format!("sqlite:///{}", data.join("tansu.db").display()),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let tansu = ManagedProcess::spawn(
        &format!("{name}-tansu"),
        tansu_path(),
        &args,
        &[("RUST_LOG".to_owned(), "warn".to_owned())],
        &logs,
    )
    .unwrap();
    wait_listening(plain, &tansu).await;
    let conf = data.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\n\
             cert = {}\nkey = {}\n",
            certs.cert.display(),
            certs.key.display()
        ),
    )
    .unwrap();
    let stunnel =
        ManagedProcess::spawn(&format!("{name}-stunnel"), "stunnel4", &[&conf], &[], &logs)
            .unwrap();
    wait_listening(tls, &stunnel).await;
    (
        TlsBroker {
            plain,
            _tansu: tansu,
            _stunnel: stunnel,
        },
        tls,
    )
}

/// Creates `topic`, produces one record and consumes it back with the services' settings.
async fn round_trip(config: &KafkaConfig, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = config.producer_config(10_000).create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics over TLS");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    let producer: FutureProducer = config.producer_config(10_000).create().unwrap();
    producer
        .send(
            FutureRecord::to(topic).key("k").payload("over tls"),
            Duration::from_secs(10),
        )
        .await
        .expect("produced over TLS");

    let consumer: BaseConsumer = config.consumer_config("tls-test", 100).create().unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&partitions).unwrap();
    let record = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(message)) => return message.payload().map(<[u8]>::to_vec),
                Some(Err(e)) => panic!("consuming over TLS: {e}"),
                None if Instant::now() > deadline => return None,
                None => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(record.as_deref(), Some(&b"over tls"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_goes_through_tls_and_a_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::make(&dir.path().join("certs")).unwrap();
    let (_broker, port) = start(dir.path(), &certs, "ssl", &[]).await;
    let brokers = format!("127.0.0.1:{port}");
    let ca = certs.ca.display().to_string();
    let wrong_ca = certs.wrong_ca.display().to_string();

    let trusted = config(&[
        (SB_KAFKA_BROKERS, &brokers),
        (SB_KAFKA_SECURITY_PROTOCOL, "ssl"),
        (SB_KAFKA_CA_FILE, &ca),
    ]);
    let check = trusted.clone();
    tokio::task::spawn_blocking(move || check.check_connection(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the broker answers over TLS");
    round_trip(&trusted, "tls.round-trip").await;

    let wrong = config(&[
        (SB_KAFKA_BROKERS, &brokers),
        (SB_KAFKA_SECURITY_PROTOCOL, "ssl"),
        (SB_KAFKA_CA_FILE, &wrong_ca),
    ]);
    let refused =
        tokio::task::spawn_blocking(move || wrong.check_connection(Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap_err();
    assert!(refused.contains(SB_KAFKA_CA_FILE), "{refused}");
    eprintln!("a wrong CA: {refused}");

    // A plaintext client cannot talk to the TLS port at all.
    let plain = config(&[(SB_KAFKA_BROKERS, &brokers)]);
    let refused =
        tokio::task::spawn_blocking(move || plain.check_connection(Duration::from_secs(3)))
            .await
            .unwrap();
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_logs_in_with_scram_through_tls_and_a_wrong_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::make(&dir.path().join("certs")).unwrap();
    // The user, with its SCRAM-SHA-512 credential, made through a broker that does not ask
    // for authentication yet (one that does refuses the unauthenticated request); the
    // authenticating broker then starts on the same storage.
    {
        let (broker, _) = start(dir.path(), &certs, "sasl", &[]).await;
        let created = std::process::Command::new(tansu_path())
            .args([
                "user",
                "create",
                "switchboard",
                PASSWORD,
                "--mechanism",
                "scram512",
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", broker.plain)])
            .output()
            .unwrap();
        assert!(created.status.success(), "tansu user create: {created:?}");
    }
    let (_broker, port) = start(dir.path(), &certs, "sasl", &["--authentication"]).await;
    let brokers = format!("127.0.0.1:{port}");
    let ca = certs.ca.display().to_string();

    let sasl = config(&[
        (SB_KAFKA_BROKERS, &brokers),
        (SB_KAFKA_SECURITY_PROTOCOL, "sasl_ssl"),
        (SB_KAFKA_CA_FILE, &ca),
        (SB_KAFKA_SASL_MECHANISM, "SCRAM-SHA-512"),
        (SB_KAFKA_SASL_USERNAME, "switchboard"),
        (SB_KAFKA_SASL_PASSWORD, PASSWORD),
    ]);
    round_trip(&sasl, "sasl.round-trip").await;

    let wrong = config(&[
        (SB_KAFKA_BROKERS, &brokers),
        (SB_KAFKA_SECURITY_PROTOCOL, "sasl_ssl"),
        (SB_KAFKA_CA_FILE, &ca),
        (SB_KAFKA_SASL_MECHANISM, "SCRAM-SHA-512"),
        (SB_KAFKA_SASL_USERNAME, "switchboard"),
        (SB_KAFKA_SASL_PASSWORD, "not-the-password"),
    ]);
    let refused =
        tokio::task::spawn_blocking(move || wrong.check_connection(Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap_err();
    assert!(refused.contains(SB_KAFKA_SASL_PASSWORD), "{refused}");
    eprintln!("a wrong password: {refused}");
}
