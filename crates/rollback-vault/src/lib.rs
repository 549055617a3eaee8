#![doc = include_str!("../README.md")]

mod check;
mod connection;
pub mod error;
mod kv;
mod read;
mod rollback;
mod validate;

pub use check::{KvVersion, KvVersionConfig};
pub use connection::{AppRole, Auth};
pub use error::{Error, Result};
pub use kv::VersionRef;
pub use read::{KvRead, KvReadConfig, KvSnapshot, KvSnapshotConfig};
pub use rollback::{KvRollback, KvRollbackConfig};
pub use validate::ValidateCommand;

use rollback_core::Registry;

/// Registers this crate's kinds: steps `vault.kv_rollback`, `vault.kv_read`,
/// `vault.kv_snapshot`; verifier `vault.kv_version`.
pub fn register(registry: &mut Registry) {
    registry
        .step(
            "vault.kv_rollback",
            "Put an earlier version of a Vault KV v2 secret back, validated, with check-and-set",
            KvRollback::new,
        )
        .step(
            "vault.kv_read",
            "Read a Vault KV v2 secret (keys and hash as outputs; data optionally to a private file)",
            KvRead::new,
        )
        .step(
            "vault.kv_snapshot",
            "Record a Vault KV v2 secret's current version and metadata",
            KvSnapshot::new,
        );
    registry.verifier(
        "vault.kv_version",
        "Check a Vault KV v2 secret's current version (equals / at least)",
        KvVersion::new,
    );
}
