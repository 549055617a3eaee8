//! Where a backup was taken, and whether this runner can use it.
//!
//! A backup is a file (or a pg_dump folder) on the disk of the runner that
//! took it, or on storage several runners share (`dir:`). Its step's
//! outputs say where: `host`, `path`, `sha256`. A step that needs a backup
//! another step (or an earlier attempt, maybe on another runner) took checks
//! that it is readable here and is the same file; if not, it stops naming
//! the host and path where the backup was taken. It never falls back to
//! another backup: the operator decides.

use std::path::{Path, PathBuf};

use rollback_core::{Outputs, StepContext, StepError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The name of the host this runner runs on, as backups record it.
pub fn this_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// A backup as the outputs of the step that took it describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRef {
    /// The file or pg_dump folder.
    pub path: String,
    /// The host of the runner that wrote it (`None`: outputs of an older
    /// version, which did not say).
    #[serde(default)]
    pub host: Option<String>,
    /// Its SHA-256 as taken (see [`crate::backup::checksum`]).
    #[serde(default)]
    pub sha256: Option<String>,
    /// The step that took it.
    pub step: String,
}

impl BackupRef {
    /// The backup described by a step's outputs (`path`, `host`, `sha256`).
    pub fn from_outputs(step: &str, outputs: &Outputs) -> Option<BackupRef> {
        let text = |name: &str| {
            outputs
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Some(BackupRef {
            path: text("path")?,
            host: text("host"),
            sha256: text("sha256"),
            step: step.to_string(),
        })
    }

    /// The backup at `path` taken by a step completed earlier in this run,
    /// if one was.
    pub fn taken_in_run(ctx: &StepContext, path: &str) -> Option<BackupRef> {
        ctx.completed_outputs()
            .iter()
            .filter_map(|(step, out)| BackupRef::from_outputs(step, out))
            .find(|b| Path::new(&b.path) == Path::new(path))
    }

    fn where_taken(&self) -> String {
        match &self.host {
            Some(host) => format!("written on host {host} at {}", self.path),
            None => format!("at {}", self.path),
        }
    }

    /// Checks that this runner can read the backup and that it is the one
    /// that was taken (same SHA-256). `role` says what it is for, e.g.
    /// `the safety backup`. Nothing is changed either way.
    pub async fn check_here(&self, ctx: &StepContext, role: &str) -> Result<(), StepError> {
        let path = PathBuf::from(&self.path);
        let read = tokio::task::spawn_blocking(move || crate::backup::checksum(&path))
            .await
            .map_err(|e| StepError::fatal("checksum task failed").with_source(e))?;
        let here = this_host();
        let found = match read {
            Ok((_, sha256, _)) => sha256,
            Err(e) => {
                let other_host = self.host.as_deref().is_some_and(|h| h != here);
                let resume_there = match &self.host {
                    Some(host) if other_host => format!(", or resume the run on host {host}"),
                    _ => String::new(),
                };
                return Err(StepError::fatal(ctx.redact(&format!(
                    "{role} (step `{}`) was {}; this runner (host {here}) cannot read it ({e}), so nothing \
                     was changed: put `dir:` on storage every runner of the run can read (shared storage) and \
                     make the backup readable there{resume_there}",
                    self.step,
                    self.where_taken(),
                ))));
            }
        };
        match &self.sha256 {
            Some(recorded) if *recorded != found => Err(StepError::fatal(ctx.redact(&format!(
                "{role} (step `{}`) was {} with SHA-256 {recorded}; the file this runner (host {here}) reads \
                 there has SHA-256 {found}: it changed since, or another file has that path. Nothing was \
                 changed: find the backup that step took and put it back at that path",
                self.step,
                self.where_taken(),
            )))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_backup_is_read_from_its_steps_outputs() {
        let mut out = Outputs::new();
        out.insert("path".into(), json!("/backups/orders.dump"));
        out.insert("host".into(), json!("runner-a"));
        out.insert("sha256".into(), json!("ab"));
        let found = BackupRef::from_outputs("snap", &out).unwrap();
        assert_eq!(found.host.as_deref(), Some("runner-a"));
        assert_eq!(found.step, "snap");
        out.remove("host");
        assert_eq!(BackupRef::from_outputs("snap", &out).unwrap().host, None);
        out.remove("path");
        assert!(BackupRef::from_outputs("snap", &out).is_none());
    }

    #[tokio::test]
    async fn an_unreadable_or_changed_backup_is_refused_naming_host_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = StepContext::standalone("restore", dir.path());
        let path = dir.path().join("orders.dump");
        std::fs::write(&path, b"PGDMP one").unwrap();
        let (_, sha256, _) = crate::backup::checksum(&path).unwrap();
        let backup = BackupRef {
            path: path.to_string_lossy().into_owned(),
            host: Some("runner-a".into()),
            sha256: Some(sha256),
            step: "snap".into(),
        };
        backup.check_here(&ctx, "the safety backup").await.unwrap();

        std::fs::write(&path, b"PGDMP two").unwrap();
        let err = backup
            .check_here(&ctx, "the safety backup")
            .await
            .unwrap_err();
        assert!(err.message().contains("it changed since"), "{err}");

        std::fs::remove_file(&path).unwrap();
        let err = backup
            .check_here(&ctx, "the safety backup")
            .await
            .unwrap_err();
        let message = err.message();
        assert!(
            message.contains(&format!(
                "the safety backup (step `snap`) was written on host runner-a at {}",
                path.display()
            )),
            "{message}"
        );
        assert!(
            message.contains(&format!("this runner (host {})", this_host())),
            "{message}"
        );
        assert!(
            message.contains("put `dir:` on storage every runner"),
            "{message}"
        );
    }
}
