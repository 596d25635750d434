//! Holds only the `e2e` integration test binary (see `tests/e2e/main.rs`).
