//! Executor behaviour: scheduling, timeouts, retries, budget, compensation,
//! cancellation, resume, locking, redaction, notifications.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rollback_core::event::RunInfo;
use rollback_core::{
    BudgetPolicy, Error, Event, Executor, FailurePolicy, FileJournal, Measurement, Notifier,
    Outcome, Outputs, Plan, PlanCheck, PlanNotifier, PlanStep, Preview, RunOptions, RunStatus,
    Step, StepContext, StepError, Verifier,
};
use tokio::sync::Barrier;

type Behaviour =
    Arc<dyn Fn(&StepContext) -> futures_like::BoxFuture<Result<Outputs, StepError>> + Send + Sync>;

mod futures_like {
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

/// A step whose behaviour is a closure; it logs runs and undos.
struct TestStep {
    name: String,
    log: Arc<Mutex<Vec<String>>>,
    behaviour: Behaviour,
    undoable: bool,
}

impl std::fmt::Debug for TestStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[async_trait]
impl Step for TestStep {
    fn describe(&self) -> String {
        format!("test step {}", self.name)
    }
    async fn preview(&self, _ctx: &StepContext) -> Result<Preview, StepError> {
        Ok(Preview::new(
            format!("would run {}", self.name),
            vec![format!("change by {}", self.name)],
        ))
    }
    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        self.log.lock().unwrap().push(format!("run {}", self.name));
        (self.behaviour)(ctx).await
    }
    fn can_undo(&self) -> bool {
        self.undoable
    }
    async fn undo(&self, _ctx: &StepContext, _outputs: &Outputs) -> Result<(), StepError> {
        self.log.lock().unwrap().push(format!("undo {}", self.name));
        Ok(())
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn executor(&self) -> Executor {
        Executor::new(Arc::new(FileJournal::new(self.dir.path())))
    }

    fn step<F, Fut>(&self, id: &str, f: F) -> PlanStep
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Outputs, StepError>> + Send + 'static,
    {
        let behaviour: Behaviour = Arc::new(move |ctx: &StepContext| Box::pin(f(ctx.clone())));
        let step = TestStep {
            name: id.into(),
            log: self.log.clone(),
            behaviour,
            undoable: true,
        };
        PlanStep::new(id, "test", Arc::new(step))
    }

    fn ok(&self, id: &str) -> PlanStep {
        self.step(id, |_| async { Ok(Outputs::new()) })
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn plan(name: &str, steps: Vec<PlanStep>) -> Plan {
    let mut p = Plan::new(name);
    p.steps = steps;
    p.check().unwrap();
    p
}

fn journal_text(fx: &Fixture, run_id: &str) -> String {
    std::fs::read_to_string(
        fx.dir
            .path()
            .join("runs")
            .join(run_id)
            .join("journal.jsonl"),
    )
    .unwrap()
}

#[tokio::test]
async fn independent_steps_overlap_in_time() {
    let fx = Fixture::new();
    // Each step waits at a barrier for the other: only parallel execution
    // lets both through; sequential execution would hit the timeout.
    let barrier = Arc::new(Barrier::new(2));
    let b1 = barrier.clone();
    let b2 = barrier.clone();
    let p = plan(
        "parallel",
        vec![
            fx.step("left", move |_| {
                let b = b1.clone();
                async move {
                    b.wait().await;
                    Ok(Outputs::new())
                }
            })
            .timeout(Duration::from_secs(10)),
            fx.step("right", move |_| {
                let b = b2.clone();
                async move {
                    b.wait().await;
                    Ok(Outputs::new())
                }
            })
            .timeout(Duration::from_secs(10)),
            fx.ok("joined").after(["left", "right"]),
        ],
    );
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    // The join step started only after both finished.
    let log = fx.log();
    assert_eq!(log.last().unwrap(), "run joined");
    // Journal intervals of the two steps overlap.
    let s = |id: &str| report.steps.iter().find(|s| s.id == id).unwrap().clone();
    let (l, r) = (s("left"), s("right"));
    let (ls, le) = (
        l.start_ms.unwrap(),
        l.start_ms.unwrap() + l.duration_ms.unwrap(),
    );
    let (rs, re) = (
        r.start_ms.unwrap(),
        r.start_ms.unwrap() + r.duration_ms.unwrap(),
    );
    assert!(
        ls <= re && rs <= le,
        "left {ls}..{le} and right {rs}..{re} must overlap"
    );
}

#[tokio::test]
async fn concurrency_limit_is_respected() {
    let fx = Fixture::new();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let steps = (0..6)
        .map(|i| {
            let (running, peak) = (running.clone(), peak.clone());
            fx.step(&format!("s{i}"), move |_| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(Outputs::new())
                }
            })
        })
        .collect();
    let mut p = plan("limited", steps);
    p.concurrency = 2;
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_step_that_overruns_its_timeout_fails_and_stops_the_run() {
    let fx = Fixture::new();
    let p = plan(
        "timeout",
        vec![
            fx.step("slow", |_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Outputs::new())
            })
            .timeout(Duration::from_millis(100)),
            fx.ok("next").after(["slow"]),
        ],
    );
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::StepFailed));
    let slow = &report.steps[0];
    assert_eq!(slow.outcome, Some(Outcome::TimedOut));
    assert!(
        slow.error
            .as_deref()
            .unwrap()
            .contains("timed out after 100ms"),
        "{:?}",
        slow.error
    );
    assert_eq!(report.steps[1].outcome, Some(Outcome::Skipped));
    assert!(!fx.log().contains(&"run next".to_string()));
}

#[tokio::test]
async fn retryable_errors_are_retried_until_success() {
    let fx = Fixture::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let p = plan(
        "retry",
        vec![fx
            .step("flaky", move |_| {
                let c = c.clone();
                async move {
                    match c.fetch_add(1, Ordering::SeqCst) {
                        0 | 1 => Err(StepError::retryable("connection refused")),
                        _ => Ok(Outputs::from([("ok".to_string(), serde_json::json!(true))])),
                    }
                }
            })
            .retries(3, Duration::from_millis(10))],
    );
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert_eq!(report.steps[0].attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let journal = journal_text(&fx, &report.run.run_id);
    assert_eq!(journal.matches("\"event\":\"step_retrying\"").count(), 2);
}

#[tokio::test]
async fn fatal_errors_are_not_retried() {
    let fx = Fixture::new();
    let p = plan(
        "fatal",
        vec![fx
            .step("bad", |_| async {
                Err(StepError::fatal("revision 7 not found"))
            })
            .retries(5, Duration::from_millis(1))],
    );
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::StepFailed));
    assert_eq!(report.steps[0].attempts, 1);
    assert_eq!(
        report.steps[0].error.as_deref(),
        Some("revision 7 not found")
    );
}

#[tokio::test]
async fn budget_overrun_interrupts_and_reports() {
    let fx = Fixture::new();
    let mut p = plan(
        "budget",
        vec![
            fx.ok("quick"),
            fx.step("stuck", |_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Outputs::new())
            })
            .after(["quick"]),
            fx.ok("after_stuck").after(["stuck"]),
        ],
    );
    p.budget = Some(Duration::from_millis(200));
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::BudgetExceeded));
    assert!(report.budget_exceeded);
    assert_eq!(report.steps[1].outcome, Some(Outcome::Interrupted));
    assert_eq!(report.steps[2].outcome, Some(Outcome::Skipped));
    let journal = journal_text(&fx, &report.run.run_id);
    assert!(
        journal.contains("\"event\":\"budget_exceeded\"")
            && journal.contains("\"running\":[\"stuck\"]"),
        "{journal}"
    );
}

#[tokio::test]
async fn budget_overrun_with_continue_policy_finishes_the_run() {
    let fx = Fixture::new();
    let mut p = plan(
        "budget-continue",
        vec![fx.step("slowish", |_| async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok(Outputs::new())
        })],
    );
    p.budget = Some(Duration::from_millis(50));
    p.on_budget_exceeded = BudgetPolicy::Continue;
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert!(report.budget_exceeded, "the overrun is still reported");
    assert!(!report.drill_passed());
}

#[tokio::test]
async fn compensation_undoes_completed_steps_in_reverse_order() {
    let fx = Fixture::new();
    let mut p = plan(
        "compensate",
        vec![
            fx.ok("a"),
            fx.ok("b").after(["a"]),
            fx.ok("c").after(["b"]),
            fx.step("d", |_| async { Err(StepError::fatal("boom")) })
                .after(["c"]),
        ],
    );
    p.on_failure = FailurePolicy::Compensate;
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::StepFailed));
    assert!(report.compensated);
    let undos: Vec<String> = fx
        .log()
        .into_iter()
        .filter(|l| l.starts_with("undo"))
        .collect();
    assert_eq!(undos, ["undo c", "undo b", "undo a"]);
    assert!(report.steps[..3]
        .iter()
        .all(|s| s.undo == Some(Outcome::Succeeded)));
}

#[tokio::test]
async fn continue_policy_skips_only_dependents() {
    let fx = Fixture::new();
    let mut p = plan(
        "continue",
        vec![
            fx.step("broken", |_| async { Err(StepError::fatal("no")) }),
            fx.ok("child").after(["broken"]),
            fx.ok("grandchild").after(["child"]),
            fx.ok("independent"),
        ],
    );
    p.on_failure = FailurePolicy::Continue;
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::StepFailed));
    let outcome = |id: &str| report.steps.iter().find(|s| s.id == id).unwrap().outcome;
    assert_eq!(outcome("child"), Some(Outcome::Skipped));
    assert_eq!(outcome("grandchild"), Some(Outcome::Skipped));
    assert_eq!(outcome("independent"), Some(Outcome::Succeeded));
}

#[tokio::test]
async fn dry_run_previews_without_running_or_journaling() {
    let fx = Fixture::new();
    let p = plan("dry", vec![fx.ok("a"), fx.ok("b").after(["a"])]);
    let preview = Executor::preview(&p).await;
    assert!(preview.ok());
    assert_eq!(
        preview.steps[1].preview.as_ref().unwrap().changes,
        vec!["change by b".to_string()]
    );
    assert!(fx.log().is_empty(), "no step ran: {:?}", fx.log());
    assert!(!fx.dir.path().join("runs").exists(), "nothing journaled");
}

#[tokio::test]
async fn cancellation_lets_running_steps_finish_and_starts_nothing_new() {
    let fx = Fixture::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (s2, r2) = (started.clone(), release.clone());
    let p = plan(
        "cancel",
        vec![
            fx.step("running", move |_| {
                let (s, r) = (s2.clone(), r2.clone());
                async move {
                    s.notify_one();
                    r.notified().await;
                    Ok(Outputs::new())
                }
            }),
            fx.ok("pending").after(["running"]),
        ],
    );
    let options = RunOptions::new("test");
    let cancel = options.cancel.clone();
    let executor = fx.executor();
    let run = tokio::spawn(async move { executor.run(&p, options).await });
    started.notified().await;
    cancel.cancel();
    // Give the executor a turn to see the cancellation, then let the step end.
    tokio::task::yield_now().await;
    release.notify_one();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.status, Some(RunStatus::Cancelled));
    assert_eq!(
        report.steps[0].outcome,
        Some(Outcome::Succeeded),
        "the running step finished"
    );
    assert_eq!(report.steps[1].outcome, Some(Outcome::Skipped));
    assert!(!fx.log().contains(&"run pending".to_string()));
}

#[tokio::test]
async fn resume_skips_completed_steps_and_reruns_the_rest() {
    let fx = Fixture::new();
    let healthy = Arc::new(AtomicU32::new(0));
    let h = healthy.clone();
    let build = |fx: &Fixture| {
        let h = h.clone();
        plan(
            "resume",
            vec![
                fx.step("a", |_| async {
                    Ok(Outputs::from([(
                        "v".to_string(),
                        serde_json::json!("from-a"),
                    )]))
                }),
                fx.step("b", move |ctx| {
                    let h = h.clone();
                    async move {
                        if h.load(Ordering::SeqCst) == 0 {
                            return Err(StepError::fatal("dependency down"));
                        }
                        // Outputs of steps completed before the resume are still visible.
                        assert_eq!(ctx.resolve("${steps.a.v}").unwrap(), "from-a");
                        Ok(Outputs::new())
                    }
                })
                .after(["a"]),
                fx.ok("c").after(["b"]),
            ],
        )
    };
    let p = build(&fx);
    let first = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(first.status, Some(RunStatus::StepFailed));
    healthy.store(1, Ordering::SeqCst);
    let second = fx
        .executor()
        .resume(
            &p,
            &first.run.run_id,
            RunOptions::new("test").operator("bob"),
        )
        .await
        .unwrap();
    assert_eq!(second.status, Some(RunStatus::Succeeded));
    assert_eq!(fx.log(), ["run a", "run b", "run b", "run c"]);
    assert_eq!(second.resumed.len(), 1);
    assert_eq!(second.resumed[0].0, "bob");
    assert!(second.steps[0].from_earlier_segment);
    // A succeeded run cannot be resumed again.
    let again = fx
        .executor()
        .resume(&p, &first.run.run_id, RunOptions::new("test"))
        .await;
    assert!(matches!(again, Err(Error::NotResumable { .. })));
}

#[tokio::test]
async fn a_second_run_of_the_same_plan_is_refused_while_the_first_holds_the_lock() {
    let fx = Fixture::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (s2, r2) = (started.clone(), release.clone());
    let p = plan(
        "locked",
        vec![fx.step("hold", move |_| {
            let (s, r) = (s2.clone(), r2.clone());
            async move {
                s.notify_one();
                r.notified().await;
                Ok(Outputs::new())
            }
        })],
    );
    let executor = Arc::new(fx.executor());
    let (e1, p1) = (executor.clone(), p.clone());
    let first = tokio::spawn(async move {
        e1.run(&p1, RunOptions::new("first").operator("alice"))
            .await
    });
    started.notified().await;
    let second = executor
        .run(&p, RunOptions::new("second").operator("bob"))
        .await;
    match second {
        Err(Error::Locked { plan, holder }) => {
            assert_eq!(plan, "locked");
            assert_eq!(holder.operator, "alice");
            assert_eq!(holder.pid, std::process::id());
            assert!(second_message_names_holder(&Error::Locked { plan, holder }));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    release.notify_one();
    assert_eq!(
        first.await.unwrap().unwrap().status,
        Some(RunStatus::Succeeded)
    );
}

fn second_message_names_holder(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("alice") && text.contains("pid")
}

#[tokio::test]
async fn secrets_never_reach_the_journal_or_the_report() {
    let fx = Fixture::new();
    std::env::set_var("ROLLBACK_CORE_TEST_SECRET", "tok-9f8e7d6c5b");
    let p = plan(
        "secrets",
        vec![
            fx.step("uses_secret", |ctx| async move {
                let token = ctx.resolve("${env:ROLLBACK_CORE_TEST_SECRET}")?;
                ctx.progress(&format!("authenticating with {token}"));
                Ok(Outputs::from([(
                    "echo".to_string(),
                    serde_json::json!(format!("Bearer {token}")),
                )]))
            })
            .after(Vec::<String>::new()),
            fx.step("fails_with_secret", |ctx| async move {
                let token = ctx.resolve("${env:ROLLBACK_CORE_TEST_SECRET}")?;
                Err(StepError::fatal(format!("401 for token {token}")))
            })
            .after(["uses_secret"]),
        ],
    );
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    let journal = journal_text(&fx, &report.run.run_id);
    let report_json = serde_json::to_string(&report).unwrap();
    for text in [&journal, &report_json, &report.to_markdown()] {
        assert!(!text.contains("tok-9f8e7d6c5b"), "secret leaked: {text}");
    }
    assert!(
        journal.contains("Bearer ***") && journal.contains("401 for token ***"),
        "{journal}"
    );
}

#[derive(Debug)]
struct PassesOnThird(AtomicU32);

#[async_trait]
impl Verifier for PassesOnThird {
    fn describe(&self) -> String {
        "passes on the third measurement".into()
    }
    async fn check(&self, _ctx: &StepContext) -> Result<Measurement, StepError> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Measurement::new(
            n >= 3,
            format!("measurement {n}"),
            "measurement >= 3",
        ))
    }
}

#[tokio::test]
async fn verification_is_repeated_within_its_window() {
    let fx = Fixture::new();
    let mut p = plan("verify", vec![fx.ok("a")]);
    let mut check = PlanCheck::new(
        "settles",
        "test",
        Arc::new(PassesOnThird(AtomicU32::new(0))),
    );
    check.within = Some(Duration::from_secs(10));
    check.interval = Duration::from_millis(10);
    p.verify.push(check);
    let mut once = PlanCheck::new("once", "test", Arc::new(PassesOnThird(AtomicU32::new(0))));
    once.within = None;
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert_eq!(report.checks[0].attempts, 3);
    // Without a window a failing check fails the run's verification.
    p.verify = vec![once];
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::VerificationFailed));
}

#[tokio::test]
async fn a_failed_preflight_check_changes_nothing() {
    let fx = Fixture::new();
    let mut p = plan("preflight", vec![fx.ok("a")]);
    p.preflight.push(PlanCheck::new(
        "gate",
        "test",
        Arc::new(PassesOnThird(AtomicU32::new(0))),
    ));
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::PreflightFailed));
    assert!(fx.log().is_empty());
}

#[derive(Debug)]
struct NeverAnswers;

#[async_trait]
impl Notifier for NeverAnswers {
    fn describe(&self) -> String {
        "a notifier that never answers".into()
    }
    async fn notify(
        &self,
        _ctx: &StepContext,
        _run: &RunInfo,
        _event: &Event,
    ) -> Result<(), StepError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_hanging_notifier_does_not_hold_the_run_back() {
    let fx = Fixture::new();
    let mut p = plan("notify", vec![fx.ok("a")]);
    p.notify.push(PlanNotifier {
        kind: "test".into(),
        events: vec!["run_started".into()],
        timeout: Duration::from_millis(300),
        retries: 0,
        notifier: Arc::new(NeverAnswers),
    });
    let executor = fx.executor();
    let report = executor.run(&p, RunOptions::new("test")).await.unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert!(
        report.notification_failures.is_empty(),
        "the run returned before the notifier's timeout"
    );
    executor.flush_notifications(Duration::from_secs(5)).await;
    // The failure is journaled after the run finished: it was never in its way.
    let stored = executor.store().read(&report.run.run_id).await.unwrap();
    let names: Vec<&str> = stored.records.iter().map(|r| r.event.name()).collect();
    let finished = names.iter().position(|n| *n == "run_finished").unwrap();
    let failed = names
        .iter()
        .position(|n| *n == "notification_failed")
        .expect("failure journaled");
    assert!(failed > finished, "{names:?}");
}

#[tokio::test]
async fn a_run_needs_a_reason() {
    let fx = Fixture::new();
    let p = plan("reason", vec![fx.ok("a")]);
    assert!(matches!(
        fx.executor().run(&p, RunOptions::new("  ")).await,
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn plans_built_in_code_are_checked_for_cycles() {
    let fx = Fixture::new();
    let mut p = Plan::new("cycle");
    p.steps = vec![
        fx.ok("a").after(["c"]),
        fx.ok("b").after(["a"]),
        fx.ok("c").after(["b"]),
    ];
    let err = p.check().unwrap_err().to_string();
    assert!(
        err.contains("cycle") && err.contains("a → ") && err.contains("c"),
        "{err}"
    );
    let _ = BTreeMap::<String, String>::new();
}

#[derive(Debug, Default)]
struct CountingApprover(Mutex<Vec<String>>);

#[async_trait]
impl rollback_core::Approver for CountingApprover {
    async fn approve(
        &self,
        request: &rollback_core::ApprovalRequest,
    ) -> Result<rollback_core::Approval, String> {
        self.0.lock().unwrap().push(format!(
            "{}:{}",
            request.role.clone().unwrap_or_default(),
            request.step
        ));
        Ok(rollback_core::Approval {
            approved_by: "amara".into(),
            method: "interactive".into(),
        })
    }
}

#[tokio::test]
async fn guarded_steps_wait_for_their_role_and_each_role_is_asked_once() {
    let fx = Fixture::new();
    let mut p = plan(
        "approvals",
        vec![
            fx.ok("backup"),
            fx.ok("restore").after(["backup"]),
            fx.ok("swap").after(["restore"]),
        ],
    );
    p.approvals = vec![rollback_core::PlanApproval {
        role: "engineering-manager".into(),
        before: vec!["restore".into(), "swap".into()],
    }];
    let approver = Arc::new(CountingApprover::default());
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test").approver(approver.clone()))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert_eq!(
        *approver.0.lock().unwrap(),
        vec!["engineering-manager:restore".to_string()]
    );
    assert_eq!(report.approvals.len(), 1);
    assert_eq!(
        report.approvals[0].role.as_deref(),
        Some("engineering-manager")
    );
    assert_eq!(report.approvals[0].approved_by, "amara");
    assert!(journal_text(&fx, &report.run.run_id).contains("\"role\":\"engineering-manager\""));
}

#[tokio::test]
async fn without_the_role_s_approval_the_guarded_step_does_not_run() {
    let fx = Fixture::new();
    let mut p = plan(
        "unapproved",
        vec![fx.ok("backup"), fx.ok("restore").after(["backup"])],
    );
    p.approvals = vec![rollback_core::PlanApproval {
        role: "cto".into(),
        before: vec!["restore".into()],
    }];
    // `--yes` approves confirmations, never a named role.
    let options = RunOptions::new("test")
        .approver(Arc::new(rollback_core::NonInteractive { assume_yes: true }));
    let report = fx.executor().run(&p, options).await.unwrap();
    assert_eq!(report.status, Some(RunStatus::StepFailed));
    assert_eq!(
        fx.log(),
        ["run backup"],
        "the unguarded step ran, the guarded one did not"
    );
    let err = report.steps[1].error.as_deref().unwrap();
    assert!(
        err.contains("not approved") && err.contains("--approved-by 'cto=NAME'"),
        "{err}"
    );
    // Given up front, the approval is recorded with its method.
    let preset = rollback_core::PresetApprovals {
        approvals: [("cto".to_string(), "amara".to_string())].into(),
        fallback: Arc::new(rollback_core::NonInteractive { assume_yes: false }),
    };
    let report = fx
        .executor()
        .run(&p, RunOptions::new("test").approver(Arc::new(preset)))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert_eq!(report.approvals[0].method, "--approved-by");
}
