//! `mint-token USER_ID [TTL_SECONDS]`: prints a client JWT signed with `SB_JWT_SECRET` (the
//! same default as the services), for scripts and for clusters that run without dev mode.

use switchboard_protocol::token::TokenKeys;
use switchboard_service_kit::config::env_string;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(user) = args.next() else {
        eprintln!("usage: mint-token USER_ID [TTL_SECONDS]   (signs with $SB_JWT_SECRET)");
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
    let secret = env_string("SB_JWT_SECRET", "switchboard-dev-jwt-secret");
    match TokenKeys::new(secret.as_bytes()).mint(&user, chrono::Duration::seconds(ttl)) {
        Ok((token, _)) => println!("{token}"),
        Err(e) => {
            eprintln!("cannot mint a token for {user:?}: {e}");
            std::process::exit(2);
        }
    }
}
