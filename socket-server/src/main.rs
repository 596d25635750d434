use socket_server::{Application, SocketServerConfig};
use switchboard_service_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("socket-server");
    let config = SocketServerConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(
        port = app.port(),
        server_id = app.server_id(),
        "socket server listening"
    );
    app.run_until_stopped(shutdown::token_on_signal()).await
}
