//! Where things are: the repository root and the service binaries.

use std::path::PathBuf;

/// The repository (workspace) root: `$SWITCHBOARD_REPO_ROOT` if set, else the parent of this
/// crate's directory as it was at compile time.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("SWITCHBOARD_REPO_ROOT") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
    }
}

/// Path of a service binary: `$SWITCHBOARD_BIN_DIR/<name>` if that variable is set, else
/// `<target dir>/debug/<name>` where the target dir is `$CARGO_TARGET_DIR` (relative paths
/// are taken from the repo root) or `<repo root>/target`.
///
/// Nothing is built here: run `cargo build --workspace --bins` first (`cargo test` does not
/// build the binaries of other crates).
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHBOARD_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join(name);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        None => repo_root().join("target"),
    };
    target.join("debug").join(name)
}
