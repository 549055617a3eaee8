//! The executor: validate → preflight → lock → journal → steps (a DAG, in
//! parallel, with timeouts, retries and one deadline) → compensation →
//! verification → report. Notifications travel beside the run, never in its way.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::approval::{Approval, ApprovalRequest, Approver, NonInteractive};
use crate::duration::millis;
use crate::error::{Error, LockHolder, Result};
use crate::event::{CheckPhase, Event, Outcome, RunInfo, RunStatus, StepInfo};
use crate::journal::{timestamp, JournalStore, PlanLocker, Record, RunJournal};
use crate::plan::{
    default_operator, BudgetPolicy, FailurePolicy, Plan, PlanCheck, PlanNotifier, PlanStep,
};
use crate::report::RunReport;
use crate::retry::{ExponentialBackoff, RetryPolicy};
use crate::step::{Outputs, Preview, StepContext, StepError};
use crate::template::Resolver;

/// Called for every event of a run, in order (progress display, callbacks).
pub type EventObserver = Arc<dyn Fn(&Record) + Send + Sync>;

/// Who runs a plan, why, and how to ask for approval.
#[derive(Clone)]
pub struct RunOptions {
    /// Who runs it (default `$USER`).
    pub operator: String,
    /// Why: required for a real run.
    pub reason: String,
    /// What started it, if not a person.
    pub trigger: Option<String>,
    /// Mark the run as a drill.
    pub drill: bool,
    /// Answers `confirm` steps.
    pub approver: Arc<dyn Approver>,
    /// Cancel to stop scheduling (Ctrl-C).
    pub cancel: CancellationToken,
    /// Sees every event.
    pub observer: Option<EventObserver>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("operator", &self.operator)
            .field("reason", &self.reason)
            .field("trigger", &self.trigger)
            .field("drill", &self.drill)
            .finish_non_exhaustive()
    }
}

impl RunOptions {
    /// Options for a run with this reason, by `$USER`, without a terminal.
    pub fn new(reason: impl Into<String>) -> Self {
        RunOptions {
            operator: default_operator(),
            reason: reason.into(),
            trigger: None,
            drill: false,
            approver: Arc::new(NonInteractive { assume_yes: false }),
            cancel: CancellationToken::new(),
            observer: None,
        }
    }

    /// Sets the operator.
    pub fn operator(mut self, operator: impl Into<String>) -> Self {
        self.operator = operator.into();
        self
    }

    /// Sets the observer.
    pub fn observer(mut self, observer: impl Fn(&Record) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Sets the approver.
    pub fn approver(mut self, approver: Arc<dyn Approver>) -> Self {
        self.approver = approver;
        self
    }

    /// Sets the cancellation token.
    pub fn cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }
}

/// A dry run: what each step would change.
#[derive(Debug, Clone, Serialize)]
pub struct PreviewReport {
    /// The plan's name.
    pub plan: String,
    /// Its digest.
    pub digest: String,
    /// Its budget.
    pub budget_ms: Option<u64>,
    /// Each step's preview, in plan order.
    pub steps: Vec<StepPreview>,
    /// Checks that would run (name, kind, description).
    pub checks: Vec<(String, String, String)>,
    /// Notifiers (kind, description).
    pub notify: Vec<(String, String)>,
}

/// One step of a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct StepPreview {
    /// Step id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Dependencies.
    pub after: Vec<String>,
    /// What it would change, or why that cannot be known.
    pub preview: std::result::Result<Preview, String>,
}

impl PreviewReport {
    /// Whether every step could be previewed.
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.preview.is_ok())
    }
}

/// Runs plans against a journal store.
pub struct Executor {
    store: Arc<dyn JournalStore>,
    locker: Option<Arc<dyn PlanLocker>>,
    notifications: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

/// A new run id: UTC time and a random suffix, sortable and easy to type.
pub fn new_run_id() -> String {
    let t = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    format!(
        "{}-{}-{:04x}",
        &digits[..8],
        &digits[8..14],
        fastrand::u16(..)
    )
}

fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Shared by the tasks of one run: records, shows and announces events.
struct Bus {
    info: RunInfo,
    journal: Arc<dyn RunJournal>,
    resolver: Arc<Resolver>,
    observer: Option<EventObserver>,
    notifiers: Mutex<Vec<(Vec<String>, mpsc::UnboundedSender<Event>)>>,
    records: Mutex<Vec<Record>>,
    /// Roles that approved in this run; held while asking so that two
    /// guarded steps ask a role once.
    approved_roles: tokio::sync::Mutex<HashSet<String>>,
}

/// The event with every known secret replaced. Fails closed: an event that
/// cannot be rebuilt after redaction is replaced by a note saying so, never
/// passed on as it was. (A withheld step record only makes `resume` run that
/// idempotent step again.)
fn redact_event(resolver: &Resolver, event: Event) -> Event {
    let withheld = |step: String| Event::StepProgress {
        step,
        message: "a record was withheld: it could not be redacted".into(),
    };
    let step = event.step_id().unwrap_or("run").to_string();
    match serde_json::to_value(&event) {
        Ok(v) => {
            serde_json::from_value(resolver.redact_value(&v)).unwrap_or_else(|_| withheld(step))
        }
        Err(_) => withheld(step),
    }
}

impl Bus {
    /// Records, shows and announces an event, in that order of queuing.
    fn queue(&self, event: Event) {
        // Everything leaving the engine passes here: redact it once, whole.
        let event = if self.resolver.has_secrets() {
            redact_event(&self.resolver, event)
        } else {
            event
        };
        let record = Record::now(event);
        if let Some(observer) = &self.observer {
            observer(&record);
        }
        let classes = record.event.notification_classes();
        if !classes.is_empty() {
            for (wanted, tx) in self.notifiers.lock().expect("notifier list").iter() {
                if wanted.iter().any(|w| classes.contains(&w.as_str())) {
                    let _ = tx.send(record.event.clone());
                }
            }
        }
        self.records.lock().expect("records").push(record.clone());
        self.journal.queue(record);
    }

    /// Queues an event and waits until the journal holds it durably.
    async fn emit(&self, event: Event) -> Result<()> {
        self.queue(event);
        self.journal.commit().await
    }

    fn close_notifiers(&self) {
        self.notifiers.lock().expect("notifier list").clear();
    }
}

/// Records approvals (confirmations and roles' approvals) in the journal.
struct RecordingApprover {
    inner: Arc<dyn Approver>,
    bus: Arc<Bus>,
}

#[async_trait]
impl Approver for RecordingApprover {
    async fn approve(&self, request: &ApprovalRequest) -> std::result::Result<Approval, String> {
        let approval = self.inner.approve(request).await?;
        self.bus.queue(Event::Approved {
            step: request.step.clone(),
            approved_by: approval.approved_by.clone(),
            method: approval.method.clone(),
            role: request.role.clone(),
        });
        Ok(approval)
    }
}

/// How one step's execution ended.
struct StepRun {
    outcome: Outcome,
}

/// What a resumed run starts from.
struct ResumeState {
    run_id: String,
    info: RunInfo,
    records: Vec<Record>,
    completed: Vec<(String, Outputs)>,
}

impl Executor {
    /// An executor writing to `store`.
    pub fn new(store: Arc<dyn JournalStore>) -> Self {
        Executor {
            store,
            locker: None,
            notifications: Mutex::new(Vec::new()),
        }
    }

    /// Takes plan locks from `locker` instead of the journal store.
    pub fn with_locker(mut self, locker: Arc<dyn PlanLocker>) -> Self {
        self.locker = Some(locker);
        self
    }

    /// The journal store.
    pub fn store(&self) -> &Arc<dyn JournalStore> {
        &self.store
    }

    /// Runs a plan. Errors are about the engine (plan locked, journal
    /// unwritable); how the steps went is in the report's status.
    pub async fn run(&self, plan: &Plan, options: RunOptions) -> Result<RunReport> {
        if options.reason.trim().is_empty() {
            return Err(Error::InvalidInput {
                message: "a run needs a reason (--reason \"...\")".into(),
            });
        }
        self.execute(plan, options, None).await
    }

    /// Continues a run that died or was interrupted: completed steps are not
    /// run again; the interrupted ones are (steps are idempotent). `plan`
    /// must be the plan the run started with (same digest).
    pub async fn resume(
        &self,
        plan: &Plan,
        run_id: &str,
        options: RunOptions,
    ) -> Result<RunReport> {
        let stored = self.store.read(run_id).await?;
        let not = |reason: String| Error::NotResumable {
            run_id: run_id.to_string(),
            reason,
        };
        if stored.info.digest != plan.source.digest {
            return Err(not(format!(
                "the plan changed since the run started ({} now, {} then); resume needs the same plan",
                plan.source.digest, stored.info.digest
            )));
        }
        match stored.status() {
            Some(RunStatus::Succeeded) => return Err(not("it already succeeded".into())),
            Some(_) if stored.compensated() => {
                return Err(not(
                    "its completed steps were undone (on_failure: compensate); start a new run"
                        .into(),
                ))
            }
            _ => {}
        }
        let completed_map = stored.completed_steps();
        // Completion order, as journaled, for compensation.
        let mut completed = Vec::new();
        for r in &stored.records {
            if let Event::StepFinished {
                step,
                outcome: Outcome::Succeeded,
                ..
            } = &r.event
            {
                if let Some(outputs) = completed_map.get(step) {
                    completed.retain(|(s, _): &(String, Outputs)| s != step);
                    completed.push((step.clone(), outputs.clone()));
                }
            }
        }
        let resume = ResumeState {
            run_id: run_id.to_string(),
            info: stored.info.clone(),
            records: stored.records,
            completed,
        };
        self.execute(plan, options, Some(resume)).await
    }

    /// Waits (at most `max_wait`) for notifications still being delivered.
    pub async fn flush_notifications(&self, max_wait: Duration) {
        let handles: Vec<_> =
            std::mem::take(&mut *self.notifications.lock().expect("notification tasks"));
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        let _ = tokio::time::timeout(max_wait, all).await;
    }

    async fn execute(
        &self,
        plan: &Plan,
        options: RunOptions,
        resume: Option<ResumeState>,
    ) -> Result<RunReport> {
        let segment_start = Instant::now();
        let started_at = timestamp(SystemTime::now());
        let run_id = resume
            .as_ref()
            .map(|r| r.run_id.clone())
            .unwrap_or_else(new_run_id);
        let info = match &resume {
            Some(r) => r.info.clone(),
            None => RunInfo {
                run_id: run_id.clone(),
                plan: plan.name.clone(),
                digest: plan.source.digest.clone(),
                plan_path: plan.source.path.as_ref().map(|p| p.display().to_string()),
                operator: options.operator.clone(),
                reason: options.reason.clone(),
                trigger: options.trigger.clone(),
                host: hostname(),
                pid: std::process::id(),
                vars: plan.vars.clone(),
                budget_ms: plan.budget.map(millis),
                drill: options.drill,
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: started_at.clone(),
            },
        };
        let holder = LockHolder {
            operator: options.operator.clone(),
            host: hostname(),
            pid: std::process::id(),
            since: started_at,
            run_id: run_id.clone(),
        };
        let lock = match &self.locker {
            Some(locker) => locker.lock(&plan.name, &holder).await?,
            None => self.store.lock(&plan.name, &holder).await?,
        };
        let journal = match &resume {
            Some(_) => self.store.reopen(&run_id).await?,
            None => self.store.create(&info, &plan.source.text).await?,
        };
        let resolver = Arc::new(Resolver::new(info.vars.clone()).with_base_dir(plan.base_dir()));
        let bus = Arc::new(Bus {
            info: info.clone(),
            journal,
            resolver: resolver.clone(),
            observer: options.observer.clone(),
            notifiers: Mutex::new(Vec::new()),
            approved_roles: tokio::sync::Mutex::new(HashSet::new()),
            records: Mutex::new(
                resume
                    .as_ref()
                    .map(|r| r.records.clone())
                    .unwrap_or_default(),
            ),
        });
        let deadline = plan.budget.map(|b| segment_start + b);
        let run_dir = self.store.run_dir(&run_id);
        let approver: Arc<dyn Approver> = Arc::new(RecordingApprover {
            inner: options.approver.clone(),
            bus: bus.clone(),
        });
        let progress_bus = bus.clone();
        let base_ctx = StepContext {
            run_id: run_id.clone(),
            step_id: String::new(),
            attempt: 1,
            operator: options.operator.clone(),
            reason: info.reason.clone(),
            deadline,
            cancel: options.cancel.clone(),
            resolver: resolver.clone(),
            run_dir,
            approver,
            progress: Arc::new(move |step: &str, message: &str| {
                progress_bus.queue(Event::StepProgress {
                    step: step.to_string(),
                    message: message.to_string(),
                })
            }),
        };

        self.start_notifiers(&plan.notify, &bus, &base_ctx);

        let mut completed_order: Vec<usize> = Vec::new();
        let index = plan.step_index();
        match &resume {
            None => {
                let steps = plan
                    .steps
                    .iter()
                    .map(|s| StepInfo {
                        id: s.id.clone(),
                        kind: s.kind.clone(),
                        describe: s.step.describe(),
                        after: s.after.clone(),
                    })
                    .collect();
                bus.emit(Event::RunStarted {
                    run: info.clone(),
                    steps,
                })
                .await?;
            }
            Some(r) => {
                for (step, outputs) in &r.completed {
                    resolver.set_outputs(step, outputs.clone());
                    if let Some(&i) = index.get(step.as_str()) {
                        completed_order.push(i);
                    }
                }
                bus.emit(Event::RunResumed {
                    operator: options.operator.clone(),
                    host: hostname(),
                    pid: std::process::id(),
                    completed: r.completed.iter().map(|(s, _)| s.clone()).collect(),
                })
                .await?;
            }
        }

        let status = 'run: {
            if !plan.preflight.is_empty() {
                let passed = run_checks(
                    &plan.preflight,
                    CheckPhase::Preflight,
                    &base_ctx,
                    &bus,
                    None,
                )
                .await;
                if !passed {
                    for s in &plan.steps {
                        bus.queue(Event::StepSkipped {
                            step: s.id.clone(),
                            reason: "a preflight check failed".into(),
                        });
                    }
                    break 'run RunStatus::PreflightFailed;
                }
            }
            let outcome = run_steps(plan, &base_ctx, &bus, deadline, &mut completed_order).await?;
            if (outcome.failed || outcome.budget_aborted)
                && plan.on_failure == FailurePolicy::Compensate
            {
                compensate(plan, &completed_order, &base_ctx, &bus).await;
            }
            if outcome.cancelled {
                break 'run RunStatus::Cancelled;
            }
            if outcome.budget_aborted {
                break 'run RunStatus::BudgetExceeded;
            }
            if outcome.failed && plan.on_failure != FailurePolicy::Continue {
                break 'run RunStatus::StepFailed;
            }
            let verify_deadline = if plan.on_budget_exceeded == BudgetPolicy::Abort {
                deadline
            } else {
                None
            };
            let verified = run_checks(
                &plan.verify,
                CheckPhase::Verify,
                &base_ctx,
                &bus,
                verify_deadline,
            )
            .await;
            if outcome.failed {
                RunStatus::StepFailed
            } else if !verified {
                if verify_deadline.is_some_and(|d| Instant::now() >= d) {
                    bus.queue(Event::BudgetExceeded {
                        budget_ms: plan.budget.map(millis).unwrap_or(0),
                        elapsed_ms: millis(segment_start.elapsed()),
                        running: Vec::new(),
                    });
                    RunStatus::BudgetExceeded
                } else {
                    RunStatus::VerificationFailed
                }
            } else {
                RunStatus::Succeeded
            }
        };
        if let Some(d) = deadline {
            let over = Instant::now() > d;
            let announced = bus
                .records
                .lock()
                .expect("records")
                .iter()
                .any(|r| matches!(r.event, Event::BudgetExceeded { .. }));
            if over && !announced {
                bus.queue(Event::BudgetExceeded {
                    budget_ms: plan.budget.map(millis).unwrap_or(0),
                    elapsed_ms: millis(segment_start.elapsed()),
                    running: Vec::new(),
                });
            }
        }
        bus.emit(Event::RunFinished {
            status,
            duration_ms: millis(segment_start.elapsed()),
            budget_ms: plan.budget.map(millis),
        })
        .await?;
        bus.close_notifiers();
        lock.release().await;
        let records = bus.records.lock().expect("records").clone();
        Ok(RunReport::from_records(&records).expect("run records start with run_started"))
    }

    fn start_notifiers(&self, notifiers: &[PlanNotifier], bus: &Arc<Bus>, base_ctx: &StepContext) {
        let mut handles = self.notifications.lock().expect("notification tasks");
        for n in notifiers {
            let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
            bus.notifiers
                .lock()
                .expect("notifier list")
                .push((n.events.clone(), tx));
            let n = n.clone();
            let bus = bus.clone();
            let mut ctx = base_ctx.clone();
            ctx.step_id = format!("notify:{}", n.kind);
            handles.push(tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let result = tokio::time::timeout(
                            n.timeout,
                            n.notifier.notify(&ctx, &bus.info, &event),
                        )
                        .await;
                        let error = match result {
                            Ok(Ok(())) => break,
                            Ok(Err(e)) => e.full_message(),
                            Err(_) => format!(
                                "no answer within {}",
                                humantime::format_duration(n.timeout)
                            ),
                        };
                        if attempt > n.retries {
                            bus.queue(Event::NotificationFailed {
                                notifier: n.notifier.describe(),
                                about: event
                                    .notification_class()
                                    .unwrap_or(event.name())
                                    .to_string(),
                                error,
                            });
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                    }
                }
                let _ = bus.journal.commit().await;
            }));
        }
    }

    /// A dry run: every step's preview, nothing changed, nothing journaled.
    pub async fn preview(plan: &Plan) -> PreviewReport {
        let resolver = Arc::new(
            Resolver::new(plan.vars.clone())
                .with_base_dir(plan.base_dir())
                .with_placeholder_outputs(),
        );
        let base = StepContext {
            run_id: "preview".into(),
            step_id: String::new(),
            attempt: 1,
            operator: default_operator(),
            reason: "dry run".into(),
            deadline: None,
            cancel: CancellationToken::new(),
            resolver: resolver.clone(),
            run_dir: std::env::temp_dir().join("rollback-preview"),
            approver: Arc::new(NonInteractive { assume_yes: false }),
            progress: Arc::new(|_, _| {}),
        };
        let mut set = JoinSet::new();
        for (i, s) in plan.steps.iter().enumerate() {
            let mut ctx = base.clone();
            ctx.step_id = s.id.clone();
            let step = s.step.clone();
            let timeout = s.timeout.unwrap_or(Duration::from_secs(30));
            set.spawn(async move {
                let result = match tokio::time::timeout(timeout, step.preview(&ctx)).await {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(e)) => Err(e.full_message()),
                    Err(_) => Err(format!(
                        "preview did not finish within {}",
                        humantime::format_duration(timeout)
                    )),
                };
                (i, result)
            });
        }
        let mut previews: Vec<Option<std::result::Result<Preview, String>>> =
            vec![None; plan.steps.len()];
        while let Some(joined) = set.join_next().await {
            if let Ok((i, result)) = joined {
                previews[i] = Some(
                    result
                        .map(|p| Preview {
                            summary: resolver.redact(&p.summary),
                            changes: p.changes.iter().map(|c| resolver.redact(c)).collect(),
                        })
                        .map_err(|e| resolver.redact(&e)),
                );
            }
        }
        PreviewReport {
            plan: plan.name.clone(),
            digest: plan.source.digest.clone(),
            budget_ms: plan.budget.map(millis),
            steps: plan
                .steps
                .iter()
                .zip(previews)
                .map(|(s, p)| StepPreview {
                    id: s.id.clone(),
                    kind: s.kind.clone(),
                    after: s.after.clone(),
                    preview: p.unwrap_or_else(|| Err("preview task failed".into())),
                })
                .collect(),
            checks: plan
                .preflight
                .iter()
                .chain(&plan.verify)
                .map(|c| (c.name.clone(), c.kind.clone(), c.verifier.describe()))
                .collect(),
            notify: plan
                .notify
                .iter()
                .map(|n| (n.kind.clone(), n.notifier.describe()))
                .collect(),
        }
    }
}

#[derive(Default)]
struct StepsOutcome {
    failed: bool,
    cancelled: bool,
    budget_aborted: bool,
}

/// Schedules the step DAG. Returns once no step runs and none can start.
async fn run_steps(
    plan: &Plan,
    base_ctx: &StepContext,
    bus: &Arc<Bus>,
    deadline: Option<Instant>,
    completed_order: &mut Vec<usize>,
) -> Result<StepsOutcome> {
    let n = plan.steps.len();
    let index = plan.step_index();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting_on: Vec<usize> = vec![0; n];
    for (i, s) in plan.steps.iter().enumerate() {
        for dep in &s.after {
            let d = index[dep.as_str()];
            dependents[d].push(i);
            waiting_on[i] += 1;
        }
    }
    let mut done = vec![false; n];
    for &i in completed_order.iter() {
        done[i] = true;
        for &dep in &dependents[i] {
            waiting_on[dep] -= 1;
        }
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| !done[i] && waiting_on[i] == 0).collect();
    let mut running: JoinSet<(usize, Result<StepRun>)> = JoinSet::new();
    let mut running_ids: HashMap<tokio::task::Id, (usize, Instant)> = HashMap::new();
    let mut outcome = StepsOutcome::default();
    let mut stop_reason: Option<String> = None;
    let mut engine_error: Option<Error> = None;
    let mut budget_hit = false;
    let budget_sleep = tokio::time::sleep_until(
        deadline
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365)),
    );
    tokio::pin!(budget_sleep);

    loop {
        while stop_reason.is_none() && running.len() < plan.concurrency {
            let Some(i) = ready.pop_front() else { break };
            let step = plan.steps[i].clone();
            let roles = plan.roles_before(&step.id);
            let mut ctx = base_ctx.clone();
            ctx.step_id = step.id.clone();
            let bus = bus.clone();
            let handle = running
                .spawn(async move { (i, execute_step(step, roles, ctx, bus, deadline).await) });
            running_ids.insert(handle.id(), (i, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next_with_id() => {
                let Some(joined) = joined else { continue };
                let (i, result) = match joined {
                    Ok((id, (i, result))) => {
                        running_ids.remove(&id);
                        (i, result)
                    }
                    Err(e) => {
                        let Some((i, started)) = running_ids.remove(&e.id()) else { continue };
                        let (outcome, error) = if e.is_cancelled() {
                            (Outcome::Interrupted, "interrupted: the budget ran out".to_string())
                        } else {
                            (Outcome::Failed, format!("step panicked: {e}"))
                        };
                        bus.queue(Event::StepFinished {
                            step: plan.steps[i].id.clone(),
                            outcome,
                            attempts: 0,
                            duration_ms: millis(started.elapsed()),
                            outputs: Outputs::new(),
                            error: Some(error),
                            redacted: false,
                        });
                        (i, Ok(StepRun { outcome }))
                    }
                };
                let run = match result {
                    Ok(run) => run,
                    Err(e) => {
                        // The journal failed: stop everything, report the engine error.
                        stop_reason.get_or_insert_with(|| "the journal could not be written".into());
                        engine_error.get_or_insert(e);
                        continue;
                    }
                };
                done[i] = true;
                if run.outcome == Outcome::Succeeded {
                    completed_order.push(i);
                    for &dep in &dependents[i] {
                        waiting_on[dep] -= 1;
                        if waiting_on[dep] == 0 {
                            ready.push_back(dep);
                        }
                    }
                } else if run.outcome != Outcome::Interrupted {
                    outcome.failed = true;
                    let id = &plan.steps[i].id;
                    match plan.on_failure {
                        FailurePolicy::Continue => {
                            skip_dependents(plan, i, &dependents, &mut done, bus, &format!("step `{id}` did not succeed"));
                        }
                        FailurePolicy::Abort | FailurePolicy::Compensate => {
                            stop_reason.get_or_insert_with(|| format!("the run stopped after step `{id}` failed"));
                        }
                    }
                }
            }
            _ = &mut budget_sleep, if deadline.is_some() && !budget_hit => {
                budget_hit = true;
                let names: Vec<String> = running_ids.values().map(|(i, _)| plan.steps[*i].id.clone()).collect();
                bus.queue(Event::BudgetExceeded {
                    budget_ms: plan.budget.map(millis).unwrap_or(0),
                    elapsed_ms: plan.budget.map(millis).unwrap_or(0),
                    running: names,
                });
                if plan.on_budget_exceeded == BudgetPolicy::Abort {
                    outcome.budget_aborted = true;
                    stop_reason.get_or_insert_with(|| "the budget ran out".into());
                    running.abort_all();
                }
            }
            _ = base_ctx.cancel.cancelled(), if !outcome.cancelled => {
                outcome.cancelled = true;
                let names: Vec<String> = running_ids.values().map(|(i, _)| plan.steps[*i].id.clone()).collect();
                bus.queue(Event::CancelRequested { running: names });
                stop_reason.get_or_insert_with(|| "the operator cancelled the run".into());
            }
        }
    }
    if let Some(reason) = &stop_reason {
        for (i, s) in plan.steps.iter().enumerate() {
            if !done[i] {
                bus.queue(Event::StepSkipped {
                    step: s.id.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }
    bus.journal.commit().await?;
    match engine_error {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

fn skip_dependents(
    plan: &Plan,
    failed: usize,
    dependents: &[Vec<usize>],
    done: &mut [bool],
    bus: &Bus,
    reason: &str,
) {
    let mut todo = dependents[failed].clone();
    let mut seen = HashSet::new();
    while let Some(i) = todo.pop() {
        if seen.insert(i) && !done[i] {
            done[i] = true;
            bus.queue(Event::StepSkipped {
                step: plan.steps[i].id.clone(),
                reason: reason.to_string(),
            });
            todo.extend(&dependents[i]);
        }
    }
}

/// Runs one step: durable start record, attempts with timeout and retries,
/// durable end record.
/// Asks each role in `roles` that has not approved yet in this run.
async fn obtain_approvals(
    step: &PlanStep,
    roles: &[String],
    ctx: &StepContext,
    bus: &Bus,
) -> std::result::Result<(), String> {
    let mut approved = bus.approved_roles.lock().await;
    for role in roles {
        if approved.contains(role) {
            continue;
        }
        bus.queue(Event::StepProgress {
            step: step.id.clone(),
            message: format!("waiting for approval by {role}"),
        });
        let request = ApprovalRequest {
            step: step.id.clone(),
            message: format!(
                "Approval by {role} is required before step `{}`: {}",
                step.id,
                step.step.describe()
            ),
            operator: ctx.operator.clone(),
            role: Some(role.clone()),
        };
        ctx.approver.approve(&request).await?;
        approved.insert(role.clone());
    }
    Ok(())
}

async fn execute_step(
    step: PlanStep,
    roles: Vec<String>,
    mut ctx: StepContext,
    bus: Arc<Bus>,
    deadline: Option<Instant>,
) -> Result<StepRun> {
    let start = Instant::now();
    if !roles.is_empty() {
        if let Err(refusal) = obtain_approvals(&step, &roles, &ctx, &bus).await {
            bus.emit(Event::StepFinished {
                step: step.id.clone(),
                outcome: Outcome::Failed,
                attempts: 0,
                duration_ms: millis(start.elapsed()),
                outputs: Outputs::new(),
                error: Some(format!("not approved: {refusal}")),
                redacted: false,
            })
            .await?;
            return Ok(StepRun {
                outcome: Outcome::Failed,
            });
        }
    }
    let policy = ExponentialBackoff::new(step.retries, step.backoff);
    let mut attempt = 1;
    let (outcome, outputs, error) = loop {
        ctx.attempt = attempt;
        bus.emit(Event::StepStarted {
            step: step.id.clone(),
            kind: step.kind.clone(),
            attempt,
        })
        .await?;
        let result = match step.timeout {
            Some(t) => match tokio::time::timeout(t, step.step.run(&ctx)).await {
                Ok(r) => r.map_err(|e| (Outcome::Failed, e)),
                Err(_) => Err((
                    Outcome::TimedOut,
                    StepError::retryable(format!(
                        "timed out after {}",
                        humantime::format_duration(t)
                    )),
                )),
            },
            None => step.step.run(&ctx).await.map_err(|e| (Outcome::Failed, e)),
        };
        match result {
            Ok(outputs) => break (Outcome::Succeeded, outputs, None),
            Err((_, error)) if error.is_interrupted() => {
                break (
                    Outcome::Interrupted,
                    Outputs::new(),
                    Some(error.full_message()),
                );
            }
            Err((outcome, error)) => {
                let delay = policy.delay(attempt, &error).filter(|d| {
                    // No retry that would start after the budget runs out.
                    deadline.is_none_or(|dl| Instant::now() + *d < dl) && !ctx.cancel.is_cancelled()
                });
                let mut message = error.full_message();
                if let Some(detail) = error.detail() {
                    message.push('\n');
                    message.push_str(detail);
                }
                match delay {
                    Some(delay) => {
                        bus.queue(Event::StepRetrying {
                            step: step.id.clone(),
                            attempt,
                            error: message.clone(),
                            delay_ms: millis(delay),
                        });
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = ctx.cancel.cancelled() => {
                                // Cancelled while waiting to retry: stop here, so
                                // `resume` makes the next attempt.
                                break (
                                    Outcome::Interrupted,
                                    Outputs::new(),
                                    Some(format!("{message}\nnot retried: the run was cancelled")),
                                );
                            }
                        }
                        attempt += 1;
                    }
                    None => break (outcome, Outputs::new(), Some(message)),
                }
            }
        }
    };
    if outcome == Outcome::Succeeded {
        // Later steps see the real values; the journal sees them redacted.
        bus.resolver.set_outputs(&step.id, outputs.clone());
    }
    let journaled = bus.resolver.redact_outputs(&outputs);
    let redacted = journaled != outputs;
    bus.emit(Event::StepFinished {
        step: step.id.clone(),
        outcome,
        attempts: attempt,
        duration_ms: millis(start.elapsed()),
        outputs: journaled,
        error,
        redacted,
    })
    .await?;
    Ok(StepRun { outcome })
}

/// Undoes completed steps, last completed first. Best effort: an undo that
/// fails is recorded and the others still run.
async fn compensate(
    plan: &Plan,
    completed_order: &[usize],
    base_ctx: &StepContext,
    bus: &Arc<Bus>,
) {
    for &i in completed_order.iter().rev() {
        let s = &plan.steps[i];
        if !s.step.can_undo() {
            continue;
        }
        let mut ctx = base_ctx.clone();
        ctx.step_id = s.id.clone();
        let outputs = bus.resolver.outputs_of(&s.id).unwrap_or_default();
        bus.queue(Event::UndoStarted { step: s.id.clone() });
        let start = Instant::now();
        let undo = s.step.undo(&ctx, &outputs);
        let result = match s.timeout {
            Some(t) => tokio::time::timeout(t, undo).await.unwrap_or_else(|_| {
                Err(StepError::fatal(format!(
                    "undo timed out after {}",
                    humantime::format_duration(t)
                )))
            }),
            None => undo.await,
        };
        let (outcome, error) = match result {
            Ok(()) => (Outcome::Succeeded, None),
            Err(e) => (Outcome::Failed, Some(e.full_message())),
        };
        let _ = bus
            .emit(Event::UndoFinished {
                step: s.id.clone(),
                outcome,
                duration_ms: millis(start.elapsed()),
                error,
            })
            .await;
    }
}

/// Runs checks in parallel; each is measured until it passes or its window
/// (`within`, capped by `deadline`) closes. Returns whether all passed.
async fn run_checks(
    checks: &[PlanCheck],
    phase: CheckPhase,
    base_ctx: &StepContext,
    bus: &Arc<Bus>,
    deadline: Option<Instant>,
) -> bool {
    let mut set = JoinSet::new();
    for check in checks {
        let check = check.clone();
        let mut ctx = base_ctx.clone();
        ctx.step_id = check.name.clone();
        let bus = bus.clone();
        set.spawn(async move {
            let start = Instant::now();
            let window_end = check.within.map(|w| start + w);
            let end = match (window_end, deadline) {
                (Some(w), Some(d)) => Some(w.min(d)),
                (w, None) => w,
                (None, Some(_)) => None,
            };
            let mut attempts = 0;
            let measurement = loop {
                attempts += 1;
                ctx.attempt = attempts;
                let m = match tokio::time::timeout(check.timeout, check.verifier.check(&ctx)).await
                {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => crate::step::Measurement::new(
                        false,
                        format!("could not measure: {}", e.full_message()),
                        check.verifier.describe(),
                    ),
                    Err(_) => crate::step::Measurement::new(
                        false,
                        format!(
                            "no result within {}",
                            humantime::format_duration(check.timeout)
                        ),
                        check.verifier.describe(),
                    ),
                };
                let again = !m.passed
                    && end.is_some_and(|e| Instant::now() + check.interval < e)
                    && !ctx.cancel.is_cancelled();
                if !again {
                    break m;
                }
                tokio::select! {
                    _ = tokio::time::sleep(check.interval) => {}
                    _ = ctx.cancel.cancelled() => {}
                }
            };
            let passed = measurement.passed;
            bus.queue(Event::CheckFinished {
                phase,
                name: check.name.clone(),
                kind: check.kind.clone(),
                passed,
                observed: measurement.observed,
                expected: measurement.expected,
                attempts,
                duration_ms: millis(start.elapsed()),
            });
            passed
        });
    }
    let mut all = true;
    while let Some(joined) = set.join_next().await {
        all &= joined.unwrap_or(false);
    }
    let _ = bus.journal.commit().await;
    all
}

/// Plan variables given as `NAME=VALUE` strings.
pub fn parse_vars<I: IntoIterator<Item = S>, S: AsRef<str>>(
    items: I,
) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for item in items {
        let item = item.as_ref();
        let Some((k, v)) = item.split_once('=') else {
            return Err(Error::InvalidInput {
                message: format!("--var `{item}`: write NAME=VALUE"),
            });
        };
        vars.insert(k.trim().to_string(), v.to_string());
    }
    Ok(vars)
}

/// Where runs' files are kept for a store rooted at `state_dir`.
pub fn runs_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("runs")
}
