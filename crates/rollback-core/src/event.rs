//! Run events: what the executor journals, shows as progress, and sends to
//! notifiers. One type serves all three so they cannot disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::step::Outputs;

/// How a step ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ran to completion.
    Succeeded,
    /// Returned an error (after its retries).
    Failed,
    /// Did not finish within its timeout (after its retries).
    TimedOut,
    /// Stopped mid-way: the budget ran out, or the process died.
    Interrupted,
    /// Not run because a step it depends on did not succeed.
    Skipped,
}

impl Outcome {
    /// Lower-case name as written in the journal.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Interrupted => "interrupted",
            Outcome::Skipped => "skipped",
        }
    }
}

/// How a whole run ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every step succeeded and every verification passed.
    Succeeded,
    /// A step failed (see the report for compensation).
    StepFailed,
    /// The steps succeeded but a verification did not pass.
    VerificationFailed,
    /// The budget ran out before the run finished.
    BudgetExceeded,
    /// A preflight check failed; no step ran.
    PreflightFailed,
    /// The operator interrupted the run; it can be resumed.
    Cancelled,
}

impl RunStatus {
    /// Lower-case name as written in the journal.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::StepFailed => "step_failed",
            RunStatus::VerificationFailed => "verification_failed",
            RunStatus::BudgetExceeded => "budget_exceeded",
            RunStatus::PreflightFailed => "preflight_failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// Where a check ran.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckPhase {
    /// Before any step, as a gate.
    Preflight,
    /// After the steps, to prove the rollback worked.
    Verify,
}

/// Who, why and what: the facts about a run that every event refers to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// The run's id (`rollback show RUN`).
    pub run_id: String,
    /// The plan's name.
    pub plan: String,
    /// `sha256:` digest of the plan file's text.
    pub digest: String,
    /// Where the plan was loaded from.
    pub plan_path: Option<String>,
    /// Who runs it.
    pub operator: String,
    /// Why (`--reason`).
    pub reason: String,
    /// What started it, when not a person (`drill`, `trigger: error_rate = 0.07`).
    pub trigger: Option<String>,
    /// Host name of the runner.
    pub host: String,
    /// Process id of the runner.
    pub pid: u32,
    /// Values of the plan's `vars` after `--var` overrides (never secrets).
    pub vars: BTreeMap<String, String>,
    /// The plan's time budget in milliseconds.
    pub budget_ms: Option<u64>,
    /// Whether this run is a drill.
    pub drill: bool,
    /// Version of rollback that ran it.
    pub version: String,
    /// When the run started (RFC 3339).
    pub started_at: String,
}

/// A step as planned, recorded when the run starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepInfo {
    /// Step id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// What it does (no secrets).
    pub describe: String,
    /// Steps it runs after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// Something that happened during a run.
// `RunStarted` (the run's facts and steps) is larger than the rest; it comes
// once per run, so boxing it would only make every match on it longer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run began.
    RunStarted {
        /// Who, why, which plan.
        run: RunInfo,
        /// The plan's steps in file order.
        steps: Vec<StepInfo>,
    },
    /// An interrupted run was picked up again.
    RunResumed {
        /// Who resumed it.
        operator: String,
        /// Host of the new runner.
        host: String,
        /// Process id of the new runner.
        pid: u32,
        /// Steps already completed, which will not run again.
        completed: Vec<String>,
    },
    /// A step attempt began.
    StepStarted {
        /// Step id.
        step: String,
        /// The step's kind.
        kind: String,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// A long step said how far it got.
    StepProgress {
        /// Step id.
        step: String,
        /// What it said.
        message: String,
    },
    /// An attempt failed and another will follow after a delay.
    StepRetrying {
        /// Step id.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// Why it failed.
        error: String,
        /// How long until the next attempt.
        delay_ms: u64,
    },
    /// A step ended.
    StepFinished {
        /// Step id.
        step: String,
        /// How it ended.
        outcome: Outcome,
        /// Attempts made.
        attempts: u32,
        /// Time from its first attempt to its end.
        duration_ms: u64,
        /// What it returned (secrets redacted).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        outputs: Outputs,
        /// Why it did not succeed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Some output held a secret and was redacted here: a resumed run
        /// cannot hand the journaled value to later steps, so it runs the step
        /// again (steps are idempotent) instead of passing `***` on.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        redacted: bool,
    },
    /// A step was not run because a step it depends on did not succeed, or the
    /// run stopped before reaching it.
    StepSkipped {
        /// Step id.
        step: String,
        /// Why.
        reason: String,
    },
    /// Compensation of a completed step began.
    UndoStarted {
        /// Step id.
        step: String,
    },
    /// Compensation of a step ended.
    UndoFinished {
        /// Step id.
        step: String,
        /// How the undo ended.
        outcome: Outcome,
        /// How long it took.
        duration_ms: u64,
        /// Why it did not succeed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A preflight or verification check ended.
    CheckFinished {
        /// Preflight or verify.
        phase: CheckPhase,
        /// The check's name.
        name: String,
        /// Its kind.
        kind: String,
        /// Whether it passed.
        passed: bool,
        /// What was measured.
        observed: String,
        /// What was expected.
        expected: String,
        /// Measurements taken.
        attempts: u32,
        /// Time from first to last measurement.
        duration_ms: u64,
    },
    /// The budget ran out.
    BudgetExceeded {
        /// The budget.
        budget_ms: u64,
        /// Time used when it ran out.
        elapsed_ms: u64,
        /// Steps running at that moment.
        running: Vec<String>,
    },
    /// The operator asked to stop (Ctrl-C): no new step starts.
    CancelRequested {
        /// Steps still running, left to finish or time out.
        running: Vec<String>,
    },
    /// A confirmation was given.
    Approved {
        /// Step id.
        step: String,
        /// Who approved.
        approved_by: String,
        /// How.
        method: String,
        /// The role approved for (the plan's `approvals:`), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    /// A notifier could not deliver an event (the run goes on).
    NotificationFailed {
        /// Which notifier.
        notifier: String,
        /// Which event it was delivering.
        about: String,
        /// Why it failed.
        error: String,
    },
    /// A step started a program (recorded durably before its output is
    /// read, so that a resume can find it if its runner dies).
    ProgramStarted {
        /// Step id.
        step: String,
        /// Which program, where, and what a resume does with it.
        program: crate::process::ProgramInfo,
    },
    /// A program a step started has ended.
    ProgramEnded {
        /// Step id.
        step: String,
        /// Its pid.
        pid: u32,
        /// Its start time (clock ticks after boot).
        start_ticks: u64,
        /// `exit N` or `killed by signal N`.
        status: String,
    },
    /// On resume: what became of a program an earlier runner left running.
    ProgramSettled {
        /// Step id.
        step: String,
        /// The program as it was recorded.
        program: crate::process::ProgramInfo,
        /// What the resume found and did.
        outcome: String,
    },
    /// A step kept a piece of its state (its intent, a small artifact) in
    /// the journal store, where every runner of the store can read it.
    StateSaved {
        /// Step id.
        step: String,
        /// The piece's name (`intent`, `objects.json`).
        name: String,
        /// Its size in bytes.
        bytes: u64,
    },
    /// The run ended.
    RunFinished {
        /// How.
        status: RunStatus,
        /// Time from start (or resume) to end.
        duration_ms: u64,
        /// The budget, if any.
        budget_ms: Option<u64>,
    },
}

impl Event {
    /// The event's name as written in the journal (`step_finished`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run_started",
            Event::RunResumed { .. } => "run_resumed",
            Event::StepStarted { .. } => "step_started",
            Event::StepProgress { .. } => "step_progress",
            Event::StepRetrying { .. } => "step_retrying",
            Event::StepFinished { .. } => "step_finished",
            Event::StepSkipped { .. } => "step_skipped",
            Event::UndoStarted { .. } => "undo_started",
            Event::UndoFinished { .. } => "undo_finished",
            Event::CheckFinished { .. } => "check_finished",
            Event::BudgetExceeded { .. } => "budget_exceeded",
            Event::CancelRequested { .. } => "cancel_requested",
            Event::Approved { .. } => "approved",
            Event::NotificationFailed { .. } => "notification_failed",
            Event::ProgramStarted { .. } => "program_started",
            Event::ProgramEnded { .. } => "program_ended",
            Event::ProgramSettled { .. } => "program_settled",
            Event::StateSaved { .. } => "state_saved",
            Event::RunFinished { .. } => "run_finished",
        }
    }

    /// The names a plan's `notify[].events` may list.
    pub const NOTIFIABLE: &'static [&'static str] = &[
        "run_started",
        "step_finished",
        "step_failed",
        "check_finished",
        "verification_failed",
        "budget_exceeded",
        "run_finished",
    ];

    /// The classes a notifier receives when the plan does not say: the
    /// start, failures, the budget, the end.
    pub const MILESTONES: &'static [&'static str] = &[
        "run_started",
        "step_failed",
        "verification_failed",
        "budget_exceeded",
        "run_finished",
    ];

    /// The step this event is about, if it is about one.
    pub fn step_id(&self) -> Option<&str> {
        match self {
            Event::StepStarted { step, .. }
            | Event::StepProgress { step, .. }
            | Event::StepRetrying { step, .. }
            | Event::StepFinished { step, .. }
            | Event::StepSkipped { step, .. }
            | Event::UndoStarted { step, .. }
            | Event::UndoFinished { step, .. }
            | Event::Approved { step, .. }
            | Event::ProgramStarted { step, .. }
            | Event::ProgramEnded { step, .. }
            | Event::ProgramSettled { step, .. }
            | Event::StateSaved { step, .. } => Some(step),
            _ => None,
        }
    }

    /// Every notification class this event belongs to: a failed step is both
    /// `step_finished` and `step_failed`, so a notifier that follows progress
    /// and one that wants only failures each get it once.
    pub fn notification_classes(&self) -> Vec<&'static str> {
        match self {
            Event::StepFinished { outcome, .. }
                if !matches!(outcome, Outcome::Succeeded | Outcome::Interrupted) =>
            {
                vec!["step_finished", "step_failed"]
            }
            Event::StepFinished { .. } => vec!["step_finished"],
            Event::CheckFinished { passed: false, .. } => {
                vec!["check_finished", "verification_failed"]
            }
            Event::CheckFinished { .. } => vec!["check_finished"],
            other => other.notification_class().into_iter().collect(),
        }
    }

    /// The notification class of this event, if it is one notifiers may ask
    /// for: `step_failed` stands for a step that ended without success,
    /// `verification_failed` for a failed check.
    pub fn notification_class(&self) -> Option<&'static str> {
        match self {
            Event::RunStarted { .. } => Some("run_started"),
            Event::StepFinished { outcome, .. }
                if !matches!(outcome, Outcome::Succeeded | Outcome::Interrupted) =>
            {
                Some("step_failed")
            }
            Event::CheckFinished { passed: false, .. } => Some("verification_failed"),
            Event::BudgetExceeded { .. } => Some("budget_exceeded"),
            Event::RunFinished { .. } => Some("run_finished"),
            _ => None,
        }
    }
}
