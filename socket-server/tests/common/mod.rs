//! What `tests/ws.rs` and `tests/sse.rs` share: the message service, a socket manager and the
//! registry in-process beside one socket server (`Application::build` on port 0), against the
//! test binary's shared Redis, PostgreSQL and broker.

// Tests spawn freely; product code gives every task an owner (clippy.toml).
#![allow(clippy::disallowed_methods, dead_code)]

use switchboard_service_kit::shutdown::CancellationToken;
use switchboard_test_support::shared::{self, Vars};

/// The running apps; they stop with the test's runtime, the socket server also on `stop`.
pub struct Apps {
    pub id: String,
    /// `127.0.0.1:PORT` of the socket server's public port.
    pub host: String,
    /// `http://127.0.0.1:PORT` of its `/live`, `/ready` and `/metrics`.
    pub ops: String,
    pub server_id: String,
    /// The message service's base URL.
    pub messages: String,
    pub stop: CancellationToken,
}

/// The message service for the test `id` (its own database, the log and event topics made),
/// running; its base URL.
pub async fn spawn_message_service(id: &str) -> String {
    let database_url = shared::fresh_database(id).await;
    let ms_config = shared::message_service_vars(id, &database_url).config(
        message_service::config::HELP_TABLES,
        message_service::MessageServiceConfig::from_lookup,
    );
    let kafka = ms_config.kafka.clone();
    shared::create_topics(
        &kafka.brokers,
        &[&kafka.message_topic, &kafka.events_topic],
        1,
    )
    .await
    .expect("topics");
    let ms = message_service::Application::build(ms_config)
        .await
        .unwrap();
    let messages = format!("http://127.0.0.1:{}", ms.port());
    tokio::spawn(ms.run_until_stopped(CancellationToken::new()));
    messages
}

/// A socket manager with the tests' variables changed by `vars`, running; its base URL.
pub async fn spawn_manager(vars: Vars) -> String {
    let config = vars.config(
        socket_manager::config::HELP_TABLES,
        socket_manager::ManagerConfig::from_lookup,
    );
    let manager = socket_manager::Application::build(config).await.unwrap();
    let url = format!("http://127.0.0.1:{}", manager.port());
    tokio::spawn(manager.run_until_stopped(CancellationToken::new()));
    url
}

/// The registry for the test `id`, running; its base URL.
pub async fn spawn_registry(id: &str) -> String {
    let registry_config = shared::registry_vars(id).config(
        registry::config::HELP_TABLES,
        registry::RegistryConfig::from_lookup,
    );
    let registry = registry::Application::build(registry_config).await.unwrap();
    let url = format!("http://127.0.0.1:{}", registry.port());
    tokio::spawn(registry.run_until_stopped(CancellationToken::new()));
    url
}

/// Starts the apps, the manager's variables changed by `manager` and the socket server's
/// config by `tweak`; not waited for.
pub async fn spawn_apps(
    name: &str,
    manager: impl FnOnce(Vars) -> Vars,
    tweak: impl FnOnce(&mut socket_server::SocketServerConfig),
) -> Apps {
    shared::warm_up();
    let id = shared::unique(name);
    let messages = spawn_message_service(&id).await;
    let manager_url = spawn_manager(manager(shared::manager_vars(&id, &messages))).await;
    let registry_url = spawn_registry(&id).await;
    let mut config = shared::socket_server_vars(&id, &registry_url, &[manager_url]).config(
        socket_server::config::HELP_TABLES,
        socket_server::SocketServerConfig::from_lookup,
    );
    tweak(&mut config);
    let app = socket_server::Application::build(config)
        .await
        .expect("the socket server builds");
    let stop = CancellationToken::new();
    let apps = Apps {
        id,
        host: format!("127.0.0.1:{}", app.port()),
        ops: format!("http://127.0.0.1:{}", app.ops_port()),
        server_id: app.server_id().to_owned(),
        messages,
        stop: stop.clone(),
    };
    tokio::spawn(app.run_until_stopped(stop));
    apps
}
