use registry::{Application, RegistryConfig};
use switchboard_config::cli::Cli;
use switchboard_service_kit::{shutdown, telemetry};

const CLI: Cli = Cli {
    name: "registry",
    version: env!("CARGO_PKG_VERSION"),
    about: "The registry: the REST service clients ask which socket server to connect to. `GET \
            /api/v1/socket-server` hands out the least-loaded live server (an atomic assign over \
            the directory in Redis, reserving a slot), and with SB_DEV_MODE `POST \
            /api/v1/dev/token` mints client tokens. Run two or more behind a load balancer; they \
            share only Redis.",
    usage: "",
    max_positional: 0,
    env: registry::config::HELP_TABLES,
};

// The HTTP workers run on threads of their own, each with its assigner and Redis connection
// (see `Application::build`); this runtime only waits for shutdown.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    CLI.handle_args();
    let _telemetry = telemetry::init("registry");
    let config = RegistryConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "registry listening");
    shutdown::until_signal(|stop| app.run_until_stopped(stop)).await
}
