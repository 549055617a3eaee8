//! The step scheduler: runs the plan's DAG, independent steps in parallel
//! (up to `concurrency`), and stops for a failure, the budget, Ctrl-C or a
//! quit as the plan's policies say.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::duration::millis;
use crate::error::{Error, Result};
use crate::event::{Event, Outcome};
use crate::plan::{BudgetPolicy, FailurePolicy, Plan};
use crate::step::{Outputs, StepContext};

use super::bus::Bus;
use super::steps::StepJob;
use super::RetryPolicyFactory;

/// How the steps ended, as the run's status needs it.
#[derive(Debug, Default)]
pub(crate) struct StepsOutcome {
    pub(crate) failed: bool,
    pub(crate) cancelled: bool,
    pub(crate) budget_aborted: bool,
}

/// What the scheduler needs besides the plan.
pub(crate) struct Schedule<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) base_ctx: &'a StepContext,
    pub(crate) bus: &'a Arc<Bus>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) retry_policy: &'a RetryPolicyFactory,
    /// Steps started in an earlier segment of this run and not finished.
    pub(crate) started_before: &'a HashSet<String>,
    /// Steps the operator asked to run fresh.
    pub(crate) fresh: &'a [String],
    /// A second Ctrl-C: end the running steps now.
    pub(crate) quit: &'a CancellationToken,
}

/// The DAG's bookkeeping: who waits on whom, what is done.
struct Graph {
    dependents: Vec<Vec<usize>>,
    waiting_on: Vec<usize>,
    done: Vec<bool>,
    ready: VecDeque<usize>,
}

impl Graph {
    fn new(plan: &Plan, completed: &[usize]) -> Self {
        let n = plan.steps.len();
        let index = plan.step_index();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut waiting_on: Vec<usize> = vec![0; n];
        for (i, s) in plan.steps.iter().enumerate() {
            for dep in &s.after {
                dependents[index[dep.as_str()]].push(i);
                waiting_on[i] += 1;
            }
        }
        let mut done = vec![false; n];
        for &i in completed {
            done[i] = true;
            for &dep in &dependents[i] {
                waiting_on[dep] -= 1;
            }
        }
        let ready = (0..n).filter(|&i| !done[i] && waiting_on[i] == 0).collect();
        Graph {
            dependents,
            waiting_on,
            done,
            ready,
        }
    }

    /// Marks `i` succeeded: its dependents whose last dependency it was are ready.
    fn succeeded(&mut self, i: usize) {
        for &dep in &self.dependents[i] {
            self.waiting_on[dep] -= 1;
            if self.waiting_on[dep] == 0 {
                self.ready.push_back(dep);
            }
        }
    }

    /// Marks everything that depends on `failed` skipped.
    fn skip_dependents(&mut self, plan: &Plan, failed: usize, bus: &Bus, reason: &str) {
        let mut todo = self.dependents[failed].clone();
        let mut seen = HashSet::new();
        while let Some(i) = todo.pop() {
            if seen.insert(i) && !self.done[i] {
                self.done[i] = true;
                bus.queue(Event::StepSkipped {
                    step: plan.steps[i].id.clone(),
                    reason: reason.to_string(),
                });
                todo.extend(&self.dependents[i]);
            }
        }
    }
}

/// A running step: its index and when it started.
type Running = HashMap<tokio::task::Id, (usize, Instant)>;

impl Schedule<'_> {
    fn spawn(&self, i: usize, set: &mut JoinSet<(usize, Result<Outcome>)>, running: &mut Running) {
        let step = self.plan.steps[i].clone();
        let mut ctx = self.base_ctx.clone();
        ctx.step_id = step.id.clone();
        ctx.rerun = self.started_before.contains(&step.id);
        ctx.fresh = self.fresh.contains(&step.id);
        let job = StepJob {
            roles: self.plan.roles_before(&step.id),
            policy: (self.retry_policy)(&step),
            step,
            ctx,
            bus: self.bus.clone(),
            deadline: self.deadline,
        };
        let handle = set.spawn(async move { (i, job.run().await) });
        running.insert(handle.id(), (i, Instant::now()));
    }

    fn running_names(&self, running: &Running) -> Vec<String> {
        running
            .values()
            .map(|(i, _)| self.plan.steps[*i].id.clone())
            .collect()
    }

    /// Journals the end of steps whose task ended without writing one (the
    /// budget aborted it, it panicked, or the operator quit).
    fn ended_without_record(&self, i: usize, started: Instant, outcome: Outcome, error: String) {
        self.bus.queue(Event::StepFinished {
            step: self.plan.steps[i].id.clone(),
            outcome,
            attempts: 0,
            duration_ms: millis(started.elapsed()),
            outputs: Outputs::new(),
            error: Some(error),
            redacted: false,
        });
    }

    /// Runs the DAG. Returns once no step runs and none can start.
    pub(crate) async fn run(&self, completed_order: &mut Vec<usize>) -> Result<StepsOutcome> {
        let plan = self.plan;
        let mut graph = Graph::new(plan, completed_order);
        let mut set: JoinSet<(usize, Result<Outcome>)> = JoinSet::new();
        let mut running: Running = HashMap::new();
        let mut outcome = StepsOutcome::default();
        let mut stop_reason: Option<String> = None;
        let mut engine_error: Option<Error> = None;
        let mut budget_hit = false;
        let mut quitting = false;
        let budget_sleep = tokio::time::sleep_until(
            self.deadline
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365)),
        );
        tokio::pin!(budget_sleep);
        loop {
            while stop_reason.is_none() && set.len() < plan.concurrency {
                let Some(i) = graph.ready.pop_front() else {
                    break;
                };
                self.spawn(i, &mut set, &mut running);
            }
            if set.is_empty() {
                break;
            }
            tokio::select! {
                joined = set.join_next_with_id() => {
                    let Some(joined) = joined else { continue };
                    let (i, result) = match joined {
                        Ok((id, (i, result))) => {
                            running.remove(&id);
                            (i, result)
                        }
                        Err(e) => {
                            let Some((i, started)) = running.remove(&e.id()) else { continue };
                            let (ended, error) = if e.is_cancelled() {
                                (Outcome::Interrupted, "interrupted: the budget ran out".to_string())
                            } else {
                                (Outcome::Failed, format!("step panicked: {e}"))
                            };
                            self.ended_without_record(i, started, ended, error);
                            (i, Ok(ended))
                        }
                    };
                    let step_outcome = match result {
                        Ok(o) => o,
                        Err(e) => {
                            // The journal failed: stop everything, report the engine error.
                            stop_reason.get_or_insert_with(|| "the journal could not be written".into());
                            engine_error.get_or_insert(e);
                            continue;
                        }
                    };
                    graph.done[i] = true;
                    if step_outcome == Outcome::Succeeded {
                        completed_order.push(i);
                        graph.succeeded(i);
                    } else if step_outcome != Outcome::Interrupted {
                        outcome.failed = true;
                        let id = &plan.steps[i].id;
                        match plan.on_failure {
                            FailurePolicy::Continue => {
                                graph.skip_dependents(plan, i, self.bus, &format!("step `{id}` did not succeed"));
                            }
                            FailurePolicy::Abort | FailurePolicy::Compensate => {
                                stop_reason.get_or_insert_with(|| format!("the run stopped after step `{id}` failed"));
                            }
                        }
                    }
                }
                _ = &mut budget_sleep, if self.deadline.is_some() && !budget_hit => {
                    budget_hit = true;
                    self.bus.queue(Event::BudgetExceeded {
                        budget_ms: plan.budget.map(millis).unwrap_or(0),
                        elapsed_ms: plan.budget.map(millis).unwrap_or(0),
                        running: self.running_names(&running),
                    });
                    if plan.on_budget_exceeded == BudgetPolicy::Abort {
                        outcome.budget_aborted = true;
                        stop_reason.get_or_insert_with(|| "the budget ran out".into());
                        set.abort_all();
                    }
                }
                _ = self.base_ctx.cancel.cancelled(), if !outcome.cancelled => {
                    outcome.cancelled = true;
                    self.bus.queue(Event::CancelRequested { running: self.running_names(&running) });
                    stop_reason.get_or_insert_with(|| "the operator cancelled the run".into());
                }
                _ = self.quit.cancelled(), if !quitting => {
                    quitting = true;
                    self.quit_now(&mut set, &mut running, &mut graph);
                    outcome.cancelled = true;
                    stop_reason.get_or_insert_with(|| "the operator quit the run".into());
                }
            }
        }
        if let Some(reason) = &stop_reason {
            for (i, s) in plan.steps.iter().enumerate() {
                if !graph.done[i] {
                    self.bus.queue(Event::StepSkipped {
                        step: s.id.clone(),
                        reason: reason.clone(),
                    });
                }
            }
        }
        self.bus.journal.commit().await?;
        match engine_error {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }

    /// A second Ctrl-C: the running steps are dropped (which ends their
    /// programs' process groups) and journaled as interrupted, so the
    /// journal says what a resume will run again.
    fn quit_now(
        &self,
        set: &mut JoinSet<(usize, Result<Outcome>)>,
        running: &mut Running,
        graph: &mut Graph,
    ) {
        set.abort_all();
        crate::process::end_running_programs();
        for (_, (i, started)) in running.drain() {
            graph.done[i] = true;
            self.ended_without_record(
                i,
                started,
                Outcome::Interrupted,
                "interrupted: the operator quit (a second Ctrl-C); `rollback resume` runs it again"
                    .into(),
            );
        }
    }
}
