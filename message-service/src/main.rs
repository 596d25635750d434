use message_service::{Application, MessageServiceConfig};
use switchboard_config::cli::Cli;
use switchboard_service_kit::{shutdown, telemetry};

const CLI: Cli = Cli {
    name: "message-service",
    version: env!("CARGO_PKG_VERSION"),
    about: "The message service: the durable home of conversations and messages. It serves the \
            REST API (conversations, members, history, receipts; JWT auth) from PostgreSQL, \
            ingests the message log from the broker into it idempotently, and mirrors \
            conversation members into Redis for the socket managers.",
    usage: "",
    max_positional: 0,
    env: message_service::config::HELP_TABLES,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    CLI.handle_args();
    let _telemetry = telemetry::init("message-service");
    let config = MessageServiceConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "message service listening");
    shutdown::until_signal(|stop| app.run_until_stopped(stop)).await
}
