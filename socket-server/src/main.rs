use socket_server::{Application, SocketServerConfig};
use switchboard_config::cli::Cli;
use switchboard_service_kit::{shutdown, telemetry};

const CLI: Cli = Cli {
    name: "socket-server",
    version: env!("CARGO_PKG_VERSION"),
    about: "The socket server: holds clients' WebSocket connections (`/ws`), checks their \
            tokens, registers itself in the directory the registry assigns from, forwards chat \
            frames to the socket managers and delivers what the managers route to it from its \
            own topic on the broker.",
    usage: "",
    max_positional: 0,
    env: socket_server::config::HELP_TABLES,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    CLI.handle_args();
    let _telemetry = telemetry::init("socket-server");
    let config = SocketServerConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(
        port = app.port(),
        server_id = app.server_id(),
        "socket server listening"
    );
    shutdown::until_signal(|stop| app.run_until_stopped(stop)).await
}
