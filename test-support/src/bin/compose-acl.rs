//! Writes the Redis and Sentinel ACL users of `docker-compose.yml`
//! (`compose/redis-users.acl`, `compose/sentinel-users.acl`) from the same key families the
//! local stack and the tests use (`switchboard_test_support::compose_acl`). Run it after
//! changing `service_key_families`; `cargo test -p switchboard-test-support --test
//! compose_acl` fails until the files are regenerated.
//!
//! `cargo run -p switchboard-test-support --bin compose-acl` writes both files into the
//! repository; `-- --stdout` prints them instead.

use std::path::Path;

use switchboard_test_support::compose_acl::{
    redis_users, sentinel_users, REDIS_USERS_FILE, SENTINEL_USERS_FILE,
};

fn main() -> anyhow::Result<()> {
    let files = [
        (REDIS_USERS_FILE, redis_users()),
        (SENTINEL_USERS_FILE, sentinel_users()),
    ];
    if std::env::args().skip(1).any(|a| a == "--stdout") {
        for (_, text) in &files {
            print!("{text}");
        }
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives inside the workspace");
    for (file, text) in &files {
        let path = root.join(file);
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
