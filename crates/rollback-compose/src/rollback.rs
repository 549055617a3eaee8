//! `compose.rollback`: put one service back on its previous image or its
//! previous compose file, bring it up with `up -d --no-deps SERVICE`, and wait
//! until its container is healthy (by `docker events`, not by sleeping).
//!
//! Three ways to name the target, exactly one per step:
//! - `to_image`: the image to run. The image in use is read from the running
//!   container first (output `previous_image`); the new one is applied with an
//!   override file kept in the run's artifacts (`-f override.yml`), so the
//!   compose files are left as they are.
//! - `previous_file`: a kept copy of the previous compose file; it replaces
//!   `file` (the current one is saved first).
//! - `git_revision`: the compose file as it was at a git revision
//!   (`git show REV:file`); it replaces `file` (saved first).
//!
//! `undo` puts back what was running: the saved compose file, or the image the
//! container ran before, and brings the service up again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;
use rollback_core::{
    ConfigError, HumanDuration, OutputNames, Outputs, Preview, Step, StepContext, StepError,
};

use crate::container::{inspect, wait_for, ContainerState, Want};
use crate::project::{display_argv, Project};

compose_config! {
    /// Configuration of the `compose.rollback` step.
    pub struct ComposeRollbackConfig {
        /// The service to roll back.
        pub service: String,
        /// The image to put the service back on, e.g. `shop/web:2.4.0`.
        #[serde(default)]
        pub to_image: Option<String>,
        /// A kept copy of the previous compose file; it replaces `file`.
        #[serde(default)]
        pub previous_file: Option<String>,
        /// A git revision (`HEAD~1`, a tag, a sha) of the repository holding
        /// `file`; the file as it was there replaces it.
        #[serde(default)]
        pub git_revision: Option<String>,
        /// The compose file that `previous_file` or `git_revision` replaces;
        /// defaults to the only entry of `files`.
        #[serde(default)]
        pub file: Option<String>,
        /// How long the service may take to become healthy.
        #[serde(default = "crate::default_timeout")]
        pub timeout: HumanDuration,
    }
}

/// Where the previous version comes from.
#[derive(Debug)]
enum Target {
    Image(String),
    KeptFile(String),
    Git(String),
}

/// The `compose.rollback` step.
#[derive(Debug)]
pub struct ComposeRollback {
    config: ComposeRollbackConfig,
    target: Target,
}

const OVERRIDE: &str = "override.yml";
const SAVED: &str = "replaced-compose-file";

impl ComposeRollback {
    /// Checks the configuration.
    pub fn new(mut config: ComposeRollbackConfig) -> Result<Self, ConfigError> {
        config.project_spec().validate()?;
        if config.service.trim().is_empty() || config.service.starts_with('-') {
            return Err(ConfigError::field(
                "service",
                "must name a service of the compose files, e.g. `web`",
            ));
        }
        let chosen: Vec<&str> = [
            config.to_image.as_ref().map(|_| "to_image"),
            config.previous_file.as_ref().map(|_| "previous_file"),
            config.git_revision.as_ref().map(|_| "git_revision"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let target = match chosen.as_slice() {
            ["to_image"] => Target::Image(config.to_image.take().unwrap_or_default()),
            ["previous_file"] => Target::KeptFile(config.previous_file.take().unwrap_or_default()),
            ["git_revision"] => Target::Git(config.git_revision.take().unwrap_or_default()),
            [] => {
                return Err(ConfigError::new(
                    "say what to roll back to: `to_image` (an image), `previous_file` (a kept copy of the \
                     compose file) or `git_revision` (the compose file from git)",
                ))
            }
            many => {
                return Err(ConfigError::field(
                    many[1],
                    format!("give only one of {}", many.join(", ")),
                ))
            }
        };
        match &target {
            Target::Image(image) if image.trim().is_empty() => {
                return Err(ConfigError::field("to_image", "must not be empty"));
            }
            Target::Git(rev) if rev.trim().is_empty() || rev.starts_with('-') => {
                return Err(ConfigError::field(
                    "git_revision",
                    "must be a revision such as HEAD~1, a tag or a commit sha",
                ));
            }
            Target::Image(_) if config.file.is_some() => {
                return Err(ConfigError::field(
                    "file",
                    "only used with `previous_file` or `git_revision`; remove it",
                ));
            }
            Target::KeptFile(_) | Target::Git(_)
                if config.file.is_none() && config.files.len() != 1 =>
            {
                return Err(ConfigError::field(
                    "file",
                    "name the compose file to replace (there is not exactly one entry in `files`)",
                ));
            }
            _ => {}
        }
        Ok(ComposeRollback { config, target })
    }

    fn target_text(&self) -> String {
        match &self.target {
            Target::Image(image) => format!("image {image}"),
            Target::KeptFile(path) => format!("the compose file kept at {path}"),
            Target::Git(rev) => format!("the compose file at git revision {rev}"),
        }
    }

    /// The compose file that file modes replace, as a path.
    fn replaced_file(&self, ctx: &StepContext, project: &Project) -> Result<PathBuf, StepError> {
        let file = match &self.config.file {
            Some(file) => ctx.resolve(file)?,
            None => project.files.first().cloned().unwrap_or_default(),
        };
        Ok(project.dir().join(file))
    }

    /// The content the compose file should have (file modes).
    async fn wanted_content(
        &self,
        ctx: &StepContext,
        file: &Path,
    ) -> Result<Option<Vec<u8>>, StepError> {
        match &self.target {
            Target::Image(_) => Ok(None),
            Target::KeptFile(path) => {
                let path = ctx.resolve(path)?;
                std::fs::read(&path).map(Some).map_err(|e| {
                    StepError::fatal(ctx.redact(&format!(
                        "cannot read the kept compose file `{path}` ({e}): check `previous_file`"
                    )))
                })
            }
            Target::Git(rev) => {
                let rev = ctx.resolve(rev)?;
                let dir = file.parent().unwrap_or(Path::new("."));
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let argv = vec![
                    "git".to_string(),
                    "-C".to_string(),
                    dir.display().to_string(),
                    "show".to_string(),
                    format!("{rev}:./{name}"),
                ];
                let output = tokio::process::Command::new("git")
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|e| {
                        StepError::fatal(format!("cannot start git ({e}): install git"))
                    })?;
                if !output.status.success() {
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    return Err(StepError::fatal(ctx.redact(&format!(
                        "`{}` failed: {}; check `git_revision` and that `{}` is in a git working tree \
                         (`git -C {} log --oneline -- {name}` lists its revisions)",
                        display_argv(&argv),
                        stderr.trim(),
                        file.display(),
                        dir.display()
                    ))));
                }
                Ok(Some(output.stdout))
            }
        }
    }

    async fn current(
        &self,
        ctx: &StepContext,
        project: &Project,
        service: &str,
    ) -> Result<Vec<ContainerState>, StepError> {
        let ids = project.containers(ctx, service).await?;
        inspect(ctx, &ids).await
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash
/// never leaves half a compose file.
fn write_atomic(ctx: &StepContext, path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    let tmp = path.with_extension("rollback-tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            StepError::fatal(ctx.redact(&format!(
                "cannot write `{}` ({e}): check the folder's permissions",
                path.display()
            )))
        })
}

/// A one-service override file setting the image.
fn override_yaml(service: &str, image: &str) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    format!(
        "# written by rollback's compose.rollback\nservices:\n  {}:\n    image: {}\n",
        quote(service),
        quote(image)
    )
}

fn artifact_dir(ctx: &StepContext) -> Result<PathBuf, StepError> {
    ctx.artifact_dir().map_err(|e| {
        StepError::fatal(format!(
            "cannot create the step's artifact folder ({e}): check the state directory"
        ))
    })
}

fn output_str<'a>(outputs: &'a Outputs, key: &str) -> &'a str {
    outputs
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
}

#[async_trait]
impl Step for ComposeRollback {
    fn describe(&self) -> String {
        format!(
            "roll back service {} to {}",
            self.config.service,
            self.target_text()
        )
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&[
            "previous_image",
            "image",
            "containers",
            "saved_file",
            "healthy_after_ms",
        ])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        let service = ctx.resolve(&self.config.service)?;
        let states = self.current(ctx, &project, &service).await?;
        let now: Vec<String> = states.iter().map(ContainerState::summary).collect();
        let now = if now.is_empty() {
            "no container".to_string()
        } else {
            now.join("; ")
        };
        let mut changes = Vec::new();
        match &self.target {
            Target::Image(image) => {
                let image = ctx.resolve(image)?;
                if states.is_empty() || states.iter().any(|s| s.image != image || !s.is_healthy()) {
                    changes.push(format!(
                        "{service}: recreate on {image} with `up -d --no-deps {service}` (now: {now})"
                    ));
                }
            }
            _ => {
                let file = self.replaced_file(ctx, &project)?;
                let wanted = self.wanted_content(ctx, &file).await?.unwrap_or_default();
                if std::fs::read(&file).ok().as_deref() != Some(wanted.as_slice()) {
                    changes.push(format!(
                        "{}: replace with {} (the current one is saved for undo)",
                        file.display(),
                        self.target_text()
                    ));
                }
                if !changes.is_empty() || states.iter().any(|s| !s.is_healthy()) {
                    changes.push(format!(
                        "{service}: `up -d --no-deps {service}` and wait until healthy (now: {now})"
                    ));
                }
            }
        }
        Ok(Preview::new(
            format!(
                "roll back {service} to {} in {}",
                ctx.redact(&self.target_text()),
                project.display()
            ),
            changes,
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let started = Instant::now();
        let project = self.config.project_spec().resolve(ctx).await?;
        let service = ctx.resolve(&self.config.service)?;
        let dir = artifact_dir(ctx)?;
        let before = self.current(ctx, &project, &service).await?;

        // What ran before this step first changed anything: kept in the
        // artifacts so a resumed run reports the same `previous_image`.
        let previous_file = dir.join("previous_image");
        let previous_image = match std::fs::read_to_string(&previous_file) {
            Ok(image) => image,
            Err(_) => {
                let image = before.first().map(|s| s.image.clone()).unwrap_or_default();
                write_atomic(ctx, &previous_file, image.as_bytes())?;
                image
            }
        };

        let mut extra_files = Vec::new();
        let mut saved_file = String::new();
        match &self.target {
            Target::Image(image) => {
                project.require_files(ctx)?;
                let image = ctx.resolve(image)?;
                let path = dir.join(OVERRIDE);
                write_atomic(ctx, &path, override_yaml(&service, &image).as_bytes())?;
                extra_files.push(path);
            }
            _ => {
                let file = self.replaced_file(ctx, &project)?;
                let wanted = self.wanted_content(ctx, &file).await?.unwrap_or_default();
                let saved = dir.join(SAVED);
                if !saved.exists() {
                    std::fs::copy(&file, &saved).map_err(|e| {
                        StepError::fatal(ctx.redact(&format!(
                            "cannot save `{}` before replacing it ({e}): check `file` and the state directory",
                            file.display()
                        )))
                    })?;
                }
                saved_file = saved.display().to_string();
                if std::fs::read(&file).ok().as_deref() != Some(wanted.as_slice()) {
                    ctx.progress(&format!(
                        "replacing {} with {}",
                        file.display(),
                        self.target_text()
                    ));
                    write_atomic(ctx, &file, &wanted)?;
                }
            }
        }

        ctx.progress(&format!("up -d --no-deps {service}"));
        project
            .ok(ctx, &extra_files, &["up", "-d", "--no-deps", &service])
            .await?;
        let ids = project.containers(ctx, &service).await?;
        if ids.is_empty() {
            return Err(StepError::fatal(format!(
                "`up -d --no-deps {service}` left no container for {service}: check that the service exists in the \
                 compose files (`config --services`)"
            )));
        }
        let states = wait_for(ctx, &ids, Want::Healthy, self.config.timeout.get()).await?;
        let mut outputs = Outputs::new();
        outputs.insert("previous_image".into(), previous_image.into());
        outputs.insert(
            "image".into(),
            states
                .first()
                .map(|s| s.image.clone())
                .unwrap_or_default()
                .into(),
        );
        outputs.insert(
            "containers".into(),
            states
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
                .join(",")
                .into(),
        );
        outputs.insert("saved_file".into(), saved_file.into());
        outputs.insert(
            "healthy_after_ms".into(),
            (started.elapsed().as_millis() as u64).into(),
        );
        Ok(outputs)
    }

    fn can_undo(&self) -> bool {
        true
    }

    async fn undo(&self, ctx: &StepContext, outputs: &Outputs) -> Result<(), StepError> {
        let project = self.config.project_spec().resolve(ctx).await?;
        let service = ctx.resolve(&self.config.service)?;
        let previous_image = output_str(outputs, "previous_image");
        let mut extra_files = Vec::new();
        match &self.target {
            Target::Image(_) => {
                if previous_image.is_empty() {
                    // Nothing ran before: stopping is putting it back.
                    project.ok(ctx, &[], &["stop", &service]).await?;
                    return Ok(());
                }
                let path = artifact_dir(ctx)?.join("undo-override.yml");
                write_atomic(
                    ctx,
                    &path,
                    override_yaml(&service, previous_image).as_bytes(),
                )?;
                extra_files.push(path);
            }
            _ => {
                let saved = output_str(outputs, "saved_file");
                let file = self.replaced_file(ctx, &project)?;
                let bytes = std::fs::read(saved).map_err(|e| {
                    StepError::fatal(ctx.redact(&format!(
                        "cannot read the saved compose file `{saved}` ({e}): put `{}` back by hand",
                        file.display()
                    )))
                })?;
                if std::fs::read(&file).ok().as_deref() != Some(bytes.as_slice()) {
                    write_atomic(ctx, &file, &bytes)?;
                }
            }
        }
        project
            .ok(ctx, &extra_files, &["up", "-d", "--no-deps", &service])
            .await?;
        let ids = project.containers(ctx, &service).await?;
        // What ran before may have been unhealthy: running is enough.
        wait_for(ctx, &ids, Want::Running, self.config.timeout.get()).await?;
        Ok(())
    }
}

/// The argv `compose.rollback` runs for a service, for documentation and tests.
pub fn up_argv(compose: &[String], project: &str, files: &[String], service: &str) -> Vec<String> {
    let project = Project {
        compose: compose.to_vec(),
        project: Some(project.to_string()),
        files: files.to_vec(),
        cwd: None,
    };
    project.argv(&[], &["up", "-d", "--no-deps", service])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(value: serde_json::Value) -> Result<ComposeRollback, ConfigError> {
        ComposeRollback::new(serde_json::from_value(value).expect("config shape"))
    }

    #[test]
    fn exactly_one_target() {
        let err = build(serde_json::json!({"service": "web"})).unwrap_err();
        assert!(err.message.contains("to_image"), "{err}");
        let err =
            build(serde_json::json!({"service": "web", "to_image": "a", "git_revision": "HEAD~1"}))
                .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("git_revision"));
        let err =
            build(serde_json::json!({"service": "web", "git_revision": "HEAD~1"})).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("file"));
        assert!(build(serde_json::json!({
            "service": "web", "git_revision": "HEAD~1", "files": ["docker-compose.yml"]
        }))
        .is_ok());
        let err = build(serde_json::json!({"service": "web", "to_image": "a", "file": "x.yml"}))
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("file"));
        let err = build(serde_json::json!({"service": "--all", "to_image": "a"})).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("service"));
        let typo = serde_json::from_value::<ComposeRollbackConfig>(
            serde_json::json!({"service": "web", "to_imag": "a"}),
        );
        assert!(typo.unwrap_err().to_string().contains("to_imag"));
    }

    #[test]
    fn override_quotes_names() {
        assert_eq!(
            override_yaml("web", "shop/web:1.2"),
            "# written by rollback's compose.rollback\nservices:\n  \"web\":\n    image: \"shop/web:1.2\"\n"
        );
    }

    #[test]
    fn up_is_argv_with_compose_flags() {
        assert_eq!(
            up_argv(
                &["docker-compose".into()],
                "shop",
                &["prod.yml".into()],
                "web"
            ),
            [
                "docker-compose",
                "-p",
                "shop",
                "-f",
                "prod.yml",
                "up",
                "-d",
                "--no-deps",
                "web"
            ]
        );
    }
}
