#![doc = include_str!("../README.md")]

pub mod backup;
pub mod backup_location;
pub mod backup_ready;
pub mod connect;
pub mod journal_store;
pub mod migrate;
mod pg_tools;
pub mod readonly;
pub mod restore;
pub mod sql;
pub mod verify;

pub use journal_store::{PgJournalStore, PgPlanLocker};

use rollback_core::Registry;

/// Registers this crate's kinds: steps `db.migrate_down`, `db.sql`,
/// `db.row_counts_snapshot`, `db.backup`, `db.restore`, `db.read_only`; checks `db.ping`, `db.query`,
/// `db.schema_version`, `db.row_counts`, `db.backup_ready`.
pub fn register(registry: &mut Registry) {
    registry
        .step(
            "db.migrate_down",
            "Revert applied migrations with their .down.sql files, to a version (it stays applied; later ones \
             are reverted) or by N steps; Rails-style, golang-migrate and sqlx ledgers; PostgreSQL or SQLite",
            migrate::MigrateDown::new,
        )
        .step(
            "db.sql",
            "Run an idempotent SQL script in one transaction (PostgreSQL or SQLite)",
            sql::Sql::new,
        )
        .step(
            "db.row_counts_snapshot",
            "Count the rows of tables, for a later db.row_counts check (nothing lost)",
            verify::RowCountsSnapshot::new,
        )
        .step(
            "db.backup",
            "pg_dump (custom/directory) or SQLite online backup, verified; outputs path, host, size, sha256, \
             verified, database, format, taken_at",
            backup::Backup::new,
        )
        .step(
            "db.restore",
            "Restore a backup into a temporary database, verify it, swap it into place (undo swaps back)",
            restore::Restore::new,
        )
        .step(
            "db.read_only",
            "Write stop: on = read-only default + revoke the app role's writes + end its sessions; off = restore \
             exactly that",
            readonly::ReadOnly::new,
        );
    registry
        .verifier(
            "db.ping",
            "Connect and answer SELECT 1 within the check's timeout (pg_isready)",
            verify::Ping::new,
        )
        .verifier(
            "db.query",
            "A query's single value against equals / at_most / at_least",
            verify::Query::new,
        )
        .verifier(
            "db.schema_version",
            "The migration ledger's current version equals / is at least a version",
            verify::SchemaVersion::new,
        )
        .verifier(
            "db.backup_ready",
            "The newest backup exists, is at most max_age old, and is readable (pg_restore --list, or SQLite \
             integrity_check): the pre-deployment checklist's verified backup",
            backup_ready::BackupReady::new,
        )
        .verifier(
            "db.row_counts",
            "No table has fewer rows than a db.row_counts_snapshot step counted earlier in the run",
            verify::RowCounts::new,
        );
}
