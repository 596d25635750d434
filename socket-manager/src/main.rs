use socket_manager::{Application, ManagerConfig};
use switchboard_service_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("socket-manager");
    let config = ManagerConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "socket manager listening");
    app.run_until_stopped(shutdown::token_on_signal()).await
}
