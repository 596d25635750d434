//! `docker-compose.yml` and the `Dockerfile` (the whole system in Docker, docs/compose.md).
//!
//! There is no Docker engine in CI, so these tests check what can be checked without one:
//! `docker-compose config` (the Debian package, installed by `scripts/install-deps.sh`) must
//! accept the file, and its fully resolved output must have every service, healthchecks on
//! all of them, a start order that waits for health, nginx as the only published port, a
//! scalable socket servers, registries and managers (nginx finding the registries through
//! Docker's DNS), Sentinels that monitor the master, Redis AUTH on every Redis and Sentinel
//! (the generated password from the `redis-secrets` volume, authenticated healthchecks),
//! per-service credentials from the one-shot `keys` service (no shared secret, the token
//! minting key in the registry's volume only), dev mode only with the demo override, and
//! register/deregister only on nginx's unpublished internal listener. The Dockerfile must be a
//! multi-stage build that copies every workspace member.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;
use switchboard_config::names::{
    PREFIX, SB_CLUSTER_SECRET, SB_DELETE_HANDLER_TOPICS, SB_DEV_MODE, SB_JWT_SECRET,
    SB_KAFKA_BROKERS, SB_KAFKA_IDEMPOTENCE, SB_LOG_FORMAT, SB_MANAGER_ID, SB_MANAGER_URLS,
    SB_REDIS_MASTER_NAME, SB_REDIS_PASSWORD, SB_REDIS_SENTINELS, SB_REDIS_USERNAME,
    SB_REGISTRY_URL, SB_SOCKET_BIND, SB_SOCKET_HEALTH_URL, SB_SOCKET_PUBLIC_URL,
};

/// Our services (the `switchboard:local` image), each with its `/ready` port.
const OURS: &[(&str, u16)] = &[
    ("registry", 8101),
    ("socket-manager", 8201),
    ("health-checker", 8301),
    ("message-service", 8401),
    // The operations port (/live, /ready, /metrics), not the public /ws one (9001).
    ("socket-server", 9101),
];

/// Everything else the system needs.
const INFRA: &[&str] = &[
    "redis-master",
    "redis-replica-1",
    "redis-replica-2",
    "sentinel-1",
    "sentinel-2",
    "sentinel-3",
    "kafka",
    "postgres",
    "nginx",
];

const SENTINELS: &[&str] = &["sentinel-1", "sentinel-2", "sentinel-3"];

/// The start order that must hold (service -> what it waits for, healthy).
const MUST_WAIT_FOR: &[(&str, &[&str])] = &[
    ("redis-replica-1", &["redis-master"]),
    ("redis-replica-2", &["redis-master"]),
    ("sentinel-1", &["redis-master"]),
    ("sentinel-2", &["redis-master"]),
    ("sentinel-3", &["redis-master"]),
    (
        "message-service",
        &["sentinel-1", "kafka", "postgres", "keys"],
    ),
    ("registry", &["sentinel-1", "keys"]),
    (
        "socket-manager",
        &["sentinel-1", "kafka", "message-service", "keys"],
    ),
    ("health-checker", &["sentinel-1", "keys"]),
    ("nginx", &["registry", "message-service"]),
    (
        "socket-server",
        &["sentinel-1", "kafka", "nginx", "socket-manager", "keys"],
    ),
];

/// The one-shot service that writes every service's credentials and exits.
const KEYS: &str = "keys";
/// Every one-shot job: `keys`, and the object store's (`garage-keys` generates its secrets and
/// the message service's S3 key, `garage-setup` makes the bucket and its CORS rule). They run
/// to completion before what depends on them starts, so they have no healthcheck.
const ONE_SHOTS: &[&str] = &[KEYS, "garage-keys", "garage-setup"];

/// Each of our services' credentials volume (the role it holds the secret of).
const ROLES: &[(&str, &str)] = &[
    ("registry", "registry"),
    ("socket-manager", "socket-manager"),
    ("health-checker", "health-checker"),
    ("message-service", "message-service"),
    ("socket-server", "socket-server"),
    ("webhook-dispatcher", "webhook-dispatcher"),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e-tests lives inside the workspace")
        .to_path_buf()
}

/// `docker-compose -f <repo>/docker-compose.yml config`, parsed. The caller's `SB_*` and
/// `COMPOSE_*` variables are removed so the defaults in the file are what is checked.
fn compose_config() -> Value {
    compose_config_of(&["docker-compose.yml"])
}

/// `docker-compose -f <file> -f <file> ... config`, parsed (see [`compose_config`]).
fn compose_config_of(files: &[&str]) -> Value {
    let root = repo_root();
    let mut cmd = Command::new("docker-compose");
    for file in files {
        cmd.arg("-f").arg(root.join(file));
    }
    cmd.arg("config").current_dir(&root);
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            if key.starts_with(PREFIX) || key.starts_with("COMPOSE_") {
                cmd.env_remove(key);
            }
        }
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`docker-compose` is not installed: run scripts/install-deps.sh \
             (it installs the Debian package docker-compose)"
        ),
        Err(e) => panic!("could not run docker-compose: {e}"),
    };
    assert!(
        out.status.success(),
        "`docker-compose config` rejected docker-compose.yml ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::from_slice(&out.stdout).expect("`docker-compose config` printed YAML")
}

fn service<'a>(config: &'a Value, name: &str) -> &'a Value {
    let svc = &config["services"][name];
    assert!(
        svc.is_mapping(),
        "docker-compose.yml has no service `{name}`"
    );
    svc
}

/// A scalar as text (compose prints numbers and booleans in several ways).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `environment` as a map, whether written as a mapping or as a `KEY=value` list.
fn environment(svc: &Value) -> BTreeMap<String, String> {
    match &svc["environment"] {
        Value::Mapping(m) => m
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v).unwrap_or_default())))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(|item| {
                let item = text(item)?;
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A service's command line (entrypoint + command) as one string.
fn command_line(svc: &Value) -> String {
    let mut parts = Vec::new();
    for key in ["entrypoint", "command"] {
        match &svc[key] {
            Value::Sequence(items) => parts.extend(items.iter().filter_map(text)),
            other => parts.extend(text(other)),
        }
    }
    parts.join(" ")
}

/// `(host source, container target)` of every bind mount, short or long syntax.
fn mounts(svc: &Value) -> Vec<(String, String)> {
    let Some(volumes) = svc["volumes"].as_sequence() else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|v| match v {
            Value::String(s) => {
                let mut it = s.split(':');
                Some((it.next()?.to_string(), it.next()?.to_string()))
            }
            Value::Mapping(_) => Some((text(&v["source"])?, text(&v["target"])?)),
            _ => None,
        })
        .collect()
}

/// `(published host port, container port)` of every port mapping, short or long syntax.
fn published_ports(svc: &Value) -> Vec<(Option<String>, String)> {
    let Some(ports) = svc["ports"].as_sequence() else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|p| match p {
            Value::Mapping(_) => (
                text(&p["published"]).filter(|s| !s.is_empty()),
                text(&p["target"]).unwrap_or_default(),
            ),
            other => {
                let spec = text(other).unwrap_or_default();
                let spec = spec.split('/').next().unwrap_or_default().to_string();
                let parts: Vec<&str> = spec.split(':').collect();
                match parts.as_slice() {
                    [target] => (None, target.to_string()),
                    [.., published, target] => (Some(published.to_string()), target.to_string()),
                    [] => (None, String::new()),
                }
            }
        })
        .collect()
}

#[test]
fn compose_file_is_valid_and_complete() {
    let config = compose_config();
    let services = config["services"]
        .as_mapping()
        .expect("`services` is a mapping");
    let names: BTreeSet<String> = services.keys().filter_map(text).collect();

    // Every required service exists.
    let required: Vec<&str> = OURS
        .iter()
        .map(|(n, _)| *n)
        .chain(INFRA.iter().copied())
        .collect();
    let missing: Vec<&&str> = required.iter().filter(|n| !names.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "services missing from docker-compose.yml: {missing:?}"
    );

    // Every service has a healthcheck (but the one-shot jobs, which exit); ours probe their
    // own /ready.
    for name in names.iter().filter(|n| !ONE_SHOTS.contains(&n.as_str())) {
        let hc = &service(&config, name)["healthcheck"];
        assert!(
            hc["test"].as_sequence().is_some_and(|t| !t.is_empty()) || text(&hc["test"]).is_some(),
            "service `{name}` has no healthcheck"
        );
        assert_ne!(
            hc["disable"],
            Value::Bool(true),
            "`{name}`: healthcheck disabled"
        );
    }
    for (name, port) in OURS {
        let svc = service(&config, name);
        let test: Vec<String> = match &svc["healthcheck"]["test"] {
            Value::Sequence(t) => t.iter().filter_map(text).collect(),
            other => text(other).into_iter().collect(),
        };
        let test = test.join(" ");
        assert!(
            test.contains("curl") && test.contains(&format!("localhost:{port}/ready")),
            "`{name}` should be checked with curl on localhost:{port}/ready, is: {test}"
        );
        assert_eq!(
            text(&svc["image"]).as_deref(),
            Some("switchboard:local"),
            "`{name}` image"
        );
        assert!(
            svc["build"].is_mapping(),
            "`{name}` should build the image (build: .)"
        );
    }

    // depends_on always waits for health (for a one-shot job: its successful exit), and the
    // start order holds.
    for name in &names {
        let deps = &service(&config, name)["depends_on"];
        match deps {
            Value::Null => {}
            Value::Mapping(m) => {
                for (dep, spec) in m {
                    let dep = text(dep).unwrap_or_default();
                    assert!(names.contains(&dep), "`{name}` depends on unknown `{dep}`");
                    let want = if ONE_SHOTS.contains(&dep.as_str()) {
                        "service_completed_successfully"
                    } else {
                        "service_healthy"
                    };
                    assert_eq!(
                        text(&spec["condition"]).as_deref(),
                        Some(want),
                        "`{name}` -> `{dep}` must use condition: {want}"
                    );
                }
            }
            other => panic!("`{name}`: depends_on must be a mapping with conditions: {other:?}"),
        }
    }
    for (name, deps) in MUST_WAIT_FOR {
        let have = &service(&config, name)["depends_on"];
        for dep in *deps {
            assert!(
                have[*dep].is_mapping(),
                "`{name}` must wait for `{dep}` to be healthy"
            );
        }
    }
    assert_acyclic(&config, &names);

    // nginx is the public entry point on 8080 and the only published port.
    let nginx = service(&config, "nginx");
    assert!(
        published_ports(nginx)
            .iter()
            .any(|(published, target)| published.as_deref() == Some("8080") && target == "80"),
        "nginx must publish 8080:80, has {:?}",
        published_ports(nginx)
    );
    for name in &names {
        let svc = service(&config, name);
        assert!(
            svc["container_name"].is_null(),
            "`{name}` must not fix a container_name"
        );
        // The credential generators need no network at all.
        if name != KEYS && name != "garage-keys" {
            assert!(
                svc["network_mode"].is_null(),
                "`{name}`: network_mode {:?}",
                svc["network_mode"]
            );
        }
        // nginx, and the object store's S3 API: browsers PUT and GET attachments there
        // through pre-signed URLs (its RPC and admin ports stay unpublished).
        if name == "garage" {
            let published: Vec<_> = published_ports(svc)
                .into_iter()
                .filter(|(p, _)| p.is_some())
                .map(|(_, target)| target)
                .collect();
            assert_eq!(published, ["3900"], "garage publishes only its S3 API");
        } else if name != "nginx" {
            let published: Vec<_> = published_ports(svc)
                .into_iter()
                .filter(|(p, _)| p.is_some())
                .collect();
            assert!(
                published.is_empty(),
                "`{name}` publishes host ports: {published:?}"
            );
        }
    }
    let root = repo_root();
    let nginx_conf = mounts(nginx)
        .into_iter()
        .find(|(_, target)| target.starts_with("/etc/nginx/"))
        .map(|(source, _)| root.join(source))
        .expect("nginx mounts its config into /etc/nginx/");
    let nginx_conf = std::fs::read_to_string(&nginx_conf)
        .unwrap_or_else(|e| panic!("nginx config {}: {e}", nginx_conf.display()));
    for needle in [
        // One name for every registry replica, re-resolved through Docker's DNS.
        "resolver 127.0.0.11",
        "server registry:8101 max_fails=1 fail_timeout=2s resolve;",
        "message-service:8401",
        "location ~ \"^/ws/",
        ":9001/ws$is_args$args",
        "proxy_set_header Upgrade $http_upgrade",
        "location /api/v1/conversations",
        "location /api/v1/dev/",
        "location /api/ {",
        // register/deregister: refused by the public listener, proxied by the internal one
        "listen 8081;",
        "location = /api/v1/socket-servers {",
        "location /api/v1/socket-servers/ {",
        "limit_except POST { deny all; }",
        "limit_except DELETE { deny all; }",
    ] {
        assert!(
            nginx_conf.contains(needle),
            "nginx/compose.conf lacks `{needle}`"
        );
    }
    assert_eq!(
        nginx_conf.matches("return 403 ").count(),
        2,
        "the public listener must refuse register (POST) and deregister (DELETE) with 403"
    );
    assert!(
        published_ports(nginx)
            .iter()
            .all(|(_, target)| target == "80"),
        "nginx must publish only :80 (its :8081 is internal): {:?}",
        published_ports(nginx)
    );
    assert!(
        mounts(nginx)
            .iter()
            .any(|(_, t)| t == "/usr/share/nginx/html"),
        "nginx must serve nginx/html"
    );

    // The socket server scales: no fixed name, no host port (checked above), and each
    // replica advertises its own tunnel URL and health URL.
    let socket = service(&config, "socket-server");
    assert!(
        socket["ports"].is_null(),
        "socket-server must not publish ports"
    );
    let env = environment(socket);
    assert_eq!(
        env.get(SB_SOCKET_BIND).map(String::as_str),
        Some("0.0.0.0:9001")
    );
    assert_eq!(
        env.get(SB_REGISTRY_URL).map(String::as_str),
        Some("http://nginx:8081"),
        "socket servers register on nginx's internal listener"
    );
    let script = command_line(socket);
    for needle in [
        "hostname -i",
        SB_SOCKET_PUBLIC_URL,
        "/ws/",
        SB_SOCKET_HEALTH_URL,
        ":9101/live",
        "exec socket-server",
    ] {
        assert!(
            script.contains(needle),
            "socket-server entrypoint lacks `{needle}`: {script}"
        );
    }

    // Our services find Redis through the three Sentinels, Kafka at kafka:9092, and listen
    // on every interface.
    for (name, port) in OURS {
        let env = environment(service(&config, name));
        assert_eq!(
            env.get(SB_REDIS_SENTINELS).map(String::as_str),
            Some("sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"),
            "`{name}` SB_REDIS_SENTINELS"
        );
        assert_eq!(
            env.get(SB_REDIS_MASTER_NAME).map(String::as_str),
            Some("switchboard")
        );
        assert_eq!(
            env.get(SB_LOG_FORMAT).map(String::as_str),
            Some("json"),
            "`{name}`"
        );
        // Empty by default: the entrypoint reads (or generates) it from the secrets volume.
        assert_eq!(
            env.get(SB_REDIS_PASSWORD).map(String::as_str),
            Some(""),
            "`{name}` must get SB_REDIS_PASSWORD (no shared default)"
        );
        let bind = format!("0.0.0.0:{port}");
        assert!(
            env.values().any(|v| *v == bind),
            "`{name}` must bind {bind}: {env:?}"
        );
        let command = command_line(service(&config, name));
        let binary = *name;
        assert!(
            command.contains(binary),
            "`{name}` should run `{binary}`: {command}"
        );
    }
    for name in ["socket-server", "socket-manager", "message-service"] {
        let env = environment(service(&config, name));
        assert_eq!(
            env.get(SB_KAFKA_BROKERS).map(String::as_str),
            Some("kafka:9092")
        );
        // What the offline smoke runs on tansu (docs/compose.md, "Kafka settings").
        assert_eq!(
            env.get(SB_KAFKA_IDEMPOTENCE).map(String::as_str),
            Some("false"),
            "`{name}`"
        );
        assert_eq!(
            env.get(SB_DELETE_HANDLER_TOPICS).map(String::as_str),
            Some("false"),
            "`{name}`"
        );
        assert_eq!(
            env.get(SB_MANAGER_URLS)
                .map(String::as_str)
                .unwrap_or("http://socket-manager:8201"),
            "http://socket-manager:8201",
            "`{name}`: every manager replica behind one name"
        );
    }
    // Scalable: no fixed pairs, two of each by default (compose v2 reads deploy.replicas).
    for name in ["registry", "socket-manager", "socket-server"] {
        assert!(
            service(&config, name)["deploy"]["replicas"]
                .as_u64()
                .is_some_and(|n| n >= 2),
            "`{name}` should run 2+ replicas by default"
        );
    }
    for gone in [
        "registry-1",
        "registry-2",
        "socket-manager-1",
        "socket-manager-2",
    ] {
        assert!(!names.contains(gone), "`{gone}`: a fixed replica is back");
    }
    assert!(
        command_line(service(&config, "socket-manager")).contains(&format!("{SB_MANAGER_ID}="))
            && command_line(service(&config, "socket-manager")).contains("hostname"),
        "each socket-manager replica must name itself (SB_MANAGER_ID per container)"
    );
    assert_eq!(
        text(&service(&config, "kafka")["image"]).map(|i| i.starts_with("apache/kafka:")),
        Some(true),
        "Kafka is the real Apache Kafka image"
    );

    // Every Sentinel runs in sentinel mode on a config that monitors the compose master.
    for name in SENTINELS {
        let svc = service(&config, name);
        assert!(
            command_line(svc).contains("--sentinel"),
            "`{name}` is not a Sentinel"
        );
        let conf = mounts(svc)
            .into_iter()
            .find(|(source, _)| source.ends_with("sentinel.conf"))
            .map(|(source, _)| root.join(source))
            .unwrap_or_else(|| panic!("`{name}` mounts no sentinel.conf"));
        let conf =
            std::fs::read_to_string(&conf).unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
        let monitor: Vec<&str> = conf
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("sentinel monitor "))
            .unwrap_or_else(|| panic!("`{name}`: sentinel.conf has no `sentinel monitor`"))
            .split_whitespace()
            .collect();
        assert_eq!(
            monitor,
            [
                "sentinel",
                "monitor",
                "switchboard",
                "redis-master",
                "6379",
                "2"
            ],
            "`{name}` must monitor the compose master `redis-master` as `switchboard`, quorum 2"
        );
    }
}

/// Every Redis and Sentinel requires the password the Switchboard services get: each runs
/// compose/switchboard-entrypoint.sh (which reads or generates SB_REDIS_PASSWORD in the
/// shared `secrets` volume) before it starts, writes the AUTH directives into its config, and
/// its healthcheck authenticates. No password is written into the compose file.
#[test]
fn compose_redis_and_sentinels_require_the_generated_password() {
    let config = compose_config();
    for name in [
        "redis-master",
        "redis-replica-1",
        "redis-replica-2",
        "sentinel-1",
        "sentinel-2",
        "sentinel-3",
    ] {
        let svc = service(&config, name);
        let mounts = mounts(svc);
        // The Redis tier's own volume: no Switchboard container mounts it (below).
        assert!(
            mounts
                .iter()
                .any(|(s, t)| s == "redis-secrets" && t == "/var/lib/switchboard/secrets"),
            "`{name}` must mount the redis-secrets volume: {mounts:?}"
        );
        assert!(
            mounts
                .iter()
                .any(|(s, t)| s.ends_with("compose/switchboard-entrypoint.sh")
                    && t == "/usr/local/bin/switchboard-entrypoint"),
            "`{name}` must mount compose/switchboard-entrypoint.sh: {mounts:?}"
        );
        let env = environment(svc);
        assert_eq!(
            env.get(SB_REDIS_PASSWORD).map(String::as_str),
            Some(""),
            "`{name}`: no default password"
        );
        let command = command_line(svc);
        assert!(
            command.starts_with("/usr/local/bin/switchboard-entrypoint "),
            "`{name}` must start through the secrets entrypoint: {command}"
        );
        let directives: &[&str] = if name.starts_with("sentinel") {
            &[
                "requirepass",
                "sentinel auth-pass",
                "sentinel sentinel-pass",
            ]
        } else {
            &["requirepass", "masterauth"]
        };
        for directive in directives {
            assert!(
                command.contains(directive),
                "`{name}` must configure `{directive}`: {command}"
            );
        }
        let test = match &svc["healthcheck"]["test"] {
            Value::Sequence(t) => t.iter().filter_map(text).collect::<Vec<_>>().join(" "),
            other => text(other).unwrap_or_default(),
        };
        assert!(
            test.contains("switchboard-entrypoint redis-cli"),
            "`{name}`'s healthcheck must authenticate: {test}"
        );
    }
    assert!(
        config["volumes"]
            .as_mapping()
            .is_some_and(|v| v.contains_key(Value::from("redis-secrets"))),
        "the `redis-secrets` volume must be declared"
    );
    // Least privilege (issue 24): each Switchboard service logs in as its own Redis user and
    // mounts only its own password volume, never the Redis tier's secrets.
    for (name, _) in OURS {
        let svc = service(&config, name);
        let mounts = mounts(svc);
        assert!(
            !mounts.iter().any(|(s, _)| s == "redis-secrets"),
            "`{name}` must not mount the Redis tier's secrets: {mounts:?}"
        );
        let own: Vec<&(String, String)> = mounts
            .iter()
            .filter(|(s, _)| s.starts_with("redis-auth-"))
            .collect();
        assert!(
            own.len() == 1 && own[0].1 == "/var/lib/switchboard/redis",
            "`{name}` must mount exactly one redis-auth-<service> volume: {mounts:?}"
        );
        let user = environment(svc)
            .get(SB_REDIS_USERNAME)
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            format!("sb-{}", own[0].0.trim_start_matches("redis-auth-")),
            user,
            "`{name}`: its Redis user and its password volume must match"
        );
    }
}

/// Per-service credentials (issue 24, item 11): the one-shot `keys` service, without a
/// network, writes each service's own into its `auth-<role>` volume; each service mounts its
/// own alone, read-only; nothing holds a shared secret; only the registry gets the private
/// key (switchboard-keys writes it into the registry's volume alone); dev mode is off
/// unless the demo override turns it on, in the registry only.
#[test]
fn compose_services_hold_only_their_own_credentials() {
    let config = compose_config();
    let keys = service(&config, KEYS);
    assert_eq!(text(&keys["network_mode"]).as_deref(), Some("none"));
    assert_eq!(text(&keys["restart"]).as_deref(), Some("no"));
    assert!(
        command_line(keys).starts_with("switchboard-keys "),
        "`keys` runs switchboard-keys: {}",
        command_line(keys)
    );
    let keys_mounts = mounts(keys);
    for (_, role) in ROLES {
        assert!(
            keys_mounts.contains(&(
                format!("auth-{role}"),
                format!("/var/lib/switchboard/services/{role}")
            )),
            "`keys` must write {role}'s credentials: {keys_mounts:?}"
        );
    }
    let services = config["services"].as_mapping().expect("services");
    for (name, svc) in services {
        let name = text(name).unwrap_or_default();
        if name == KEYS {
            continue;
        }
        let mounts = mounts(svc);
        assert!(
            !mounts.iter().any(|(s, _)| s == "cluster-keys"),
            "`{name}` must not mount the deployment's key store"
        );
        let env = environment(svc);
        for shared in [SB_JWT_SECRET, SB_CLUSTER_SECRET] {
            assert!(
                env.get(shared).is_none_or(|v| v.is_empty()),
                "`{name}` gets {shared} by default"
            );
        }
        let auth: Vec<&(String, String)> = mounts
            .iter()
            .filter(|(s, _)| s.starts_with("auth-"))
            .collect();
        if let Some((_, role)) = ROLES.iter().find(|(service, _)| *service == name) {
            assert_eq!(
                auth.iter()
                    .map(|(s, t)| (s.as_str(), t.as_str()))
                    .collect::<Vec<_>>(),
                [(format!("auth-{role}").as_str(), "/var/lib/switchboard/auth")],
                "`{name}` must mount its own credentials alone"
            );
            let volumes = svc["volumes"].as_sequence().expect("volumes");
            assert!(
                volumes
                    .iter()
                    .filter_map(text)
                    .any(|v| v == format!("auth-{role}:/var/lib/switchboard/auth:ro")),
                "`{name}`: its credentials read-only: {volumes:?}"
            );
            assert_eq!(
                text(&svc["depends_on"][KEYS]["condition"]).as_deref(),
                Some("service_completed_successfully"),
                "`{name}` must wait for its credentials"
            );
        } else {
            assert!(auth.is_empty(), "`{name}` mounts credentials: {auth:?}");
        }
    }

    // Dev mode: off in the production file, on with the demo override, in the registry only.
    let demo = compose_config_of(&["docker-compose.yml", "compose.demo.yml"]);
    for (name, _) in OURS {
        let prod = environment(service(&config, name));
        assert_eq!(
            prod.get(SB_DEV_MODE).map(String::as_str),
            Some("false"),
            "`{name}`"
        );
        let with_demo = environment(service(&demo, name));
        let want = if *name == "registry" { "true" } else { "false" };
        assert_eq!(
            with_demo.get(SB_DEV_MODE).map(String::as_str),
            Some(want),
            "`{name}` with compose.demo.yml"
        );
    }
    let published = published_ports(service(&demo, "nginx"));
    assert_eq!(
        published.len(),
        1,
        "the demo publishes nginx once: {published:?}"
    );
    let nginx = &service(&demo, "nginx")["ports"][0];
    let host_ip = text(&nginx["host_ip"]).unwrap_or_else(|| {
        text(nginx)
            .and_then(|p| p.split(':').next().map(str::to_string))
            .unwrap_or_default()
    });
    assert_eq!(host_ip, "127.0.0.1", "the demo is on 127.0.0.1 only");
}

/// `docker-compose config` does not reject cycles in depends_on; `up` would hang on them.
fn assert_acyclic(config: &Value, names: &BTreeSet<String>) {
    fn visit(config: &Value, name: &str, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if done.contains(name) {
            return;
        }
        assert!(
            !path.iter().any(|p| p == name),
            "depends_on cycle: {} -> {name}",
            path.join(" -> ")
        );
        path.push(name.to_string());
        if let Some(deps) = config["services"][name]["depends_on"].as_mapping() {
            for dep in deps.keys().filter_map(text) {
                visit(config, &dep, path, done);
            }
        }
        path.pop();
        done.insert(name.to_string());
    }
    let mut done = BTreeSet::new();
    for name in names {
        visit(config, name, &mut Vec::new(), &mut done);
    }
}

/// The workspace members listed in the root Cargo.toml.
fn workspace_members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("root Cargo.toml");
    let start = manifest.find("members").expect("[workspace] members");
    let list = &manifest[start..];
    let list = &list[list.find('[').expect("members = [")..list.find(']').expect("]")];
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn compose_dockerfile_is_multi_stage_and_copies_every_member() {
    let root = repo_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))
        .expect("a Dockerfile at the repository root");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let stages = lines
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .count();
    assert!(
        stages >= 2,
        "the Dockerfile should be multi-stage, has {stages} FROM"
    );

    // The cached dependency layer needs every member's manifest, and the build every
    // member's sources; a new workspace member must be added to both COPY blocks.
    let copies: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        .map(|l| l.split_whitespace().skip(1).collect())
        .collect();
    let copied = |source: &str| copies.iter().any(|c| c[..c.len() - 1].contains(&source));
    let members = workspace_members(&root);
    assert!(
        members.len() >= 5,
        "could not read the workspace members: {members:?}"
    );
    for member in &members {
        assert!(
            copied(&format!("{member}/Cargo.toml")),
            "Dockerfile: add `COPY {member}/Cargo.toml {member}/` to the manifests block"
        );
        assert!(
            copied(&format!("{member}/")) || copied(member),
            "Dockerfile: add `COPY {member}/ {member}/` to the sources block"
        );
    }
    assert!(
        copied("Cargo.lock"),
        "Dockerfile must copy Cargo.lock (builds are --locked)"
    );

    // The image ships every binary the compose file runs.
    let bins = lines
        .iter()
        .find(|l| l.starts_with("ARG SB_BINS="))
        .expect("ARG SB_BINS=... in the Dockerfile");
    for (name, _) in OURS {
        assert!(
            bins.split(['"', ' ', '=']).any(|b| b == *name),
            "the Dockerfile's SB_BINS lacks `{name}`"
        );
    }
    let tools = lines
        .iter()
        .find(|l| l.starts_with("ARG SB_TOOLS="))
        .expect("ARG SB_TOOLS=... in the Dockerfile");
    assert!(
        tools.contains("switchboard-keys"),
        "the image must ship switchboard-keys (the `keys` service): {tools}"
    );
}
