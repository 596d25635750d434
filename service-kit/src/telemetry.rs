//! Structured logs with `tracing`. `SB_LOG_FORMAT=json` emits JSON lines (for the compose
//! stack and log shippers); anything else is human-readable. `RUST_LOG` filters as usual.

use tracing_subscriber::EnvFilter;

pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,actix_server=warn,rdkafka=warn"));
    let json = std::env::var("SB_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}
