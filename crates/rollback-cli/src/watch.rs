//! `watch`: evaluates a plan's triggers and runs the plan when one holds.

use std::time::Duration;

use rollback::Journal;
use rollback_core::Error;
use tokio_util::sync::CancellationToken;

use crate::args::{OutputFormat, PlanArgs, RunArgs};
use crate::output::{Progress, Style};
use crate::run::{approved_by, run_options};
use crate::{exit, load, to_json, Outcome};

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

pub(crate) async fn watch(
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
