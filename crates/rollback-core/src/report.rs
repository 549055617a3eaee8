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
    /// Programs it started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramReport>,
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

/// A program a step started, as a report shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProgramReport {
    /// The command (redacted, shortened).
    pub command: String,
    /// Its pid.
    pub pid: u32,
    /// The host it ran on.
    pub host: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// How it ended (`exit 0`), what a resume found, or `None`: no end was
    /// journaled (its runner died while it ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

impl StepReport {
    fn planned(info: &crate::event::StepInfo) -> Self {
        StepReport {
            id: info.id.clone(),
            kind: info.kind.clone(),
            describe: info.describe.clone(),
            outcome: None,
            attempts: 0,
            start_ms: None,
            duration_ms: None,
            outputs: Outputs::new(),
            error: None,
            undo: None,
            from_earlier_segment: false,
            programs: Vec::new(),
        }
    }

    /// Started and never ended in the journal: its runner died or quit
    /// while it ran; a resume runs it again.
    pub fn unfinished(&self) -> bool {
        self.outcome.is_none() && self.start_ms.is_some()
    }
}

/// Folds records into a report, one record at a time.
struct Fold {
    report: RunReport,
    t0: SystemTime,
}

impl Fold {
    fn step(&mut self, id: &str) -> Option<&mut StepReport> {
        self.report.steps.iter_mut().find(|s| s.id == id)
    }

    fn apply(&mut self, r: &Record) {
        let at = r.time().map(|t| ms_between(self.t0, t));
        match &r.event {
            Event::RunResumed { operator, .. } => self.resumed(operator, &r.at),
            Event::StepStarted { step, attempt, .. } => {
                if let Some(s) = self.step(step) {
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
                step,
                outcome,
                attempts,
                duration_ms,
                outputs,
                error,
                ..
            } => {
                if let Some(s) = self.step(step) {
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
            Event::StepSkipped { step, reason } => {
                if let Some(s) = self.step(step) {
                    s.outcome = Some(Outcome::Skipped);
                    s.error = Some(reason.clone());
                }
            }
            Event::UndoStarted { .. } => self.report.compensated = true,
            Event::UndoFinished { step, outcome, .. } => {
                if let Some(s) = self.step(step) {
                    s.undo = Some(*outcome);
                }
            }
            Event::CheckFinished { .. } => self.check(&r.event),
            Event::BudgetExceeded { .. } => self.report.budget_exceeded = true,
            Event::Approved {
                step,
                approved_by,
                method,
                role,
            } => self.report.approvals.push(ApprovalRecord {
                step: step.clone(),
                approved_by: approved_by.clone(),
                method: method.clone(),
                role: role.clone(),
            }),
            Event::NotificationFailed {
                notifier,
                about,
                error,
            } => self
                .report
                .notification_failures
                .push(format!("{notifier} ({about}): {error}")),
            Event::ProgramStarted { .. }
            | Event::ProgramEnded { .. }
            | Event::ProgramSettled { .. } => self.program(&r.event, &r.at),
            Event::RunFinished {
                status,
                duration_ms,
                ..
            } => {
                self.report.status = Some(*status);
                self.report.duration_ms = Some(*duration_ms);
                self.report.elapsed_ms = at;
            }
            Event::RunStarted { .. }
            | Event::StepProgress { .. }
            | Event::StepRetrying { .. }
            | Event::StateSaved { .. }
            | Event::CancelRequested { .. } => {}
        }
    }

    fn resumed(&mut self, operator: &str, at: &str) {
        self.report
            .resumed
            .push((operator.to_string(), at.to_string()));
        self.report.status = None;
        self.report.budget_exceeded = false;
        for s in &mut self.report.steps {
            if s.outcome == Some(Outcome::Succeeded) {
                s.from_earlier_segment = true;
            }
        }
    }

    fn check(&mut self, event: &Event) {
        let Event::CheckFinished {
            phase,
            name,
            kind,
            passed,
            observed,
            expected,
            attempts,
            duration_ms,
        } = event
        else {
            return;
        };
        let checks = &mut self.report.checks;
        checks.retain(|c| !(c.phase == *phase && c.name == *name));
        checks.push(CheckReport {
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

    fn program(&mut self, event: &Event, at: &str) {
        match event {
            Event::ProgramStarted { step, program } => {
                if let Some(s) = self.step(step) {
                    s.programs.push(ProgramReport {
                        command: program.command.clone(),
                        pid: program.pid,
                        host: program.host.clone(),
                        started_at: at.to_string(),
                        ended: None,
                    });
                }
            }
            Event::ProgramEnded {
                step, pid, status, ..
            } => self.program_ended(step, *pid, status),
            Event::ProgramSettled {
                step,
                program,
                outcome,
            } => self.program_ended(step, program.pid, outcome),
            _ => {}
        }
    }

    fn program_ended(&mut self, step: &str, pid: u32, how: &str) {
        if let Some(p) = self.step(step).and_then(|s| {
            s.programs
                .iter_mut()
                .rev()
                .find(|p| p.pid == pid && p.ended.is_none())
        }) {
            p.ended = Some(how.to_string());
        }
    }
}

impl RunReport {
    /// Folds records (the first must be `run_started`) into a report.
    pub fn from_records(records: &[Record]) -> Option<RunReport> {
        let (first, rest) = records.split_first()?;
        let Event::RunStarted { run, steps } = &first.event else {
            return None;
        };
        let mut fold = Fold {
            t0: first.time().unwrap_or(SystemTime::UNIX_EPOCH),
            report: RunReport {
                run: run.clone(),
                status: None,
                duration_ms: None,
                elapsed_ms: None,
                budget_ms: run.budget_ms,
                budget_exceeded: false,
                steps: steps.iter().map(StepReport::planned).collect(),
                checks: Vec::new(),
                approvals: Vec::new(),
                notification_failures: Vec::new(),
                resumed: Vec::new(),
                compensated: false,
            },
        };
        for r in rest {
            fold.apply(r);
        }
        Some(fold.report)
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

/// Where a drill's reports were written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillFiles {
    /// `drill.md`.
    pub markdown: std::path::PathBuf,
    /// `drill.json`: the verdict, the budget used and the whole report.
    pub json: std::path::PathBuf,
    /// `drill.html`: self-contained, with the SVG timeline.
    pub html: std::path::PathBuf,
}

impl RunReport {
    /// Writes the drill reports (Markdown, JSON, HTML) into `dir`, the run's
    /// folder in the state directory.
    pub fn write_drill_files(&self, dir: &std::path::Path) -> std::io::Result<DrillFiles> {
        std::fs::create_dir_all(dir)?;
        for (name, body) in self.drill_documents() {
            std::fs::write(dir.join(name), body)?;
        }
        Ok(DrillFiles {
            markdown: dir.join("drill.md"),
            json: dir.join("drill.json"),
            html: dir.join("drill.html"),
        })
    }

    /// The drill report as its three files: `drill.md`, `drill.json` (the
    /// verdict with the whole report) and `drill.html`.
    pub fn drill_documents(&self) -> [(&'static str, Vec<u8>); 3] {
        let doc = serde_json::json!({
            "passed": self.drill_passed(),
            "budget_used_percent": self.budget_used_percent(),
            "report": self,
        });
        [
            ("drill.md", self.to_markdown().into_bytes()),
            (
                "drill.json",
                serde_json::to_vec_pretty(&doc).expect("reports serialize"),
            ),
            ("drill.html", self.to_html().into_bytes()),
        ]
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Bar colour by outcome (also used by tests that look at a rendering).
pub fn outcome_colour(outcome: Option<Outcome>) -> &'static str {
    match outcome {
        Some(Outcome::Succeeded) => "#2f9e44",
        Some(Outcome::Failed) | Some(Outcome::TimedOut) => "#e03131",
        Some(Outcome::Interrupted) => "#f08c00",
        Some(Outcome::Skipped) | None => "#adb5bd",
    }
}

impl RunReport {
    /// The drill report as one self-contained HTML page (inline CSS and an
    /// SVG timeline of the steps against the budget; no scripts, no fetches),
    /// readable offline.
    pub fn to_html(&self) -> String {
        let passed = self.drill_passed();
        let used = self.duration_ms.unwrap_or(0);
        let scale = self.budget_ms.unwrap_or(used).max(used).max(1) as f64;
        let (left, width, row, top) = (180.0, 640.0, 30.0, 30.0);
        let height = top + row * self.steps.len() as f64 + 40.0;
        let x = |ms: u64| left + width * (ms as f64 / scale);
        let mut svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" role="img" aria-label="Timeline of the steps against the budget">"#,
            w = left + width + 40.0
        );
        // Time axis: five ticks across the scale.
        for i in 0..=4 {
            let ms = (scale * i as f64 / 4.0) as u64;
            let xi = x(ms);
            svg.push_str(&format!(
                r##"<line x1="{xi:.1}" y1="{top}" x2="{xi:.1}" y2="{y2}" stroke="#e9ecef"/><text x="{xi:.1}" y="{ty}" font-size="11" text-anchor="middle" fill="#495057">{label}</text>"##,
                y2 = height - 30.0,
                ty = height - 14.0,
                label = fmt_ms(ms)
            ));
        }
        for (i, s) in self.steps.iter().enumerate() {
            let y = top + row * i as f64;
            svg.push_str(&format!(
                r##"<text x="{lx}" y="{ty:.1}" font-size="13" text-anchor="end" fill="#212529">{id}</text>"##,
                lx = left - 10.0,
                ty = y + row / 2.0 + 4.0,
                id = html_escape(&s.id)
            ));
            if let (Some(start), Some(d)) = (s.start_ms, s.duration_ms) {
                if !s.from_earlier_segment {
                    let bx = x(start);
                    let bw = (x(start + d) - bx).max(3.0);
                    svg.push_str(&format!(
                        r#"<rect class="bar" x="{bx:.1}" y="{by:.1}" width="{bw:.1}" height="{bh:.1}" rx="3" fill="{fill}"><title>{id}: {outcome}, {took}</title></rect>"#,
                        by = y + 6.0,
                        bh = row - 12.0,
                        fill = outcome_colour(s.outcome),
                        id = html_escape(&s.id),
                        outcome = s.outcome.map(|o| o.as_str()).unwrap_or("not run"),
                        took = fmt_ms(d)
                    ));
                }
            }
        }
        if let Some(budget) = self.budget_ms {
            let bx = x(budget);
            svg.push_str(&format!(
                r##"<line x1="{bx:.1}" y1="{y1}" x2="{bx:.1}" y2="{y2}" stroke="#c92a2a" stroke-width="2" stroke-dasharray="6 4"/><text x="{bx:.1}" y="{ty}" font-size="11" text-anchor="end" fill="#c92a2a">budget {b}</text>"##,
                y1 = top - 12.0,
                y2 = height - 30.0,
                ty = top - 16.0,
                b = fmt_ms(budget)
            ));
        }
        svg.push_str("</svg>");

        let mut steps = String::new();
        for s in &self.steps {
            steps.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td>{}</td></tr>",
                html_escape(&s.id),
                html_escape(&s.kind),
                s.outcome.map(|o| o.as_str()).unwrap_or("not run"),
                s.start_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
                s.duration_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
                s.attempts,
                html_escape(s.error.as_deref().unwrap_or_default())
            ));
        }
        let mut checks = String::new();
        for c in &self.checks {
            checks.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class={}>{}</td><td>{}</td><td>{}</td></tr>",
                match c.phase {
                    CheckPhase::Preflight => "preflight",
                    CheckPhase::Verify => "verify",
                },
                html_escape(&c.name),
                if c.passed { "pass" } else { "fail" },
                if c.passed { "pass" } else { "FAIL" },
                html_escape(&c.observed),
                html_escape(&c.expected)
            ));
        }
        let budget = match (self.budget_ms, self.budget_used_percent()) {
            (Some(b), Some(p)) => format!("{} of {} budget ({p:.0}%)", fmt_ms(used), fmt_ms(b)),
            _ => fmt_ms(used),
        };
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rollback drill: {plan} — {verdict}</title>
<style>
body{{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#212529;margin:2rem auto;max-width:960px;padding:0 1rem}}
h1{{font-size:1.4rem}} .verdict{{padding:.1rem .5rem;border-radius:4px;color:#fff;background:{vcolour}}}
table{{border-collapse:collapse;width:100%;margin:1rem 0}} th,td{{border-bottom:1px solid #dee2e6;padding:.3rem .5rem;text-align:left;vertical-align:top}}
td.num{{text-align:right;font-variant-numeric:tabular-nums}} .pass{{color:#2b8a3e}} .fail{{color:#c92a2a;font-weight:600}}
dl{{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}} dt{{color:#495057}}
</style></head><body>
<h1>Rollback drill: {plan} <span class="verdict">{verdict}</span></h1>
<dl><dt>Run</dt><dd><code>{run}</code></dd><dt>Started</dt><dd>{started}</dd><dt>Operator</dt><dd>{operator}</dd>
<dt>Reason</dt><dd>{reason}</dd><dt>Status</dt><dd>{status}</dd><dt>Time</dt><dd>{budget}</dd><dt>Plan digest</dt><dd><code>{digest}</code></dd></dl>
<h2>Timeline</h2>
{svg}
<h2>Steps</h2>
<table><thead><tr><th>Step</th><th>Kind</th><th>Outcome</th><th>Start</th><th>Duration</th><th>Attempts</th><th>Error</th></tr></thead><tbody>{steps}</tbody></table>
<h2>Checks</h2>
<table><thead><tr><th>Phase</th><th>Check</th><th>Result</th><th>Observed</th><th>Expected</th></tr></thead><tbody>{checks}</tbody></table>
</body></html>
"#,
            plan = html_escape(&self.run.plan),
            verdict = if passed { "PASS" } else { "FAIL" },
            vcolour = if passed { "#2b8a3e" } else { "#c92a2a" },
            run = html_escape(&self.run.run_id),
            started = html_escape(&self.run.started_at),
            operator = html_escape(&self.run.operator),
            reason = html_escape(&self.run.reason),
            status = self.status.map(|s| s.as_str()).unwrap_or("unfinished"),
            digest = html_escape(&self.run.digest),
        )
    }
}
