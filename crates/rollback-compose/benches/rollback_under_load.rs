//! A bad v2 of a web service is live; a client polls it every 50 ms on
//! 127.0.0.1 while it is rolled back to v1, two ways, in the same run:
//!
//! - `compose.rollback` (ours): replace the compose file with the kept copy,
//!   `up -d --no-deps web`, wait for the container's healthcheck by `docker events`;
//! - seed 003's sequence: `stop web`, restore the compose file, `up -d`
//!   (then the same events-based wait, only to time when it is healthy).
//!
//! For each: time until the first `200 version=v1` the client sees, time until
//! Docker reports the container healthy, and the client's failed requests from
//! the start of the rollback until one second after it is healthy.
//!
//!     ./scripts/testenv/docker.sh && source /tmp/rollback-testenv/docker.env
//!     cargo bench -p rollback-compose --bench rollback_under_load
//!
//! `ROLLBACK_BENCH_ROUNDS` (default 5) sets the rounds per approach.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollback_compose::container::{wait_for, Want};
use rollback_compose::rollback::ComposeRollback;
use rollback_core::{Step, StepContext};

const POLL: Duration = Duration::from_millis(50);
const PATH: &str = "/cgi-bin/health";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run ./scripts/testenv/docker.sh and source /tmp/rollback-testenv/docker.env");
        std::process::exit(2)
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn compose_file(image: &str, port: u16) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n"
    )
}

/// One poll: true when the service answers 200 with `version=v1`.
fn poll_once(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if write!(s, "GET {PATH} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut text = String::new();
    if s.read_to_string(&mut text).is_err() {
        return false;
    }
    (text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"))
        && text.contains("version=v1")
}

/// A client sending a request every 50 ms (on a fixed schedule) and recording
/// when each was sent and whether it succeeded.
struct Client {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(port: u16) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let ok = poll_once(port);
                l.lock().unwrap().push((sent, ok));
                next += POLL;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Client {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(Instant, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

struct Round {
    first_ok: Duration,
    healthy: Duration,
    failed: usize,
    sent: usize,
}

fn compose(cmd: &[String], project: &str, dir: &Path, args: &[&str]) {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(["-p", project, "-f", "docker-compose.yml"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("start compose");
    assert!(
        out.status.success(),
        "compose {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn container_ids(cmd: &[String], project: &str, dir: &Path) -> Vec<String> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(["-p", project, "-f", "docker-compose.yml", "ps", "-q", "web"])
        .current_dir(dir)
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Approach {
    Ours,
    Seed,
}

async fn round(approach: Approach, n: usize, cmd: &[String], good: &str, bad: &str) -> Round {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let project = format!(
        "rbbench-{}-{n}-{}",
        if approach == Approach::Ours {
            "ours"
        } else {
            "seed"
        },
        std::process::id()
    );
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        compose_file(bad, port),
    )
    .unwrap();
    let kept = dir.path().join("docker-compose.yml.last-good");
    std::fs::write(&kept, compose_file(good, port)).unwrap();
    compose(cmd, &project, dir.path(), &["up", "-d"]);
    let ctx = StepContext::standalone("rollback_web", state.path());
    // The bad release is live and answering (500).
    let ids = container_ids(cmd, &project, dir.path());
    wait_for(&ctx, &ids, Want::Running, Duration::from_secs(60))
        .await
        .expect("v2 running");
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = Client::start(port);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    match approach {
        Approach::Ours => {
            let step = ComposeRollback::new(
                serde_json::from_value(serde_json::json!({
                    "project": project,
                    "files": ["docker-compose.yml"],
                    "cwd": dir.path().to_str().unwrap(),
                    "service": "web",
                    "previous_file": kept.to_str().unwrap(),
                    "timeout": "120s",
                }))
                .unwrap(),
            )
            .unwrap();
            step.run(&ctx).await.expect("compose.rollback");
        }
        Approach::Seed => {
            // docker-compose -f docker-compose.yml stop web
            compose(cmd, &project, dir.path(), &["stop", "web"]);
            // restore the previous compose file
            std::fs::copy(&kept, dir.path().join("docker-compose.yml")).unwrap();
            // docker-compose -f docker-compose.yml up -d
            compose(cmd, &project, dir.path(), &["up", "-d"]);
            // Not part of the sequence: only to time when it is healthy.
            let ids = container_ids(cmd, &project, dir.path());
            wait_for(&ctx, &ids, Want::Healthy, Duration::from_secs(120))
                .await
                .expect("seed: healthy");
        }
    }
    let healthy = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = client.finish();
    compose(cmd, &project, dir.path(), &["down", "-v", "-t", "0"]);

    let window: Vec<&(Instant, bool)> = log.iter().filter(|(t, _)| *t >= start).collect();
    let first_ok = window
        .iter()
        .find(|(_, ok)| *ok)
        .map(|(t, _)| t.duration_since(start))
        .unwrap_or(Duration::MAX);
    Round {
        first_ok,
        healthy,
        failed: window.iter().filter(|(_, ok)| !ok).count(),
        sent: window.len(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let cmd: Vec<String> = env("DOCKER_COMPOSE_CMD")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let good = env("ROLLBACK_TEST_WEB_GOOD");
    let bad = env("ROLLBACK_TEST_WEB_BAD");
    let rounds: usize = std::env::var("ROLLBACK_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "rollback of a bad v2 to v1 under a 50 ms client, {rounds} rounds each, compose = {}",
        cmd.join(" ")
    );
    let mut results: Vec<(Approach, Vec<Round>)> =
        vec![(Approach::Ours, Vec::new()), (Approach::Seed, Vec::new())];
    for n in 0..rounds {
        // Interleaved, so both see the same machine load.
        for (approach, list) in results.iter_mut() {
            let r = round(*approach, n, &cmd, &good, &bad).await;
            println!(
                "  {:<16} round {n}: first v1 answer {:>6.0} ms, healthy {:>6.0} ms, failed {}/{} requests",
                if *approach == Approach::Ours { "compose.rollback" } else { "seed 003" },
                r.first_ok.as_secs_f64() * 1e3,
                r.healthy.as_secs_f64() * 1e3,
                r.failed,
                r.sent
            );
            list.push(r);
        }
    }
    println!();
    println!(
        "| approach | first v1 answer (median) | healthy (median) | failed requests (median) |"
    );
    println!("|---|---|---|---|");
    for (approach, list) in &results {
        let name = match approach {
            Approach::Ours => "compose.rollback (up -d --no-deps, wait by docker events)",
            Approach::Seed => "seed 003 (stop, restore file, up -d)",
        };
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {:.0} |",
            median(
                list.iter()
                    .map(|r| r.first_ok.as_secs_f64() * 1e3)
                    .collect()
            ),
            median(list.iter().map(|r| r.healthy.as_secs_f64() * 1e3).collect()),
            median(list.iter().map(|r| r.failed as f64).collect()),
        );
    }
}
