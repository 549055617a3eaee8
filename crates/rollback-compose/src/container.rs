//! A container's state as the Docker engine reports it (`docker inspect`), and
//! waiting for it to become healthy by following `docker events` instead of
//! polling on a timer.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollback_core::{StepContext, StepError};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::project::{display_argv, run_argv};

/// What a container's own healthcheck says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The image or the compose file defines no healthcheck.
    None,
    /// Checks have not passed yet (within the start period or before the first).
    Starting,
    /// The last check passed.
    Healthy,
    /// The check failed `retries` times in a row.
    Unhealthy,
}

/// One container as `docker inspect` describes it.
#[derive(Debug, Clone)]
pub struct ContainerState {
    /// The full container id.
    pub id: String,
    /// The container's name, without the leading `/`.
    pub name: String,
    /// The image reference it was created from (`Config.Image`).
    pub image: String,
    /// `created`, `running`, `restarting`, `exited`, `paused`, `dead`.
    pub status: String,
    /// Its exit code, meaningful once it exited.
    pub exit_code: i64,
    /// What its healthcheck says.
    pub health: Health,
    /// The output of the last healthcheck, if any ran.
    pub last_check: Option<String>,
}

impl ContainerState {
    fn from_json(value: &Value) -> Self {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let state = &value["State"];
        let health = match state["Health"]["Status"].as_str() {
            None | Some("") | Some("none") => Health::None,
            Some("healthy") => Health::Healthy,
            Some("unhealthy") => Health::Unhealthy,
            Some(_) => Health::Starting,
        };
        let last_check = state["Health"]["Log"]
            .as_array()
            .and_then(|log| log.last())
            .map(|entry| {
                format!(
                    "exit {}: {}",
                    entry["ExitCode"],
                    entry["Output"].as_str().unwrap_or_default().trim()
                )
            });
        ContainerState {
            id: s(&value["Id"]),
            name: s(&value["Name"]).trim_start_matches('/').to_string(),
            image: s(&value["Config"]["Image"]),
            status: s(&state["Status"]),
            exit_code: state["ExitCode"].as_i64().unwrap_or_default(),
            health,
            last_check,
        }
    }

    /// Running, and healthy by its own healthcheck where it has one.
    pub fn is_healthy(&self) -> bool {
        self.status == "running" && matches!(self.health, Health::Healthy | Health::None)
    }

    /// The short id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// `web-1 (3f2a…): running, healthy`.
    pub fn summary(&self) -> String {
        let health = match self.health {
            Health::None => "no healthcheck",
            Health::Starting => "health: starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        };
        let status = if self.status == "exited" {
            format!("exited with {}", self.exit_code)
        } else {
            self.status.clone()
        };
        format!(
            "{} ({}, {}): {status}, {health}",
            self.name,
            self.short_id(),
            self.image
        )
    }

    /// Whether waiting longer cannot make it healthy.
    fn is_hopeless(&self) -> bool {
        self.health == Health::Unhealthy || matches!(self.status.as_str(), "exited" | "dead")
    }
}

/// `docker inspect` of each container, in the same order.
pub async fn inspect(ctx: &StepContext, ids: &[String]) -> Result<Vec<ContainerState>, StepError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut argv = vec!["docker".to_string(), "inspect".to_string()];
    argv.extend(ids.iter().cloned());
    let output = run_argv(ctx, &argv, None).await?;
    if !output.success() {
        return Err(crate::project::failed(ctx, &argv, &output));
    }
    let values: Vec<Value> = serde_json::from_str(&output.stdout).map_err(|e| {
        StepError::fatal(format!(
            "`docker inspect` printed something that is not JSON ({e}): check the docker CLI"
        ))
    })?;
    Ok(values.iter().map(ContainerState::from_json).collect())
}

/// What a wait for health is satisfied with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Running, and healthy where there is a healthcheck.
    Healthy,
    /// Running (undo puts back what ran, healthy or not).
    Running,
}

impl Want {
    fn satisfied(self, state: &ContainerState) -> bool {
        match self {
            Want::Healthy => state.is_healthy(),
            Want::Running => state.status == "running",
        }
    }
}

/// Waits until every container in `ids` is what `want` asks, following
/// `docker events` for them (a health_status, die or start event triggers a new
/// look), within `timeout` and the plan's budget. Fails at once when one turns
/// unhealthy or exits, with its last healthcheck output and log tail.
pub async fn wait_for(
    ctx: &StepContext,
    ids: &[String],
    want: Want,
    timeout: Duration,
) -> Result<Vec<ContainerState>, StepError> {
    let started = Instant::now();
    let limit = match ctx.remaining() {
        Some(left) => timeout.min(left),
        None => timeout,
    };
    // Subscribe first (replaying from just before now), then look: no event
    // can fall between the look and the subscription.
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(Duration::from_secs(1));
    let mut argv = vec![
        "docker".to_string(),
        "events".to_string(),
        "--since".to_string(),
        format!("{}.{:09}", since.as_secs(), since.subsec_nanos()),
        "--format".to_string(),
        "{{.Action}}".to_string(),
    ];
    for id in ids {
        argv.push("--filter".into());
        argv.push(format!("container={id}"));
    }
    argv.push("--filter".into());
    argv.push("type=container".into());
    let mut events = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            StepError::fatal(format!(
                "cannot start `{}`: {e}; install the docker CLI",
                display_argv(&argv)
            ))
        })?;
    let mut lines = BufReader::new(events.stdout.take().expect("stdout is piped")).lines();

    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let states = inspect(ctx, ids).await?;
        if states.len() != ids.len() {
            return Err(StepError::retryable(format!(
                "{} of {} containers disappeared while waiting: see `docker ps -a`",
                ids.len() - states.len(),
                ids.len()
            )));
        }
        if states.iter().all(|s| want.satisfied(s)) {
            return Ok(states);
        }
        if want == Want::Healthy {
            if let Some(bad) = states.iter().find(|s| s.is_hopeless()) {
                return Err(unhealthy_error(ctx, bad).await);
            }
        } else if let Some(bad) = states
            .iter()
            .find(|s| matches!(s.status.as_str(), "exited" | "dead"))
        {
            return Err(unhealthy_error(ctx, bad).await);
        }
        // Wake on the next event for these containers (or on a slow-tick
        // fallback, should the event stream end).
        tokio::select! {
            line = lines.next_line() => {
                if !matches!(line, Ok(Some(_))) {
                    // The stream ended: fall back to looking again shortly.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let states = inspect(ctx, ids).await?;
                let waiting: Vec<String> = states
                    .iter()
                    .filter(|s| !want.satisfied(s))
                    .map(ContainerState::summary)
                    .collect();
                if waiting.is_empty() {
                    return Ok(states);
                }
                return Err(StepError::retryable(format!(
                    "not {} after {:.1}s: {}; its healthcheck may need longer (raise `timeout`) or the service \
                     does not come up (see `docker logs`)",
                    if want == Want::Healthy { "healthy" } else { "running" },
                    started.elapsed().as_secs_f64(),
                    waiting.join("; ")
                )));
            }
            _ = ctx.cancellation().cancelled() => {
                return Err(StepError::interrupted(
                    "interrupted while waiting for the containers to become healthy; `rollback resume` continues",
                ));
            }
        }
    }
}

async fn unhealthy_error(ctx: &StepContext, state: &ContainerState) -> StepError {
    let argv = vec![
        "docker".to_string(),
        "logs".to_string(),
        "--tail".to_string(),
        "20".to_string(),
        state.id.clone(),
    ];
    let logs = match run_argv(ctx, &argv, None).await {
        Ok(output) => format!("{}{}", output.stdout, output.stderr),
        Err(_) => String::new(),
    };
    let mut detail = String::new();
    if let Some(check) = &state.last_check {
        detail.push_str(&format!("last healthcheck: {check}\n"));
    }
    if !logs.trim().is_empty() {
        detail.push_str("log tail:\n");
        detail.push_str(logs.trim_end());
    }
    let message = format!(
        "{}: it will not become healthy; this image is bad too: choose another target and see `docker logs {}`",
        state.summary(),
        state.short_id()
    );
    StepError::fatal(ctx.redact(&message)).with_detail(ctx.redact(&detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inspect_json() {
        let value = serde_json::json!({
            "Id": "0123456789abcdef0123",
            "Name": "/shop-web-1",
            "Config": {"Image": "rollback-test/web:v2"},
            "State": {
                "Status": "running",
                "ExitCode": 0,
                "Health": {"Status": "unhealthy", "Log": [
                    {"ExitCode": 1, "Output": "wget: server returned error: HTTP/1.1 500\n"}
                ]}
            }
        });
        let state = ContainerState::from_json(&value);
        assert_eq!(state.name, "shop-web-1");
        assert_eq!(state.health, Health::Unhealthy);
        assert!(!state.is_healthy() && state.is_hopeless());
        assert_eq!(
            state.summary(),
            "shop-web-1 (0123456789ab, rollback-test/web:v2): running, unhealthy"
        );
        assert_eq!(
            state.last_check.as_deref(),
            Some("exit 1: wget: server returned error: HTTP/1.1 500")
        );
        let plain = ContainerState::from_json(&serde_json::json!({
            "Id": "ab", "Name": "/db", "Config": {"Image": "box"},
            "State": {"Status": "running", "ExitCode": 0}
        }));
        assert_eq!(plain.health, Health::None);
        assert!(plain.is_healthy());
        let exited = ContainerState::from_json(&serde_json::json!({
            "Id": "ab", "Name": "/db", "Config": {"Image": "box"},
            "State": {"Status": "exited", "ExitCode": 3}
        }));
        assert!(!exited.is_healthy() && exited.is_hopeless());
        assert!(exited.summary().contains("exited with 3"));
    }
}
