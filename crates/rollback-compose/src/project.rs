//! A Compose project as the plan names it (`-p`, `-f`, working folder) and the
//! Compose command found at run time (`docker compose` or `docker-compose`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rollback_core::{ConfigError, StepContext, StepError};
use tokio::sync::OnceCell;

/// How many lines of a command's stderr an error carries as evidence.
const EVIDENCE_LINES: usize = 20;

/// The fields every compose kind shares, resolved at run time.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProjectSpec {
    pub(crate) project: Option<String>,
    pub(crate) files: Vec<String>,
    pub(crate) cwd: Option<String>,
    pub(crate) compose: Option<Vec<String>>,
}

impl ProjectSpec {
    /// Checks what can be checked before run time.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(project) = &self.project {
            if project.trim().is_empty() {
                return Err(ConfigError::field(
                    "project",
                    "must not be empty: give the Compose project name, or leave it out to let Compose derive it",
                ));
            }
        }
        for (i, file) in self.files.iter().enumerate() {
            if file.trim().is_empty() {
                return Err(ConfigError::field(
                    format!("files[{i}]"),
                    "must not be empty: give the path of a compose file",
                ));
            }
        }
        if let Some(compose) = &self.compose {
            if compose.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(ConfigError::field(
                    "compose",
                    "must name a program, e.g. [\"docker\", \"compose\"] or [\"docker-compose\"]; leave it out to find one at run time",
                ));
            }
        }
        Ok(())
    }

    /// Resolves `${...}` references and finds the Compose command.
    pub(crate) async fn resolve(&self, ctx: &StepContext) -> Result<Project, StepError> {
        let project = self
            .project
            .as_deref()
            .map(|p| ctx.resolve(p))
            .transpose()?;
        let files = self
            .files
            .iter()
            .map(|f| ctx.resolve(f))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = self.cwd.as_deref().map(|c| ctx.resolve(c)).transpose()?;
        if let Some(cwd) = &cwd {
            if !Path::new(cwd).is_dir() {
                return Err(StepError::fatal(ctx.redact(&format!(
                    "folder `{cwd}` (cwd) does not exist: fix `cwd` to the folder holding the compose files"
                ))));
            }
        }
        let compose = match &self.compose {
            Some(argv) => argv
                .iter()
                .map(|a| ctx.resolve(a))
                .collect::<Result<Vec<_>, _>>()?,
            None => find_compose().await?.to_vec(),
        };
        Ok(Project {
            compose,
            project,
            files,
            cwd,
        })
    }
}

static FOUND: OnceCell<Vec<String>> = OnceCell::const_new();

/// `docker compose` when the plugin answers, else `docker-compose`; looked up
/// once per process.
pub async fn find_compose() -> Result<&'static [String], StepError> {
    FOUND
        .get_or_try_init(|| async {
            // The plugin answers `version` quickly (the docker CLI is Go); the
            // standalone v1 tool is Python and takes ~0.5 s to start, so it is
            // only looked up on PATH.
            let plugin = tokio::process::Command::new("docker")
                .args(["compose", "version"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status()
                .await;
            if plugin.is_ok_and(|s| s.success()) {
                return Ok(vec!["docker".to_string(), "compose".to_string()]);
            }
            if on_path("docker-compose") {
                return Ok(vec!["docker-compose".to_string()]);
            }
            Err(StepError::fatal(
                "no Compose command found: neither `docker compose` nor `docker-compose` answers `version`; \
                 install the Compose plugin or Debian's docker-compose package, or name the command in `compose:`",
            ))
        })
        .await
        .map(Vec::as_slice)
}

/// Whether an executable named `program` is on `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The project name as Compose stores it in container labels: lower case,
/// only `a-z`, `0-9`, `-` and `_` (both Compose v1 and v2 normalize so).
pub(crate) fn normalize_project_name(name: &str) -> String {
    name.to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect()
}

/// A resolved project: the Compose command line prefix and where it runs.
#[derive(Debug, Clone)]
pub(crate) struct Project {
    pub(crate) compose: Vec<String>,
    pub(crate) project: Option<String>,
    pub(crate) files: Vec<String>,
    pub(crate) cwd: Option<String>,
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    pub(crate) fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of stderr, or of stdout when stderr is empty.
    pub(crate) fn evidence(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(EVIDENCE_LINES)..].join("\n")
    }
}

impl Project {
    /// `compose -p P -f F... ARGS`, with `extra_files` after the project's own.
    pub(crate) fn argv(&self, extra_files: &[PathBuf], args: &[&str]) -> Vec<String> {
        let mut argv = self.compose.clone();
        if let Some(project) = &self.project {
            argv.push("-p".into());
            argv.push(project.clone());
        }
        // With no `-f`, Compose reads its default files; one `-f` for an extra
        // file would turn that off, so name the defaults explicitly then.
        let own = if self.files.is_empty() && !extra_files.is_empty() {
            self.default_files()
        } else {
            self.files.clone()
        };
        for file in own {
            argv.push("-f".into());
            argv.push(file);
        }
        for file in extra_files {
            argv.push("-f".into());
            argv.push(file.display().to_string());
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// The files Compose reads when given no `-f`: the first of its default
    /// names found in the project folder, and the override file beside it.
    pub(crate) fn default_files(&self) -> Vec<String> {
        let dir = self.dir();
        let first = |names: &[&str]| {
            names
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
                .map(|p| p.display().to_string())
        };
        let Some(main) = first(&[
            "compose.yaml",
            "compose.yml",
            "docker-compose.yml",
            "docker-compose.yaml",
        ]) else {
            return Vec::new();
        };
        let mut files = vec![main];
        files.extend(first(&[
            "compose.override.yaml",
            "compose.override.yml",
            "docker-compose.override.yml",
            "docker-compose.override.yaml",
        ]));
        files
    }

    /// An error unless Compose has a file to read: given in `files`, or one of
    /// its default names in the project folder.
    pub(crate) fn require_files(&self, ctx: &StepContext) -> Result<(), StepError> {
        if self.files.is_empty() && self.default_files().is_empty() {
            return Err(StepError::fatal(ctx.redact(&format!(
                "no compose file in {} (compose.yaml, docker-compose.yml, ...): set `files` or `cwd`",
                self.dir().display()
            ))));
        }
        Ok(())
    }

    /// The folder relative paths are resolved from.
    pub(crate) fn dir(&self) -> PathBuf {
        match &self.cwd {
            Some(cwd) => PathBuf::from(cwd),
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }

    /// Runs a Compose command and returns what it printed, whatever its exit.
    pub(crate) async fn output(
        &self,
        ctx: &StepContext,
        extra_files: &[PathBuf],
        args: &[&str],
    ) -> Result<Output, StepError> {
        let argv = self.argv(extra_files, args);
        run_argv(ctx, &argv, self.cwd.as_deref()).await
    }

    /// Runs a Compose command; a non-zero exit is an error naming it.
    pub(crate) async fn ok(
        &self,
        ctx: &StepContext,
        extra_files: &[PathBuf],
        args: &[&str],
    ) -> Result<Output, StepError> {
        let argv = self.argv(extra_files, args);
        let output = run_argv(ctx, &argv, self.cwd.as_deref()).await?;
        if output.success() {
            Ok(output)
        } else {
            Err(failed(ctx, &argv, &output))
        }
    }

    /// Container ids of `service`, stopped ones included. With a project
    /// name this asks the engine by Compose's labels (`docker ps`, fast);
    /// without one, Compose itself (`ps -a -q`), which knows the default name.
    pub(crate) async fn containers(
        &self,
        ctx: &StepContext,
        service: &str,
    ) -> Result<Vec<String>, StepError> {
        let output = match &self.project {
            Some(project) => {
                let argv: Vec<String> = [
                    "docker",
                    "ps",
                    "-a",
                    "-q",
                    "--no-trunc",
                    "--filter",
                    &format!(
                        "label=com.docker.compose.project={}",
                        normalize_project_name(project)
                    ),
                    "--filter",
                    &format!("label=com.docker.compose.service={service}"),
                    "--filter",
                    "label=com.docker.compose.oneoff=False",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let output = run_argv(ctx, &argv, None).await?;
                if !output.success() {
                    return Err(failed(ctx, &argv, &output));
                }
                output
            }
            None => self.ok(ctx, &[], &["ps", "-a", "-q", service]).await?,
        };
        Ok(output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// The services the compose files declare.
    pub(crate) async fn services(&self, ctx: &StepContext) -> Result<Vec<String>, StepError> {
        let output = self.ok(ctx, &[], &["config", "--services"]).await?;
        Ok(output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// `-p P -f F` as a person would type them, for descriptions.
    pub(crate) fn display(&self) -> String {
        display_argv(&self.argv(&[], &[]))
    }
}

/// An error for a command that exited badly, with the end of its output.
pub(crate) fn failed(ctx: &StepContext, argv: &[String], output: &Output) -> StepError {
    let first = output
        .stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no message");
    let code = output
        .code
        .map_or_else(|| "a signal".to_string(), |c| c.to_string());
    let message = format!(
        "`{}` exited with {code}: {first}; read the output below, fix the cause, then run the plan again",
        display_argv(argv)
    );
    StepError::fatal(ctx.redact(&message)).with_detail(ctx.redact(&output.evidence()))
}

/// Runs `argv` (no shell) in `cwd` and captures its output. Dropping the
/// future kills the program.
pub(crate) async fn run_argv(
    ctx: &StepContext,
    argv: &[String],
    cwd: Option<&str>,
) -> Result<Output, StepError> {
    let program = &argv[0];
    let mut command = tokio::process::Command::new(program);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command.output().await.map_err(|e| {
        let message = if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "program `{program}` not found on PATH: install Docker and Compose, or name the Compose command in `compose:`"
            )
        } else {
            format!("cannot start `{program}`: {e}")
        };
        StepError::fatal(ctx.redact(&message)).with_source(e)
    })?;
    Ok(Output {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `argv` as a person would type it in a POSIX shell (display only).
pub(crate) fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_passes_project_and_files_as_compose_flags() {
        let project = Project {
            compose: vec!["docker".into(), "compose".into()],
            project: Some("shop".into()),
            files: vec!["a.yml".into(), "b c.yml".into()],
            cwd: None,
        };
        let argv = project.argv(&[PathBuf::from("/tmp/o.yml")], &["up", "-d", "web"]);
        assert_eq!(
            argv,
            [
                "docker",
                "compose",
                "-p",
                "shop",
                "-f",
                "a.yml",
                "-f",
                "b c.yml",
                "-f",
                "/tmp/o.yml",
                "up",
                "-d",
                "web"
            ]
        );
        assert_eq!(
            display_argv(&argv[..8]),
            "docker compose -p shop -f a.yml -f 'b c.yml'"
        );
    }

    #[test]
    fn an_extra_file_keeps_the_default_compose_files() {
        let dir = tempfile::tempdir().unwrap();
        let project = Project {
            compose: vec!["docker-compose".into()],
            project: None,
            files: Vec::new(),
            cwd: Some(dir.path().display().to_string()),
        };
        let extra = [PathBuf::from("/state/override.yml")];
        // No default file: only the extra one, and the step refuses to run.
        assert_eq!(
            project.argv(&extra, &["up"]),
            ["docker-compose", "-f", "/state/override.yml", "up"]
        );
        assert!(project
            .require_files(&StepContext::standalone("s", dir.path()))
            .is_err());
        std::fs::write(dir.path().join("docker-compose.yml"), "services: {}\n").unwrap();
        std::fs::write(
            dir.path().join("docker-compose.override.yml"),
            "services: {}\n",
        )
        .unwrap();
        let main = dir.path().join("docker-compose.yml").display().to_string();
        let over = dir
            .path()
            .join("docker-compose.override.yml")
            .display()
            .to_string();
        assert_eq!(
            project.argv(&extra, &["up"]),
            [
                "docker-compose",
                "-f",
                main.as_str(),
                "-f",
                over.as_str(),
                "-f",
                "/state/override.yml",
                "up"
            ]
        );
        // Without extra files Compose finds its defaults itself.
        assert_eq!(project.argv(&[], &["ps"]), ["docker-compose", "ps"]);
        assert!(project
            .require_files(&StepContext::standalone("s", dir.path()))
            .is_ok());
    }

    #[test]
    fn normalizes_project_names_like_compose() {
        assert_eq!(normalize_project_name("My.Shop_prod-1"), "myshop_prod-1");
    }

    #[test]
    fn validation_names_the_field() {
        let spec = ProjectSpec {
            project: Some(" ".into()),
            ..Default::default()
        };
        assert_eq!(
            spec.validate().unwrap_err().field.as_deref(),
            Some("project")
        );
        let spec = ProjectSpec {
            compose: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(
            spec.validate().unwrap_err().field.as_deref(),
            Some("compose")
        );
        let spec = ProjectSpec {
            files: vec!["a.yml".into(), "".into()],
            ..Default::default()
        };
        assert_eq!(
            spec.validate().unwrap_err().field.as_deref(),
            Some("files[1]")
        );
    }
}
