//! `git.restore`: put files of a git working tree back as they were at a
//! revision (`git checkout HEAD~1 -- .env.production nginx.conf`), keeping a
//! copy of what it replaces so that undo can put it back.
//!
//! Only the working tree changes; the index and `HEAD` are left alone, so
//! `git status` shows the restored files as modified.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::registry::ConfigError;
use crate::step::{OutputNames, Outputs, Preview, Step, StepContext, StepError};

/// Configuration of the `git.restore` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitRestoreConfig {
    /// The working tree: its top folder or a folder inside it. `paths` are
    /// relative to this folder.
    pub repo: String,
    /// The revision to take the files from: `HEAD~1`, a tag, a branch or a
    /// commit sha. It is resolved to a commit once per run.
    pub revision: String,
    /// Files to restore, relative to `repo` (no absolute paths, no `..`). Each
    /// must exist at `revision`; one missing here is created.
    pub paths: Vec<String>,
}

/// The `git.restore` step.
#[derive(Debug)]
pub struct GitRestore {
    config: GitRestoreConfig,
}

fn is_template(s: &str) -> bool {
    s.contains("${")
}

/// `path` relative to the repository, with `.` components removed; absolute
/// paths and `..` are refused.
fn normalize_path(path: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => match part.to_str() {
                Some(part) => parts.push(part),
                None => return Err(format!("`{path}` is not valid UTF-8")),
            },
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "`{path}` goes up with `..`: give a path inside `repo`"
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("`{path}` is absolute: give it relative to `repo`"));
            }
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "`{path}` names the whole folder: list the files to restore"
        ));
    }
    Ok(parts.join("/"))
}

fn check_revision(revision: &str) -> Result<(), String> {
    if revision.trim().is_empty() {
        Err("must not be empty: give e.g. HEAD~1, a tag or a commit sha".into())
    } else if revision.starts_with('-') {
        Err(format!(
            "`{revision}` looks like an option: give e.g. HEAD~1, a tag or a commit sha"
        ))
    } else {
        Ok(())
    }
}

impl GitRestore {
    /// Checks the configuration.
    pub fn new(config: GitRestoreConfig) -> Result<Self, ConfigError> {
        if config.repo.trim().is_empty() {
            return Err(ConfigError::field(
                "repo",
                "must not be empty: give the working tree's folder",
            ));
        }
        if !is_template(&config.revision) {
            check_revision(&config.revision).map_err(|m| ConfigError::field("revision", m))?;
        }
        if config.paths.is_empty() {
            return Err(ConfigError::field(
                "paths",
                "must not be empty: list the files to restore",
            ));
        }
        for (i, path) in config.paths.iter().enumerate() {
            if !is_template(path) {
                normalize_path(path).map_err(|m| ConfigError::field(format!("paths[{i}]"), m))?;
            }
        }
        Ok(GitRestore { config })
    }
}

/// Runs `git -C repo ...` without a shell.
struct Git<'a> {
    ctx: &'a StepContext,
    repo: &'a str,
}

impl Git<'_> {
    async fn output(&self, args: &[&str]) -> Result<std::process::Output, StepError> {
        tokio::process::Command::new("git")
            .arg("-C")
            .arg(self.repo)
            .args(args)
            // Paths are file names, never patterns.
            .env("GIT_LITERAL_PATHSPECS", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                let message = if e.kind() == std::io::ErrorKind::NotFound {
                    "git not found on PATH: install git".to_string()
                } else {
                    format!("cannot start git: {e}")
                };
                StepError::fatal(message).with_source(e)
            })
    }

    /// Runs git and returns its stdout, trimmed; a failure is a fatal error.
    async fn ok(&self, args: &[&str]) -> Result<String, StepError> {
        let output = self.output(args).await?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).trim().to_string());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let first = stderr.lines().next().unwrap_or("no message");
        let message = format!(
            "`git -C {} {}` failed ({}): {first}",
            self.repo,
            args.join(" "),
            output.status
        );
        Err(StepError::fatal(self.ctx.redact(&message)).with_detail(self.ctx.redact(&stderr)))
    }

    /// Runs git and says whether it succeeded, with its stdout.
    async fn try_ok(&self, args: &[&str]) -> Result<Option<String>, StepError> {
        let output = self.output(args).await?;
        Ok(output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string()))
    }
}

/// How a path in the working tree compares with the revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Same,
    Differs,
    Missing,
}

/// The state of every path, read without changing anything.
struct Survey {
    repo: String,
    revision: String,
    sha: String,
    paths: Vec<(String, Local)>,
}

impl Survey {
    fn short_sha(&self) -> &str {
        &self.sha[..self.sha.len().min(7)]
    }

    fn changed(&self) -> Vec<&str> {
        self.paths
            .iter()
            .filter(|(_, l)| *l != Local::Same)
            .map(|(p, _)| p.as_str())
            .collect()
    }
}

impl GitRestore {
    async fn survey(&self, ctx: &StepContext) -> Result<Survey, StepError> {
        let repo = ctx.resolve(&self.config.repo)?;
        let revision = ctx.resolve(&self.config.revision)?;
        check_revision(&revision)
            .map_err(|m| StepError::fatal(ctx.redact(&format!("revision {m}"))))?;
        let mut paths = Vec::new();
        for path in &self.config.paths {
            let path = normalize_path(&ctx.resolve(path)?)
                .map_err(|m| StepError::fatal(ctx.redact(&m)))?;
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        if !Path::new(&repo).is_dir() {
            return Err(StepError::fatal(ctx.redact(&format!(
                "repository folder `{repo}` does not exist: check `repo`"
            ))));
        }
        let git = Git { ctx, repo: &repo };
        if git
            .try_ok(&["rev-parse", "--is-inside-work-tree"])
            .await?
            .as_deref()
            != Some("true")
        {
            return Err(StepError::fatal(ctx.redact(&format!(
                "`{repo}` is not inside a git working tree: check `repo` (a bare repository has no files to restore)"
            ))));
        }
        let Some(sha) = git
            .try_ok(&[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{revision}^{{commit}}"),
            ])
            .await?
        else {
            return Err(StepError::fatal(ctx.redact(&format!(
                "revision `{revision}` not found in `{repo}`: list the commits with `git -C {repo} log --oneline` \
                 (and `git fetch` if it was made elsewhere)"
            ))));
        };
        let short = &sha[..sha.len().min(7)];

        let mut states = Vec::new();
        let mut present = Vec::new();
        for path in &paths {
            let spec = format!("{sha}:./{path}");
            let Some(blob) = git
                .try_ok(&["rev-parse", "--verify", "--quiet", &spec])
                .await?
            else {
                return Err(StepError::fatal(ctx.redact(&format!(
                    "`{path}` does not exist at {revision} ({short}): check the path (relative to `{repo}`); \
                     `git -C {repo} ls-tree -r --name-only {short}` lists the files there"
                ))));
            };
            let kind = git.ok(&["cat-file", "-t", &blob]).await?;
            if kind != "blob" {
                return Err(StepError::fatal(ctx.redact(&format!(
                    "`{path}` is a {kind} at {revision} ({short}), not a file: list the files to restore one by one"
                ))));
            }
            let local = Path::new(&repo).join(path);
            match std::fs::symlink_metadata(&local) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    states.push((path.clone(), Local::Missing))
                }
                Err(e) => {
                    return Err(StepError::fatal(
                        ctx.redact(&format!("cannot read `{}`: {e}", local.display())),
                    ));
                }
                Ok(meta) if meta.is_dir() => {
                    return Err(StepError::fatal(ctx.redact(&format!(
                        "`{path}` is a file at {revision} ({short}) but a folder in `{repo}`: move the folder away \
                         first"
                    ))));
                }
                Ok(_) => {
                    present.push((states.len(), blob));
                    states.push((path.clone(), Local::Same));
                }
            }
        }
        if !present.is_empty() {
            let mut args = vec!["hash-object", "--"];
            args.extend(present.iter().map(|(i, _)| states[*i].0.as_str()));
            let hashes = git.ok(&args).await?;
            let hashes: Vec<&str> = hashes.lines().collect();
            if hashes.len() != present.len() {
                return Err(StepError::fatal(format!(
                    "`git hash-object` printed {} hashes for {} files: check the git installation",
                    hashes.len(),
                    present.len()
                )));
            }
            for ((i, blob), hash) in present.iter().zip(hashes) {
                if hash.trim() != blob {
                    states[*i].1 = Local::Differs;
                }
            }
        }
        Ok(Survey {
            repo,
            revision,
            sha,
            paths: states,
        })
    }
}

/// What `run` replaced, kept beside the copies in the backup folder so that
/// undo works even if the run was interrupted and resumed.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    repo: String,
    /// Path → whether it existed before the first run changed it.
    existed: BTreeMap<String, bool>,
}

const MANIFEST: &str = "manifest.json";

fn io_error(ctx: &StepContext, what: String, e: std::io::Error) -> StepError {
    StepError::fatal(ctx.redact(&format!("{what}: {e}"))).with_source(e)
}

fn load_manifest(ctx: &StepContext, dir: &Path) -> Result<Option<Manifest>, StepError> {
    let file = dir.join(MANIFEST);
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            StepError::fatal(ctx.redact(&format!(
                "backup manifest `{}` is damaged ({e}): restore the files by hand from the copies beside it",
                file.display()
            )))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(ctx, format!("cannot read `{}`", file.display()), e)),
    }
}

fn save_manifest(ctx: &StepContext, dir: &Path, manifest: &Manifest) -> Result<(), StepError> {
    let file = dir.join(MANIFEST);
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let bytes = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| io_error(ctx, format!("cannot write `{}`", file.display()), e))
}

fn backup_copy(dir: &Path, path: &str) -> PathBuf {
    dir.join("files").join(path)
}

fn copy_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).map(drop)
}

#[async_trait]
impl Step for GitRestore {
    fn describe(&self) -> String {
        format!(
            "restore {} from {} in {}",
            self.config.paths.join(", "),
            self.config.revision,
            self.config.repo
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["revision", "changed", "backup_dir"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let survey = self.survey(ctx).await?;
        let short = survey.short_sha();
        let changes: Vec<String> = survey
            .paths
            .iter()
            .filter_map(|(path, local)| match local {
                Local::Same => None,
                Local::Differs => Some(format!("{path}: restore from {short} (differs)")),
                Local::Missing => Some(format!("{path}: restore from {short} (missing here)")),
            })
            .collect();
        let summary = if changes.is_empty() {
            format!(
                "{} already match {} ({short}) in {}",
                survey.paths.len(),
                survey.revision,
                survey.repo
            )
        } else {
            format!(
                "restore {} of {} file(s) from {} ({short}) in {}",
                changes.len(),
                survey.paths.len(),
                survey.revision,
                survey.repo
            )
        };
        Ok(Preview::new(
            ctx.redact(&summary),
            changes.iter().map(|c| ctx.redact(c)).collect(),
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let survey = self.survey(ctx).await?;
        let changed = survey.changed();
        let backup_dir = ctx
            .artifact_dir()
            .map_err(|e| io_error(ctx, "cannot create the backup folder".into(), e))?;
        if !changed.is_empty() {
            // Keep the first copy of each file: after an interrupted run, the
            // working tree may already hold the restored version.
            let mut manifest = match load_manifest(ctx, &backup_dir)? {
                Some(manifest) => manifest,
                None => Manifest {
                    // Absolute, so that undo finds the files from any folder.
                    repo: std::fs::canonicalize(&survey.repo)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| survey.repo.clone()),
                    existed: BTreeMap::new(),
                },
            };
            for path in &changed {
                if manifest.existed.contains_key(*path) {
                    continue;
                }
                let local = Path::new(&survey.repo).join(path);
                let existed = local.exists();
                if existed {
                    copy_file(&local, &backup_copy(&backup_dir, path)).map_err(|e| {
                        io_error(ctx, format!("cannot back up `{}`", local.display()), e)
                    })?;
                }
                manifest.existed.insert(path.to_string(), existed);
            }
            save_manifest(ctx, &backup_dir, &manifest)?;
            ctx.progress(&format!(
                "restoring {} file(s) from {}",
                changed.len(),
                survey.short_sha()
            ));
            let source = format!("--source={}", survey.sha);
            let mut args = vec!["restore", source.as_str(), "--worktree", "--"];
            args.extend(changed.iter().copied());
            Git {
                ctx,
                repo: &survey.repo,
            }
            .ok(&args)
            .await?;
        }
        let mut outputs = Outputs::new();
        outputs.insert("revision".into(), survey.sha.clone().into());
        outputs.insert("changed".into(), changed.into());
        outputs.insert("backup_dir".into(), backup_dir.display().to_string().into());
        Ok(outputs)
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let backup_dir = match outputs.get("backup_dir").and_then(|v| v.as_str()) {
            Some(dir) => PathBuf::from(dir),
            None => ctx
                .artifact_dir()
                .map_err(|e| io_error(ctx, "cannot open the backup folder".into(), e))?,
        };
        let changed: Vec<&str> = match outputs.get("changed") {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_str()).collect()
            }
            _ => Vec::new(),
        };
        let Some(manifest) = load_manifest(ctx, &backup_dir)? else {
            if changed.is_empty() {
                return Ok(());
            }
            return Err(StepError::fatal(ctx.redact(&format!(
                "no backups in `{}`: the files cannot be put back automatically; restore them from git by hand",
                backup_dir.display()
            ))));
        };
        if let Some(path) = changed.iter().find(|p| !manifest.existed.contains_key(**p)) {
            return Err(StepError::fatal(ctx.redact(&format!(
                "`{path}` has no backup in `{}`: restore it from git by hand",
                backup_dir.display()
            ))));
        }
        for (path, existed) in &manifest.existed {
            let local = Path::new(&manifest.repo).join(path);
            if *existed {
                copy_file(&backup_copy(&backup_dir, path), &local).map_err(|e| {
                    io_error(ctx, format!("cannot put back `{}`", local.display()), e)
                })?;
            } else {
                match std::fs::remove_file(&local) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io_error(
                            ctx,
                            format!("cannot remove `{}`", local.display()),
                            e,
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(repo: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn write(repo: &Path, path: &str, text: &str) {
        let file = repo.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }

    fn read(repo: &Path, path: &str) -> Option<String> {
        std::fs::read_to_string(repo.join(path)).ok()
    }

    /// A repository whose first commit has v1 of every file and whose second
    /// changes two files and deletes one.
    fn repo(root: &Path) -> PathBuf {
        let repo = root.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        write(&repo, ".env.production", "VERSION=v1\n");
        write(&repo, "config/app.yaml", "version: v1\n");
        write(&repo, "nginx.conf", "upstream v1;\n");
        write(&repo, "README", "unchanged\n");
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "v1"]);
        write(&repo, ".env.production", "VERSION=v2\n");
        write(&repo, "config/app.yaml", "version: v2\n");
        std::fs::remove_file(repo.join("nginx.conf")).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "v2"]);
        repo
    }

    fn step(repo: &Path, revision: &str, paths: &[&str]) -> GitRestore {
        GitRestore::new(GitRestoreConfig {
            repo: repo.display().to_string(),
            revision: revision.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
        })
        .expect("valid config")
    }

    const PATHS: &[&str] = &[".env.production", "config/app.yaml", "nginx.conf", "README"];

    #[tokio::test]
    async fn restores_changed_files_once_and_undo_puts_them_back() {
        let root = tempfile::tempdir().unwrap();
        let repo = repo(root.path());
        let ctx = StepContext::standalone("restore", root.path().join("run"));
        let step = step(&repo, "HEAD~1", PATHS);

        let head = git(&repo, &["rev-parse", "HEAD"]);
        let outputs = step.run(&ctx).await.expect("restores");
        assert_eq!(outputs["revision"], git(&repo, &["rev-parse", "HEAD~1"]));
        assert_eq!(
            outputs["changed"],
            serde_json::json!([".env.production", "config/app.yaml", "nginx.conf"])
        );
        assert_eq!(
            read(&repo, ".env.production").as_deref(),
            Some("VERSION=v1\n")
        );
        assert_eq!(
            read(&repo, "config/app.yaml").as_deref(),
            Some("version: v1\n")
        );
        assert_eq!(read(&repo, "nginx.conf").as_deref(), Some("upstream v1;\n"));
        // Only the working tree changed.
        assert_eq!(git(&repo, &["rev-parse", "HEAD"]), head);
        assert_eq!(git(&repo, &["diff", "--cached", "--name-only"]), "");

        let again = step.run(&ctx).await.expect("second run");
        assert_eq!(again["changed"], serde_json::json!([]));
        assert_eq!(
            read(&repo, ".env.production").as_deref(),
            Some("VERSION=v1\n")
        );

        step.undo(&ctx, &outputs).await.expect("undo");
        step.undo(&ctx, &outputs).await.expect("undo is idempotent");
        assert_eq!(
            read(&repo, ".env.production").as_deref(),
            Some("VERSION=v2\n")
        );
        assert_eq!(
            read(&repo, "config/app.yaml").as_deref(),
            Some("version: v2\n")
        );
        assert_eq!(read(&repo, "nginx.conf"), None);
        assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    }

    #[tokio::test]
    async fn undo_after_a_resumed_run_uses_the_first_backup() {
        let root = tempfile::tempdir().unwrap();
        let repo = repo(root.path());
        let ctx = StepContext::standalone("restore", root.path().join("run"));
        let step = step(&repo, "HEAD~1", PATHS);
        step.run(&ctx).await.unwrap();
        // As if the first run's outputs were lost in a crash and the step ran again.
        let resumed = step.run(&ctx).await.unwrap();
        assert_eq!(resumed["changed"], serde_json::json!([]));
        step.undo(&ctx, &resumed).await.unwrap();
        assert_eq!(
            read(&repo, ".env.production").as_deref(),
            Some("VERSION=v2\n")
        );
        assert_eq!(read(&repo, "nginx.conf"), None);
    }

    #[tokio::test]
    async fn preview_lists_changes_and_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let repo = repo(root.path());
        let run_dir = root.path().join("run");
        let ctx = StepContext::standalone("restore", &run_dir);
        let sha = git(&repo, &["rev-parse", "--short=7", "HEAD~1"]);
        let preview = step(&repo, "HEAD~1", PATHS).preview(&ctx).await.unwrap();
        assert_eq!(
            preview.changes,
            [
                format!(".env.production: restore from {sha} (differs)"),
                format!("config/app.yaml: restore from {sha} (differs)"),
                format!("nginx.conf: restore from {sha} (missing here)"),
            ]
        );
        assert!(
            preview
                .summary
                .starts_with("restore 3 of 4 file(s) from HEAD~1"),
            "{}",
            preview.summary
        );
        assert_eq!(
            read(&repo, ".env.production").as_deref(),
            Some("VERSION=v2\n")
        );
        assert_eq!(read(&repo, "nginx.conf"), None);
        assert_eq!(git(&repo, &["status", "--porcelain"]), "");
        assert!(!run_dir.exists(), "preview created {}", run_dir.display());

        let current = step(&repo, "HEAD", PATHS[..2].as_ref())
            .preview(&ctx)
            .await
            .unwrap();
        assert!(current.changes.is_empty(), "{current:?}");
    }

    #[tokio::test]
    async fn unknown_revision_and_path_are_fatal() {
        let root = tempfile::tempdir().unwrap();
        let repo = repo(root.path());
        let ctx = StepContext::standalone("restore", root.path().join("run"));
        let err = step(&repo, "v9.9.9", PATHS).run(&ctx).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.message().contains("revision `v9.9.9` not found"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("log --oneline"), "{}", err.message());
        let err = step(&repo, "HEAD~1", &["config/missing.yaml"])
            .run(&ctx)
            .await
            .unwrap_err();
        assert!(
            err.message()
                .contains("`config/missing.yaml` does not exist at HEAD~1"),
            "{}",
            err.message()
        );
        let err = step(&repo, "HEAD~1", &["config"])
            .run(&ctx)
            .await
            .unwrap_err();
        assert!(err.message().contains("is a tree"), "{}", err.message());
        let not_a_repo = root.path().join("plain");
        std::fs::create_dir_all(&not_a_repo).unwrap();
        let err = step(&not_a_repo, "HEAD", &["x"])
            .run(&ctx)
            .await
            .unwrap_err();
        assert!(
            err.message().contains("not inside a git working tree"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn config_rejects_paths_outside_the_repository() {
        let build = |paths: &[&str]| {
            GitRestore::new(GitRestoreConfig {
                repo: "/srv/app".into(),
                revision: "HEAD~1".into(),
                paths: paths.iter().map(|p| p.to_string()).collect(),
            })
        };
        assert_eq!(build(&[]).unwrap_err().field.as_deref(), Some("paths"));
        assert_eq!(
            build(&["ok", "/etc/passwd"]).unwrap_err().field.as_deref(),
            Some("paths[1]")
        );
        assert!(build(&["config/../../secret"])
            .unwrap_err()
            .message
            .contains(".."));
        assert!(build(&["."]).is_err());
        assert!(build(&["./config/app.yaml", "${var:file}"]).is_ok());
        assert_eq!(normalize_path("./a//b/./c").unwrap(), "a/b/c");
        let option = GitRestore::new(GitRestoreConfig {
            repo: "/srv/app".into(),
            revision: "--output=x".into(),
            paths: vec!["a".into()],
        });
        assert_eq!(option.unwrap_err().field.as_deref(), Some("revision"));
    }
}
