use message_service::{Application, MessageServiceConfig};
use switchboard_service_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("message-service");
    let config = MessageServiceConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "message service listening");
    app.run_until_stopped(shutdown::token_on_signal()).await
}
