//! `switchboard-keys STORE_DIR SERVICES_DIR [OWNER]`: a deployment's per-service credentials,
//! made without `openssl` (the runtime image has none). docker-compose.yml runs it once per
//! `up`, as the one-shot service `keys`, before any Switchboard service starts.
//!
//! `STORE_DIR` (compose: the volume `cluster-keys`, which only this tool mounts) keeps the
//! deployment's secrets, generated on the first run and kept after: one random secret per
//! service role (`<role>.secret`, 48 hex digits) and an Ed25519 key pair for client tokens
//! (`jwt-ed25519.pem`, PKCS#8, and `jwt-ed25519.pub.pem`, SubjectPublicKeyInfo: the same
//! formats as `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`).
//!
//! Every subdirectory of `SERVICES_DIR` is named after a role (compose mounts each service's
//! own volume `auth-<role>` there) and gets what that service may hold, and nothing else:
//!
//! - `SB_SERVICE_SECRET`: the role's own secret;
//! - `SB_CALLER_KEYS`: `role=sha256hex` of every role's secret (hashes only: it cannot be
//!   presented as anyone's credential);
//! - `jwt-ed25519.pub.pem`: verifies client tokens and cannot mint them;
//! - `jwt-ed25519.pem`, the private key, for the registry alone (it mints the dev tokens).
//!
//! The files are owned by `OWNER` (`uid:gid`, default `10001:10001`, the image's user) with
//! modes 700/600, so this runs as root in compose. compose/switchboard-entrypoint.sh turns the
//! files into `SB_SERVICE_SECRET`, `SB_CALLER_KEYS`, `SB_JWT_PUBLIC_KEY_FILE` and
//! `SB_JWT_PRIVATE_KEY_FILE` when a service starts. Nothing secret is printed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use switchboard_config::cli::Cli;
use switchboard_config::names::{SB_CALLER_KEYS, SB_SERVICE_SECRET};
use switchboard_credentials::cluster::{secret_hash, ServiceRole};

const CLI: Cli = Cli {
    name: "switchboard-keys",
    version: env!("CARGO_PKG_VERSION"),
    about: "Generates a deployment's per-service credentials into STORE_DIR (once; kept \
            after) and hands each service its own into SERVICES_DIR/<role>: SB_SERVICE_SECRET, \
            SB_CALLER_KEYS (every role's SHA-256), the Ed25519 public key for client tokens, \
            and the private key for the registry only. Files owned by OWNER (uid:gid, \
            default 10001:10001), modes 700/600. Roles: socket-server, socket-manager, \
            message-service, registry, health-checker, webhook-dispatcher.",
    usage: "STORE_DIR SERVICES_DIR [OWNER]",
    max_positional: 3,
    env: &[],
};

/// The role that mints client tokens (the registry's dev tokens) and so gets the private key.
const MINTER: ServiceRole = ServiceRole::Registry;
const PRIVATE_PEM: &str = "jwt-ed25519.pem";
const PUBLIC_PEM: &str = "jwt-ed25519.pub.pem";
/// DER of an Ed25519 PKCS#8 v1 private key up to its 32-byte seed (RFC 8410).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER of an Ed25519 SubjectPublicKeyInfo up to its 32-byte key (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<(String, E)> for Failure {
    fn from((context, e): (String, E)) -> Self {
        Failure(format!("{context}: {e}"))
    }
}

fn main() {
    let args = CLI.handle_args();
    let (Some(store), Some(services)) = (args.first(), args.get(1)) else {
        eprintln!("usage: switchboard-keys STORE_DIR SERVICES_DIR [OWNER]   (see --help)");
        std::process::exit(2);
    };
    let owner = match args.get(2).map(|o| parse_owner(o)).transpose() {
        Ok(owner) => owner.unwrap_or((10001, 10001)),
        Err(Failure(e)) => {
            eprintln!("switchboard-keys: {e}");
            std::process::exit(2);
        }
    };
    match run(Path::new(store), Path::new(services), owner) {
        Ok(roles) => eprintln!(
            "switchboard-keys: credentials handed to {}",
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(Failure(e)) => {
            eprintln!("switchboard-keys: {e}");
            std::process::exit(1);
        }
    }
}

fn parse_owner(text: &str) -> Result<(u32, u32), Failure> {
    let parsed = text
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    parsed.ok_or_else(|| Failure(format!("OWNER `{text}` is not uid:gid (e.g. 10001:10001)")))
}

/// The deployment's secrets, read from the store (generated where missing).
struct Store {
    secrets: BTreeMap<&'static str, String>,
    private_pem: String,
    public_pem: String,
}

fn run(store: &Path, services: &Path, owner: (u32, u32)) -> Result<Vec<ServiceRole>, Failure> {
    let rng = SystemRandom::new();
    let store = open_store(store, &rng)?;
    let caller_keys = ServiceRole::ALL
        .into_iter()
        .map(|role| format!("{role}={}", secret_hash(&store.secrets[role.as_str()])))
        .collect::<Vec<_>>()
        .join(",");
    let entries = fs::read_dir(services).map_err(|e| (services.display().to_string(), e))?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| (services.display().to_string(), e))?;
        if entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    let mut handed = Vec::new();
    for dir in dirs {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let role = ServiceRole::parse(name).ok_or_else(|| {
            Failure(format!(
                "{}: `{name}` is not a service role (one of: {})",
                dir.display(),
                ServiceRole::ALL.map(ServiceRole::as_str).join(", ")
            ))
        })?;
        put_dir(&dir, owner)?;
        put(
            &dir.join(SB_SERVICE_SECRET),
            &store.secrets[role.as_str()],
            owner,
        )?;
        put(&dir.join(SB_CALLER_KEYS), &caller_keys, owner)?;
        put(&dir.join(PUBLIC_PEM), &store.public_pem, owner)?;
        let private = dir.join(PRIVATE_PEM);
        if role == MINTER {
            put(&private, &store.private_pem, owner)?;
        } else if private.exists() {
            fs::remove_file(&private).map_err(|e| (private.display().to_string(), e))?;
        }
        handed.push(role);
    }
    if handed.is_empty() {
        return Err(Failure(format!(
            "{} has no service directory (mount each service's volume at {}/<role>)",
            services.display(),
            services.display()
        )));
    }
    Ok(handed)
}

fn open_store(dir: &Path, rng: &SystemRandom) -> Result<Store, Failure> {
    let root = (0, 0);
    fs::create_dir_all(dir).map_err(|e| (dir.display().to_string(), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| (dir.display().to_string(), e))?;
    let mut secrets = BTreeMap::new();
    for role in ServiceRole::ALL {
        let path = dir.join(format!("{role}.secret"));
        let secret = match read_existing(&path)? {
            Some(secret) if secret.len() >= 32 => secret,
            Some(_) => {
                return Err(Failure(format!(
                    "{}: shorter than 32 characters; remove it to have a new one generated",
                    path.display()
                )))
            }
            None => {
                let mut bytes = [0u8; 24];
                rng.fill(&mut bytes)
                    .map_err(|_| Failure("the system random source failed".into()))?;
                let secret = hex::encode(bytes);
                put_owned(&path, &secret, None)?;
                secret
            }
        };
        secrets.insert(role.as_str(), secret);
    }
    let private_path = dir.join(PRIVATE_PEM);
    let (private_pem, public_pem) = match read_existing(&private_path)? {
        Some(pem) => {
            let public = public_pem_of(&pem)
                .map_err(|e| Failure(format!("{}: {e}", private_path.display())))?;
            (pem, public)
        }
        None => {
            let mut seed = [0u8; 32];
            rng.fill(&mut seed)
                .map_err(|_| Failure("the system random source failed".into()))?;
            let pem = pem("PRIVATE KEY", &[&PKCS8_PREFIX[..], &seed].concat());
            let public = public_pem_of(&pem).map_err(Failure)?;
            put_owned(&private_path, &pem, None)?;
            (pem, public)
        }
    };
    // Derived from the private key every time, so the two can never disagree.
    put_owned(&dir.join(PUBLIC_PEM), &public_pem, Some(root)).map(|_| ())?;
    Ok(Store {
        secrets,
        private_pem,
        public_pem,
    })
}

/// The public key (SPKI PEM) of an Ed25519 PKCS#8 v1 private key in PEM.
fn public_pem_of(private_pem: &str) -> Result<String, String> {
    let der = unpem("PRIVATE KEY", private_pem)?;
    let seed = der
        .strip_prefix(&PKCS8_PREFIX[..])
        .filter(|seed| seed.len() == 32)
        .ok_or("not an Ed25519 PKCS#8 v1 private key (openssl genpkey -algorithm ed25519)")?;
    let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| e.to_string())?;
    Ok(pem(
        "PUBLIC KEY",
        &[&SPKI_PREFIX[..], pair.public_key().as_ref()].concat(),
    ))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(label: &str, text: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| format!("no {begin} ... {end} block"))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("bad base64 in the PEM: {e}"))
}

fn read_existing(path: &Path) -> Result<Option<String>, Failure> {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => Ok(Some(text.trim_end_matches('\n').to_owned()).map(|t| {
            if t.starts_with("-----") {
                format!("{t}\n")
            } else {
                t
            }
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err((path.display().to_string(), e).into()),
    }
}

fn put_dir(dir: &Path, owner: (u32, u32)) -> Result<(), Failure> {
    std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1))
        .map_err(|e| (format!("chown {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| (dir.display().to_string(), e).into())
}

fn put(path: &Path, contents: &str, owner: (u32, u32)) -> Result<(), Failure> {
    put_owned(path, contents, Some(owner))
}

/// `path` holds exactly `contents`, mode 600, owned by `owner` (unchanged when `None`):
/// written aside and renamed into place, so a reader never sees half a file.
fn put_owned(path: &Path, contents: &str, owner: Option<(u32, u32)>) -> Result<(), Failure> {
    let context = || path.display().to_string();
    let same = fs::read_to_string(path).is_ok_and(|old| old == contents);
    if !same {
        let tmp = path.with_extension("new");
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| (context(), e))?;
        file.write_all(contents.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| (context(), e))?;
        fs::rename(&tmp, path).map_err(|e| (context(), e))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| (context(), e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| (format!("chown {}", context()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::token::{TokenKeys, TokenPolicy};

    /// Our own uid and gid (chown to ourselves always succeeds).
    fn me() -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(std::env::current_exe().unwrap()).unwrap();
        (meta.uid(), meta.gid())
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn each_service_gets_its_own_secret_every_hash_and_only_the_registry_the_private_key() {
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("store");
        let services = root.path().join("services");
        for role in ["registry", "socket-server", "message-service"] {
            fs::create_dir_all(services.join(role)).unwrap();
        }
        // A private key left from an earlier layout must go.
        fs::write(services.join("socket-server").join(PRIVATE_PEM), "old").unwrap();
        let handed = run(&store, &services, me()).unwrap();
        assert_eq!(handed.len(), 3);

        let secret = |role: &str| read(&services.join(role).join(SB_SERVICE_SECRET));
        assert_ne!(secret("registry"), secret("socket-server"));
        assert_eq!(secret("registry").len(), 48);
        let keys = read(&services.join("socket-server").join(SB_CALLER_KEYS));
        assert_eq!(keys, read(&services.join("registry").join(SB_CALLER_KEYS)));
        assert!(keys.contains(&format!(
            "socket-server={}",
            secret_hash(&secret("socket-server"))
        )));
        assert_eq!(keys.split(',').count(), ServiceRole::ALL.len());
        assert!(!keys.contains(&secret("registry")));
        assert!(services.join("registry").join(PRIVATE_PEM).exists());
        for role in ["socket-server", "message-service"] {
            assert!(!services.join(role).join(PRIVATE_PEM).exists(), "{role}");
            let mode = fs::metadata(services.join(role).join(SB_SERVICE_SECRET))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // The pair works: the registry's key mints, a verifier's public key checks, and the
        // public key cannot mint.
        let private = fs::read(services.join("registry").join(PRIVATE_PEM)).unwrap();
        let public = fs::read(services.join("socket-server").join(PUBLIC_PEM)).unwrap();
        let minter = TokenKeys::without_keys(TokenPolicy::default())
            .with_ed25519(Some(&public), Some(&private))
            .unwrap();
        let (token, _) = minter
            .mint(
                &switchboard_protocol::UserId::parse("alice").unwrap(),
                chrono::Duration::seconds(60),
            )
            .unwrap();
        let verifier = TokenKeys::without_keys(TokenPolicy::default())
            .with_ed25519(Some(&public), None)
            .unwrap();
        assert_eq!(verifier.verify(&token).unwrap(), "alice");
        assert!(!verifier.can_mint());

        // A second run keeps everything.
        let before = (
            secret("registry"),
            read(&services.join("registry").join(PRIVATE_PEM)),
        );
        run(&store, &services, me()).unwrap();
        assert_eq!(
            before,
            (
                secret("registry"),
                read(&services.join("registry").join(PRIVATE_PEM))
            )
        );
    }

    #[test]
    fn the_key_files_are_what_openssl_makes_and_reads() {
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("store");
        let services = root.path().join("services");
        fs::create_dir_all(services.join("registry")).unwrap();
        run(&store, &services, me()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(store.join(PRIVATE_PEM))
            .output()
            .expect("openssl (Debian package openssl; scripts/install-deps.sh)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            read(&services.join("registry").join(PUBLIC_PEM))
        );
        // And a key openssl generated is taken as the store's own.
        let theirs = root.path().join("theirs");
        fs::create_dir_all(&theirs).unwrap();
        let status = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(theirs.join(PRIVATE_PEM))
            .status()
            .unwrap();
        assert!(status.success());
        let pem = read(&theirs.join(PRIVATE_PEM));
        assert!(public_pem_of(&pem).is_ok());
    }

    #[test]
    fn a_directory_that_is_no_role_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let services = root.path().join("services");
        fs::create_dir_all(services.join("socket-servr")).unwrap();
        let Failure(e) = run(&root.path().join("store"), &services, me()).unwrap_err();
        assert!(e.contains("not a service role"), "{e}");
        fs::remove_dir(services.join("socket-servr")).unwrap();
        let Failure(e) = run(&root.path().join("store"), &services, me()).unwrap_err();
        assert!(e.contains("no service directory"), "{e}");
    }
}
