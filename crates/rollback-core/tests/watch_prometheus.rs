//! Triggers against a real Prometheus (Debian's package, started here with a
//! throwaway config) scraping a small exporter whose error rate the test sets:
//! the rule fires after its `for:` and not before, and not twice within the
//! cooldown.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollback_core::watch::{RuleCondition, Watcher};
use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `app_error_ratio VALUE` on /metrics.
async fn exporter(ratio: Arc<Mutex<f64>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let ratio = ratio.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let value = *ratio.lock().unwrap();
                let body = format!("# TYPE app_error_ratio gauge\napp_error_ratio {value}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Prometheus {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_prometheus(bin: &str, exporter_port: u16) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{url}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Prometheus {
                child,
                _dir: dir,
                url,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("prometheus did not become ready at {url} within 20 s");
}

fn plan_text(prometheus: &str, counter: &std::path::Path) -> String {
    format!(
        r#"name: watch-test
budget: 30s
triggers:
  - name: error-rate
    kind: prometheus
    url: {prometheus}
    query: app_error_ratio
    at_most: 0.05
    for: 2s
watch:
  interval: 200ms
  cooldown: 1h
steps:
  - id: roll_back
    kind: exec
    argv: [sh, -c, 'echo ran >> "$0"', "{counter}"]
"#,
        counter = counter.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_fires_after_its_duration_once_per_cooldown() {
    let Some(bin) = rollback_core::testing::require_env("PROMETHEUS_BIN") else {
        return;
    };
    let ratio = Arc::new(Mutex::new(0.0));
    let exporter_port = exporter(ratio.clone()).await;
    let prometheus = start_prometheus(&bin, exporter_port).await;
    let state = tempfile::tempdir().unwrap();
    let counter = state.path().join("counter");
    let plan = Plan::from_yaml(
        &plan_text(&prometheus.url, &counter),
        "watch.yaml",
        &Registry::with_core_kinds(),
        &BTreeMap::new(),
    )
    .unwrap();
    let executor = Executor::new(Arc::new(FileJournal::new(state.path())));
    let mut watcher = Watcher::open(state.path(), &plan).unwrap();
    let interval = rollback_core::watch::next_interval(&plan);

    // Healthy: wait until Prometheus has scraped the exporter, then watch a while.
    let mut healthy_ticks = 0;
    for _ in 0..150 {
        let tick = watcher
            .tick(&plan, &executor, RunOptions::new)
            .await
            .unwrap();
        assert!(tick.fired.is_none(), "fired while healthy: {tick:?}");
        if tick.rules[0].condition == RuleCondition::Ok {
            healthy_ticks += 1;
            if healthy_ticks == 5 {
                break;
            }
        }
        tokio::time::sleep(interval).await;
    }
    assert_eq!(
        healthy_ticks, 5,
        "Prometheus never reported the healthy value"
    );

    // The error rate jumps to 50%.
    *ratio.lock().unwrap() = 0.5;
    let mut violating_without_firing = 0;
    let fired = loop {
        let tick = watcher
            .tick(&plan, &executor, RunOptions::new)
            .await
            .unwrap();
        let rule = &tick.rules[0];
        if let Some(fired) = tick.fired {
            // It fired only once the violation had held for `for:`.
            let held = rule.violating_for_ms.expect("violating when it fired");
            assert!(
                held >= 2000,
                "fired after {held} ms of violation, before `for: 2s`"
            );
            break fired;
        }
        if rule.condition == RuleCondition::Violating {
            violating_without_firing += 1;
            assert!(
                rule.violating_for_ms.unwrap() < 2000 + 1000,
                "held long enough but did not fire: {rule:?}"
            );
        }
        assert!(violating_without_firing < 200, "never fired");
        tokio::time::sleep(interval).await;
    };
    assert!(
        violating_without_firing >= 2,
        "the rule was violated for a while before it fired"
    );
    assert_eq!(fired.rule, "error-rate");
    assert_eq!(fired.status, Some(RunStatus::Succeeded));
    assert!(
        fired.reason.starts_with("trigger: error-rate = 0.5"),
        "{}",
        fired.reason
    );

    // Still failing, but cooling down: no second run.
    for _ in 0..12 {
        let tick = watcher
            .tick(&plan, &executor, RunOptions::new)
            .await
            .unwrap();
        assert!(tick.fired.is_none(), "fired twice within the cooldown");
        assert!(tick.cooling_down_until.is_some());
        tokio::time::sleep(interval).await;
    }
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "ran\n",
        "the plan ran exactly once"
    );

    // The journal says why the run started.
    let runs = executor.store().list().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].reason.starts_with("trigger: error-rate = 0.5"));
    let stored = executor.store().read(&runs[0].run_id).await.unwrap();
    assert_eq!(
        stored.info.trigger.as_deref(),
        Some(runs[0].reason.as_str())
    );
    drop(prometheus);
}
