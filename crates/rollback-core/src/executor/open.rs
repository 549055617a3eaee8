//! Opening a run: the plan lock, the journal, the run bus and the context
//! every step sees; for a resume, what the earlier segments left (completed
//! steps, kept state, programs still running).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::approval::Approver;
use crate::duration::millis;
use crate::error::{Error, LockHolder, Result};
use crate::event::{Event, Outcome, RunInfo, RunStatus, StepInfo};
use crate::journal::{timestamp, PlanLockGuard, Record, StoredRun};
use crate::plan::Plan;
use crate::process::procfs;
use crate::process::survivors::{self, SettleError, Settled, Unfinished};
use crate::step::{Outputs, StepContext};
use crate::template::Resolver;

use super::bus::{Bus, RecordingApprover};
use super::{hostname, new_run_id, Executor, RunOptions};

/// How long a run waits for a plan lock whose recorded holder has died on
/// this host: a program the dead runner was starting can hold the lock file
/// between fork and exec, for a few milliseconds.
const DEAD_HOLDER_WAIT: Duration = Duration::from_secs(5);

/// What a resumed run starts from.
pub(crate) struct ResumeState {
    pub(crate) run_id: String,
    pub(crate) info: RunInfo,
    pub(crate) records: Vec<Record>,
    /// Completed steps in completion order, with their outputs.
    pub(crate) completed: Vec<(String, Outputs)>,
}

impl ResumeState {
    /// Checks that `stored` can be resumed with `plan`.
    pub(crate) fn of(stored: StoredRun, plan: &Plan, run_id: &str) -> Result<Self> {
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
        let mut completed: Vec<(String, Outputs)> = Vec::new();
        for r in &stored.records {
            if let Event::StepFinished {
                step,
                outcome: Outcome::Succeeded,
                ..
            } = &r.event
            {
                if let Some(outputs) = completed_map.get(step) {
                    completed.retain(|(s, _)| s != step);
                    completed.push((step.clone(), outputs.clone()));
                }
            }
        }
        Ok(ResumeState {
            run_id: run_id.to_string(),
            info: stored.info,
            records: stored.records,
            completed,
        })
    }

    /// Steps an earlier segment started and did not complete: their effects
    /// may be there already.
    fn started_before(&self) -> HashSet<String> {
        let done: HashSet<&str> = self.completed.iter().map(|(s, _)| s.as_str()).collect();
        self.records
            .iter()
            .filter_map(|r| match &r.event {
                Event::StepStarted { step, .. } if !done.contains(step.as_str()) => {
                    Some(step.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Programs of steps not completed that have no end record.
    fn unfinished_programs(&self) -> Vec<Unfinished> {
        let done: HashSet<&str> = self.completed.iter().map(|(s, _)| s.as_str()).collect();
        survivors::unfinished(&self.records)
            .into_iter()
            .filter(|p| !done.contains(p.step.as_str()))
            .collect()
    }
}

/// An open run: its bus, context and lock, ready for its phases.
pub(crate) struct OpenRun {
    pub(crate) bus: Arc<Bus>,
    pub(crate) base_ctx: StepContext,
    pub(crate) lock: Box<dyn PlanLockGuard>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) completed_order: Vec<usize>,
    pub(crate) started_before: HashSet<String>,
}

fn new_info(plan: &Plan, options: &RunOptions, run_id: &str, started_at: &str) -> RunInfo {
    RunInfo {
        run_id: run_id.to_string(),
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
        started_at: started_at.to_string(),
    }
}

/// Whether the lock's recorded holder ran on this host and is gone (its pid
/// is not running, or is a process that started after it took the lock).
fn holder_is_dead(holder: &LockHolder) -> bool {
    if holder.host != hostname() || holder.pid == 0 {
        return false;
    }
    match procfs::started_at(holder.pid as i32) {
        None => true,
        Some(started) => humantime::parse_rfc3339(&holder.since)
            .is_ok_and(|since| started > since + Duration::from_secs(2)),
    }
}

/// The error for survivors that could not be settled.
fn settle_error(run_id: &str, e: SettleError) -> Error {
    let describe = |p: &Unfinished| {
        format!(
            "step `{}` started `{}` (pid {}) on host {}",
            p.step, p.info.command, p.info.pid, p.info.host
        )
    };
    let reason = match e {
        SettleError::OtherHost(programs) => {
            let hosts: Vec<&str> = programs.iter().map(|p| p.info.host.as_str()).collect();
            format!(
                "programs of its dead runner may still be running where this runner cannot see them: {}. \
                 Make sure they have ended (or that the host is down), then resume with \
                 `--programs-ended-on {}`",
                programs.iter().map(describe).collect::<Vec<_>>().join("; "),
                hosts.join(",")
            )
        }
        SettleError::StillRunning(program, why) => format!(
            "{} is still running: {why}; end it, then resume again",
            describe(&program)
        ),
    };
    Error::NotResumable {
        run_id: run_id.to_string(),
        reason,
    }
}

impl Executor {
    /// Takes the plan's lock; waits a moment when its holder has died.
    async fn lock_plan(&self, plan: &str, holder: &LockHolder) -> Result<Box<dyn PlanLockGuard>> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let result = match &self.locker {
                Some(locker) => locker.lock(plan, holder).await,
                None => self.store.lock(plan, holder).await,
            };
            match result {
                Err(Error::Locked { holder: held, .. })
                    if holder_is_dead(&held) && started.elapsed() < DEAD_HOLDER_WAIT =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// Opens the run: lock, settled survivors, journal, bus, context, and
    /// its first durable record (`run_started` or `run_resumed`).
    pub(crate) async fn open_run(
        &self,
        plan: &Plan,
        options: &RunOptions,
        resume: Option<ResumeState>,
        segment_start: Instant,
    ) -> Result<OpenRun> {
        let started_at = timestamp(SystemTime::now());
        let run_id = resume
            .as_ref()
            .map(|r| r.run_id.clone())
            .unwrap_or_else(new_run_id);
        let info = match &resume {
            Some(r) => r.info.clone(),
            None => new_info(plan, options, &run_id, &started_at),
        };
        let holder = LockHolder {
            operator: options.operator.clone(),
            host: hostname(),
            pid: std::process::id(),
            since: started_at,
            run_id: run_id.clone(),
        };
        let lock = self.lock_plan(&plan.name, &holder).await?;
        let deadline = plan.budget.map(|b| segment_start + b);
        // Under the lock, before anything runs again: no program of the dead
        // runner may race the resume.
        let settled = match &resume {
            Some(r) => survivors::settle(
                r.unfinished_programs(),
                &run_id,
                &options.programs_ended_on,
                deadline,
            )
            .await
            .map_err(|e| settle_error(&run_id, e))?,
            None => Vec::new(),
        };
        let journal = match &resume {
            Some(_) => self.store.reopen(&run_id).await?,
            None => self.store.create(&info, &plan.source.text).await?,
        };
        let resolver = Arc::new(Resolver::new(info.vars.clone()).with_base_dir(plan.base_dir()));
        let earlier = resume
            .as_ref()
            .map(|r| r.records.clone())
            .unwrap_or_default();
        let saved = saved_state(&earlier);
        let bus = Arc::new(Bus::new(
            info.clone(),
            journal,
            resolver.clone(),
            options.observer.clone(),
            earlier,
        ));
        let base_ctx = self.base_context(&run_id, options, &info, &bus, resolver, deadline, saved);
        // Before the first record, so the notifiers hear of the start.
        self.start_notifiers(&plan.notify, &bus, &base_ctx);
        let mut open = OpenRun {
            bus: bus.clone(),
            base_ctx,
            lock,
            deadline,
            completed_order: Vec::new(),
            started_before: HashSet::new(),
        };
        match resume {
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
                bus.emit(Event::RunStarted { run: info, steps }).await?;
            }
            Some(r) => open.resumed(plan, options, &r, settled).await?,
        }
        Ok(open)
    }

    #[allow(clippy::too_many_arguments)]
    fn base_context(
        &self,
        run_id: &str,
        options: &RunOptions,
        info: &RunInfo,
        bus: &Arc<Bus>,
        resolver: Arc<Resolver>,
        deadline: Option<Instant>,
        saved: HashSet<(String, String)>,
    ) -> StepContext {
        let approver: Arc<dyn Approver> = Arc::new(RecordingApprover {
            inner: options.approver.clone(),
            bus: bus.clone(),
        });
        let progress_bus = bus.clone();
        StepContext {
            run_id: run_id.to_string(),
            step_id: String::new(),
            attempt: 1,
            operator: options.operator.clone(),
            reason: info.reason.clone(),
            deadline,
            cancel: options.cancel.clone(),
            resolver,
            run_dir: self.store.run_dir(run_id),
            approver,
            progress: Arc::new(move |step: &str, message: &str| {
                progress_bus.queue(Event::StepProgress {
                    step: step.to_string(),
                    message: message.to_string(),
                })
            }),
            recorder: bus.clone(),
            state: self.store.clone(),
            saved: Arc::new(Mutex::new(saved)),
            rerun: false,
            fresh: false,
        }
    }
}

/// Pieces of state the journal says were kept, by (step, name).
fn saved_state(records: &[Record]) -> HashSet<(String, String)> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::StateSaved { step, name, .. } => Some((step.clone(), name.clone())),
            _ => None,
        })
        .collect()
}

impl OpenRun {
    /// A resumed run: completed steps' outputs are known again, the resume
    /// is journaled with what became of the dead runner's programs.
    async fn resumed(
        &mut self,
        plan: &Plan,
        options: &RunOptions,
        r: &ResumeState,
        settled: Vec<(Unfinished, Settled)>,
    ) -> Result<()> {
        let index = plan.step_index();
        for (step, outputs) in &r.completed {
            self.bus.resolver.set_outputs(step, outputs.clone());
            if let Some(&i) = index.get(step.as_str()) {
                self.completed_order.push(i);
            }
        }
        self.started_before = r.started_before();
        self.bus.queue(Event::RunResumed {
            operator: options.operator.clone(),
            host: hostname(),
            pid: std::process::id(),
            completed: r.completed.iter().map(|(s, _)| s.clone()).collect(),
        });
        for (program, outcome) in settled {
            self.bus.queue(Event::ProgramSettled {
                step: program.step,
                program: program.info,
                outcome: outcome.describe().to_string(),
            });
        }
        self.bus.journal.commit().await
    }
}
