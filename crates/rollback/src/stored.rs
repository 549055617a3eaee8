//! A stored run made ready to resume: its id resolved (`last`), its record
//! read from the journal, and its plan rebuilt from the text and variables
//! it started with (never from the plan file as it is now).

use std::path::PathBuf;

use rollback_core::journal::resolve_run_id;
use rollback_core::{Error, Plan, Registry, Result, RunInfo, RunOptions};

use crate::Journal;

/// A run as a resume needs it.
#[derive(Debug, Clone)]
pub struct StoredPlan {
    /// The run's id.
    pub run_id: String,
    /// Who started it, why, with which variables.
    pub info: RunInfo,
    /// The plan as it was when the run started.
    pub plan: Plan,
}

impl StoredPlan {
    /// Options for the resume: the first run's reason and drill flag (the
    /// caller sets the operator, approvals and what it says about the resume).
    pub fn options(&self) -> RunOptions {
        self.with_reason_and_drill(RunOptions::new(self.info.reason.clone()))
    }

    /// `options` with the first run's reason and drill flag.
    pub fn with_reason_and_drill(&self, mut options: RunOptions) -> RunOptions {
        options.reason = self.info.reason.clone();
        options.drill = self.info.drill;
        options
    }

    /// Checks that every step the operator names (`--fresh STEP`) is one of
    /// the plan's.
    pub fn check_steps(&self, steps: &[String], flag: &str) -> Result<()> {
        match steps
            .iter()
            .find(|s| !self.plan.steps.iter().any(|p| &p.id == *s))
        {
            Some(unknown) => Err(Error::InvalidInput {
                message: format!(
                    "{flag} {unknown}: plan {} has no step `{unknown}`",
                    self.plan.name
                ),
            }),
            None => Ok(()),
        }
    }
}

/// Finds run `run_id` (`last`: the newest unfinished one) and rebuilds its
/// plan with `registry`.
pub async fn stored_run(
    journal: &Journal,
    run_id: &str,
    registry: &Registry,
) -> Result<StoredPlan> {
    let store = journal.store.as_ref();
    let run_id = resolve_run_id(store, run_id, true).await?;
    let stored = store.read(&run_id).await?;
    let file = format!(
        "{} (as recorded in run {run_id})",
        stored
            .info
            .plan_path
            .clone()
            .unwrap_or_else(|| "plan".into())
    );
    let mut plan = Plan::from_yaml(&stored.plan_text, &file, registry, &stored.info.vars)?;
    plan.source.path = stored.info.plan_path.as_ref().map(PathBuf::from);
    Ok(StoredPlan {
        run_id,
        info: stored.info,
        plan,
    })
}
