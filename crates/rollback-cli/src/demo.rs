//! The quickstart: a complete local rollback drill with no external service.
//!
//! It builds a git repository holding a service's config, starts a small HTTP
//! service (this binary, `rollback demo-service`) that reads that config,
//! "deploys" a broken config, and runs `examples/quickstart/plan.yaml` as a
//! drill: restore the config from git, reload the service, verify it over HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};

use rollback_core::{Error, Plan};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use crate::args::{OutputFormat, RunArgs};
use crate::output::Style;
use crate::{exit, Journal, Outcome};

/// The quickstart plan, embedded so the drill runs from the binary alone.
pub const QUICKSTART_PLAN: &str = include_str!("../../../examples/quickstart/plan.yaml");

/// The demo service's config: `version=v1` and `healthy=true|false` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The release it claims to be.
    pub version: String,
    /// Whether /health answers 200.
    pub healthy: bool,
}

impl ServiceConfig {
    /// Parses `key=value` lines; unknown keys are ignored.
    pub fn parse(text: &str) -> ServiceConfig {
        let mut config = ServiceConfig {
            version: "unknown".into(),
            healthy: false,
        };
        for line in text.lines() {
            match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("version", v)) => config.version = v.to_string(),
                Some(("healthy", v)) => config.healthy = v == "true",
                _ => {}
            }
        }
        config
    }
}

async fn read_config(path: &Path) -> std::io::Result<ServiceConfig> {
    Ok(ServiceConfig::parse(
        &tokio::fs::read_to_string(path).await?,
    ))
}

/// Serves `GET /health` (200 when the loaded config says healthy, else 503)
/// and `POST /reload` (re-reads the config) on 127.0.0.1. Prints
/// `listening on 127.0.0.1:PORT` first.
pub async fn serve(config_path: &Path, port: u16) -> i32 {
    let config = match read_config(config_path).await {
        Ok(c) => Arc::new(RwLock::new(c)),
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", config_path.display());
            return exit::INVALID_INPUT;
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
            return exit::INTERNAL;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("listening on {addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let config = config.clone();
        let path = config_path.to_path_buf();
        tokio::spawn(async move {
            let _ = answer(stream, &config, &path).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    config: &RwLock<ServiceConfig>,
    path: &Path,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut first = text.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    let (status, body) = match (method, target) {
        ("GET", "/health") => {
            let c = config.read().expect("config lock").clone();
            if c.healthy {
                ("200 OK", format!("ok version={}\n", c.version))
            } else {
                (
                    "503 Service Unavailable",
                    format!("unhealthy version={}\n", c.version),
                )
            }
        }
        ("POST", "/reload") => match read_config(path).await {
            Ok(c) => {
                let body = format!("reloaded version={}\n", c.version);
                *config.write().expect("config lock") = c;
                ("200 OK", body)
            }
            Err(e) => (
                "500 Internal Server Error",
                format!("cannot read config: {e}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            "try GET /health or POST /reload\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn git(repo: &Path, args: &[&str]) -> Result<(), Error> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=rollback quickstart",
            "-c",
            "user.email=quickstart@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::InvalidInput {
            message: format!("the quickstart needs git on PATH: {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            message: format!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Journal {
        path: path.to_path_buf(),
        source,
    }
}

/// Sets up the repository and the service, then runs the drill.
pub(crate) async fn quickstart(
    journal: &Journal,
    dir: Option<PathBuf>,
    _format: OutputFormat,
) -> rollback_core::Result<Outcome> {
    let s = Style::stderr();
    let dir = dir.unwrap_or_else(|| journal.state_dir.join("quickstart"));
    let repo = dir.join("service");
    if repo.exists() {
        std::fs::remove_dir_all(&repo).map_err(io_error(&repo))?;
    }
    std::fs::create_dir_all(&repo).map_err(io_error(&repo))?;
    let conf = repo.join("service.conf");

    eprintln!("{} setting up {}", s.bold("quickstart:"), repo.display());
    git(&repo, &["init", "-q"]).await?;
    std::fs::write(&conf, "version=v1\nhealthy=true\n").map_err(io_error(&conf))?;
    git(&repo, &["add", "service.conf"]).await?;
    git(&repo, &["commit", "-q", "-m", "release v1"]).await?;

    let exe = std::env::current_exe().map_err(io_error(Path::new("rollback")))?;
    let mut service = Command::new(exe)
        .arg("demo-service")
        .arg("--config")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_error(&conf))?;
    let stdout = service.stdout.take().expect("piped stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .await
        .map_err(io_error(&conf))?;
    let port = first
        .trim()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    if port.parse::<u16>().is_err() {
        return Err(Error::InvalidInput {
            message: format!("the demo service did not start: {first}"),
        });
    }
    eprintln!(
        "{} service v1 listening on 127.0.0.1:{port}",
        s.bold("quickstart:")
    );

    // The broken deploy: v2's config turns the service unhealthy.
    std::fs::write(&conf, "version=v2\nhealthy=false\n").map_err(io_error(&conf))?;
    git(&repo, &["commit", "-q", "-am", "release v2 (broken)"]).await?;
    let reload =
        "POST /reload HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n".to_string();
    if let Ok(mut stream) =
        TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap_or(0))).await
    {
        let _ = stream.write_all(reload.as_bytes()).await;
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }
    eprintln!(
        "{} deployed release v2: the service now answers 503 on /health. Rolling back as a drill...\n",
        s.bold("quickstart:")
    );

    let vars = BTreeMap::from([
        ("repo".to_string(), repo.display().to_string()),
        ("port".to_string(), port.clone()),
    ]);
    let plan = Plan::from_yaml(
        QUICKSTART_PLAN,
        "examples/quickstart/plan.yaml",
        &crate::registry(),
        &vars,
    )?;
    let run = RunArgs {
        operator: None,
        yes: true,
        approved_by: Vec::new(),
    };
    let mut outcome = crate::execute_plan(
        journal,
        &plan,
        "quickstart drill: release v2 is unhealthy".into(),
        None,
        &run,
        true,
    )
    .await?;
    drop(service);
    outcome.text.push_str(&format!(
        "\nWhat happened: service.conf was restored from git ({} now holds v1 again), the service\n\
         reloaded it, and /health was verified over HTTP. Everything is in the journal:\n  \
         rollback history\n  rollback show last\n\
         Preview the same plan without changing anything:\n  \
         rollback plan examples/quickstart/plan.yaml --var repo={} --var port={port}\n",
        conf.display(),
        repo.display()
    ));
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parsing() {
        assert_eq!(
            ServiceConfig::parse("version=v2\nhealthy=false\nother=1\n"),
            ServiceConfig {
                version: "v2".into(),
                healthy: false
            }
        );
        assert!(ServiceConfig::parse("healthy = true").healthy);
    }

    #[test]
    fn embedded_plan_is_valid_with_core_kinds() {
        let vars = BTreeMap::from([("repo".to_string(), "/tmp/x".to_string())]);
        let plan =
            Plan::from_yaml(QUICKSTART_PLAN, "plan.yaml", &crate::registry(), &vars).unwrap();
        assert_eq!(plan.steps.len(), 4);
        assert_eq!(plan.verify.len(), 2);
    }
}
