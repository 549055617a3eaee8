//! Run reports, folded from journal records: the executor's result, `rollback
//! show`, and drill reports all come from the same records.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::event::{CheckPhase, Event, Outcome, RunInfo, RunStatus};
use crate::journal::{Record, StoredRun};
use crate::step::Outputs;

/// One step in a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepReport {
    /// Step id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// What it does.
    pub describe: String,
    /// How it ended; `None`: never ran, or still running when the journal ends.
    pub outcome: Option<Outcome>,
    /// Attempts made.
    pub attempts: u32,
    /// When its last run began, from the start of the run.
    pub start_ms: Option<u64>,
    /// How long it took.
    pub duration_ms: Option<u64>,
    /// What it returned (redacted).
    #[serde(default, skip_serializing_if = "Outputs::is_empty")]
    pub outputs: Outputs,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How its compensation ended, if it was compensated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Outcome>,
    /// Completed in an earlier segment of a resumed run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_earlier_segment: bool,
}

/// One check in a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckReport {
    /// Preflight or verify.
    pub phase: CheckPhase,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Passed or not.
    pub passed: bool,
    /// What was measured.
    pub observed: String,
    /// What was expected.
    pub expected: String,
    /// Measurements taken.
    pub attempts: u32,
    /// Time spent measuring.
    pub duration_ms: u64,
}

/// A confirmation or a role's approval, as journaled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalRecord {
    /// The step it was given for.
    pub step: String,
    /// Who approved.
    pub approved_by: String,
    /// How (`interactive`, `--yes`, `--approved-by`).
    pub method: String,
    /// The role, for the plan's `approvals:`; none for a `confirm` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Everything about one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    /// Who, why, which plan.
    pub run: RunInfo,
    /// How it ended; `None` if the journal ends mid-run (a crash: resume it).
    pub status: Option<RunStatus>,
    /// Time of the last segment (the whole run unless it was resumed).
    pub duration_ms: Option<u64>,
    /// Time from the first start to the end, across resumptions.
    pub elapsed_ms: Option<u64>,
    /// The budget.
    pub budget_ms: Option<u64>,
    /// Whether the budget ran out.
    pub budget_exceeded: bool,
    /// Steps in plan order.
    pub steps: Vec<StepReport>,
    /// Checks, in the order they finished.
    pub checks: Vec<CheckReport>,
    /// Confirmations given.
    pub approvals: Vec<ApprovalRecord>,
    /// Notifications that could not be delivered (the run was not affected).
    pub notification_failures: Vec<String>,
    /// Times it was resumed (operator, at).
    pub resumed: Vec<(String, String)>,
    /// Whether completed steps were undone.
    pub compensated: bool,
}

fn ms_between(a: SystemTime, b: SystemTime) -> u64 {
    b.duration_since(a)
        .map(crate::duration::millis)
        .unwrap_or(0)
}

impl RunReport {
    /// Folds records (the first must be `run_started`) into a report.
    pub fn from_records(records: &[Record]) -> Option<RunReport> {
        let (first, rest) = records.split_first()?;
        let Event::RunStarted { run, steps } = &first.event else {
            return None;
        };
        let t0 = first.time().unwrap_or(SystemTime::UNIX_EPOCH);
        let mut report = RunReport {
            run: run.clone(),
            status: None,
            duration_ms: None,
            elapsed_ms: None,
            budget_ms: run.budget_ms,
            budget_exceeded: false,
            steps: steps
                .iter()
                .map(|s| StepReport {
                    id: s.id.clone(),
                    kind: s.kind.clone(),
                    describe: s.describe.clone(),
                    outcome: None,
                    attempts: 0,
                    start_ms: None,
                    duration_ms: None,
                    outputs: Outputs::new(),
                    error: None,
                    undo: None,
                    from_earlier_segment: false,
                })
                .collect(),
            checks: Vec::new(),
            approvals: Vec::new(),
            notification_failures: Vec::new(),
            resumed: Vec::new(),
            compensated: false,
        };
        for r in rest {
            let at = r.time().map(|t| ms_between(t0, t));
            let step =
                |report: &mut RunReport, id: &str| report.steps.iter().position(|s| s.id == id);
            match &r.event {
                Event::RunResumed { operator, .. } => {
                    report.resumed.push((operator.clone(), r.at.clone()));
                    report.status = None;
                    report.budget_exceeded = false;
                    for s in &mut report.steps {
                        if s.outcome == Some(Outcome::Succeeded) {
                            s.from_earlier_segment = true;
                        }
                    }
                }
                Event::StepStarted {
                    step: id, attempt, ..
                } => {
                    if let Some(i) = step(&mut report, id) {
                        let s = &mut report.steps[i];
                        if *attempt == 1 {
                            s.start_ms = at;
                            s.outcome = None;
                            s.error = None;
                            s.from_earlier_segment = false;
                        }
                        s.attempts = *attempt;
                    }
                }
                Event::StepFinished {
                    step: id,
                    outcome,
                    attempts,
                    duration_ms,
                    outputs,
                    error,
                    ..
                } => {
                    if let Some(i) = step(&mut report, id) {
                        let s = &mut report.steps[i];
                        s.outcome = Some(*outcome);
                        s.attempts = *attempts;
                        s.duration_ms = Some(*duration_ms);
                        s.outputs = outputs.clone();
                        s.error = error.clone();
                        if s.start_ms.is_none() {
                            s.start_ms = at.map(|a| a.saturating_sub(*duration_ms));
                        }
                    }
                }
                Event::StepSkipped { step: id, reason } => {
                    if let Some(i) = step(&mut report, id) {
                        report.steps[i].outcome = Some(Outcome::Skipped);
                        report.steps[i].error = Some(reason.clone());
                    }
                }
                Event::UndoStarted { .. } => report.compensated = true,
                Event::UndoFinished {
                    step: id, outcome, ..
                } => {
                    if let Some(i) = step(&mut report, id) {
                        report.steps[i].undo = Some(*outcome);
                    }
                }
                Event::CheckFinished {
                    phase,
                    name,
                    kind,
                    passed,
                    observed,
                    expected,
                    attempts,
                    duration_ms,
                } => {
                    report
                        .checks
                        .retain(|c| !(c.phase == *phase && c.name == *name));
                    report.checks.push(CheckReport {
                        phase: *phase,
                        name: name.clone(),
                        kind: kind.clone(),
                        passed: *passed,
                        observed: observed.clone(),
                        expected: expected.clone(),
                        attempts: *attempts,
                        duration_ms: *duration_ms,
                    });
                }
                Event::BudgetExceeded { .. } => report.budget_exceeded = true,
                Event::Approved {
                    step,
                    approved_by,
                    method,
                    role,
                } => report.approvals.push(ApprovalRecord {
                    step: step.clone(),
                    approved_by: approved_by.clone(),
                    method: method.clone(),
                    role: role.clone(),
                }),
                Event::NotificationFailed {
                    notifier,
                    about,
                    error,
                } => report
                    .notification_failures
                    .push(format!("{notifier} ({about}): {error}")),
                Event::RunFinished {
                    status,
                    duration_ms,
                    ..
                } => {
                    report.status = Some(*status);
                    report.duration_ms = Some(*duration_ms);
                    report.elapsed_ms = at;
                }
                Event::RunStarted { .. }
                | Event::StepProgress { .. }
                | Event::StepRetrying { .. }
                | Event::CancelRequested { .. } => {}
            }
        }
        Some(report)
    }

    /// The report of a stored run.
    pub fn from_stored(run: &StoredRun) -> Option<RunReport> {
        RunReport::from_records(&run.records)
    }

    /// Whether a drill of this run passes: it succeeded within its budget.
    /// A resumed run is measured from its first start: a crash mid-drill
    /// counts against the time.
    pub fn drill_passed(&self) -> bool {
        let used = if self.resumed.is_empty() {
            self.duration_ms
        } else {
            self.elapsed_ms
        };
        self.status == Some(RunStatus::Succeeded)
            && !self.budget_exceeded
            && match (self.budget_ms, used) {
                (Some(budget), Some(used)) => used <= budget,
                _ => true,
            }
    }

    /// Share of the budget used, in percent.
    pub fn budget_used_percent(&self) -> Option<f64> {
        match (self.budget_ms, self.duration_ms) {
            (Some(b), Some(d)) if b > 0 => Some(d as f64 * 100.0 / b as f64),
            _ => None,
        }
    }

    /// The drill report in Markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let verdict = if self.drill_passed() { "PASS" } else { "FAIL" };
        md.push_str(&format!(
            "# Rollback drill: {} — {verdict}\n\n",
            self.run.plan
        ));
        md.push_str("| | |\n|---|---|\n");
        md.push_str(&format!("| Run | `{}` |\n", self.run.run_id));
        md.push_str(&format!("| Started | {} |\n", self.run.started_at));
        md.push_str(&format!("| Operator | {} |\n", self.run.operator));
        md.push_str(&format!(
            "| Reason | {} |\n",
            self.run.reason.replace('|', "\\|")
        ));
        md.push_str(&format!("| Plan digest | `{}` |\n", self.run.digest));
        md.push_str(&format!(
            "| Status | {} |\n",
            self.status.map(|s| s.as_str()).unwrap_or("unfinished")
        ));
        let used = self.duration_ms.map(fmt_ms).unwrap_or_else(|| "-".into());
        match (self.budget_ms, self.budget_used_percent()) {
            (Some(b), Some(p)) => md.push_str(&format!(
                "| Time | {used} of {} budget ({p:.0}%) |\n",
                fmt_ms(b)
            )),
            _ => md.push_str(&format!("| Time | {used} |\n")),
        }
        md.push_str("\n## Steps\n\n| Step | Kind | Outcome | Start | Duration | Attempts |\n|---|---|---|---:|---:|---:|\n");
        for s in &self.steps {
            md.push_str(&format!(
                "| {} | `{}` | {} | {} | {} | {} |\n",
                s.id,
                s.kind,
                s.outcome.map(|o| o.as_str()).unwrap_or("not run"),
                s.start_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
                s.duration_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
                s.attempts
            ));
        }
        if !self.checks.is_empty() {
            md.push_str("\n## Checks\n\n| Phase | Check | Result | Observed | Expected |\n|---|---|---|---|---|\n");
            for c in &self.checks {
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    match c.phase {
                        CheckPhase::Preflight => "preflight",
                        CheckPhase::Verify => "verify",
                    },
                    c.name,
                    if c.passed { "pass" } else { "FAIL" },
                    c.observed.replace('|', "\\|"),
                    c.expected.replace('|', "\\|")
                ));
            }
        }
        let failures: Vec<&StepReport> = self.steps.iter().filter(|s| s.error.is_some()).collect();
        if !failures.is_empty() {
            md.push_str("\n## Errors\n\n");
            for s in failures {
                md.push_str(&format!(
                    "- **{}**: {}\n",
                    s.id,
                    s.error.as_deref().unwrap_or_default()
                ));
            }
        }
        md
    }
}

/// `1.234s`, `250ms`, `2m 03s`.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}
