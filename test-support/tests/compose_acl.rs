//! `compose/redis-users.acl` and `compose/sentinel-users.acl` (the ACL users docker-compose.yml
//! runs the services under) are exactly what `compose-acl` generates from
//! `service_key_families`: the compose users cannot drift from the local stack's.

use std::path::Path;

use switchboard_config::names::SB_REDIS_USERNAME;
use switchboard_test_support::compose_acl::{
    redis_users, sentinel_users, REDIS_USERS_FILE, SENTINEL_USERS_FILE,
};
use switchboard_test_support::redis_cluster::{service_user, SERVICE_USERS};

fn repo_file(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives inside the workspace")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn compose_acl_files_match_the_generator() {
    for (file, generated) in [
        (REDIS_USERS_FILE, redis_users()),
        (SENTINEL_USERS_FILE, sentinel_users()),
    ] {
        assert!(
            repo_file(file) == generated,
            "{file} differs from the key families in test-support/src/redis_cluster.rs: run \
             `cargo run -p switchboard-test-support --bin compose-acl` and commit the result"
        );
    }
}

/// Every service's user is configured in docker-compose.yml, and each service is given the
/// volume that holds only its own password.
#[test]
fn docker_compose_runs_each_service_as_its_own_user() {
    let compose = repo_file("docker-compose.yml");
    for service in SERVICE_USERS {
        let user = service_user(service);
        assert!(
            compose.contains(&format!("{SB_REDIS_USERNAME}: {user}\n")),
            "docker-compose.yml does not set SB_REDIS_USERNAME: {user}"
        );
        assert!(
            compose.contains(&format!(
                "redis-auth-{service}:/var/lib/switchboard/redis:ro"
            )),
            "docker-compose.yml does not give {service} its own password volume"
        );
    }
}
