//! Migration ledgers: the table a migration tool keeps of what it applied.
//!
//! | ledger | table | applied versions |
//! |---|---|---|
//! | Rails-style | `schema_migrations(version)` | one row per applied version |
//! | golang-migrate | `schema_migrations(version bigint, dirty boolean)` | one row: the current version; every migration up to it is applied |
//! | sqlx | `_sqlx_migrations(version, description, installed_on, success, checksum, execution_time)` | one row per applied version |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rollback_core::StepError;
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha384};

use super::files::{MigrationFiles, Version};
use crate::connect::{query_error, Backend, Db};

/// Which ledger a database keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum LedgerChoice {
    /// Detect it: `_sqlx_migrations` → sqlx; `schema_migrations` with a
    /// `dirty` column → golang-migrate; `schema_migrations` otherwise →
    /// Rails-style.
    #[default]
    Auto,
    /// Rails-style `schema_migrations(version)`, one row per migration.
    Rails,
    /// golang-migrate's `schema_migrations(version, dirty)`, one row.
    GolangMigrate,
    /// sqlx's `_sqlx_migrations`.
    Sqlx,
}

/// A detected ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ledger {
    /// Rails-style `schema_migrations(version)`.
    Rails,
    /// golang-migrate's `schema_migrations(version, dirty)`.
    GolangMigrate,
    /// sqlx's `_sqlx_migrations`.
    Sqlx,
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ledger::Rails => "rails",
            Ledger::GolangMigrate => "golang_migrate",
            Ledger::Sqlx => "sqlx",
        })
    }
}

const RAILS_TABLE: &str = "schema_migrations";
const SQLX_TABLE: &str = "_sqlx_migrations";

/// Finds the ledger (or checks the one the plan names).
pub async fn detect(db: &mut Db, choice: LedgerChoice) -> Result<Ledger, StepError> {
    let has_sqlx = db.table_exists(None, SQLX_TABLE).await?;
    let schema_columns = db.columns(None, RAILS_TABLE).await?;
    let has_schema = !schema_columns.is_empty();
    let has_dirty = schema_columns
        .iter()
        .any(|c| c.eq_ignore_ascii_case("dirty"));
    let missing = |what: &str| {
        StepError::fatal(format!(
            "no {what} table in this database: is it the right database, and was it migrated by that tool? \
             (set `ledger:` to the tool that migrated it, or leave it on auto)"
        ))
    };
    match choice {
        LedgerChoice::Auto => {
            if has_sqlx && has_schema {
                Err(StepError::fatal(
                    "both _sqlx_migrations and schema_migrations exist: say which ledger to use with \
                     `ledger: sqlx`, `ledger: rails` or `ledger: golang_migrate`",
                ))
            } else if has_sqlx {
                Ok(Ledger::Sqlx)
            } else if has_schema && has_dirty {
                Ok(Ledger::GolangMigrate)
            } else if has_schema {
                Ok(Ledger::Rails)
            } else {
                Err(missing("migration ledger (_sqlx_migrations or schema_migrations)"))
            }
        }
        LedgerChoice::Sqlx if has_sqlx => Ok(Ledger::Sqlx),
        LedgerChoice::Sqlx => Err(missing(SQLX_TABLE)),
        LedgerChoice::GolangMigrate if has_dirty => Ok(Ledger::GolangMigrate),
        LedgerChoice::GolangMigrate => Err(missing("golang-migrate schema_migrations(version, dirty)")),
        LedgerChoice::Rails if has_schema && !has_dirty => Ok(Ledger::Rails),
        LedgerChoice::Rails if has_dirty => Err(StepError::fatal(
            "schema_migrations has a `dirty` column: it is golang-migrate's ledger; write `ledger: golang_migrate`",
        )),
        LedgerChoice::Rails => Err(missing(RAILS_TABLE)),
    }
}

/// What a ledger says is applied.
#[derive(Debug, Clone)]
pub struct LedgerState {
    /// Which ledger.
    pub ledger: Ledger,
    /// Applied versions (for golang-migrate: every migration file up to the
    /// current version).
    pub applied: BTreeSet<Version>,
    /// The newest applied version (golang-migrate: the row's version).
    pub current: Option<Version>,
    /// sqlx: the SHA-384 of each applied version's up file as recorded when
    /// it was applied (empty for the other ledgers, which keep none).
    pub checksums: BTreeMap<Version, Vec<u8>>,
}

/// A ledger that records a half-applied migration.
pub fn dirty_error(ledger: Ledger, version: &str) -> StepError {
    match ledger {
        Ledger::GolangMigrate => StepError::fatal(format!(
            "golang-migrate's schema_migrations says version {version} is dirty: a migration failed half-way and \
             nobody knows which of its statements ran. rollback never clears this flag itself. Inspect the schema \
             and bring it by hand to the state of a version (usually the one before {version}, or {version} \
             itself), then record that version with `migrate -path <migrations> -database <url> force <VERSION>` \
             and run this plan again"
        )),
        _ => StepError::fatal(format!(
            "_sqlx_migrations says version {version} failed (success = false): sqlx treats the database as dirty. \
             Inspect the schema, finish or undo that migration by hand, then delete its row \
             (DELETE FROM _sqlx_migrations WHERE version = {version}) or re-run `sqlx migrate run`, and run \
             this plan again"
        )),
    }
}

/// Reads the ledger. A dirty golang-migrate row or a failed sqlx migration is
/// an error with guidance: nothing may run on top of it.
pub async fn read(
    db: &mut Db,
    ledger: Ledger,
    files: &BTreeMap<Version, MigrationFiles>,
) -> Result<LedgerState, StepError> {
    let read_err = |e| query_error("reading the migration ledger", e);
    match ledger {
        Ledger::Rails => {
            // Rails keeps text; other tools may keep integers: read as text.
            let sql = "SELECT CAST(version AS TEXT) FROM schema_migrations";
            let rows: Vec<Option<String>> = crate::connect::with_conn!(db, c => sqlx::query_scalar(sql).fetch_all(&mut *c).await)
                .map_err(read_err)?;
            let mut applied = BTreeSet::new();
            for v in rows.into_iter().flatten() {
                let version = Version::parse(&v).ok_or_else(|| {
                    StepError::fatal(format!(
                        "schema_migrations holds version `{v}`, which is not a number: rollback orders versions \
                         numerically; fix the row or use another tool"
                    ))
                })?;
                applied.insert(version);
            }
            let current = applied.iter().next_back().cloned();
            Ok(LedgerState {
                ledger,
                applied,
                current,
                checksums: BTreeMap::new(),
            })
        }
        Ledger::GolangMigrate => {
            let sql = "SELECT version, dirty FROM schema_migrations";
            let rows: Vec<(i64, bool)> =
                crate::connect::with_conn!(db, c => sqlx::query_as(sql).fetch_all(&mut *c).await)
                    .map_err(read_err)?;
            match rows.as_slice() {
                [] => Ok(LedgerState {
                    ledger,
                    applied: BTreeSet::new(),
                    current: None,
                    checksums: BTreeMap::new(),
                }),
                [(version, dirty)] => {
                    if *dirty {
                        return Err(dirty_error(ledger, &version.to_string()));
                    }
                    if *version < 0 {
                        return Ok(LedgerState {
                            ledger,
                            applied: BTreeSet::new(),
                            current: None,
                            checksums: BTreeMap::new(),
                        });
                    }
                    let current = Version::parse(&version.to_string()).expect("digits");
                    let applied = files
                        .keys()
                        .filter(|v| **v <= current)
                        .cloned()
                        .collect();
                    Ok(LedgerState {
                        ledger,
                        applied,
                        current: Some(current),
                        checksums: BTreeMap::new(),
                    })
                }
                _ => Err(StepError::fatal(format!(
                    "golang-migrate's schema_migrations holds {} rows; it keeps exactly one. Find out which \
                     version the schema is at, then `migrate force <VERSION>`",
                    rows.len()
                ))),
            }
        }
        Ledger::Sqlx => {
            let sql = "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version";
            let rows: Vec<(i64, bool, Vec<u8>)> =
                crate::connect::with_conn!(db, c => sqlx::query_as(sql).fetch_all(&mut *c).await)
                    .map_err(read_err)?;
            if let Some((version, _, _)) = rows.iter().find(|(_, ok, _)| !ok) {
                return Err(dirty_error(ledger, &version.to_string()));
            }
            let checksums: BTreeMap<Version, Vec<u8>> = rows
                .into_iter()
                .filter_map(|(v, _, sum)| Some((Version::parse(&v.to_string())?, sum)))
                .collect();
            let applied: BTreeSet<Version> = checksums.keys().cloned().collect();
            let current = applied.iter().next_back().cloned();
            Ok(LedgerState {
                ledger,
                applied,
                current,
                checksums,
            })
        }
    }
}

/// How a ledger records one migration going away or coming back.
#[derive(Debug, Clone)]
pub enum LedgerChange {
    /// Rails: delete the version's row.
    RemoveRails(Version),
    /// sqlx: delete the version's row.
    RemoveSqlx(Version),
    /// golang-migrate: the single row becomes this version (none: the table
    /// is emptied, as golang-migrate does below the first version).
    SetGolang(Option<Version>),
    /// Rails: insert the version's row.
    InsertRails(Version),
    /// sqlx: insert the version's row as sqlx's Migrator would.
    InsertSqlx {
        /// The version.
        version: Version,
        /// The description (name with spaces).
        description: String,
        /// SHA-384 of the up file's text.
        checksum: Vec<u8>,
    },
}

/// sqlx's checksum of a migration: SHA-384 of its SQL.
pub fn sqlx_checksum(sql: &str) -> Vec<u8> {
    Sha384::digest(sql.as_bytes()).to_vec()
}

fn version_i64(v: &Version) -> Result<i64, StepError> {
    v.as_i64()
        .ok_or_else(|| StepError::fatal(format!("version {v} does not fit a bigint")))
}

/// A bound value.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
    Bool(bool),
    Bytes(Vec<u8>),
}

/// Binds `binds` to `stmt` and executes it on `executor`.
macro_rules! execute_bound {
    ($stmt:expr, $binds:expr, $executor:expr) => {{
        let mut q = sqlx::query($stmt);
        for b in $binds {
            q = match b {
                Bind::Text(t) => q.bind(t.clone()),
                Bind::Int(i) => q.bind(*i),
                Bind::Bool(x) => q.bind(*x),
                Bind::Bytes(x) => q.bind(x.clone()),
            };
        }
        q.execute($executor).await
    }};
}

fn statements_for(
    change: &LedgerChange,
    backend: Backend,
    execution_ns: i64,
) -> Result<Vec<(String, Vec<Bind>)>, StepError> {
    let (p1, p2, p3, p4) = match backend {
        Backend::Postgres => ("$1", "$2", "$3", "$4"),
        Backend::Sqlite => ("?1", "?2", "?3", "?4"),
    };
    Ok(match change {
        LedgerChange::RemoveRails(v) => vec![(
            format!("DELETE FROM schema_migrations WHERE CAST(version AS TEXT) = {p1}"),
            vec![Bind::Text(v.as_str().to_string())],
        )],
        LedgerChange::RemoveSqlx(v) => vec![(
            format!("DELETE FROM _sqlx_migrations WHERE version = {p1}"),
            vec![Bind::Int(version_i64(v)?)],
        )],
        LedgerChange::SetGolang(version) => {
            let mut out = vec![("DELETE FROM schema_migrations".to_string(), vec![])];
            if let Some(v) = version {
                out.push((
                    format!("INSERT INTO schema_migrations (version, dirty) VALUES ({p1}, {p2})"),
                    vec![Bind::Int(version_i64(v)?), Bind::Bool(false)],
                ));
            }
            out
        }
        LedgerChange::InsertRails(v) => vec![(
            format!("INSERT INTO schema_migrations (version) VALUES ({p1})"),
            vec![Bind::Text(v.as_str().to_string())],
        )],
        LedgerChange::InsertSqlx {
            version,
            description,
            checksum,
        } => vec![(
            format!(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES ({p1}, {p2}, TRUE, {p3}, {p4})"
            ),
            vec![
                Bind::Int(version_i64(version)?),
                Bind::Text(description.clone()),
                Bind::Bytes(checksum.clone()),
                Bind::Int(execution_ns),
            ],
        )],
    })
}

/// Runs `sql`, then records `change`: together in one transaction, or one
/// after the other when the migration says `-- no-transaction` (as sqlx
/// does; a failure between the two is then reported with what to fix).
pub async fn apply(
    db: &mut Db,
    sql: &str,
    change: &LedgerChange,
    transaction: bool,
    execution_ns: i64,
) -> Result<(), StepError> {
    let statements = statements_for(change, db.backend(), execution_ns)?;
    if transaction {
        crate::connect::with_conn!(db, c => {
            use sqlx::Connection;
            let mut tx = c
                .begin()
                .await
                .map_err(|e| query_error("starting a transaction", e))?;
            sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(sql)).await.map_err(|e| {
                query_error(
                    "the migration's SQL failed (its transaction was rolled back: nothing changed)",
                    e,
                )
            })?;
            for (stmt, binds) in &statements {
                execute_bound!(stmt, binds, &mut *tx).map_err(|e| {
                    query_error(
                        "updating the migration ledger failed (the transaction was rolled back: nothing changed)",
                        e,
                    )
                })?;
            }
            tx.commit()
                .await
                .map_err(|e| query_error("committing the migration", e))?;
        });
    } else {
        crate::connect::with_conn!(db, c => {
            sqlx::Executor::execute(&mut *c, sqlx::raw_sql(sql)).await.map_err(|e| {
                query_error(
                    "the migration's SQL failed; it is marked `-- no-transaction`, so some of its statements may \
                     have run: inspect the schema, finish or undo them by hand, then run again",
                    e,
                )
            })?;
            for (stmt, binds) in &statements {
                execute_bound!(stmt, binds, &mut *c).map_err(|e| {
                    query_error(
                        "the migration's SQL ran (outside a transaction: `-- no-transaction`) but updating the \
                         ledger failed: the schema has changed while the ledger has not; record the change by hand",
                        e,
                    )
                })?;
            }
        });
    }
    Ok(())
}

/// sqlx's advisory lock id for a database (sqlx's Migrator takes the same
/// lock on PostgreSQL, so the two never migrate at once):
/// `0x3d32ad9e * crc32(database name)`.
pub fn sqlx_lock_id(database_name: &str) -> i64 {
    0x3d32ad9e_i64 * i64::from(crc32(database_name.as_bytes()))
}

/// CRC-32 (ISO HDLC, the common one).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            sqlx_lock_id("postgres"),
            0x3d32ad9e_i64 * i64::from(crc32(b"postgres"))
        );
    }

    #[test]
    fn golang_down_to_nothing_empties_the_table() {
        let stmts = statements_for(&LedgerChange::SetGolang(None), Backend::Postgres, 0).unwrap();
        assert_eq!(stmts.len(), 1);
        let stmts = statements_for(
            &LedgerChange::SetGolang(Version::parse("3")),
            Backend::Sqlite,
            0,
        )
        .unwrap();
        assert_eq!(
            stmts[1].0,
            "INSERT INTO schema_migrations (version, dirty) VALUES (?1, ?2)"
        );
    }
}
