use socket_manager::{Application, ManagerConfig};
use switchboard_config::cli::Cli;
use switchboard_service_kit::{shutdown, telemetry};

/// mimalloc rather than glibc's malloc: the manager allocates many small, short-lived buffers
/// across threads, where glibc's allocator took about a quarter of its CPU samples and
/// mimalloc about an eighth (docs/performance.md run 14). The socket servers keep glibc's:
/// mimalloc added ~2 KiB to each idle connection's share of their memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLI: Cli = Cli {
    name: "socket-manager",
    version: env!("CARGO_PKG_VERSION"),
    about: "The socket manager: the cluster-internal service the socket servers send their \
            clients' frames to. It numbers each conversation's messages under a Redis lock, \
            appends them to the message log, routes them to the topics of the socket servers \
            that hold the members, and removes dead servers' topics and mappings. Run two or \
            more; they share only Redis and the broker.",
    usage: "",
    max_positional: 0,
    env: socket_manager::config::HELP_TABLES,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    CLI.handle_args();
    let _telemetry = telemetry::init("socket-manager");
    let config = ManagerConfig::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "socket manager listening");
    shutdown::until_signal(|stop| app.run_until_stopped(stop)).await
}
