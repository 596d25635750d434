use registry::{Application, RegistryConfig};
use switchboard_service_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("registry");
    let config = RegistryConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "registry listening");
    app.run_until_stopped(shutdown::token_on_signal()).await
}
