//! `run`, `drill` and `resume`: the run's options (approvals at the terminal or
//! given up front, Ctrl-C), progress while it runs, and its report.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use rollback::Journal;
use rollback_core::approval::{
    Approval, ApprovalRequest, Approver, NonInteractive, PresetApprovals,
};
use rollback_core::{Error, Executor, Plan, RunOptions, RunReport};
use tokio_util::sync::CancellationToken;

use crate::args::{PlanArgs, RunArgs};
use crate::output::{self, Progress, Style};
use crate::{exit, load, registry, to_json, Outcome};

/// Asks at the terminal; the progress line is paused meanwhile.
struct TerminalApprover {
    progress: Progress,
    /// `--yes`: plain confirmations are approved without asking; a named
    /// role's approval is still asked for.
    assume_yes: bool,
}

#[async_trait::async_trait]
impl Approver for TerminalApprover {
    async fn approve(&self, request: &ApprovalRequest) -> Result<Approval, String> {
        if self.assume_yes && request.role.is_none() {
            return Ok(Approval {
                approved_by: request.operator.clone(),
                method: "--yes".into(),
            });
        }
        self.progress.pause(true);
        let prompt = match &request.role {
            Some(role) => format!(
                "\n{}\n  Name of the {role} who approves (empty to refuse): ",
                request.message
            ),
            None => format!("\n{}\n  Type `yes` to go ahead: ", request.message),
        };
        let answer = tokio::task::spawn_blocking(move || {
            eprint!("{prompt}");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await;
        self.progress.pause(false);
        match answer {
            Ok(Ok(line)) if request.role.is_some() && !line.trim().is_empty() => Ok(Approval {
                approved_by: line.trim().to_string(),
                method: "interactive".into(),
            }),
            Ok(Ok(_)) if request.role.is_some() => Err("not approved (no name given)".into()),
            Ok(Ok(line)) if line.trim().eq_ignore_ascii_case("yes") => Ok(Approval {
                approved_by: request.operator.clone(),
                method: "interactive".into(),
            }),
            Ok(Ok(line)) => Err(format!("not approved (answer was `{}`)", line.trim())),
            _ => Err("not approved (no answer could be read)".into()),
        }
    }
}

/// `--approved-by ROLE=NAME` flags as a map; a malformed one is invalid input.
pub(crate) fn approved_by(
    run: &RunArgs,
) -> rollback_core::Result<std::collections::BTreeMap<String, String>> {
    let mut approvals = std::collections::BTreeMap::new();
    for item in &run.approved_by {
        match item.split_once('=') {
            Some((role, name)) if !role.trim().is_empty() && !name.trim().is_empty() => {
                approvals.insert(role.trim().to_string(), name.trim().to_string());
            }
            _ => {
                return Err(Error::InvalidInput {
                    message: format!(
                        "--approved-by `{item}`: write ROLE=NAME, e.g. engineering-manager=amara"
                    ),
                })
            }
        }
    }
    Ok(approvals)
}

/// Who answers approvals: `--approved-by` first, then the terminal (which
/// with `--yes` still asks for named roles), else the non-interactive rule.
fn approver(run: &RunArgs, progress: &Progress) -> rollback_core::Result<Arc<dyn Approver>> {
    let approvals = approved_by(run)?;
    let fallback: Arc<dyn Approver> = if std::io::stdin().is_terminal() {
        Arc::new(TerminalApprover {
            progress: progress.clone(),
            assume_yes: run.yes,
        })
    } else {
        Arc::new(NonInteractive {
            assume_yes: run.yes,
        })
    };
    if approvals.is_empty() {
        return Ok(fallback);
    }
    Ok(Arc::new(PresetApprovals {
        approvals,
        fallback,
    }))
}

/// How long a second Ctrl-C waits for the run to journal the end of its
/// running steps before the process exits anyway.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// First Ctrl-C: stop scheduling and let running steps finish. Second: quit
/// now: the running steps are ended with their programs and journaled as
/// interrupted, then the run returns (or, past a grace period, the process
/// exits).
fn install_ctrl_c(cancel: CancellationToken, quit: CancellationToken) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                quit.cancel();
                tokio::time::sleep(QUIT_GRACE).await;
                // Exiting skips destructors: end the steps' programs first.
                rollback_core::process::end_running_programs();
                eprintln!("\ninterrupted; continue with `rollback resume last`");
                std::process::exit(exit::CANCELLED);
            }
        }
    });
}

pub(crate) fn run_options(
    run: &RunArgs,
    reason: String,
    progress: &Progress,
) -> rollback_core::Result<RunOptions> {
    let approver = approver(run, progress)?;
    let cancel = CancellationToken::new();
    let quit = CancellationToken::new();
    install_ctrl_c(cancel.clone(), quit.clone());
    let p = progress.clone();
    let mut options = RunOptions::new(reason)
        .approver(approver)
        .cancel(cancel)
        .quit(quit)
        .observer(move |record| p.on_record(record));
    if let Some(op) = &run.operator {
        options = options.operator(op.clone());
    }
    Ok(options)
}

/// Runs (or drills) a plan file, shows progress, writes drill reports.
pub(crate) async fn run_plan(
    journal: &Journal,
    args: &PlanArgs,
    reason: String,
    trigger: Option<String>,
    run: &RunArgs,
    drill: bool,
) -> rollback_core::Result<Outcome> {
    let plan = load(args)?;
    execute_plan(journal, &plan, reason, trigger, run, drill).await
}

/// Runs (or drills) a loaded plan.
pub(crate) async fn execute_plan(
    journal: &Journal,
    plan: &Plan,
    reason: String,
    trigger: Option<String>,
    run: &RunArgs,
    drill: bool,
) -> rollback_core::Result<Outcome> {
    let executor = journal.executor();
    let progress = Progress::new(plan.budget);
    let mut options = run_options(run, reason, &progress)?;
    options.trigger = trigger;
    options.drill = drill;
    let ticker = progress.spawn_ticker();
    let result = executor.run(plan, options).await;
    finish_run(&executor, &progress, ticker, plan, result, drill, journal).await
}

async fn finish_run(
    executor: &Executor,
    progress: &Progress,
    ticker: Option<tokio::task::JoinHandle<()>>,
    plan: &Plan,
    result: rollback_core::Result<RunReport>,
    drill: bool,
    journal: &Journal,
) -> rollback_core::Result<Outcome> {
    if let Some(t) = ticker {
        t.abort();
    }
    progress.finish();
    let mut report = result?;
    // Give notifications still in flight a bounded chance to arrive.
    let notify_wait = plan
        .notify
        .iter()
        .map(|n| n.timeout * (n.retries + 1))
        .max()
        .unwrap_or_default();
    executor
        .flush_notifications(notify_wait.min(Duration::from_secs(30)))
        .await;
    // Notifiers journal their failures after the run's last record: read
    // them back so that this output shows them, as `rollback show` would.
    if !plan.notify.is_empty() {
        if let Ok(stored) = journal.store.read(&report.run.run_id).await {
            if let Some(fresh) = RunReport::from_stored(&stored) {
                report.notification_failures = fresh.notification_failures;
            }
        }
    }
    let mut text = output::render_report(&report);
    let mut json = to_json(&report);
    let mut code = exit::for_report(&report);
    if drill {
        let dir = journal.store.run_dir(&report.run.run_id);
        let files = report
            .write_drill_files(&dir)
            .map_err(|source| Error::Journal {
                path: dir.clone(),
                source,
            })?;
        // Kept with the run too, where every runner of the journal reads them.
        for (name, body) in report.drill_documents() {
            let run = &report.run.run_id;
            let piece = rollback_core::state::RUN_PIECES;
            journal.store.put_state(run, piece, name, body).await?;
        }
        let verdict = if report.drill_passed() {
            Style::stdout().ok("PASS")
        } else {
            Style::stdout().bad("FAIL")
        };
        text.push_str(&format!(
            "\nDrill {verdict}. Reports: {}\n                 {}\n                 {}\n",
            files.html.display(),
            files.markdown.display(),
            files.json.display()
        ));
        json = serde_json::json!({ "report": json, "drill_passed": report.drill_passed(), "files": files });
        if code == exit::SUCCESS && !report.drill_passed() {
            code = exit::BUDGET_EXCEEDED;
        }
    } else if report.status.is_some() && code != exit::SUCCESS {
        text.push_str(&format!("\nDetails: rollback show {}\n", report.run.run_id));
    }
    if code == exit::CANCELLED {
        text.push_str(&format!(
            "Continue with: rollback resume {}\n",
            report.run.run_id
        ));
    }
    Ok(Outcome { json, text, code })
}

/// What the operator says about a resume.
pub(crate) struct ResumeHow {
    pub(crate) fresh: Vec<String>,
    pub(crate) programs_ended_on: Vec<String>,
}

pub(crate) async fn resume(
    journal: &Journal,
    run_id: &str,
    run: &RunArgs,
    how: &ResumeHow,
) -> rollback_core::Result<Outcome> {
    let stored = rollback::stored_run(journal, run_id, &registry()).await?;
    stored.check_steps(&how.fresh, "--fresh")?;
    let plan = &stored.plan;
    let executor = journal.executor();
    let progress = Progress::new(plan.budget);
    let mut options =
        stored.with_reason_and_drill(run_options(run, stored.info.reason.clone(), &progress)?);
    options.fresh = how.fresh.clone();
    options.programs_ended_on = how.programs_ended_on.clone();
    let ticker = progress.spawn_ticker();
    let result = executor.resume(plan, &stored.run_id, options).await;
    finish_run(
        &executor,
        &progress,
        ticker,
        plan,
        result,
        stored.info.drill,
        journal,
    )
    .await
}
