//! The `rollback` command line: parses flags, wires the engine and its
//! adapters, prints progress and results. Everything here is a thin layer over
//! `rollback-core`.

pub mod args;
pub mod demo;
pub mod exit;
mod inspect;
pub mod output;
mod run;
mod watch;

use std::io::Write;

use clap::Parser;
use rollback_core::executor::parse_vars;
use rollback_core::journal::default_state_dir;
use rollback_core::{Error, Executor, Plan, Registry};
use serde::Serialize;

use crate::args::{Cli, Command, OutputFormat, PlanArgs};
use crate::inspect::{drills, history, preflight, report, show};
use crate::output::Style;
pub(crate) use crate::run::execute_plan;
use crate::run::{resume, run_plan, ResumeHow};
use crate::watch::watch;

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
pub(crate) struct Outcome {
    pub(crate) json: serde_json::Value,
    pub(crate) text: String,
    pub(crate) code: i32,
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
        } => run_plan(&journal, &plan, reason, trigger, &run, false).await,
        Command::Drill { plan, reason, run } => {
            run_plan(&journal, &plan, reason, None, &run, true).await
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

pub(crate) fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

pub(crate) fn load(args: &PlanArgs) -> rollback_core::Result<Plan> {
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
