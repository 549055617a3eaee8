//! What the journal knows: `history`, `show`, `report`, `drills`, and the
//! pre-deployment gate `preflight` (which reads the drills).

use std::time::Duration;

use rollback::Journal;
use rollback_core::{Error, RunReport};
use serde::Serialize;

use crate::args::PlanArgs;
use crate::output::{self, Style};
use crate::{exit, load, to_json, Outcome};

pub(crate) async fn history(
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

pub(crate) async fn show(journal: &Journal, run_id: &str) -> rollback_core::Result<Outcome> {
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

pub(crate) async fn report(
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

pub(crate) async fn preflight(
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

pub(crate) async fn drills(
    journal: &Journal,
    plan: Option<&str>,
) -> rollback_core::Result<Outcome> {
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
