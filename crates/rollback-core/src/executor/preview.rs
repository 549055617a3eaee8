//! A dry run: every step's preview, nothing changed, nothing journaled.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use crate::duration::millis;
use crate::plan::{default_operator, Plan};
use crate::step::{Preview, StepContext};
use crate::template::Resolver;

use super::Executor;

/// A dry run: what each step would change.
#[derive(Debug, Clone, Serialize)]
pub struct PreviewReport {
    /// The plan's name.
    pub plan: String,
    /// Its digest.
    pub digest: String,
    /// Its budget.
    pub budget_ms: Option<u64>,
    /// Each step's preview, in plan order.
    pub steps: Vec<StepPreview>,
    /// Checks that would run (name, kind, description).
    pub checks: Vec<(String, String, String)>,
    /// Notifiers (kind, description).
    pub notify: Vec<(String, String)>,
}

/// One step of a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct StepPreview {
    /// Step id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Dependencies.
    pub after: Vec<String>,
    /// What it would change, or why that cannot be known.
    pub preview: std::result::Result<Preview, String>,
}

impl PreviewReport {
    /// Whether every step could be previewed.
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.preview.is_ok())
    }
}

impl Executor {
    /// A dry run: every step's preview, nothing changed, nothing journaled.
    pub async fn preview(plan: &Plan) -> PreviewReport {
        let resolver = Arc::new(
            Resolver::new(plan.vars.clone())
                .with_base_dir(plan.base_dir())
                .with_placeholder_outputs(),
        );
        let mut base = StepContext::standalone("", std::env::temp_dir().join("rollback-preview"));
        base.run_id = "preview".into();
        base.operator = default_operator();
        base.reason = "dry run".into();
        base.resolver = resolver.clone();
        let mut set = JoinSet::new();
        for (i, s) in plan.steps.iter().enumerate() {
            let mut ctx = base.clone();
            ctx.step_id = s.id.clone();
            let step = s.step.clone();
            let timeout = s.timeout.unwrap_or(Duration::from_secs(30));
            set.spawn(async move {
                let result = match tokio::time::timeout(timeout, step.preview(&ctx)).await {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(e)) => Err(e.full_message()),
                    Err(_) => Err(format!(
                        "preview did not finish within {}",
                        humantime::format_duration(timeout)
                    )),
                };
                (i, result)
            });
        }
        let mut previews: Vec<Option<std::result::Result<Preview, String>>> =
            vec![None; plan.steps.len()];
        while let Some(joined) = set.join_next().await {
            if let Ok((i, result)) = joined {
                previews[i] = Some(
                    result
                        .map(|p| Preview {
                            summary: resolver.redact(&p.summary),
                            changes: p.changes.iter().map(|c| resolver.redact(c)).collect(),
                        })
                        .map_err(|e| resolver.redact(&e)),
                );
            }
        }
        PreviewReport {
            plan: plan.name.clone(),
            digest: plan.source.digest.clone(),
            budget_ms: plan.budget.map(millis),
            steps: plan
                .steps
                .iter()
                .zip(previews)
                .map(|(s, p)| StepPreview {
                    id: s.id.clone(),
                    kind: s.kind.clone(),
                    after: s.after.clone(),
                    preview: p.unwrap_or_else(|| Err("preview task failed".into())),
                })
                .collect(),
            checks: plan
                .preflight
                .iter()
                .chain(&plan.verify)
                .map(|c| (c.name.clone(), c.kind.clone(), c.verifier.describe()))
                .collect(),
            notify: plan
                .notify
                .iter()
                .map(|n| (n.kind.clone(), n.notifier.describe()))
                .collect(),
        }
    }
}
