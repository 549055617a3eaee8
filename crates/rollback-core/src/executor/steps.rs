//! One step from its approval to its end record, and compensation.

use std::sync::Arc;
use std::time::Instant;

use crate::approval::ApprovalRequest;
use crate::duration::millis;
use crate::error::Result;
use crate::event::{Event, Outcome};
use crate::plan::{Plan, PlanStep};
use crate::retry::RetryPolicy;
use crate::step::{Outputs, StepContext, StepError};

use super::bus::Bus;
use super::layers::{report_message, Failure, Journaled, Retry, Run, Timeout};

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

/// How a step is run: its approvals, then its attempts.
pub(crate) struct StepJob {
    pub(crate) step: PlanStep,
    pub(crate) roles: Vec<String>,
    pub(crate) ctx: StepContext,
    pub(crate) bus: Arc<Bus>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) policy: Arc<dyn RetryPolicy>,
}

impl StepJob {
    /// Runs the step: the approval gate, then attempts (each journaled
    /// before it runs, each under the step's timeout, retried as the policy
    /// says), then its durable end record. Errors are the engine's.
    pub(crate) async fn run(self) -> Result<Outcome> {
        let start = Instant::now();
        let StepJob {
            step,
            roles,
            ctx,
            bus,
            deadline,
            policy,
        } = self;
        if !roles.is_empty() {
            if let Err(refusal) = obtain_approvals(&step, &roles, &ctx, &bus).await {
                let error = StepError::fatal(format!("not approved: {refusal}"));
                return finish(&bus, &step, start, 0, Err(error)).await;
            }
        }
        let attempts = Retry {
            inner: Journaled {
                inner: Timeout {
                    inner: Run(step.step.clone()),
                    limit: step.timeout,
                },
                bus: bus.clone(),
                kind: step.kind.clone(),
            },
            policy,
            deadline,
            bus: bus.clone(),
        };
        let (result, count) = attempts.run(&ctx).await;
        let result = match result {
            Ok(outputs) => Ok(outputs),
            Err(Failure::Engine(e)) => return Err(e),
            Err(Failure::Step { outcome, error }) => Err((outcome, error)),
        };
        finish_with(&bus, &step, start, count, result).await
    }
}

async fn finish(
    bus: &Bus,
    step: &PlanStep,
    start: Instant,
    attempts: u32,
    result: std::result::Result<Outputs, StepError>,
) -> Result<Outcome> {
    let result = result.map_err(|e| (Outcome::Failed, e));
    finish_with(bus, step, start, attempts, result).await
}

/// The step's durable end record; later steps see its real outputs, the
/// journal sees them redacted.
async fn finish_with(
    bus: &Bus,
    step: &PlanStep,
    start: Instant,
    attempts: u32,
    result: std::result::Result<Outputs, (Outcome, StepError)>,
) -> Result<Outcome> {
    let (outcome, outputs, error) = match result {
        Ok(outputs) => (Outcome::Succeeded, outputs, None),
        Err((Outcome::Interrupted, error)) => (
            Outcome::Interrupted,
            Outputs::new(),
            Some(error.full_message()),
        ),
        Err((outcome, error)) => (outcome, Outputs::new(), Some(report_message(&error))),
    };
    if outcome == Outcome::Succeeded {
        bus.resolver.set_outputs(&step.id, outputs.clone());
    }
    let journaled = bus.resolver.redact_outputs(&outputs);
    let redacted = journaled != outputs;
    bus.emit(Event::StepFinished {
        step: step.id.clone(),
        outcome,
        attempts,
        duration_ms: millis(start.elapsed()),
        outputs: journaled,
        error,
        redacted,
    })
    .await?;
    Ok(outcome)
}

/// Steps in the order the journal recorded their success (earlier
/// segments of a resumed run included): the order compensation reverses.
fn completion_order(plan: &Plan, bus: &Bus) -> Vec<usize> {
    let index = plan.step_index();
    let mut order: Vec<usize> = Vec::new();
    for r in bus.records() {
        if let Event::StepFinished {
            step,
            outcome: Outcome::Succeeded,
            ..
        } = &r.event
        {
            if let Some(&i) = index.get(step.as_str()) {
                order.retain(|&j| j != i);
                order.push(i);
            }
        }
    }
    order
}

/// Undoes completed steps, last completed (as journaled) first. Best effort:
/// an undo that fails is recorded and the others still run.
pub(crate) async fn compensate(plan: &Plan, base_ctx: &StepContext, bus: &Arc<Bus>) {
    for i in completion_order(plan, bus).into_iter().rev() {
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
