//! `mint-api-key KEY_ID SCOPES [RATE_PER_SEC]`: prints a new server-API key (`sbk_<id>_<secret>`,
//! shown once: only its hash is kept) and the JSON entry to add to `SB_API_KEYS_FILE` /
//! `SB_API_KEYS` (docs/server-api.md).

use switchboard_config::cli::Cli;
use switchboard_credentials::api_keys::{mint, Scope, DEFAULT_RATE_PER_SEC};

const CLI: Cli = Cli {
    name: "mint-api-key",
    version: env!("CARGO_PKG_VERSION"),
    about: "Prints a new API key for the server API (/server/v1) and the JSON entry to add to \
            SB_API_KEYS_FILE or SB_API_KEYS: the services keep only the key's SHA-256. KEY_ID: 1 \
            to 64 characters of [A-Za-z0-9-] (a new id per key, so old and new work side by \
            side during rotation). SCOPES: comma separated, of messages:write, \
            conversations:write, read, users:disconnect, webhooks:manage. RATE_PER_SEC: \
            requests per second per service process (default 50; 0: no limit). Reads no \
            environment.",
    usage: "KEY_ID SCOPES [RATE_PER_SEC]",
    max_positional: 3,
    env: &[],
};

fn main() {
    let args = CLI.handle_args();
    let usage = || -> ! {
        eprintln!("usage: mint-api-key KEY_ID SCOPES [RATE_PER_SEC]   (see --help)");
        std::process::exit(2);
    };
    let (Some(id), Some(scopes)) = (args.first(), args.get(1)) else {
        usage()
    };
    let scopes: Result<Vec<Scope>, String> = scopes
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect();
    let scopes = match scopes {
        Ok(scopes) if !scopes.is_empty() => scopes,
        Ok(_) => usage(),
        Err(e) => {
            eprintln!("mint-api-key: {e}; scopes are messages:write, conversations:write, read, users:disconnect, webhooks:manage");
            std::process::exit(2);
        }
    };
    let rate = match args.get(2).map(|r| r.parse::<f64>()) {
        None => DEFAULT_RATE_PER_SEC,
        Some(Ok(r)) if r.is_finite() && r >= 0.0 => r,
        Some(_) => {
            eprintln!("mint-api-key: RATE_PER_SEC must be a number, 0 or more");
            std::process::exit(2);
        }
    };
    match mint(id, scopes, rate) {
        Ok((key, entry)) => {
            println!("key:   {key}");
            println!("id:    {}", entry.id);
            println!(
                "entry: {}",
                serde_json::to_string(&entry).expect("an entry serializes")
            );
        }
        Err(e) => {
            eprintln!("mint-api-key: {e}");
            std::process::exit(2);
        }
    }
}
