//! `rollback preflight`: the procedures' mandatory pre-deployment checklist,
//! checked rather than ticked. A deploy pipeline runs it and stops when it
//! fails: no deployment without a proven rollback.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::executor::Executor;
use crate::journal::JournalStore;
use crate::measure::{measure, Measured};
use crate::plan::Plan;
use crate::report::{fmt_ms, RunReport};
use crate::step::StepContext;

/// The result of one item of the checklist.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Checked and fine.
    Pass,
    /// Checked and not fine: the gate is closed.
    Fail,
    /// Could not be checked by this kind (shown, does not close the gate).
    Unchecked,
}

/// One item of the checklist with its evidence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreflightItem {
    /// What was checked.
    pub name: String,
    /// The result.
    pub status: ItemStatus,
    /// What was seen: a measurement, a preview, a drill's run id and time.
    pub evidence: String,
}

/// The whole checklist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreflightReport {
    /// The plan's name.
    pub plan: String,
    /// Its digest.
    pub digest: String,
    /// No item failed.
    pub passed: bool,
    /// Every item, in order.
    pub items: Vec<PreflightItem>,
}

/// What counts as a proven rollback.
#[derive(Debug, Clone, Default)]
pub struct PreflightOptions {
    /// Do not require a successful drill in the journal.
    pub skip_drill: bool,
    /// Accept a drill of an earlier version of the plan (another digest) if
    /// it passed within this age; without it, only a drill of this exact
    /// plan text counts.
    pub drill_max_age: Option<Duration>,
}

fn item(name: impl Into<String>, ok: bool, evidence: impl Into<String>) -> PreflightItem {
    PreflightItem {
        name: name.into(),
        status: if ok {
            ItemStatus::Pass
        } else {
            ItemStatus::Fail
        },
        evidence: evidence.into(),
    }
}

/// Runs the checklist for `plan`, reading drills from `store`.
pub async fn preflight(
    plan: &Plan,
    store: &dyn JournalStore,
    options: &PreflightOptions,
) -> PreflightReport {
    let mut items = vec![item(
        "plan is valid",
        true,
        format!(
            "{} steps, {} checks, budget {}",
            plan.steps.len(),
            plan.verify.len(),
            plan.budget
                .map(|b| humantime::format_duration(b).to_string())
                .unwrap_or_else(|| "none".into())
        ),
    )];

    // Each step's dry run: the rollback target exists (a previous revision,
    // image, version, backup) when the kind's preview can see it.
    let preview = Executor::preview(plan).await;
    for step in &preview.steps {
        let name = format!("dry run of step `{}` ({})", step.id, step.kind);
        items.push(match &step.preview {
            Ok(p) if p.changes.is_empty() => {
                item(name, true, format!("{} — nothing to change", p.summary))
            }
            Ok(p) => item(
                name,
                true,
                format!("{} — {}", p.summary, p.changes.join("; ")),
            ),
            Err(e) => item(name, false, e.clone()),
        });
    }

    // The plan's own preflight checks (backup present and recent, services up).
    let ctx = StepContext::standalone("preflight", std::env::temp_dir().join("rollback-preflight"))
        .with_vars(plan.vars.clone());
    for check in &plan.preflight {
        let name = format!("check `{}` ({})", check.name, check.kind);
        items.push(match measure(check, &ctx).await {
            Measured::Taken(m) => item(
                name,
                m.passed,
                format!("{} (expected {})", m.observed, m.expected),
            ),
            Measured::Unmeasurable { observed, .. } => {
                item(name, false, format!("could not measure: {observed}"))
            }
        });
    }

    // Notifiers reachable, where the kind can check without sending.
    for n in &plan.notify {
        let name = format!("notifier {} reachable", n.kind);
        let result = tokio::time::timeout(n.timeout, n.notifier.probe(&ctx)).await;
        items.push(match result {
            Ok(Ok(Some(evidence))) => item(name, true, evidence),
            Ok(Ok(None)) => PreflightItem {
                name,
                status: ItemStatus::Unchecked,
                evidence: format!(
                    "{}: this kind cannot be checked without sending a message",
                    n.notifier.describe()
                ),
            },
            Ok(Err(e)) => item(name, false, ctx.redact(&e.full_message())),
            Err(_) => item(
                name,
                false,
                format!("no answer within {}", humantime::format_duration(n.timeout)),
            ),
        });
    }

    if !options.skip_drill {
        items.push(drill_item(plan, store, options).await);
    }
    PreflightReport {
        plan: plan.name.clone(),
        digest: plan.source.digest.clone(),
        passed: items.iter().all(|i| i.status != ItemStatus::Fail),
        items,
    }
}

async fn drill_item(
    plan: &Plan,
    store: &dyn JournalStore,
    options: &PreflightOptions,
) -> PreflightItem {
    let name = "proven by a successful drill";
    let runs = match store.list().await {
        Ok(r) => r,
        Err(e) => return item(name, false, format!("cannot read the journal: {e}")),
    };
    let now = SystemTime::now();
    let mut newest_failed: Option<String> = None;
    for run in runs.iter().filter(|r| r.drill && r.plan == plan.name) {
        let Ok(stored) = store.read(&run.run_id).await else {
            continue;
        };
        let Some(report) = RunReport::from_stored(&stored) else {
            continue;
        };
        let same = run.digest == plan.source.digest;
        let age = humantime::parse_rfc3339(&run.started_at)
            .ok()
            .and_then(|t| now.duration_since(t).ok());
        let recent = matches!((options.drill_max_age, age), (Some(max), Some(age)) if age <= max);
        if !report.drill_passed() {
            newest_failed.get_or_insert_with(|| {
                format!(
                    "drill {} did not pass ({})",
                    run.run_id,
                    run.status.map(|s| s.as_str()).unwrap_or("unfinished")
                )
            });
            continue;
        }
        if same || recent {
            let used = report.duration_ms.map(fmt_ms).unwrap_or_default();
            let budget = report
                .budget_ms
                .map(|b| format!(" of {}", fmt_ms(b)))
                .unwrap_or_default();
            let which = if same {
                "this plan"
            } else {
                "an earlier version of this plan"
            };
            return item(
                name,
                true,
                format!(
                    "drill {} of {which} passed on {} in {used}{budget}",
                    run.run_id, run.started_at
                ),
            );
        }
    }
    let mut evidence = format!(
        "no passing drill of this plan (digest {}) in the journal: run `rollback drill` against staging",
        &plan.source.digest
    );
    if let Some(failed) = newest_failed {
        evidence.push_str(&format!("; newest: {failed}"));
    }
    item(name, false, evidence)
}
