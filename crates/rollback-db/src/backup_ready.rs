//! `db.backup_ready`: seed 000's checklist item "database backup completed and
//! verified", checked rather than ticked. The newest backup (a file, a pg_dump
//! directory, or the newest entry of a folder of backups) must exist, be at
//! most `max_age` old, and be readable: a pg_dump archive that
//! `pg_restore --list` reads and that holds entries, or a SQLite file that
//! passes `PRAGMA integrity_check`. Nothing is connected to or changed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rollback_core::{ConfigError, HumanDuration, Measurement, StepContext, StepError, Verifier};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::backup::sqlite_integrity;
use crate::pg_tools::{Listing, PgTools};

/// Configuration of the `db.backup_ready` check.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupReadyConfig {
    /// A backup (pg_dump custom or tar file, pg_dump directory, SQLite file),
    /// or a folder of backups, of which the newest entry is checked.
    pub path: String,
    /// In a folder, consider only entries whose name contains this text
    /// (e.g. `orders-`).
    #[serde(default)]
    pub name_contains: Option<String>,
    /// Fails when the backup was last modified longer ago than this, e.g. `24h`.
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    /// Folder holding `pg_restore` (default: found on PATH).
    #[serde(default)]
    pub pg_bin_dir: Option<String>,
}

/// The `db.backup_ready` check.
#[derive(Debug)]
pub struct BackupReady {
    config: BackupReadyConfig,
}

/// What a backup file is, by its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Archive {
    PgCustom,
    PgDirectory,
    PgTar,
    Sqlite,
}

impl BackupReady {
    /// Checks the configuration.
    pub fn new(config: BackupReadyConfig) -> Result<Self, ConfigError> {
        if config.path.trim().is_empty() {
            return Err(ConfigError::field("path", "the path is empty"));
        }
        Ok(BackupReady { config })
    }

    fn expected(&self) -> String {
        match self.config.max_age {
            Some(age) => format!("a readable backup modified within {age}"),
            None => "a readable backup".into(),
        }
    }
}

/// The backup `path` names: itself, or the newest matching entry of a folder.
fn newest(path: &Path, name_contains: Option<&str>) -> std::io::Result<Option<PathBuf>> {
    if !path.is_dir() || path.join("toc.dat").is_file() {
        return Ok(path.exists().then(|| path.to_path_buf()));
    }
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Hidden files and half-written ones (`.tmp`, `.partial`) are not backups.
        if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".partial") {
            continue;
        }
        if name_contains.is_some_and(|part| !name.contains(part)) {
            continue;
        }
        let modified = entry.metadata()?.modified()?;
        if best.as_ref().is_none_or(|(t, _)| modified > *t) {
            best = Some((modified, entry.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

fn archive_of(path: &Path) -> Option<Archive> {
    if path.is_dir() {
        return path
            .join("toc.dat")
            .is_file()
            .then_some(Archive::PgDirectory);
    }
    let mut head = [0u8; 512];
    let n = std::io::Read::read(&mut std::fs::File::open(path).ok()?, &mut head).ok()?;
    let head = &head[..n];
    if head.starts_with(b"PGDMP") {
        Some(Archive::PgCustom)
    } else if head.starts_with(b"SQLite format 3\0") {
        Some(Archive::Sqlite)
    } else if n >= 262 && &head[257..262] == b"ustar" && head.starts_with(b"toc.dat") {
        Some(Archive::PgTar)
    } else {
        None
    }
}

fn age_text(age: Duration) -> String {
    humantime::format_duration(Duration::from_secs(age.as_secs())).to_string()
}

#[async_trait]
impl Verifier for BackupReady {
    fn describe(&self) -> String {
        format!("backup at {} is {}", self.config.path, self.expected())
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let expected = self.expected();
        let failed = |observed: String| Ok(Measurement::new(false, observed, expected.clone()));
        let root = PathBuf::from(ctx.resolve(&self.config.path)?);
        let found = newest(&root, self.config.name_contains.as_deref()).map_err(|e| {
            StepError::retryable(format!("cannot read {}", root.display())).with_source(e)
        })?;
        let Some(path) = found else {
            return failed(match &self.config.name_contains {
                Some(part) if root.is_dir() => {
                    format!(
                        "no backup in {} whose name contains `{part}`",
                        root.display()
                    )
                }
                _ if root.is_dir() => format!("no backup in {}", root.display()),
                _ => format!("{} does not exist", root.display()),
            });
        };
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|e| {
                StepError::retryable(format!("cannot stat {}", path.display())).with_source(e)
            })?;
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        let name = path.display();
        let readable = match archive_of(&path) {
            Some(Archive::Sqlite) => sqlite_integrity(&path)
                .await
                .map(|tables| format!("{tables} table(s), PRAGMA integrity_check ok")),
            Some(_) => {
                let tools = PgTools::new(self.config.pg_bin_dir.clone());
                // Only a pg_restore that cannot be run leaves the backup unmeasured.
                match tools.list_archive(ctx, &Default::default(), &path).await? {
                    Listing::Entries(0) => {
                        return failed(format!("{name}: pg_restore --list finds no entries"))
                    }
                    Listing::Entries(entries) => Ok(format!("{entries} entries (pg_restore --list)")),
                    Listing::Unreadable(e) => Err(e),
                }
            }
            None => {
                return failed(format!(
                    "{name} is neither a pg_dump archive (custom, directory or tar format) nor a SQLite \
                     database; a plain SQL dump cannot be verified without restoring it: use pg_dump -Fc"
                ))
            }
        };
        let readable = match readable {
            Ok(evidence) => evidence,
            Err(e) => return failed(format!("{name}: {}", e.full_message())),
        };
        let recent = self.config.max_age.is_none_or(|max| age <= max.get());
        Ok(Measurement::new(
            recent,
            format!("{name}: {} old, {readable}", age_text(age)),
            expected,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_matching_backup_and_knows_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.path().join(name), bytes).unwrap();
            // Distinct modification times, oldest first.
            std::thread::sleep(Duration::from_millis(20));
        };
        write("orders-1.dump", b"PGDMP\x01\x0e");
        write("users-1.dump", b"PGDMP\x01\x0e");
        write("orders-2.dump", b"PGDMP\x01\x0e");
        write("orders-3.dump.tmp", b"PGDMP");
        write(".orders-4.dump", b"PGDMP");
        let newest_orders = newest(dir.path(), Some("orders-")).unwrap().unwrap();
        assert!(
            newest_orders.ends_with("orders-2.dump"),
            "{}",
            newest_orders.display()
        );
        assert!(newest(dir.path(), Some("payments-")).unwrap().is_none());
        assert_eq!(archive_of(&newest_orders), Some(Archive::PgCustom));

        std::fs::write(dir.path().join("app.db"), b"SQLite format 3\0rest").unwrap();
        assert_eq!(
            archive_of(&dir.path().join("app.db")),
            Some(Archive::Sqlite)
        );
        std::fs::write(
            dir.path().join("plain.sql"),
            b"-- PostgreSQL database dump\n",
        )
        .unwrap();
        assert_eq!(archive_of(&dir.path().join("plain.sql")), None);

        let pg_dir = dir.path().join("orders.dir");
        std::fs::create_dir(&pg_dir).unwrap();
        std::fs::write(pg_dir.join("toc.dat"), b"PGDMP").unwrap();
        // A pg_dump directory is one backup, not a folder of them.
        assert_eq!(newest(&pg_dir, None).unwrap().unwrap(), pg_dir);
        assert_eq!(archive_of(&pg_dir), Some(Archive::PgDirectory));
    }
}
