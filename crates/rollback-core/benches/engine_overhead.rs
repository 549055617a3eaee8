//! Engine overhead: a plan of 1,000 no-op steps with the durable journal on.
//!
//! Run: `cargo bench -p rollback-core --bench engine_overhead`
//! (optional: `-- --steps 1000 --rounds 5 --dir /path/on/the/disk/to/measure`)
//!
//! Two shapes: a chain (each step after the previous one, so every step pays
//! its own two journal flushes) and a fan-out (all independent, so flushes are
//! shared by group commit). Per-step time is the gap between consecutive
//! `step_finished` events as the observer sees them: scheduling, the durable
//! start record, the step, the durable end record. Target: under 1 ms per step.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rollback_core::{
    Event, Executor, FileJournal, Outputs, Plan, PlanStep, Preview, RunOptions, RunStatus, Step,
    StepContext, StepError,
};

#[derive(Debug)]
struct Noop;

#[async_trait]
impl Step for Noop {
    fn describe(&self) -> String {
        "does nothing".into()
    }
    async fn preview(&self, _ctx: &StepContext) -> Result<Preview, StepError> {
        Ok(Preview::default())
    }
    async fn run(&self, _ctx: &StepContext) -> Result<Outputs, StepError> {
        Ok(Outputs::new())
    }
}

fn build(steps: usize, chained: bool, concurrency: usize) -> Plan {
    let mut plan = Plan::new(if chained {
        "bench-chain"
    } else {
        "bench-fanout"
    });
    let noop: Arc<dyn Step> = Arc::new(Noop);
    plan.steps = (0..steps)
        .map(|i| {
            let s = PlanStep::new(format!("s{i}"), "noop", noop.clone());
            if chained && i > 0 {
                s.after([format!("s{}", i - 1)])
            } else {
                s
            }
        })
        .collect();
    plan.concurrency = concurrency;
    plan.budget = None;
    plan.check().expect("bench plan is valid");
    plan
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Measured {
    total: Duration,
    gaps: Vec<Duration>,
}

async fn measure(dir: &std::path::Path, plan: &Plan) -> Measured {
    let executor = Executor::new(Arc::new(FileJournal::new(dir)));
    let finished: Arc<Mutex<Vec<Instant>>> =
        Arc::new(Mutex::new(Vec::with_capacity(plan.steps.len() + 1)));
    let f = finished.clone();
    let start = Instant::now();
    f.lock().unwrap().push(start);
    let options = RunOptions::new("benchmark").observer(move |record| {
        if matches!(record.event, Event::StepFinished { .. }) {
            f.lock().unwrap().push(Instant::now());
        }
    });
    let report = executor.run(plan, options).await.expect("run");
    let total = start.elapsed();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    let times = finished.lock().unwrap().clone();
    let gaps = times.windows(2).map(|w| w[1] - w[0]).collect();
    Measured { total, gaps }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let steps: usize = arg("--steps").and_then(|s| s.parse().ok()).unwrap_or(1000);
    let rounds: usize = arg("--rounds").and_then(|s| s.parse().ok()).unwrap_or(5);
    let base = arg("--dir").map(std::path::PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "engine overhead: {steps} no-op steps, durable file journal, {rounds} rounds per shape"
    );
    println!(
        "{:<28} {:>10} {:>12} {:>12} {:>12}",
        "shape", "total", "per step", "p50 gap", "p99 gap"
    );
    let mut worst_p50 = Duration::ZERO;
    for (label, chained, concurrency) in [
        ("chain (sequential)", true, 1),
        ("fan-out (concurrency 16)", false, 16),
    ] {
        let plan = build(steps, chained, concurrency);
        let mut gaps = Vec::new();
        let mut totals = Vec::new();
        for _ in 0..rounds {
            let dir = match &base {
                Some(b) => tempfile::tempdir_in(b).expect("temp dir"),
                None => tempfile::tempdir().expect("temp dir"),
            };
            let m = runtime.block_on(measure(dir.path(), &plan));
            totals.push(m.total);
            gaps.extend(m.gaps);
        }
        gaps.sort();
        totals.sort();
        let total = totals[totals.len() / 2];
        let p50 = percentile(&gaps, 0.50);
        let p99 = percentile(&gaps, 0.99);
        worst_p50 = worst_p50.max(p50);
        println!(
            "{label:<28} {:>10.1?} {:>12.3?} {:>12.3?} {:>12.3?}",
            total,
            total / steps as u32,
            p50,
            p99
        );
    }
    let verdict = if worst_p50 < Duration::from_millis(1) {
        "met"
    } else {
        "MISSED"
    };
    println!("target: p50 per step under 1 ms including durable journaling: {verdict}");
}
