//! `push-gateway-sink`: the reference push gateway, for tests and local use
//! ([`webhook_dispatcher::push::sink`]). It records the pushes the notifier sends and shows
//! them at `GET /pushes`; it sends nothing on to Apple, Google or browsers. It also records
//! webhook deliveries (`POST /webhook`, shown at `GET /webhooks`), so the local stack and the
//! compose demo have one sink for both.

use switchboard_config::cli::Cli;
use switchboard_config::names::{SB_PUSH_GATEWAY_SECRET, SB_PUSH_SINK_BIND, SB_PUSH_SINK_REJECT};
use switchboard_config::tables::push_gateway_sink::{self, DEFAULT_BIND};
use webhook_dispatcher::push::sink::Sink;

const CLI: Cli = Cli {
    name: "push-gateway-sink",
    version: env!("CARGO_PKG_VERSION"),
    about: "The reference push gateway: records the pushes the notifier sends (GET /pushes), \
            checks their signature, and rejects the pushkeys it is told to. Also a webhook \
            sink: records the deliveries posted to /webhook as they came, headers included \
            (GET /webhooks), for the holder of the endpoint's secret to verify.",
    usage: "",
    max_positional: 0,
    env: &[push_gateway_sink::TABLE],
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    CLI.handle_args();
    let _telemetry = switchboard_service_kit::telemetry::init("push-gateway-sink");
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let bind = var(SB_PUSH_SINK_BIND).unwrap_or_else(|| DEFAULT_BIND.to_owned());
    let secret = var(SB_PUSH_GATEWAY_SECRET);
    if let Some(secret) = &secret {
        webhook_dispatcher::signing::secret_key(secret)
            .map_err(|e| anyhow::anyhow!("{SB_PUSH_GATEWAY_SECRET}: {e}"))?;
    }
    let reject = var(SB_PUSH_SINK_REJECT)
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    let sink = Sink::bind(&bind, secret, reject)?;
    tracing::info!(port = sink.port, "push gateway sink listening");
    sink.run().await?;
    Ok(())
}
