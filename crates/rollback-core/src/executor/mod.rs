//! The executor: lock → journal → preflight → steps (a DAG, in parallel,
//! with timeouts, retries and one deadline) → compensation → verification →
//! report. Notifications travel beside the run, never in its way.
//!
//! `execute` reads as its phases; what wraps each step (timeout, journal
//! record, retry, approval) lives in [`layers`] and [`steps`], the DAG in
//! [`schedule`], opening a run (lock, resume, survivors) in [`open`].

mod bus;
mod checks;
mod layers;
mod notify;
mod open;
mod preview;
mod schedule;
mod steps;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::approval::{Approver, NonInteractive};
use crate::duration::millis;
use crate::error::{Error, Result};
use crate::event::{CheckPhase, Event, RunStatus};
use crate::journal::{JournalStore, PlanLocker, Record};
use crate::plan::{default_operator, BudgetPolicy, FailurePolicy, Plan, PlanStep};
use crate::report::RunReport;
use crate::retry::{ExponentialBackoff, RetryPolicy};

pub use preview::{PreviewReport, StepPreview};

use checks::run_checks;
use open::{OpenRun, ResumeState};
use schedule::Schedule;

/// Builds the retry policy of a step (by default exponential backoff with
/// the step's `retries` and `backoff`).
pub type RetryPolicyFactory = Arc<dyn Fn(&PlanStep) -> Arc<dyn RetryPolicy> + Send + Sync>;

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
    /// Cancel to quit at once (a second Ctrl-C): running steps are ended
    /// with their programs and journaled as interrupted.
    pub quit: CancellationToken,
    /// Steps a resume runs as if for the first time, although the state they
    /// kept is missing (the operator checked their targets).
    pub fresh: Vec<String>,
    /// Hosts whose programs, left running by a dead runner, the operator says
    /// have ended (a resume on another host cannot see them).
    pub programs_ended_on: Vec<String>,
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
            quit: CancellationToken::new(),
            fresh: Vec::new(),
            programs_ended_on: Vec::new(),
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

    /// Sets the token that quits the run at once (a second Ctrl-C).
    pub fn quit(mut self, quit: CancellationToken) -> Self {
        self.quit = quit;
        self
    }
}

/// Runs plans against a journal store.
pub struct Executor {
    store: Arc<dyn JournalStore>,
    locker: Option<Arc<dyn PlanLocker>>,
    retry_policy: RetryPolicyFactory,
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

pub(crate) fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

impl Executor {
    /// An executor writing to `store`.
    pub fn new(store: Arc<dyn JournalStore>) -> Self {
        Executor {
            store,
            locker: None,
            retry_policy: Arc::new(|step: &PlanStep| {
                Arc::new(ExponentialBackoff::new(step.retries, step.backoff))
                    as Arc<dyn RetryPolicy>
            }),
            notifications: Mutex::new(Vec::new()),
        }
    }

    /// Takes plan locks from `locker` instead of the journal store.
    pub fn with_locker(mut self, locker: Arc<dyn PlanLocker>) -> Self {
        self.locker = Some(locker);
        self
    }

    /// Decides retries with policies from `factory` instead of each step's
    /// exponential backoff.
    pub fn with_retry_policy(mut self, factory: RetryPolicyFactory) -> Self {
        self.retry_policy = factory;
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
    /// run again; the interrupted ones are (steps are idempotent), after the
    /// programs the dead runner left running have been ended. `plan` must be
    /// the plan the run started with (same digest).
    pub async fn resume(
        &self,
        plan: &Plan,
        run_id: &str,
        options: RunOptions,
    ) -> Result<RunReport> {
        let stored = self.store.read(run_id).await?;
        let resume = ResumeState::of(stored, plan, run_id)?;
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
        let mut run = self.open_run(plan, &options, resume, segment_start).await?;
        let status = self.drive(plan, &options, &mut run, segment_start).await?;
        finish(plan, run, status, segment_start).await
    }

    /// The phases between opening and finishing: preflight, steps,
    /// compensation, verification. Returns the run's status.
    async fn drive(
        &self,
        plan: &Plan,
        options: &RunOptions,
        run: &mut OpenRun,
        segment_start: Instant,
    ) -> Result<RunStatus> {
        if !plan.preflight.is_empty()
            && !run_checks(
                &plan.preflight,
                CheckPhase::Preflight,
                &run.base_ctx,
                &run.bus,
                None,
            )
            .await
        {
            for s in &plan.steps {
                run.bus.queue(Event::StepSkipped {
                    step: s.id.clone(),
                    reason: "a preflight check failed".into(),
                });
            }
            return Ok(RunStatus::PreflightFailed);
        }
        let schedule = Schedule {
            plan,
            base_ctx: &run.base_ctx,
            bus: &run.bus,
            deadline: run.deadline,
            retry_policy: &self.retry_policy,
            started_before: &run.started_before,
            fresh: &options.fresh,
            quit: &options.quit,
        };
        let outcome = schedule.run(&mut run.completed_order).await?;
        if (outcome.failed || outcome.budget_aborted)
            && plan.on_failure == FailurePolicy::Compensate
        {
            steps::compensate(plan, &run.base_ctx, &run.bus).await;
        }
        if outcome.cancelled {
            return Ok(RunStatus::Cancelled);
        }
        if outcome.budget_aborted {
            return Ok(RunStatus::BudgetExceeded);
        }
        if outcome.failed && plan.on_failure != FailurePolicy::Continue {
            return Ok(RunStatus::StepFailed);
        }
        let verify_deadline = match plan.on_budget_exceeded {
            BudgetPolicy::Abort => run.deadline,
            BudgetPolicy::Continue => None,
        };
        let verified = run_checks(
            &plan.verify,
            CheckPhase::Verify,
            &run.base_ctx,
            &run.bus,
            verify_deadline,
        )
        .await;
        Ok(if outcome.failed {
            RunStatus::StepFailed
        } else if verified {
            RunStatus::Succeeded
        } else if verify_deadline.is_some_and(|d| Instant::now() >= d) {
            run.bus.queue(Event::BudgetExceeded {
                budget_ms: plan.budget.map(millis).unwrap_or(0),
                elapsed_ms: millis(segment_start.elapsed()),
                running: Vec::new(),
            });
            RunStatus::BudgetExceeded
        } else {
            RunStatus::VerificationFailed
        })
    }
}

/// The run's last records (an overrun not announced yet, `run_finished`),
/// the notifiers' queues closed and the lock released.
async fn finish(
    plan: &Plan,
    run: OpenRun,
    status: RunStatus,
    segment_start: Instant,
) -> Result<RunReport> {
    let bus = &run.bus;
    if let Some(d) = run.deadline {
        let announced = bus.any_record(|e| matches!(e, Event::BudgetExceeded { .. }));
        if Instant::now() > d && !announced {
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
    run.lock.release().await;
    Ok(RunReport::from_records(&bus.records()).expect("run records start with run_started"))
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
