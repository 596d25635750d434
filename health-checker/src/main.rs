use health_checker::{Application, HealthCheckerConfig};
use switchboard_config::cli::Cli;
use switchboard_service_kit::{shutdown, telemetry};

const CLI: Cli = Cli {
    name: "health-checker",
    version: env!("CARGO_PKG_VERSION"),
    about: "The health checker: probes every registered socket server's health URL and evicts \
            from the directory the ones that stop answering, so the registry stops handing them \
            out. Two or more may run at once; an eviction is one atomic script.",
    usage: "",
    max_positional: 0,
    env: health_checker::config::HELP_TABLES,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    CLI.handle_args();
    let _telemetry = telemetry::init("health-checker");
    let config = HealthCheckerConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "health checker running");
    shutdown::until_signal(|stop| app.run_until_stopped(stop)).await
}
