//! Does the migrations folder describe the history the ledger records?
//!
//! A down file only undoes what its own up file did. When the folder is not
//! the one the database was migrated with (an older release's checkout, files
//! lost in a squash, a wrong `migrations:` path), running its down files
//! reverts the wrong things and records a version the schema is not at. Each
//! tool refuses to move in that case (golang-migrate: "no migration found for
//! version N"; sqlx: a missing or unknown version; Rails: an unknown
//! migration version), and so does `db.migrate_down`, before it changes
//! anything.
//!
//! | disagreement | ledgers |
//! |---|---|
//! | the ledger's current version has no file in the folder | all three |
//! | `to_version` has no file in the folder (`0` needs none) | all three |
//! | `to_version` is not applied (newer than the database, or a gap) | all three |
//! | a version to revert has no file, or no down file | all three |
//! | a version to revert has an up file other than the one applied (checksum) | sqlx (the only one that records it) |
//!
//! golang-migrate keeps only the current version: the folder's versions at or
//! below it are taken as applied, as golang-migrate does, so a file missing
//! *below* the current version cannot be seen; its neighbour is reverted to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rollback_core::StepError;

use super::files::{MigrationFiles, Version};
use super::ledger::{sqlx_checksum, Ledger, LedgerState};

/// The versions of the folder, for an error message: all of them when there
/// are few, the range and the newest ones otherwise.
pub fn folder_versions(files: &BTreeMap<Version, MigrationFiles>) -> String {
    const SHOWN: usize = 12;
    let versions: Vec<String> = files.keys().map(Version::to_string).collect();
    match versions.as_slice() {
        [] => "no migration files".into(),
        all if all.len() <= SHOWN => format!("versions {}", all.join(", ")),
        all => format!(
            "{} versions from {} to {} (the newest: {})",
            all.len(),
            all[0],
            all[all.len() - 1],
            all[all.len() - 5..].join(", ")
        ),
    }
}

/// What the ledger holds, for an error message.
fn ledger_versions(state: &LedgerState) -> String {
    match state.ledger {
        Ledger::GolangMigrate => match &state.current {
            Some(v) => format!("version {v}"),
            None => "no version".into(),
        },
        _ => {
            let applied: Vec<String> = state.applied.iter().map(Version::to_string).collect();
            match applied.len() {
                0 => "nothing applied".into(),
                n if n <= 12 => format!("applied {}", applied.join(", ")),
                n => format!("{n} applied, the newest {}", applied[n - 5..].join(", ")),
            }
        }
    }
}

const POINT_AT_RELEASE: &str =
    "or point `migrations:` at the migrations folder of the release that migrated this \
                                database";

/// Refuses when the ledger's current version, or the target, has no file in
/// the folder, or the target is not applied.
pub fn check_positions(
    dir: &Path,
    files: &BTreeMap<Version, MigrationFiles>,
    state: &LedgerState,
    target: Option<&Version>,
) -> Result<(), StepError> {
    let folder = folder_versions(files);
    if let Some(current) = &state.current {
        if !files.contains_key(current) {
            return Err(StepError::fatal(format!(
                "the {} ledger says the database is at version {current}, but {} has no migration file for \
                 {current} (it has {folder}): rollback cannot know what {current} changed or what to go back to, \
                 so nothing was changed. Restore the missing {current}_<name>.down.sql and .up.sql files, \
                 {POINT_AT_RELEASE}",
                state.ledger,
                dir.display()
            )));
        }
    }
    let Some(target) = target.filter(|t| t.number() != 0) else {
        return Ok(());
    };
    if !files.contains_key(target) {
        return Err(StepError::fatal(format!(
            "to_version {target} has no migration file in {} (it has {folder}), so nothing was changed: check \
             `to_version` (one of those versions, or 0 to revert everything), {POINT_AT_RELEASE}",
            dir.display()
        )));
    }
    if !state.applied.contains(target) {
        return Err(StepError::fatal(format!(
            "to_version {target} is not applied (the {} ledger has {}), so nothing was changed: \
             db.migrate_down only reverts, and {target} would have to be applied to stay applied. Check \
             `to_version` and that `url` names the database you mean",
            state.ledger,
            ledger_versions(state)
        )));
    }
    Ok(())
}

/// The files of a version about to be reverted, and its down file; refuses
/// when the folder cannot revert what the ledger applied.
pub fn revertible<'a>(
    dir: &Path,
    files: &'a BTreeMap<Version, MigrationFiles>,
    state: &LedgerState,
    version: &Version,
) -> Result<(&'a MigrationFiles, &'a PathBuf), StepError> {
    let Some(found) = files.get(version) else {
        return Err(StepError::fatal(format!(
            "version {version} is applied but {} has no files for it (it has {}), so nothing was changed: \
             restore its {version}_<name>.down.sql, {POINT_AT_RELEASE}",
            dir.display(),
            folder_versions(files)
        )));
    };
    let Some(down) = &found.down else {
        return Err(StepError::fatal(format!(
            "version {version} ({}) has no down migration in {}, so nothing was changed: write \
             {version}_{}.down.sql, or restore a backup instead",
            found.name,
            dir.display(),
            found.name
        )));
    };
    if let (Some(recorded), Some(up)) = (state.checksums.get(version), &found.up) {
        let sql = std::fs::read_to_string(up).map_err(|e| {
            StepError::fatal(format!("cannot read {}: {e}", up.display())).with_source(e)
        })?;
        if sqlx_checksum(&sql) != *recorded {
            return Err(StepError::fatal(format!(
                "{} is not the migration this database applied as version {version}: its checksum differs \
                 from the one in _sqlx_migrations (`sqlx migrate info` shows it), so its down file may undo \
                 something else; nothing was changed. Restore the release's {version}_{} files, \
                 {POINT_AT_RELEASE}",
                up.display(),
                found.name
            )));
        }
    }
    Ok((found, down))
}
