//! Support for adapter crates' integration tests.

/// The value of `var`, which names a test server started by
/// `scripts/testenv/*.sh`. When it is missing: panics under CI (a missing
/// server must fail the build) and otherwise prints how to run the test and
/// returns `None`, so `cargo test` on a laptop without the server says what it
/// skipped.
pub fn require_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set under CI: scripts/test.sh starts the test servers")
        }
        _ => {
            eprintln!("skipped: {var} is not set; run ./scripts/test.sh to start the test servers");
            None
        }
    }
}
