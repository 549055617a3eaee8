//! What a notifier knows about a run: the facts from [`RunInfo`] and a
//! timeline of the events it received, kept per run id inside the notifier
//! instance, and the words and colours every notifier uses for a run's state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rollback_core::{Event, Outcome, RunInfo, RunStatus};

/// Where a run stands, as far as the events received tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, not finished.
    Running,
    /// Ended with this status.
    Finished(RunStatus),
}

/// One line of a run's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the notifier received the event (RFC 3339, UTC, seconds).
    pub at: String,
    /// What happened, one line, no secrets (events arrive redacted).
    pub text: String,
}

/// The facts about one run and the events a notifier received for it.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// The plan's name.
    pub plan: String,
    /// The service rolled back: the plan's `service` variable, else the plan name.
    pub service: String,
    /// Who runs it.
    pub operator: String,
    /// Why.
    pub reason: String,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// The plan's time budget.
    pub budget_ms: Option<u64>,
    /// Whether this run is a drill.
    pub drill: bool,
    /// Lines in order of arrival.
    pub entries: Vec<Entry>,
    /// Steps that ended without success so far.
    pub failed_steps: Vec<String>,
    /// The plan's steps, as `run_started` listed them (empty until it arrives).
    pub planned_steps: Vec<String>,
    /// Steps that succeeded so far (known from `step_finished`).
    pub succeeded_steps: Vec<String>,
    /// Checks that did not pass so far.
    pub failed_checks: Vec<String>,
    /// Whether the budget ran out.
    pub over_budget: bool,
    /// Started or finished.
    pub phase: Phase,
    /// The run's duration, once it finished.
    pub duration_ms: Option<u64>,
    last: Option<Event>,
}

impl Timeline {
    /// An empty timeline for `run`.
    pub fn new(run: &RunInfo) -> Self {
        Timeline {
            plan: run.plan.clone(),
            service: run
                .vars
                .get("service")
                .cloned()
                .unwrap_or_else(|| run.plan.clone()),
            operator: run.operator.clone(),
            reason: run.reason.clone(),
            started_at: run.started_at.clone(),
            budget_ms: run.budget_ms,
            drill: run.drill,
            entries: Vec::new(),
            failed_steps: Vec::new(),
            planned_steps: Vec::new(),
            succeeded_steps: Vec::new(),
            failed_checks: Vec::new(),
            over_budget: false,
            phase: Phase::Running,
            duration_ms: None,
            last: None,
        }
    }

    /// Adds `event`. A delivery retried by the executor hands over the same
    /// event again: it is recorded once.
    pub fn record(&mut self, event: &Event) {
        if self.last.as_ref() == Some(event) {
            return;
        }
        self.last = Some(event.clone());
        let text = match event {
            Event::RunStarted { steps, .. } => {
                self.planned_steps = steps.iter().map(|s| s.id.clone()).collect();
                let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
                format!(
                    "run started by {}: {} ({} step{}: {})",
                    self.operator,
                    self.reason,
                    ids.len(),
                    if ids.len() == 1 { "" } else { "s" },
                    ids.join(", ")
                )
            }
            Event::StepFinished {
                step,
                outcome,
                attempts,
                duration_ms,
                error,
                ..
            } => {
                if *outcome != Outcome::Succeeded && !self.failed_steps.contains(step) {
                    self.failed_steps.push(step.clone());
                }
                if *outcome == Outcome::Succeeded && !self.succeeded_steps.contains(step) {
                    self.succeeded_steps.push(step.clone());
                }
                let mut text = format!(
                    "step {step} {} after {attempts} attempt{} in {}",
                    outcome.as_str().replace('_', " "),
                    if *attempts == 1 { "" } else { "s" },
                    short_duration(*duration_ms)
                );
                if let Some(error) = error {
                    text.push_str(": ");
                    text.push_str(error);
                }
                text
            }
            Event::StepSkipped { step, reason, .. } => format!("step {step} skipped: {reason}"),
            Event::CheckFinished {
                name,
                passed,
                observed,
                expected,
                attempts,
                ..
            } => {
                if !passed && !self.failed_checks.contains(name) {
                    self.failed_checks.push(name.clone());
                }
                format!(
                    "check {name} {} after {attempts} measurement{}: observed {observed}, expected {expected}",
                    if *passed { "passed" } else { "failed" },
                    if *attempts == 1 { "" } else { "s" },
                )
            }
            Event::BudgetExceeded {
                budget_ms,
                elapsed_ms,
                running,
                ..
            } => {
                self.over_budget = true;
                let mut text = format!(
                    "budget of {} exceeded at {}",
                    short_duration(*budget_ms),
                    short_duration(*elapsed_ms)
                );
                if !running.is_empty() {
                    text.push_str(&format!("; still running: {}", running.join(", ")));
                }
                text
            }
            Event::RunFinished {
                status,
                duration_ms,
                budget_ms,
                ..
            } => {
                self.phase = Phase::Finished(*status);
                self.duration_ms = Some(*duration_ms);
                if budget_ms.is_some() {
                    self.budget_ms = *budget_ms;
                }
                format!(
                    "run finished: {} in {}",
                    status_words(*status),
                    against_budget(*duration_ms, self.budget_ms)
                )
            }
            other => other.name().replace('_', " "),
        };
        // One line per entry: multi-line errors are joined.
        let text = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        self.entries.push(Entry {
            at: now_rfc3339(),
            text,
        });
    }

    /// A short word for where the run stands: `running`, `succeeded`,
    /// `failed`, `over budget`...
    pub fn status(&self) -> &'static str {
        match self.phase {
            Phase::Finished(status) => status_words(status),
            Phase::Running if self.over_budget => "over budget",
            Phase::Running if !self.failed_steps.is_empty() => "step failed",
            Phase::Running if !self.failed_checks.is_empty() => "verification failed",
            Phase::Running => "running",
        }
    }

    /// A colour for the run's state: green when it succeeded, red when a step
    /// or check failed, amber when over budget or cancelled, blue while running.
    pub fn colour(&self) -> &'static str {
        match self.phase {
            Phase::Finished(RunStatus::Succeeded) => GREEN,
            Phase::Finished(RunStatus::BudgetExceeded | RunStatus::Cancelled) => AMBER,
            Phase::Finished(_) => RED,
            Phase::Running if !self.failed_steps.is_empty() || !self.failed_checks.is_empty() => {
                RED
            }
            Phase::Running if self.over_budget => AMBER,
            Phase::Running => BLUE,
        }
    }

    /// How far the steps got, e.g. `1 of 2 steps done (record_state)` or
    /// `1 of 3 steps done (a); failed: b`; `None` until a step finished (a
    /// notifier that does not receive `step_finished` knows only failures).
    pub fn steps_text(&self) -> Option<String> {
        if self.succeeded_steps.is_empty() && self.failed_steps.is_empty() {
            return None;
        }
        let done = self.succeeded_steps.len();
        let mut text = if self.planned_steps.is_empty() {
            format!("{done} step{} done", if done == 1 { "" } else { "s" })
        } else {
            format!("{done} of {} steps done", self.planned_steps.len())
        };
        if !self.succeeded_steps.is_empty() {
            text.push_str(&format!(" ({})", self.succeeded_steps.join(", ")));
        }
        if !self.failed_steps.is_empty() {
            text.push_str(&format!("; failed: {}", self.failed_steps.join(", ")));
        }
        Some(text)
    }

    /// Time used so far (or in all, once finished) against the budget, e.g.
    /// `42s of a 5m budget (14%)`.
    pub fn duration_text(&self) -> String {
        let elapsed = self.duration_ms.unwrap_or_else(|| {
            humantime::parse_rfc3339_weak(&self.started_at)
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        });
        against_budget(elapsed, self.budget_ms)
    }

    /// The timeline as plain-text lines, `AT  TEXT`.
    pub fn lines(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| format!("{}  {}", e.at, e.text))
            .collect()
    }
}

/// Colour of a successful run.
pub const GREEN: &str = "#2eb67d";
/// Colour of a failed run.
pub const RED: &str = "#e01e5a";
/// Colour of a run over budget or cancelled.
pub const AMBER: &str = "#ecb22e";
/// Colour of a run in progress.
pub const BLUE: &str = "#1d9bd1";

/// Words for a run's final status.
pub fn status_words(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Succeeded => "succeeded",
        RunStatus::StepFailed => "failed",
        RunStatus::VerificationFailed => "verification failed",
        RunStatus::BudgetExceeded => "over budget",
        RunStatus::PreflightFailed => "preflight failed",
        RunStatus::Cancelled => "cancelled",
    }
}

/// `42s of a 5m budget (14%)`, or `42s` without a budget.
pub fn against_budget(elapsed_ms: u64, budget_ms: Option<u64>) -> String {
    match budget_ms {
        Some(budget) if budget > 0 => format!(
            "{} of a {} budget ({}%)",
            short_duration(elapsed_ms),
            short_duration(budget),
            elapsed_ms.saturating_mul(100) / budget
        ),
        _ => short_duration(elapsed_ms),
    }
}

/// A duration for people: `850ms`, `42s`, `4m 5s`.
pub fn short_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    // Whole seconds, or tenths below ten seconds.
    let d = if ms < 10_000 {
        Duration::from_millis(ms / 100 * 100)
    } else {
        Duration::from_secs(ms / 1000)
    };
    humantime::format_duration(d).to_string()
}

/// Now, RFC 3339 in UTC to the second.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Per-run state of one notifier instance, keyed by run id.
#[derive(Debug)]
pub struct Runs<S> {
    inner: Mutex<HashMap<String, S>>,
}

impl<S> Default for Runs<S> {
    fn default() -> Self {
        Runs {
            inner: Mutex::new(HashMap::new()),
        }
    }
}

impl<S> Runs<S> {
    /// Applies `f` to the state of `run_id`, creating it with `init` first.
    pub fn with<R>(
        &self,
        run_id: &str,
        init: impl FnOnce() -> S,
        f: impl FnOnce(&mut S) -> R,
    ) -> R {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(run_id.to_string()).or_insert_with(init))
    }

    /// Forgets `run_id` (after its last event was delivered).
    pub fn remove(&self, run_id: &str) -> Option<S> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run_id)
    }

    /// How many runs are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no run is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub(crate) fn run_info() -> RunInfo {
        RunInfo {
            run_id: "20250101-120000-abcd".into(),
            plan: "order-service".into(),
            digest: "sha256:00".into(),
            plan_path: None,
            operator: "alice".into(),
            reason: "5xx spike after 2.4.1".into(),
            trigger: None,
            host: "runner-1".into(),
            pid: 42,
            vars: BTreeMap::from([("service".to_string(), "orders".to_string())]),
            budget_ms: Some(300_000),
            drill: false,
            version: "0.1.0".into(),
            started_at: now_rfc3339(),
        }
    }

    fn finished(status: RunStatus, duration_ms: u64) -> Event {
        Event::RunFinished {
            status,
            duration_ms,
            budget_ms: Some(300_000),
        }
    }

    #[test]
    fn a_retried_event_is_recorded_once() {
        let mut t = Timeline::new(&run_info());
        let e = finished(RunStatus::Succeeded, 42_000);
        t.record(&e);
        t.record(&e);
        assert_eq!(t.entries.len(), 1);
        assert_eq!(
            t.entries[0].text,
            "run finished: succeeded in 42s of a 5m budget (14%)"
        );
    }

    #[test]
    fn status_and_colour_follow_the_run() {
        let mut t = Timeline::new(&run_info());
        assert_eq!(t.service, "orders");
        assert_eq!((t.status(), t.colour()), ("running", BLUE));
        t.record(&Event::BudgetExceeded {
            budget_ms: 300_000,
            elapsed_ms: 300_010,
            running: vec!["undo".into()],
        });
        assert_eq!((t.status(), t.colour()), ("over budget", AMBER));
        t.record(&finished(RunStatus::BudgetExceeded, 301_000));
        assert_eq!((t.status(), t.colour()), ("over budget", AMBER));
        let mut t = Timeline::new(&run_info());
        t.record(&finished(RunStatus::StepFailed, 1_500));
        assert_eq!((t.status(), t.colour()), ("failed", RED));
        let mut t = Timeline::new(&run_info());
        t.record(&finished(RunStatus::Succeeded, 1_500));
        assert_eq!((t.status(), t.colour()), ("succeeded", GREEN));
    }

    #[test]
    fn steps_text_counts_finished_steps() {
        let mut t = Timeline::new(&run_info());
        assert_eq!(t.steps_text(), None);
        let step = |id: &str, outcome| Event::StepFinished {
            step: id.into(),
            outcome,
            attempts: 1,
            duration_ms: 5,
            outputs: Default::default(),
            error: None,
            redacted: false,
        };
        t.record(&step("a", Outcome::Succeeded));
        assert_eq!(t.steps_text().as_deref(), Some("1 step done (a)"));
        t.record(&Event::RunStarted {
            run: run_info(),
            steps: ["a", "b", "c"]
                .iter()
                .map(|id| rollback_core::event::StepInfo {
                    id: id.to_string(),
                    kind: "exec".into(),
                    describe: String::new(),
                    after: Vec::new(),
                })
                .collect(),
        });
        t.record(&step("b", Outcome::Failed));
        assert_eq!(
            t.steps_text().as_deref(),
            Some("1 of 3 steps done (a); failed: b")
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(short_duration(850), "850ms");
        assert_eq!(short_duration(4_250), "4s 200ms");
        assert_eq!(short_duration(245_900), "4m 5s");
        assert_eq!(
            against_budget(150_000, Some(300_000)),
            "2m 30s of a 5m budget (50%)"
        );
        assert_eq!(against_budget(150_000, None), "2m 30s");
    }

    #[test]
    fn runs_are_kept_apart() {
        let runs: Runs<u32> = Runs::default();
        runs.with("a", || 0, |n| *n += 1);
        runs.with("a", || 0, |n| *n += 1);
        runs.with("b", || 10, |n| *n += 1);
        assert_eq!(runs.with("a", || 0, |n| *n), 2);
        assert_eq!(runs.remove("b"), Some(11));
        assert_eq!(runs.len(), 1);
    }
}
