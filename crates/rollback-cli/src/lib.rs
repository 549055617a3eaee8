//! The `rollback` command line: parses flags, wires the engine and its
//! adapters, prints progress and results. Everything here is a thin layer over
//! `rollback-core`.

pub mod args;
pub mod demo;
pub mod exit;
pub mod output;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rollback_core::approval::{
    Approval, ApprovalRequest, Approver, NonInteractive, PresetApprovals,
};
use rollback_core::executor::parse_vars;
use rollback_core::journal::default_state_dir;
use rollback_core::{Error, Executor, Plan, Registry, RunOptions, RunReport};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, Command, OutputFormat, PlanArgs, RunArgs};
use crate::output::{Progress, Style};

/// The kinds this build knows: core's, plus those of the adapters compiled in
/// (cargo features `notify`, `vault`, `compose`, `db`, `k8s`).
pub fn registry() -> Registry {
    rollback::registry()
}

/// Entry point: returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::INVALID_INPUT
            } else {
                exit::SUCCESS
            };
            let _ = e.print();
            return code;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INTERNAL;
        }
    };
    runtime.block_on(dispatch(cli))
}

use rollback::Journal;

/// What a command produced: a document for `--output json`, text for people,
/// and the exit code.
struct Outcome {
    json: serde_json::Value,
    text: String,
    code: i32,
}

async fn dispatch(cli: Cli) -> i32 {
    let format = cli.output;
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let journal = match Journal::open(rollback::JournalOptions {
        state_dir,
        url: cli.journal.clone(),
        lease_namespace: cli.lease_namespace.clone(),
    })
    .await
    {
        Ok(j) => j,
        Err(e) => {
            eprintln!("{} {e}", Style::stderr().bad("error:"));
            return exit::for_error(&e);
        }
    };
    let result = match cli.command {
        Command::DemoService { config, port } => return demo::serve(&config, port).await,
        Command::Validate(args) => validate(&args),
        Command::Plan(args) => preview(&args).await,
        Command::Run {
            plan,
            reason,
            trigger,
            run,
        } => run_plan(&journal, &plan, reason, trigger, &run, false, format).await,
        Command::Drill { plan, reason, run } => {
            run_plan(&journal, &plan, reason, None, &run, true, format).await
        }
        Command::Resume {
            run_id,
            fresh,
            programs_ended_on,
            run,
        } => {
            let how = ResumeHow {
                fresh,
                programs_ended_on,
            };
            resume(&journal, &run_id, &run, &how).await
        }
        Command::History { plan, limit } => history(&journal, plan.as_deref(), limit).await,
        Command::Preflight {
            plan,
            drill_max_age,
            no_drill,
        } => preflight(&journal, &plan, drill_max_age.map(Into::into), no_drill).await,
        Command::Drills { plan } => drills(&journal, plan.as_deref()).await,
        Command::Watch { plan, once, run } => watch(&journal, &plan, once, &run, format).await,
        Command::Show { run_id } => show(&journal, &run_id).await,
        Command::Report {
            run_id,
            format,
            out,
        } => report(&journal, &run_id, &format, out.as_deref()).await,
        Command::Schema => Ok(Outcome {
            json: rollback_core::schema::plan_schema(&registry()),
            text: serde_json::to_string_pretty(&rollback_core::schema::plan_schema(&registry()))
                .unwrap_or_default(),
            code: exit::SUCCESS,
        }),
        Command::Kinds => Ok(kinds()),
        Command::Quickstart { dir } => demo::quickstart(&journal, dir, format).await,
    };
    match result {
        Ok(outcome) => {
            print_outcome(format, &outcome);
            outcome.code
        }
        Err(e) => {
            let code = exit::for_error(&e);
            match format {
                OutputFormat::Json => {
                    let mut doc = serde_json::json!({ "error": { "message": e.to_string(), "exit_code": code } });
                    if let Error::InvalidPlan { file, diagnostics } = &e {
                        doc["error"]["file"] = serde_json::json!(file);
                        doc["error"]["diagnostics"] =
                            serde_json::to_value(diagnostics).unwrap_or_default();
                    }
                    if let Error::Locked { holder, .. } = &e {
                        doc["error"]["holder"] = serde_json::to_value(holder).unwrap_or_default();
                    }
                    print_stdout(&format!(
                        "{}\n",
                        serde_json::to_string_pretty(&doc).unwrap_or_default()
                    ));
                }
                OutputFormat::Human => {
                    let s = Style::stderr();
                    eprintln!("{} {e}", s.bad("error:"));
                }
            }
            code
        }
    }
}

/// Writes to stdout; a closed pipe (`rollback history | head`) is not an error.
fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn print_outcome(format: OutputFormat, outcome: &Outcome) {
    match format {
        OutputFormat::Json => print_stdout(&format!(
            "{}\n",
            serde_json::to_string_pretty(&outcome.json).unwrap_or_default()
        )),
        OutputFormat::Human => print_stdout(&outcome.text),
    }
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

fn load(args: &PlanArgs) -> rollback_core::Result<Plan> {
    let vars = parse_vars(&args.vars)?;
    Plan::load(&args.plan, &registry(), &vars)
}

fn validate(args: &PlanArgs) -> rollback_core::Result<Outcome> {
    let plan = load(args)?;
    let text = format!(
        "{}: plan {} is valid: {} steps, {} checks, {} preflight, {} notifiers, budget {}\n",
        args.plan.display(),
        plan.name,
        plan.steps.len(),
        plan.verify.len(),
        plan.preflight.len(),
        plan.notify.len(),
        plan.budget
            .map(|b| humantime::format_duration(b).to_string())
            .unwrap_or_else(|| "none".into())
    );
    Ok(Outcome {
        json: serde_json::json!({
            "valid": true,
            "plan": plan.name,
            "digest": plan.source.digest,
            "steps": plan.steps.iter().map(|s| serde_json::json!({"id": s.id, "kind": s.kind, "after": s.after})).collect::<Vec<_>>(),
            "budget_ms": plan.budget.map(|b| b.as_millis() as u64),
        }),
        text,
        code: exit::SUCCESS,
    })
}

async fn preview(args: &PlanArgs) -> rollback_core::Result<Outcome> {
    let plan = load(args)?;
    let report = Executor::preview(&plan).await;
    Ok(Outcome {
        json: to_json(&report),
        text: output::render_preview(&report),
        code: if report.ok() {
            exit::SUCCESS
        } else {
            exit::STEP_FAILED
        },
    })
}

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
fn approved_by(run: &RunArgs) -> rollback_core::Result<std::collections::BTreeMap<String, String>> {
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

fn run_options(
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
async fn run_plan(
    journal: &Journal,
    args: &PlanArgs,
    reason: String,
    trigger: Option<String>,
    run: &RunArgs,
    drill: bool,
    _format: OutputFormat,
) -> rollback_core::Result<Outcome> {
    let plan = load(args)?;
    execute_plan(journal, &plan, reason, trigger, run, drill).await
}

/// Runs (or drills) a loaded plan.
async fn execute_plan(
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
struct ResumeHow {
    fresh: Vec<String>,
    programs_ended_on: Vec<String>,
}

async fn resume(
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

async fn history(
    journal: &Journal,
    plan: Option<&str>,
    limit: usize,
) -> rollback_core::Result<Outcome> {
    let store = journal.store.clone();
    let mut runs = store.list().await?;
    if let Some(p) = plan {
        runs.retain(|r| r.plan == p);
    }
    runs.truncate(limit);
    Ok(Outcome {
        json: to_json(&runs),
        text: output::render_history(&runs),
        code: exit::SUCCESS,
    })
}

async fn show(journal: &Journal, run_id: &str) -> rollback_core::Result<Outcome> {
    let store = journal.store.clone();
    let run_id = rollback_core::journal::resolve_run_id(store.as_ref(), run_id, false).await?;
    let stored = store.read(&run_id).await?;
    let report = RunReport::from_stored(&stored).ok_or_else(|| Error::InvalidInput {
        message: format!("run {run_id} has an empty journal"),
    })?;
    let mut text = output::render_report(&report);
    if stored.torn_tail {
        text.push_str(
            "  (the journal's last line was cut short: the runner died while writing it)\n",
        );
    }
    text.push_str(&format!("\n  journal: {}\n", store.location(&run_id)));
    let kept = store.list_state(&run_id).await.unwrap_or_default();
    if !kept.is_empty() {
        text.push_str("  kept in the journal store:\n");
        for piece in &kept {
            text.push_str(&format!(
                "    {} {} ({} bytes)\n",
                piece.step, piece.name, piece.bytes
            ));
        }
    }
    Ok(Outcome {
        json: to_json(&report),
        text,
        code: exit::SUCCESS,
    })
}

async fn report(
    journal: &Journal,
    run_id: &str,
    format: &str,
    out: Option<&std::path::Path>,
) -> rollback_core::Result<Outcome> {
    let store = journal.store.clone();
    let run_id = rollback_core::journal::resolve_run_id(store.as_ref(), run_id, false).await?;
    let stored = store.read(&run_id).await?;
    let report = RunReport::from_stored(&stored).ok_or_else(|| Error::InvalidInput {
        message: format!("run {run_id} has an empty journal"),
    })?;
    let body = match format {
        "html" => report.to_html(),
        "json" => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        _ => report.to_markdown(),
    };
    let text = match out {
        Some(path) => {
            std::fs::write(path, &body).map_err(|e| Error::InvalidInput {
                message: format!("--out {}: {e}", path.display()),
            })?;
            format!("wrote the report of run {run_id} to {}\n", path.display())
        }
        None => body,
    };
    Ok(Outcome {
        json: to_json(&report),
        text,
        code: exit::SUCCESS,
    })
}

fn kinds() -> Outcome {
    let r = registry();
    let mut text = String::new();
    let mut json = serde_json::Map::new();
    for (title, list) in [
        ("Steps", r.step_kinds()),
        ("Checks", r.verifier_kinds()),
        ("Notifiers", r.notifier_kinds()),
    ] {
        text.push_str(&format!("{title}:\n"));
        if list.is_empty() {
            text.push_str("  (none in this build)\n");
        }
        for (kind, summary) in &list {
            text.push_str(&format!("  {kind:<22} {summary}\n"));
        }
        json.insert(
            title.to_lowercase(),
            serde_json::json!(list
                .iter()
                .map(|(k, s)| serde_json::json!({"kind": k, "summary": s}))
                .collect::<Vec<_>>()),
        );
    }
    Outcome {
        json: serde_json::Value::Object(json),
        text,
        code: exit::SUCCESS,
    }
}

async fn preflight(
    journal: &Journal,
    args: &PlanArgs,
    drill_max_age: Option<Duration>,
    no_drill: bool,
) -> rollback_core::Result<Outcome> {
    let plan = load(args)?;
    let store = journal.store.clone();
    let options = rollback_core::preflight::PreflightOptions {
        skip_drill: no_drill,
        drill_max_age,
    };
    let report = rollback_core::preflight::preflight(&plan, store.as_ref(), &options).await;
    let s = Style::stdout();
    let mut text = format!(
        "Preflight of plan {} ({})\n",
        s.bold(&plan.name),
        plan.source.digest
    );
    for item in &report.items {
        let mark = match item.status {
            rollback_core::preflight::ItemStatus::Pass => s.ok("✓"),
            rollback_core::preflight::ItemStatus::Fail => s.bad("✗"),
            rollback_core::preflight::ItemStatus::Unchecked => s.warn("?"),
        };
        text.push_str(&format!(
            "  {mark} {}\n      {}\n",
            item.name, item.evidence
        ));
    }
    text.push_str(&if report.passed {
        format!(
            "{}: a proven rollback exists; the deployment may go ahead.\n",
            s.ok("PASS")
        )
    } else {
        format!(
            "{}: no deployment without a proven rollback.\n",
            s.bad("FAIL")
        )
    });
    Ok(Outcome {
        json: to_json(&report),
        text,
        code: if report.passed {
            exit::SUCCESS
        } else {
            exit::PREFLIGHT_FAILED
        },
    })
}

/// One drill in `rollback drills`.
#[derive(Serialize)]
struct DrillLine {
    run_id: String,
    plan: String,
    started_at: String,
    operator: String,
    passed: bool,
    status: Option<rollback_core::RunStatus>,
    duration_ms: Option<u64>,
    budget_ms: Option<u64>,
    digest: String,
}

async fn drills(journal: &Journal, plan: Option<&str>) -> rollback_core::Result<Outcome> {
    let store = journal.store.clone();
    let mut lines = Vec::new();
    for run in store
        .list()
        .await?
        .into_iter()
        .filter(|r| r.drill && plan.is_none_or(|p| r.plan == p))
    {
        let Ok(stored) = store.read(&run.run_id).await else {
            continue;
        };
        let Some(report) = RunReport::from_stored(&stored) else {
            continue;
        };
        lines.push(DrillLine {
            passed: report.drill_passed(),
            status: report.status,
            duration_ms: if report.resumed.is_empty() {
                report.duration_ms
            } else {
                report.elapsed_ms
            },
            budget_ms: report.budget_ms,
            run_id: run.run_id,
            plan: run.plan,
            started_at: run.started_at,
            operator: run.operator,
            digest: run.digest,
        });
    }
    let s = Style::stdout();
    let mut text = String::new();
    if lines.is_empty() {
        text.push_str("No drills yet: rehearse a plan with `rollback drill PLAN`.\n");
    }
    let mut plans: Vec<&str> = lines.iter().map(|l| l.plan.as_str()).collect();
    plans.sort();
    plans.dedup();
    for p in plans {
        text.push_str(&format!("{}\n", s.bold(p)));
        for l in lines.iter().filter(|l| l.plan == p) {
            let used = l
                .duration_ms
                .map(rollback_core::report::fmt_ms)
                .unwrap_or_else(|| "-".into());
            let budget = l
                .budget_ms
                .map(|b| format!(" of {}", rollback_core::report::fmt_ms(b)))
                .unwrap_or_default();
            text.push_str(&format!(
                "  {}  {}  {:>8}{budget:<12}  {}  {}\n",
                &l.started_at[..19.min(l.started_at.len())],
                l.run_id,
                used,
                if l.passed {
                    s.ok("PASS")
                } else {
                    s.bad("FAIL")
                },
                l.operator
            ));
        }
    }
    Ok(Outcome {
        json: to_json(&lines),
        text,
        code: exit::SUCCESS,
    })
}

fn render_tick(tick: &rollback_core::watch::Tick) -> String {
    use rollback_core::watch::RuleCondition;
    let s = Style::stderr();
    let mut out = String::new();
    for r in &tick.rules {
        let state = match r.condition {
            RuleCondition::Ok => s.ok("ok"),
            RuleCondition::Violating => {
                let held = r
                    .violating_for_ms
                    .map(rollback_core::report::fmt_ms)
                    .unwrap_or_default();
                s.bad(&format!(
                    "violated for {held} of {}",
                    rollback_core::report::fmt_ms(r.hold_for_ms)
                ))
            }
            RuleCondition::Unknown => s.warn("unknown"),
        };
        out.push_str(&format!(
            "  {:<20} {state}: {} (healthy: {})\n",
            r.name, r.observed, r.expected
        ));
    }
    if let Some(until) = &tick.cooling_down_until {
        out.push_str(&format!("  cooling down until {until}\n"));
    }
    if let Some(f) = &tick.fired {
        match (&f.run_id, &f.locked_by) {
            (Some(run), _) => out.push_str(&format!(
                "  {} {} → ran the plan: run {run}, {}\n",
                s.bad("FIRED"),
                f.reason,
                f.status.map(|st| st.as_str()).unwrap_or("unfinished")
            )),
            (None, Some(holder)) => out.push_str(&format!(
                "  {} {} but the plan is being run by {holder}\n",
                s.warn("DUE"),
                f.reason
            )),
            _ => {}
        }
    }
    out
}

async fn watch(
    journal: &Journal,
    args: &PlanArgs,
    once: bool,
    run: &RunArgs,
    format: OutputFormat,
) -> rollback_core::Result<Outcome> {
    let plan = load(args)?;
    if plan.triggers.is_empty() {
        return Err(Error::InvalidInput {
            message: format!("plan {} has no `triggers:` to watch; add e.g. a `prometheus` check with `for: 10m`", plan.name),
        });
    }
    // Bad run flags are reported now, not when a trigger fires.
    approved_by(run)?;
    let executor = journal.executor();
    let mut watcher = rollback_core::watch::Watcher::open(&journal.state_dir, &plan)?;
    let stop = CancellationToken::new();
    if !once {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        });
        eprintln!(
            "watching {} trigger(s) of plan {} every {} (Ctrl-C to stop)",
            plan.triggers.len(),
            plan.name,
            humantime::format_duration(plan.watch.interval)
        );
    }
    let mut ticks = Vec::new();
    loop {
        let progress = Progress::new(plan.budget);
        let options_source = |reason: String| {
            run_options(run, reason, &progress).expect("--approved-by was checked before watching")
        };
        let tick = watcher.tick(&plan, &executor, options_source).await?;
        progress.finish();
        if format == OutputFormat::Human || !once {
            eprint!(
                "[{}]\n{}",
                &tick.at[..19.min(tick.at.len())],
                render_tick(&tick)
            );
        }
        let fired = tick.fired.is_some();
        ticks.push(tick);
        if once {
            break;
        }
        if fired {
            executor.flush_notifications(Duration::from_secs(30)).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(rollback_core::watch::next_interval(&plan)) => {}
            _ = stop.cancelled() => break,
        }
        // A long-running watch keeps only the latest evaluation for its report.
        ticks.drain(..ticks.len().saturating_sub(1));
    }
    let last = ticks.pop().expect("at least one evaluation");
    let code = match &last.fired {
        Some(f) if f.locked_by.is_some() => exit::LOCKED,
        Some(f) => exit::for_status(f.status, false),
        None => exit::SUCCESS,
    };
    Ok(Outcome {
        json: to_json(&last),
        text: String::new(),
        code,
    })
}
