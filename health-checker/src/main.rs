use health_checker::{Application, HealthCheckerConfig};
use switchboard_service_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("health-checker");
    let config = HealthCheckerConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "health checker running");
    app.run_until_stopped(shutdown::token_on_signal()).await
}
