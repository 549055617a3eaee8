//! What people see: live progress on stderr, summaries on stdout.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollback_core::report::fmt_ms;
use rollback_core::{
    CheckPhase, Event, Outcome, PreviewReport, Record, RunReport, RunStatus, RunSummary,
};

/// Colours, unless NO_COLOR is set or the stream is not a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    color: bool,
}

impl Style {
    /// Style for stderr.
    pub fn stderr() -> Self {
        Style {
            color: std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// Style for stdout.
    pub fn stdout() -> Self {
        Style {
            color: std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Green.
    pub fn ok(&self, t: &str) -> String {
        self.paint("32", t)
    }
    /// Red.
    pub fn bad(&self, t: &str) -> String {
        self.paint("31", t)
    }
    /// Yellow.
    pub fn warn(&self, t: &str) -> String {
        self.paint("33", t)
    }
    /// Dim.
    pub fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    /// Bold.
    pub fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
}

struct ProgressState {
    start: Instant,
    budget: Option<Duration>,
    running: BTreeMap<String, Instant>,
    status_shown: bool,
    paused: bool,
}

/// Prints run events as they happen. On a terminal, a status line at the
/// bottom shows the running steps and the time against the budget; elsewhere
/// each event is one plain line.
#[derive(Clone)]
pub struct Progress {
    state: Arc<Mutex<ProgressState>>,
    style: Style,
    live: bool,
}

impl Progress {
    /// A progress printer for a plan with this budget.
    pub fn new(budget: Option<Duration>) -> Self {
        let style = Style::stderr();
        Progress {
            state: Arc::new(Mutex::new(ProgressState {
                start: Instant::now(),
                budget,
                running: BTreeMap::new(),
                status_shown: false,
                paused: false,
            })),
            live: std::io::stderr().is_terminal(),
            style,
        }
    }

    /// Redraws the status line every 200 ms while the run goes on (terminal only).
    pub fn spawn_ticker(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.live {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let mut st = this.state.lock().expect("progress");
                this.draw_status(&mut st);
            }
        }))
    }

    /// Stops drawing the status line (while a question is asked).
    pub fn pause(&self, paused: bool) {
        let mut st = self.state.lock().expect("progress");
        if paused {
            self.clear_status(&mut st);
        }
        st.paused = paused;
    }

    /// Removes the status line for good.
    pub fn finish(&self) {
        let mut st = self.state.lock().expect("progress");
        self.clear_status(&mut st);
        st.paused = true;
    }

    fn clear_status(&self, st: &mut ProgressState) {
        if st.status_shown {
            eprint!("\r\x1b[2K");
            st.status_shown = false;
        }
    }

    fn draw_status(&self, st: &mut ProgressState) {
        if st.paused || st.running.is_empty() {
            self.clear_status(st);
            return;
        }
        let elapsed = st.start.elapsed();
        let names: Vec<String> = st
            .running
            .iter()
            .map(|(id, since)| format!("{id} {}", fmt_ms(since.elapsed().as_millis() as u64)))
            .collect();
        let budget = match st.budget {
            Some(b) => format!(" of {}", fmt_ms(b.as_millis() as u64)),
            None => String::new(),
        };
        let line = format!(
            "  running: {}  [{}{budget}]",
            names.join(", "),
            fmt_ms(elapsed.as_millis() as u64)
        );
        let width = terminal_width();
        let line: String = line.chars().take(width.saturating_sub(1)).collect();
        eprint!("\r\x1b[2K{}", self.style.dim(&line));
        let _ = std::io::stderr().flush();
        st.status_shown = true;
    }

    fn line(&self, st: &mut ProgressState, text: String) {
        self.clear_status(st);
        let t = fmt_ms(st.start.elapsed().as_millis() as u64);
        eprintln!("{} {text}", self.style.dim(&format!("[{t:>7}]")));
        if self.live {
            self.draw_status(st);
        }
    }

    /// Shows one event.
    pub fn on_record(&self, record: &Record) {
        let mut st = self.state.lock().expect("progress");
        match &record.event {
            Event::StepStarted { step, .. } => {
                st.running.insert(step.clone(), Instant::now());
            }
            Event::StepFinished { step, .. } => {
                st.running.remove(step);
            }
            Event::RunFinished { .. } => {
                st.running.clear();
                self.clear_status(&mut st);
                return;
            }
            _ => {}
        }
        if let Some(text) = event_line(self.style, &record.event) {
            self.line(&mut st, text);
        }
    }
}

/// The progress line of an event, if it has one.
fn event_line(s: Style, event: &Event) -> Option<String> {
    Some(match event {
        Event::RunStarted { run, steps } => format!(
            "run {} of plan {} ({} steps) by {}: {}",
            s.bold(&run.run_id),
            run.plan,
            steps.len(),
            run.operator,
            run.reason
        ),
        Event::RunResumed { completed, .. } => format!(
            "resumed; {} completed step(s) will not run again: {}",
            completed.len(),
            completed.join(", ")
        ),
        Event::StepStarted {
            step,
            kind,
            attempt,
        } => {
            let again = if *attempt > 1 {
                format!(" (attempt {attempt})")
            } else {
                String::new()
            };
            format!("{} {step} started{again} {}", s.dim("▸"), s.dim(kind))
        }
        Event::StepProgress { step, message } => format!("  {step}: {message}"),
        Event::StepRetrying {
            step,
            attempt,
            error,
            delay_ms,
        } => s.warn(&format!(
            "↻ {step} attempt {attempt} failed: {}; retrying in {}",
            error.lines().next().unwrap_or_default(),
            fmt_ms(*delay_ms)
        )),
        Event::StepFinished { .. } => step_finished_line(s, event),
        Event::StepSkipped { step, reason } => s.dim(&format!("- {step} not run: {reason}")),
        Event::UndoStarted { step } => s.warn(&format!("↶ undoing {step}")),
        Event::UndoFinished {
            step,
            outcome: Outcome::Succeeded,
            ..
        } => s.warn(&format!("↶ {step} undone")),
        Event::UndoFinished { step, error, .. } => s.bad(&format!(
            "↶ undo of {step} failed: {}",
            error.as_deref().unwrap_or_default()
        )),
        Event::CheckFinished { .. } => check_line(s, event),
        Event::BudgetExceeded {
            budget_ms, running, ..
        } => {
            let mut text = format!("⏱ budget of {} exceeded", fmt_ms(*budget_ms));
            if !running.is_empty() {
                text.push_str(&format!(" while running {}", running.join(", ")));
            }
            s.bad(&text)
        }
        Event::CancelRequested { running } if running.is_empty() => {
            s.warn("stopping: no new step will start")
        }
        Event::CancelRequested { running } => s.warn(&format!(
            "stopping: no new step will start; waiting for {} (Ctrl-C again to quit now)",
            running.join(", ")
        )),
        Event::Approved {
            step,
            approved_by,
            method,
            role: Some(role),
        } => format!("{step} approved by {approved_by} as {role} ({method})"),
        Event::Approved {
            step,
            approved_by,
            method,
            role: None,
        } => format!("{step} approved by {approved_by} ({method})"),
        Event::NotificationFailed {
            notifier,
            about,
            error,
        } => s.warn(&format!(
            "notification {about} via {notifier} failed: {error}"
        )),
        Event::ProgramSettled {
            step,
            program,
            outcome,
        } => s.warn(&format!(
            "{step}: `{}` (pid {}) left by the earlier runner {outcome}",
            program.command, program.pid
        )),
        Event::ProgramStarted { .. }
        | Event::ProgramEnded { .. }
        | Event::StateSaved { .. }
        | Event::RunFinished { .. } => return None,
    })
}

fn step_finished_line(s: Style, event: &Event) -> String {
    let Event::StepFinished {
        step,
        outcome,
        duration_ms,
        error,
        ..
    } = event
    else {
        return String::new();
    };
    let took = fmt_ms(*duration_ms);
    if *outcome == Outcome::Succeeded {
        return format!("{} {step} done in {took}", s.ok("✓"));
    }
    let mut t = s.bad(&format!("✗ {step} {} after {took}", outcome.as_str()));
    for l in error.as_deref().unwrap_or_default().lines() {
        t.push_str(&format!("\n            {l}"));
    }
    t
}

fn check_line(s: Style, event: &Event) -> String {
    let Event::CheckFinished {
        phase,
        name,
        passed,
        observed,
        expected,
        attempts,
        ..
    } = event
    else {
        return String::new();
    };
    let phase = match phase {
        CheckPhase::Preflight => "preflight",
        CheckPhase::Verify => "verify",
    };
    let tries = if *attempts > 1 {
        format!(" after {attempts} measurements")
    } else {
        String::new()
    };
    if *passed {
        format!("{} {phase} {name}: {observed}{tries}", s.ok("✓"))
    } else {
        s.bad(&format!(
            "✗ {phase} {name}: {observed} (expected {expected}){tries}"
        ))
    }
}

/// What is known of a step the journal shows started and never ended, and
/// of the programs it started that have no end record.
fn unfinished_notes(report: &RunReport, st: &rollback_core::StepReport) -> Vec<String> {
    let mut notes = Vec::new();
    if st.unfinished() {
        let at = st.start_ms.map(fmt_ms).unwrap_or_default();
        let why = if report.status.is_some() {
            "the runner quit before it ended"
        } else {
            "the runner died or quit while it ran"
        };
        notes.push(format!(
            "started at +{at} (attempt {}); {why}; `rollback resume {}` runs it again",
            st.attempts.max(1),
            report.run.run_id
        ));
    }
    for p in st.programs.iter().filter(|p| p.ended.is_none()) {
        notes.push(format!(
            "`{}` (pid {} on {}) started {}; no end recorded: a resume ends it first",
            p.command, p.pid, p.host, p.started_at
        ));
    }
    notes
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

fn status_word(style: &Style, status: Option<RunStatus>, budget_exceeded: bool) -> String {
    match status {
        Some(RunStatus::Succeeded) if budget_exceeded => style.warn("SUCCEEDED, OVER BUDGET"),
        Some(RunStatus::Succeeded) => style.ok("SUCCEEDED"),
        Some(other) => style.bad(&other.as_str().replace('_', " ").to_uppercase()),
        None => style.warn("UNFINISHED (resume it with `rollback resume`)"),
    }
}

/// The human summary of a run: a table of steps against the budget.
pub fn render_report(report: &RunReport) -> String {
    let s = Style::stdout();
    let mut out = String::new();
    out.push_str(&format!(
        "{} {} — plan {}, run {}\n",
        s.bold("Rollback"),
        status_word(&s, report.status, report.budget_exceeded),
        report.run.plan,
        report.run.run_id
    ));
    out.push_str(&format!(
        "  operator {}  reason: {}{}\n",
        report.run.operator,
        report.run.reason,
        report
            .run
            .trigger
            .as_ref()
            .map(|t| format!("  trigger: {t}"))
            .unwrap_or_default()
    ));
    let used = report.duration_ms.map(fmt_ms).unwrap_or_else(|| "-".into());
    match (report.budget_ms, report.budget_used_percent()) {
        (Some(b), Some(p)) => out.push_str(&format!(
            "  time {used} of {} budget ({p:.0}%)\n",
            fmt_ms(b)
        )),
        _ => out.push_str(&format!("  time {used}\n")),
    }
    if !report.resumed.is_empty() {
        let total = report.elapsed_ms.map(fmt_ms).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "  resumed {} time(s); {total} since the first start\n",
            report.resumed.len()
        ));
    }
    let width = report
        .steps
        .iter()
        .map(|st| st.id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let scale = report.budget_ms.or(report.duration_ms).unwrap_or(1).max(1);
    out.push('\n');
    for st in &report.steps {
        let outcome = match st.outcome {
            Some(Outcome::Succeeded) if st.from_earlier_segment => s.ok("done before resume"),
            Some(Outcome::Succeeded) => s.ok("succeeded"),
            Some(Outcome::Skipped) => s.dim("not run"),
            Some(o) => s.bad(o.as_str()),
            None if st.unfinished() => s.warn("started, never ended"),
            None => s.dim("not run"),
        };
        let bar = match (st.start_ms, st.duration_ms) {
            (Some(start), Some(d)) if !st.from_earlier_segment => timeline_bar(start, d, scale, 30),
            _ => " ".repeat(30),
        };
        out.push_str(&format!(
            "  {:<width$}  {}  {:>8}  {}{}\n",
            st.id,
            s.dim(&bar),
            st.duration_ms
                .filter(|_| !st.from_earlier_segment)
                .map(fmt_ms)
                .unwrap_or_else(|| "-".into()),
            outcome,
            match st.undo {
                Some(Outcome::Succeeded) => s.warn(" (undone)"),
                Some(_) => s.bad(" (undo failed)"),
                None => String::new(),
            }
        ));
        if let Some(err) = st
            .error
            .as_deref()
            .filter(|_| st.outcome != Some(Outcome::Succeeded))
        {
            if let Some(first) = err.lines().next() {
                out.push_str(&format!("  {:<width$}  {}\n", "", s.dim(first)));
            }
        }
        for line in unfinished_notes(report, st) {
            out.push_str(&format!("  {:<width$}  {}\n", "", s.warn(&line)));
        }
    }
    if !report.checks.is_empty() {
        out.push('\n');
        for c in &report.checks {
            let phase = match c.phase {
                CheckPhase::Preflight => "preflight",
                CheckPhase::Verify => "verify",
            };
            let mark = if c.passed { s.ok("✓") } else { s.bad("✗") };
            out.push_str(&format!(
                "  {mark} {phase} {}: {} (expected {})\n",
                c.name, c.observed, c.expected
            ));
        }
    }
    if !report.approvals.is_empty() {
        out.push('\n');
        for a in &report.approvals {
            let role = a
                .role
                .as_ref()
                .map(|r| format!(" as {r}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  approved by {}{role} ({}) before {}\n",
                a.approved_by, a.method, a.step
            ));
        }
    }
    for failure in &report.notification_failures {
        out.push_str(&format!(
            "  {} notification failed: {failure}\n",
            s.warn("!")
        ));
    }
    out
}

/// A bar of `width` cells showing when a step ran within the budget.
fn timeline_bar(start_ms: u64, duration_ms: u64, scale_ms: u64, width: usize) -> String {
    let from = ((start_ms as f64 / scale_ms as f64) * width as f64).floor() as usize;
    let len = (((duration_ms as f64) / scale_ms as f64) * width as f64)
        .ceil()
        .max(1.0) as usize;
    let from = from.min(width.saturating_sub(1));
    let to = (from + len).min(width);
    let mut bar = String::with_capacity(width);
    for i in 0..width {
        bar.push(if i >= from && i < to { '█' } else { '·' });
    }
    bar
}

/// The human rendering of a dry run.
pub fn render_preview(preview: &PreviewReport) -> String {
    let s = Style::stdout();
    let mut out = format!(
        "Dry run of plan {} ({}): nothing will be changed.\n\n",
        s.bold(&preview.plan),
        preview.digest
    );
    for step in &preview.steps {
        let after = if step.after.is_empty() {
            String::new()
        } else {
            format!(" after {}", step.after.join(", "))
        };
        out.push_str(&format!(
            "{} {}{}\n",
            s.bold(&step.id),
            s.dim(&format!("({})", step.kind)),
            s.dim(&after)
        ));
        match &step.preview {
            Ok(p) => {
                out.push_str(&format!("    {}\n", p.summary));
                if p.changes.is_empty() {
                    out.push_str(&format!("    {}\n", s.ok("no change needed")));
                }
                for c in &p.changes {
                    out.push_str(&format!("    {} {c}\n", s.warn("~")));
                }
            }
            Err(e) => out.push_str(&format!("    {} {e}\n", s.bad("cannot preview:"))),
        }
    }
    if !preview.checks.is_empty() {
        out.push_str("\nChecks:\n");
        for (name, kind, describe) in &preview.checks {
            out.push_str(&format!("    {name} ({kind}): {describe}\n"));
        }
    }
    if !preview.notify.is_empty() {
        out.push_str("\nNotifications:\n");
        for (kind, describe) in &preview.notify {
            out.push_str(&format!("    {kind}: {describe}\n"));
        }
    }
    if let Some(b) = preview.budget_ms {
        out.push_str(&format!("\nBudget: {}\n", fmt_ms(b)));
    }
    out
}

/// The human rendering of `rollback history`.
pub fn render_history(runs: &[RunSummary]) -> String {
    if runs.is_empty() {
        return "No runs yet.\n".into();
    }
    let s = Style::stdout();
    let mut out = String::new();
    for r in runs {
        let status = match r.status {
            Some(RunStatus::Succeeded) => s.ok("succeeded"),
            Some(other) => s.bad(other.as_str()),
            None => s.warn("unfinished"),
        };
        out.push_str(&format!(
            "{}  {}  {:<20}  {:<10}  {:>8}  {}{}: {}\n",
            r.run_id,
            &r.started_at[..19.min(r.started_at.len())],
            r.plan,
            r.operator,
            r.duration_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
            status,
            if r.drill { " (drill)" } else { "" },
            r.reason
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_bar_places_the_step() {
        assert_eq!(timeline_bar(0, 500, 1000, 10), "█████·····");
        assert_eq!(timeline_bar(500, 100, 1000, 10), "·····█····");
        // A very short step still gets a cell.
        assert_eq!(timeline_bar(999, 0, 1000, 10).matches('█').count(), 1);
    }
}
