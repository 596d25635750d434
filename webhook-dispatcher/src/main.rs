use switchboard_config::cli::Cli;
use switchboard_service_kit::{shutdown, telemetry};
use webhook_dispatcher::{Application, DispatcherConfig};

const CLI: Cli = Cli {
    name: "webhook-dispatcher",
    version: env!("CARGO_PKG_VERSION"),
    about: "The webhook dispatcher: serves the endpoint API (/server/v1/webhooks), reads the \
            message log and the events topic, and delivers each event to the endpoints that \
            subscribed to it as a signed request (Standard Webhooks), at least once, in order \
            per conversation, retrying with backoff.",
    usage: "",
    max_positional: 0,
    env: webhook_dispatcher::config::HELP_TABLES,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    CLI.handle_args();
    let _telemetry = telemetry::init("webhook-dispatcher");
    let config = DispatcherConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "webhook dispatcher listening");
    shutdown::until_signal(|stop| app.run_until_stopped(stop)).await
}
