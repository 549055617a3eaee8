//! Properties of the executor over random plans: random DAGs whose steps
//! succeed, fail, fail and then succeed on a retry, time out, or cancel the
//! run; random failure policies; and a crash after a random journal record
//! followed by `resume`. Whatever the plan:
//! - a step starts only after every step it depends on succeeded, and a
//!   completed step never runs again (not even on resume);
//! - compensation undoes completed steps in reverse order of completion;
//! - no step starts after the run was cancelled;
//! - the journal on disk replays to the report the run returned.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use rollback_core::journal::JournalStore;
use rollback_core::{
    Event, Executor, FailurePolicy, FileJournal, Outcome, Outputs, Plan, PlanStep, Preview,
    RunOptions, RunReport, Step, StepContext, StepError,
};
use tokio_util::sync::CancellationToken;

/// What a step does when it runs.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Succeed,
    Fail,
    /// Fails retryably this many times, then succeeds.
    Flaky(u32),
    /// Takes longer than its timeout.
    Hang,
    /// Cancels the run (as a Ctrl-C would), then succeeds.
    Cancel,
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        6 => Just(Behaviour::Succeed),
        1 => Just(Behaviour::Fail),
        2 => (1u32..3).prop_map(Behaviour::Flaky),
        1 => Just(Behaviour::Hang),
        1 => Just(Behaviour::Cancel),
    ]
}

#[derive(Debug, Clone)]
struct StepSpec {
    after: Vec<usize>,
    behaviour: Behaviour,
    retries: u32,
}

#[derive(Debug, Clone)]
struct PlanSpec {
    steps: Vec<StepSpec>,
    policy: FailurePolicy,
}

fn plan_spec() -> impl Strategy<Value = PlanSpec> {
    let policy = prop_oneof![
        Just(FailurePolicy::Abort),
        Just(FailurePolicy::Continue),
        Just(FailurePolicy::Compensate),
    ];
    (1usize..8, policy).prop_flat_map(|(n, policy)| {
        let steps: Vec<_> = (0..n)
            .map(|i| {
                let deps = proptest::collection::vec(0..i.max(1), 0..=i.min(3));
                (deps, behaviour(), 0u32..3).prop_map(move |(after, behaviour, retries)| {
                    let mut after: Vec<usize> = after.into_iter().filter(|&d| d < i).collect();
                    after.sort_unstable();
                    after.dedup();
                    StepSpec {
                        after,
                        behaviour,
                        retries,
                    }
                })
            })
            .collect();
        (steps, Just(policy)).prop_map(|(steps, policy)| PlanSpec { steps, policy })
    })
}

/// Everything the steps did, in order: `run ID` and `undo ID`.
type Log = Arc<Mutex<Vec<String>>>;

#[derive(Debug)]
struct PropStep {
    id: String,
    behaviour: Behaviour,
    calls: AtomicU32,
    log: Log,
    cancel: CancellationToken,
}

#[async_trait]
impl Step for PropStep {
    fn describe(&self) -> String {
        format!("property step {}", self.id)
    }
    async fn preview(&self, _ctx: &StepContext) -> Result<Preview, StepError> {
        Ok(Preview::default())
    }
    async fn run(&self, _ctx: &StepContext) -> Result<Outputs, StepError> {
        self.log.lock().unwrap().push(format!("run {}", self.id));
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        match self.behaviour {
            Behaviour::Succeed => Ok(Outputs::new()),
            Behaviour::Fail => Err(StepError::fatal("broken on purpose")),
            Behaviour::Flaky(n) if call < n => Err(StepError::retryable("busy")),
            Behaviour::Flaky(_) => Ok(Outputs::new()),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Outputs::new())
            }
            Behaviour::Cancel => {
                self.cancel.cancel();
                Ok(Outputs::new())
            }
        }
    }
    fn can_undo(&self) -> bool {
        true
    }
    async fn undo(&self, _ctx: &StepContext, _outputs: &Outputs) -> Result<(), StepError> {
        self.log.lock().unwrap().push(format!("undo {}", self.id));
        Ok(())
    }
}

fn build(spec: &PlanSpec, log: &Log, cancel: &CancellationToken) -> Plan {
    let mut plan = Plan::new("properties");
    plan.on_failure = spec.policy;
    plan.steps = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let step = PropStep {
                id: format!("s{i}"),
                behaviour: s.behaviour,
                calls: AtomicU32::new(0),
                log: log.clone(),
                cancel: cancel.clone(),
            };
            PlanStep::new(format!("s{i}"), "prop", Arc::new(step))
                .after(s.after.iter().map(|d| format!("s{d}")))
                .timeout(Duration::from_millis(100))
                .retries(s.retries, Duration::from_millis(1))
        })
        .collect();
    plan.check().expect("generated plans are DAGs");
    plan
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Steps that succeeded, in the order their end was journaled.
fn completion_order(records: &[rollback_core::Record]) -> Vec<String> {
    let mut order = Vec::new();
    for r in records {
        if let Event::StepFinished {
            step,
            outcome: Outcome::Succeeded,
            ..
        } = &r.event
        {
            order.push(step.clone());
        }
    }
    order
}

fn check_dependencies(
    spec: &PlanSpec,
    records: &[rollback_core::Record],
) -> Result<(), TestCaseError> {
    let mut succeeded: HashSet<String> = HashSet::new();
    for r in records {
        match &r.event {
            Event::StepStarted { step, .. } => {
                let i: usize = step[1..].parse().unwrap();
                for d in &spec.steps[i].after {
                    prop_assert!(
                        succeeded.contains(&format!("s{d}")),
                        "{step} started before its dependency s{d} succeeded"
                    );
                }
            }
            Event::StepFinished {
                step,
                outcome: Outcome::Succeeded,
                ..
            } => {
                succeeded.insert(step.clone());
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_compensation(
    log: &[String],
    records: &[rollback_core::Record],
) -> Result<(), TestCaseError> {
    let undone: Vec<&str> = log.iter().filter_map(|l| l.strip_prefix("undo ")).collect();
    if undone.is_empty() {
        return Ok(());
    }
    let mut expected = completion_order(records);
    expected.reverse();
    prop_assert_eq!(
        undone,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    Ok(())
}

fn check_no_start_after_cancel(records: &[rollback_core::Record]) -> Result<(), TestCaseError> {
    let mut cancelled = false;
    for r in records {
        match &r.event {
            Event::CancelRequested { .. } => cancelled = true,
            Event::StepStarted {
                step, attempt: 1, ..
            } => {
                prop_assert!(!cancelled, "{step} started after the run was cancelled")
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reports compared as the journal states them (timings come from the
/// records on both sides).
fn same_report(a: &RunReport, b: &RunReport) -> Result<(), TestCaseError> {
    prop_assert_eq!(&a.status, &b.status);
    prop_assert_eq!(a.steps.len(), b.steps.len());
    for (x, y) in a.steps.iter().zip(&b.steps) {
        prop_assert_eq!(x, y);
    }
    prop_assert_eq!(&a.checks, &b.checks);
    prop_assert_eq!(a.compensated, b.compensated);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_run_keeps_its_promises_and_its_journal_replays_to_its_report(spec in plan_spec()) {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileJournal::new(dir.path()));
        let log: Log = Arc::default();
        let cancel = CancellationToken::new();
        let plan = build(&spec, &log, &cancel);
        let executor = Executor::new(store.clone());
        let report = rt
            .block_on(executor.run(&plan, RunOptions::new("property").cancel(cancel.clone())))
            .expect("the engine does not fail");
        let stored = rt.block_on(store.read(&report.run.run_id)).unwrap();
        check_dependencies(&spec, &stored.records)?;
        check_compensation(&log.lock().unwrap(), &stored.records)?;
        check_no_start_after_cancel(&stored.records)?;
        let lines = log.lock().unwrap().clone();
        let mut runs: HashMap<&str, usize> = HashMap::new();
        for step in lines.iter().filter_map(|l| l.strip_prefix("run ")) {
            *runs.entry(step).or_default() += 1;
        }
        for (i, s) in spec.steps.iter().enumerate() {
            let n = runs.get(format!("s{i}").as_str()).copied().unwrap_or(0);
            prop_assert!(n <= (s.retries + 1) as usize, "s{i} ran {n} times with {} retries", s.retries);
        }
        same_report(&report, &RunReport::from_stored(&stored).unwrap())?;
    }

    #[test]
    fn a_resume_after_a_crash_at_any_record_never_reruns_a_completed_step(spec in plan_spec(), cut in 0.0f64..1.0) {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileJournal::new(dir.path()));
        let log: Log = Arc::default();
        let cancel = CancellationToken::new();
        let plan = build(&spec, &log, &cancel);
        let report = rt
            .block_on(Executor::new(store.clone()).run(&plan, RunOptions::new("property").cancel(cancel)))
            .expect("the engine does not fail");
        let run_id = report.run.run_id.clone();
        let path = dir.path().join("runs").join(&run_id).join("journal.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // The process died after record `keep` (never after run_finished: a
        // finished run is not resumed).
        let keep = 1 + ((lines.len() - 2) as f64 * cut) as usize;
        std::fs::write(&path, lines[..keep].iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let before = rt.block_on(store.read(&run_id)).unwrap();
        let done: HashSet<String> = before.completed_steps().into_keys().collect();
        if before.compensated() {
            // Undone steps are not resumed; that refusal is its own test.
            return Ok(());
        }

        let log2: Log = Arc::default();
        let plan2 = build(&spec, &log2, &CancellationToken::new());
        let resumed = rt
            .block_on(Executor::new(store.clone()).resume(&plan2, &run_id, RunOptions::new("property")))
            .expect("a crashed run resumes");
        for line in log2.lock().unwrap().iter() {
            if let Some(step) = line.strip_prefix("run ") {
                prop_assert!(!done.contains(step), "{step} completed before the crash and ran again");
            }
        }
        let stored = rt.block_on(store.read(&run_id)).unwrap();
        check_dependencies(&spec, &stored.records)?;
        check_compensation(&log2.lock().unwrap(), &stored.records)?;
        same_report(&resumed, &RunReport::from_stored(&stored).unwrap())?;
    }
}
