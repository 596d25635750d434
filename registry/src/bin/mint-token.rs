//! `mint-token USER_ID [TTL_SECONDS]`: prints a client JWT signed with `SB_JWT_SECRET` (the
//! same default as the services), for scripts and for clusters that run without dev mode.

use switchboard_protocol::token::TokenKeys;
use switchboard_service_kit::cli::Cli;
use switchboard_service_kit::config::{env_string, DEFAULT_JWT_SECRET, SB_JWT_SECRET};
use switchboard_service_kit::env::{EnvTable, EnvVar};

const ENV: &[EnvVar] = &[EnvVar {
    name: SB_JWT_SECRET,
    default: Some(DEFAULT_JWT_SECRET),
    doc: "The HS256 secret to sign with: the services' SB_JWT_SECRET.",
}];

const CLI: Cli = Cli {
    name: "mint-token",
    version: env!("CARGO_PKG_VERSION"),
    about: "Prints a client JWT for USER_ID, signed with SB_JWT_SECRET and valid for \
            TTL_SECONDS (default 86400), for scripts and for clusters that run without dev \
            mode. The token carries no iss or aud claim, so it only passes services that do \
            not set SB_JWT_ISSUER or SB_JWT_AUDIENCE.",
    usage: "USER_ID [TTL_SECONDS]",
    max_positional: 2,
    env: &[EnvTable {
        title: "Environment",
        vars: ENV,
    }],
};

fn main() {
    let mut args = CLI.handle_args().into_iter();
    let Some(user) = args.next() else {
        eprintln!(
            "usage: mint-token USER_ID [TTL_SECONDS]   (signs with $SB_JWT_SECRET; see --help)"
        );
        std::process::exit(2);
    };
    let ttl: i64 = match args.next().map(|t| t.parse()) {
        None => 86_400,
        Some(Ok(t)) if t > 0 => t,
        Some(_) => {
            eprintln!("TTL_SECONDS must be a positive whole number");
            std::process::exit(2);
        }
    };
    let secret = env_string(SB_JWT_SECRET, DEFAULT_JWT_SECRET);
    match TokenKeys::new(secret.as_bytes()).mint(&user, chrono::Duration::seconds(ttl)) {
        Ok((token, _)) => println!("{token}"),
        Err(e) => {
            eprintln!("cannot mint a token for {user:?}: {e}");
            std::process::exit(2);
        }
    }
}
