//! A step's intent in the journal store: written before its effect, read
//! back by a resume, so the resumed step goes to the target it chose the
//! first time instead of recomputing "previous" from the state it changed.
//! When the journal says an intent was kept and the store lost it, the step
//! refuses instead of guessing, unless the operator asks for a fresh run.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use rollback_core::{
    Executor, FileJournal, Outcome, Outputs, Plan, PlanStep, Preview, RunOptions, RunStatus,
    StateStore, Step, StepContext, StepError,
};
use serde::{Deserialize, Serialize};

/// A deployment whose revision goes up with every change, like a
/// Deployment's: "undo" creates a new revision with the previous template.
#[derive(Debug, Default)]
struct Deployment {
    revision: AtomicI64,
    template: AtomicI64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    to_template: i64,
}

/// Undo to the previous template; the first attempt stops right after its
/// effect, as a runner that dies there would.
#[derive(Debug)]
struct Undo {
    target: Arc<Deployment>,
    die_after_effect: bool,
}

#[async_trait]
impl Step for Undo {
    fn describe(&self) -> String {
        "undo to the previous template".into()
    }
    async fn preview(&self, _ctx: &StepContext) -> Result<Preview, StepError> {
        Ok(Preview::default())
    }
    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let to = match ctx.load_intent::<Intent>().await? {
            Some(intent) => intent.to_template,
            None => {
                let previous = self.target.template.load(Ordering::SeqCst) - 1;
                ctx.save_intent(&Intent {
                    to_template: previous,
                })
                .await?;
                previous
            }
        };
        if self.target.template.load(Ordering::SeqCst) != to {
            self.target.template.store(to, Ordering::SeqCst);
            self.target.revision.fetch_add(1, Ordering::SeqCst);
        }
        if self.die_after_effect && !ctx.is_rerun() {
            return Err(StepError::interrupted("the runner died"));
        }
        Ok(Outputs::new())
    }
}

fn plan(target: &Arc<Deployment>) -> Plan {
    let mut plan = Plan::new("intent");
    plan.steps = vec![PlanStep::new(
        "undo",
        "test.undo",
        Arc::new(Undo {
            target: target.clone(),
            die_after_effect: true,
        }),
    )];
    plan.check().unwrap();
    plan
}

/// Runs the plan once (the step stops after its effect), then cuts the
/// journal after the step's start and intent, as if the runner had died
/// there. Returns the store and run id.
async fn crashed_run(
    dir: &std::path::Path,
    target: &Arc<Deployment>,
) -> (Arc<FileJournal>, String) {
    let store = Arc::new(FileJournal::new(dir));
    let report = Executor::new(store.clone())
        .run(&plan(target), RunOptions::new("5xx spike"))
        .await
        .unwrap();
    assert_eq!(report.steps[0].outcome, Some(Outcome::Interrupted));
    let run_id = report.run.run_id.clone();
    let path = dir.join("runs").join(&run_id).join("journal.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: String = text
        .lines()
        .take_while(|l| !l.contains("\"step_finished\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(kept.contains("\"state_saved\""), "{kept}");
    std::fs::write(&path, kept).unwrap();
    (store, run_id)
}

fn at(template: i64) -> Arc<Deployment> {
    let d = Deployment::default();
    d.template.store(template, Ordering::SeqCst);
    d.revision.store(template, Ordering::SeqCst);
    Arc::new(d)
}

#[tokio::test]
async fn a_resume_goes_to_the_target_the_first_attempt_chose() {
    let dir = tempfile::tempdir().unwrap();
    let target = at(2);
    let (store, run_id) = crashed_run(dir.path(), &target).await;
    assert_eq!(target.template.load(Ordering::SeqCst), 1);
    let report = Executor::new(store)
        .resume(&plan(&target), &run_id, RunOptions::new("5xx spike"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert_eq!(
        target.template.load(Ordering::SeqCst),
        1,
        "the resume stayed on the rolled-back template instead of going one further back"
    );
    assert_eq!(
        target.revision.load(Ordering::SeqCst),
        3,
        "no second change"
    );
}

#[tokio::test]
async fn a_lost_intent_is_refused_and_fresh_recomputes_when_the_operator_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let target = at(2);
    let (store, run_id) = crashed_run(dir.path(), &target).await;
    let kept = store.list_state(&run_id).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    std::fs::remove_file(
        dir.path()
            .join("runs")
            .join(&run_id)
            .join("state/undo/intent"),
    )
    .unwrap();

    let report = Executor::new(store.clone())
        .resume(&plan(&target), &run_id, RunOptions::new("5xx spike"))
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::StepFailed));
    let error = report.steps[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("is missing from the journal store") && error.contains("--fresh undo"),
        "{error}"
    );
    assert_eq!(
        target.template.load(Ordering::SeqCst),
        1,
        "nothing was changed"
    );

    let mut options = RunOptions::new("5xx spike");
    options.fresh = vec!["undo".into()];
    let report = Executor::new(store)
        .resume(&plan(&target), &run_id, options)
        .await
        .unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert_eq!(
        target.template.load(Ordering::SeqCst),
        0,
        "a fresh run recomputes its target, as the operator asked"
    );
}
