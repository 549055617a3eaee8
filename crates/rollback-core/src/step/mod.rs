//! The three extension traits: [`Step`], [`Verifier`] and [`Notifier`], and what
//! they see while they work ([`StepContext`]).

mod context;
mod error;
mod outputs;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::{Event, RunInfo};

pub(crate) use context::Recorder;
pub use context::StepContext;
pub use error::{error_chain, ErrorKind, StepError};
pub use outputs::StepOutputs;

/// Named results of a step, readable by later steps as `${steps.ID.NAME}`.
pub type Outputs = BTreeMap<String, serde_json::Value>;

/// Which outputs a step promises, so that `${steps.ID.NAME}` is checked when the
/// plan is loaded instead of failing mid-run.
#[derive(Debug, Clone, Copy)]
pub enum OutputNames {
    /// Exactly these names.
    Fixed(&'static [&'static str]),
    /// Names known only at run time (e.g. the keys of a secret that was read).
    Any,
}

impl OutputNames {
    /// Whether `name` may be referenced.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            OutputNames::Fixed(names) => names.contains(&name),
            OutputNames::Any => true,
        }
    }
}

/// What a step would do, computed without side effects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Preview {
    /// One line: what the step is about to do.
    pub summary: String,
    /// Each change it would make; empty means the target is already in the
    /// desired state and running the step would change nothing.
    pub changes: Vec<String>,
}

impl Preview {
    /// A preview with a summary and the changes it would make.
    pub fn new(summary: impl Into<String>, changes: Vec<String>) -> Self {
        Preview {
            summary: summary.into(),
            changes,
        }
    }
}

/// One action against one system.
///
/// Contract:
/// - `run` is idempotent: after a crash the executor runs an interrupted step
///   again, so `run` checks the target's state before changing it and does no
///   damage twice. It may also be retried after a retryable error or a timeout.
/// - `preview` has no side effects: it may read, never write.
/// - `undo` compensates a completed `run`, given the outputs that run returned;
///   it is idempotent too.
/// - Strings in a step's configuration may hold `${...}` references; resolve
///   them with [`StepContext::resolve`] at run time, never at construction, so
///   secrets are not held longer than needed.
#[async_trait]
pub trait Step: Send + Sync + fmt::Debug + 'static {
    /// One line describing the step for people (no secret values).
    fn describe(&self) -> String;

    /// Names of the outputs `run` returns.
    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&[])
    }

    /// What `run` would change, without changing anything.
    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError>;

    /// Does the work and returns outputs for later steps.
    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError>;

    /// Whether `undo` is supported.
    fn can_undo(&self) -> bool {
        false
    }

    /// Reverses a completed `run`.
    async fn undo(&self, _ctx: &StepContext, _outputs: &Outputs) -> Result<(), StepError> {
        Err(StepError::fatal("this kind cannot be undone"))
    }
}

/// The result of one check: a measured value against a threshold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Measurement {
    /// Whether the observed value meets the expectation.
    pub passed: bool,
    /// What was measured, e.g. `200 in 12ms`.
    pub observed: String,
    /// What was expected, e.g. `status 200, latency <= 1s`.
    pub expected: String,
}

impl Measurement {
    /// A measurement; `passed` says whether it meets `expected`.
    pub fn new(passed: bool, observed: impl Into<String>, expected: impl Into<String>) -> Self {
        Measurement {
            passed,
            observed: observed.into(),
            expected: expected.into(),
        }
    }
}

/// A read-only check with a measured value and a threshold: after a rollback, in
/// preflight, and as a trigger condition.
///
/// `check` must not change anything. An error means the value could not be
/// measured; the executor counts it as a failed check and records the error.
#[async_trait]
pub trait Verifier: Send + Sync + fmt::Debug + 'static {
    /// One line describing the check.
    fn describe(&self) -> String;

    /// Measures once.
    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError>;
}

/// Receives run events (started, step failed, finished, budget exceeded).
///
/// Notifiers run beside the rollback, never in its way: the executor delivers
/// events from a queue with a timeout and retries, and a failure is journaled
/// but never fails the run.
#[async_trait]
pub trait Notifier: Send + Sync + fmt::Debug + 'static {
    /// One line describing where notifications go (no tokens).
    fn describe(&self) -> String;

    /// Delivers one event. `ctx` resolves `${env:...}` secrets (tokens) and
    /// redacts them; `run` says who, why and which plan.
    async fn notify(
        &self,
        ctx: &StepContext,
        run: &RunInfo,
        event: &Event,
    ) -> Result<(), StepError>;

    /// The event classes it receives when the plan's entry has no `events:`
    /// (see [`Event::NOTIFIABLE`]). By default the milestones; a notifier that
    /// shows progress (a chat message updated in place, a status page
    /// incident) adds `step_finished`.
    fn default_events(&self) -> &'static [&'static str] {
        Event::MILESTONES
    }

    /// Checks, without sending a notification, that the destination can be
    /// reached and the credentials are accepted (`rollback preflight`).
    /// Returns evidence, or `None` when this kind has no way to check.
    async fn probe(&self, _ctx: &StepContext) -> Result<Option<String>, StepError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn assert_object_safe(
        _: Option<&dyn Step>,
        _: Option<&dyn Verifier>,
        _: Option<&dyn Notifier>,
    ) {
    }

    #[test]
    fn traits_are_object_safe() {
        assert_object_safe(None, None, None);
        let _: Vec<Arc<dyn Step>> = Vec::new();
    }
}
