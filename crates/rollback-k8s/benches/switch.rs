//! The blue-green switch and the four-service emergency switch on the real
//! control plane (scripts/testenv/k8s.sh): our engine (a plan run by the
//! executor, journaled, with the readiness check before and the endpoints
//! check after each switch) against kubectl run once per action, as the seeds'
//! scripts do, in the same run.
//!
//!     source $ROLLBACK_TESTENV_DIR/k8s.env
//!     cargo bench -p rollback-k8s --bench switch

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunStatus};
use serde_json::json;

const ROUNDS: usize = 12;

/// The pause between rounds. Each round is one rollback on a quiet control
/// plane; back to back, the rounds would drain kube-controller-manager's
/// client-side rate limit (`--kube-api-qps` 20, burst 30, shared by all its
/// controllers), and each Endpoints update would then wait 50 ms for a token:
/// that would measure the controller's throttle, not the switch.
const SETTLE: Duration = Duration::from_millis(1600);

const SERVICES: [&str; 4] = support::EMERGENCY_SERVICES;

/// CPU time used by the control plane's processes (and this one), read from
/// /proc: where a round's work goes on the shared cores.
#[derive(Clone, Copy, Default)]
struct CpuTime {
    apiserver: Duration,
    etcd: Duration,
    controller_manager: Duration,
    bench: Duration,
}

impl CpuTime {
    fn now() -> CpuTime {
        let dir = std::env::var("ROLLBACK_TESTENV_DIR")
            .unwrap_or_else(|_| "/tmp/rollback-testenv".into());
        let of = |name: &str| {
            std::fs::read_to_string(format!("{dir}/k8s/{name}.pid"))
                .ok()
                .and_then(|p| process_cpu(p.trim()))
                .unwrap_or_default()
        };
        CpuTime {
            apiserver: of("apiserver"),
            etcd: of("etcd"),
            controller_manager: of("controller-manager"),
            bench: process_cpu("self").unwrap_or_default(),
        }
    }

    /// Per round, since `start`.
    fn per_round_since(start: CpuTime) -> CpuTime {
        let end = CpuTime::now();
        let per = |a: Duration, b: Duration| a.saturating_sub(b) / ROUNDS as u32;
        CpuTime {
            apiserver: per(end.apiserver, start.apiserver),
            etcd: per(end.etcd, start.etcd),
            controller_manager: per(end.controller_manager, start.controller_manager),
            bench: per(end.bench, start.bench),
        }
    }

    /// Total CPU above an idle round's.
    fn above(&self, idle: CpuTime) -> Duration {
        self.apiserver.saturating_sub(idle.apiserver)
            + self.etcd.saturating_sub(idle.etcd)
            + self
                .controller_manager
                .saturating_sub(idle.controller_manager)
            + self.bench.saturating_sub(idle.bench)
    }

    fn line(&self) -> String {
        format!(
            "CPU per round: apiserver {:.1} ms, etcd {:.1} ms, controller-manager {:.1} ms, this process {:.1} ms",
            ms(self.apiserver),
            ms(self.etcd),
            ms(self.controller_manager),
            ms(self.bench)
        )
    }
}

/// Time on CPU of every thread of a process (`/proc/PID/task/*/schedstat`).
fn process_cpu(pid: &str) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(Duration::from_nanos(total))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn kubectl(c: &support::Cluster, bin: &str, args: &[&str]) {
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .arg("-n")
        .arg(&c.ns)
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn plan(c: &support::Cluster, registry: &Registry, services: &[&str], version: &str) -> Plan {
    let steps: String = services
        .iter()
        .map(|s| {
            format!(
                "  - id: switch_{id}\n    kind: k8s.switch_selector\n    service: {s}\n    selector: {{version: {version}}}\n    {t}\n",
                id = s.replace('-', "_"),
                t = c.yaml_target()
            )
        })
        .collect();
    Plan::from_yaml(
        &format!("name: bench\nbudget: 2m\nsteps:\n{steps}"),
        "bench.yaml",
        registry,
        &BTreeMap::new(),
    )
    .expect("plan")
}

async fn engine(
    c: &support::Cluster,
    executor: &Executor,
    registry: &Registry,
    services: &[&str],
    a: &str,
    b: &str,
) -> Duration {
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let version = if round % 2 == 0 { a } else { b };
        let plan = plan(c, registry, services, version);
        tokio::time::sleep(SETTLE).await;
        let started = Instant::now();
        let report = executor
            .run(&plan, RunOptions::new("benchmark"))
            .await
            .expect("run");
        times.push(started.elapsed());
        assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:?}");
    }
    median(times)
}

/// The switch action alone (the library call the step makes: readiness check,
/// guarded patch, endpoints confirmed by watch, Event), without the executor:
/// concurrently (as the engine runs independent steps) or one after another.
async fn actions(
    c: &support::Cluster,
    services: &[&'static str],
    a: &str,
    b: &str,
    concurrent: bool,
) -> Duration {
    let conn = c.conn();
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let version = if round % 2 == 0 { a } else { b };
        let labels = BTreeMap::from([("version".to_string(), version.to_string())]);
        let ctx = c.ctx("bench");
        tokio::time::sleep(SETTLE).await;
        let started = Instant::now();
        let switch = |s: &'static str| {
            rollback_k8s::selector::switch_service(
                &conn,
                &ctx,
                s,
                &labels,
                false,
                1,
                Duration::from_secs(30),
            )
        };
        if concurrent {
            futures::future::try_join_all(services.iter().map(|s| switch(s)))
                .await
                .expect("switch");
        } else {
            for s in services {
                switch(s).await.expect("switch");
            }
        }
        times.push(started.elapsed());
    }
    median(times)
}

/// The executor's own cost for a one-step plan (journal written and synced).
async fn executor_floor(
    c: &support::Cluster,
    executor: &Executor,
    registry: &Registry,
) -> Duration {
    let plan = Plan::from_yaml(
        "name: floor\nsteps:\n  - id: nothing\n    kind: wait\n    duration: 0s\n",
        "floor.yaml",
        registry,
        &BTreeMap::new(),
    )
    .expect("plan");
    let _ = c;
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        executor
            .run(&plan, RunOptions::new("benchmark"))
            .await
            .expect("run");
        times.push(started.elapsed());
    }
    median(times)
}

fn with_kubectl(
    c: &support::Cluster,
    bin: &str,
    services: &[&str],
    a: &str,
    b: &str,
    verify: bool,
) -> Duration {
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let version = if round % 2 == 0 { a } else { b };
        let patch = format!(r#"{{"spec":{{"selector":{{"version":"{version}"}}}}}}"#);
        std::thread::sleep(SETTLE);
        let started = Instant::now();
        for s in services {
            kubectl(c, bin, &["patch", "service", s, "-p", &patch]);
            if verify {
                kubectl(c, bin, &["get", "endpoints", s]);
            }
        }
        times.push(started.elapsed());
    }
    median(times)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(c) = support::cluster("bench-switch").await else {
        return;
    };
    let Some(bin) = rollback_core::testing::require_env("KUBECTL_1_20") else {
        return;
    };

    // Blue-green: shop-blue and shop-green, both ready.
    for v in ["blue", "green"] {
        c.deployment(
            &format!("shop-{v}"),
            "shop:v1",
            2,
            &[("svc", "shop"), ("version", v)],
            json!({}),
        )
        .await;
    }
    c.service("shop", &[("svc", "shop"), ("version", "green")])
        .await;
    for v in ["blue", "green"] {
        c.rolled_out(&format!("shop-{v}")).await;
    }
    // Emergency: four services, stable and canary each.
    c.emergency_services().await;

    let mut registry = Registry::with_core_kinds();
    rollback_k8s::register(&mut registry);
    let executor = Executor::new(Arc::new(FileJournal::new(c.dir.path().join("state"))));

    let floor = executor_floor(&c, &executor, &registry).await;
    let start = CpuTime::now();
    let one_action = actions(&c, &["shop"], "blue", "green", true).await;
    let one_action_cpu = CpuTime::per_round_since(start);
    let start = CpuTime::now();
    let four_action = actions(&c, &SERVICES, "stable", "canary", true).await;
    let four_action_cpu = CpuTime::per_round_since(start);
    let four_in_sequence = actions(&c, &SERVICES, "stable", "canary", false).await;
    let one_engine = engine(&c, &executor, &registry, &["shop"], "blue", "green").await;
    let one_kubectl = with_kubectl(&c, &bin, &["shop"], "green", "blue", false);
    let one_kubectl_verified = with_kubectl(&c, &bin, &["shop"], "blue", "green", true);
    let four_engine = engine(&c, &executor, &registry, &SERVICES, "stable", "canary").await;
    let four_kubectl = with_kubectl(&c, &bin, &SERVICES, "stable", "canary", false);
    let four_kubectl_verified = with_kubectl(&c, &bin, &SERVICES, "stable", "canary", true);
    // Measured last: at the start, the namespace a previous run deleted may
    // still be being cleaned up by the controller manager.
    let start = CpuTime::now();
    for _ in 0..ROUNDS {
        tokio::time::sleep(SETTLE).await;
    }
    let idle_cpu = CpuTime::per_round_since(start);

    println!(
        "switch benchmark: median of {ROUNDS} rounds {} s apart, kube-apiserver 1.20 on 127.0.0.1",
        SETTLE.as_secs_f64()
    );
    println!("  engine = plan run by the executor (journal on disk), readiness check before, endpoints confirmed after");
    println!("  kubectl = Debian's kubectl 1.20, one process per action");
    println!();
    println!(
        "  executor floor (one-step plan, journal synced)   {:8.1} ms",
        ms(floor)
    );
    println!("  idle control plane, {}", idle_cpu.line());
    println!();
    println!("  blue-green, 1 service");
    println!(
        "    switch action (library call, no executor)  {:8.1} ms",
        ms(one_action)
    );
    println!(
        "    engine                                 {:8.1} ms",
        ms(one_engine)
    );
    println!(
        "    kubectl patch                          {:8.1} ms   ({:.1}x)",
        ms(one_kubectl),
        ms(one_kubectl) / ms(one_engine)
    );
    println!(
        "    kubectl patch + get endpoints          {:8.1} ms   ({:.1}x)",
        ms(one_kubectl_verified),
        ms(one_kubectl_verified) / ms(one_engine)
    );
    println!("      {}", one_action_cpu.line());
    println!("  emergency, 4 services");
    println!(
        "    switch actions, 4 concurrent           {:8.1} ms   ({:.2}x one)",
        ms(four_action),
        ms(four_action) / ms(one_action)
    );
    println!("      {}", four_action_cpu.line());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy = four_action_cpu.above(idle_cpu);
    println!(
        "      above idle: {:.1} ms of CPU, so at least {:.1} ms on {cores} cores",
        ms(busy),
        ms(busy) / cores as f64
    );
    println!(
        "    switch actions, 4 one after another    {:8.1} ms   ({:.2}x one)",
        ms(four_in_sequence),
        ms(four_in_sequence) / ms(one_action)
    );
    println!(
        "    engine (4 steps in parallel)           {:8.1} ms   ({:.2}x one switch)",
        ms(four_engine),
        ms(four_engine) / ms(one_engine)
    );
    println!(
        "    kubectl patch x4                       {:8.1} ms   ({:.1}x)",
        ms(four_kubectl),
        ms(four_kubectl) / ms(four_engine)
    );
    println!(
        "    kubectl (patch + get endpoints) x4     {:8.1} ms   ({:.1}x)",
        ms(four_kubectl_verified),
        ms(four_kubectl_verified) / ms(four_engine)
    );
}
