//! `mint-token USER_ID [TTL_SECONDS]`: prints a client JWT signed with the Ed25519 key in
//! `SB_JWT_PRIVATE_KEY_FILE`, or else with `SB_JWT_SECRET` (the same default as the services),
//! for scripts and for clusters that run without dev mode.

use switchboard_config::cli::Cli;
use switchboard_config::lookup::{env_optional, env_string};
use switchboard_config::names::{SB_JWT_PRIVATE_KEY_FILE, SB_JWT_SECRET};
use switchboard_config::tables;
use switchboard_config::tables::common::DEFAULT_JWT_SECRET;
use switchboard_protocol::token::TokenKeys;
use switchboard_protocol::token::TokenPolicy;

const CLI: Cli = Cli {
    name: "mint-token",
    version: env!("CARGO_PKG_VERSION"),
    about: "Prints a client JWT for USER_ID, signed with SB_JWT_PRIVATE_KEY_FILE (Ed25519) or \
            SB_JWT_SECRET (HS256) and valid for \
            TTL_SECONDS (default 86400), for scripts and for clusters that run without dev \
            mode. The token carries no iss or aud claim, so it only passes services that do \
            not set SB_JWT_ISSUER or SB_JWT_AUDIENCE.",
    usage: "USER_ID [TTL_SECONDS]",
    max_positional: 2,
    env: &[tables::mint_token::TABLE],
};

fn main() {
    let mut args = CLI.handle_args().into_iter();
    let Some(user) = args.next() else {
        eprintln!(
            "usage: mint-token USER_ID [TTL_SECONDS]   (signs with $SB_JWT_SECRET; see --help)"
        );
        std::process::exit(2);
    };
    let user = match switchboard_protocol::UserId::parse(user) {
        Ok(user) => user,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let ttl: i64 = match args.next().map(|t| t.parse()) {
        None => 86_400,
        Some(Ok(t)) if t > 0 => t,
        Some(_) => {
            eprintln!("TTL_SECONDS must be a positive whole number");
            std::process::exit(2);
        }
    };
    let keys = match env_optional(SB_JWT_PRIVATE_KEY_FILE) {
        Some(path) => {
            let pem = std::fs::read(&path).unwrap_or_else(|e| {
                eprintln!("{SB_JWT_PRIVATE_KEY_FILE}={path}: cannot read it: {e}");
                std::process::exit(2);
            });
            TokenKeys::without_keys(TokenPolicy::default())
                .with_ed25519(None, Some(&pem))
                .unwrap_or_else(|e| {
                    eprintln!("{SB_JWT_PRIVATE_KEY_FILE}={path}: {e}");
                    std::process::exit(2);
                })
        }
        None => TokenKeys::new(env_string(SB_JWT_SECRET, DEFAULT_JWT_SECRET).as_bytes()),
    };
    match keys.mint(&user, chrono::Duration::seconds(ttl)) {
        Ok((token, _)) => println!("{token}"),
        Err(e) => {
            eprintln!("cannot mint a token for {user:?}: {e}");
            std::process::exit(2);
        }
    }
}
