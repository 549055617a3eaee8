//! [`StepContext`]: what a step, verifier or notifier sees while it works.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::approval::Approver;
use crate::event::Event;
use crate::state::{RunDirState, StateStore};
use crate::template::Resolver;

use super::{Outputs, StepError};

/// What a step, verifier or notifier sees while it works.
#[derive(Clone)]
pub struct StepContext {
    pub(crate) run_id: String,
    pub(crate) step_id: String,
    pub(crate) attempt: u32,
    pub(crate) operator: String,
    pub(crate) reason: String,
    pub(crate) deadline: Option<Instant>,
    pub(crate) cancel: CancellationToken,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) run_dir: PathBuf,
    pub(crate) approver: Arc<dyn Approver>,
    pub(crate) progress: ProgressSink,
    /// Journals what a step's helpers do (programs started, state saved).
    pub(crate) recorder: Arc<dyn Recorder>,
    /// Where the run's state is kept (the journal store).
    pub(crate) state: Arc<dyn StateStore>,
    /// Pieces of state the journal says were saved in this run, by (step, name).
    pub(crate) saved: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    /// An earlier attempt of this step started (in this segment or before a
    /// crash): its effects may already be there.
    pub(crate) rerun: bool,
    /// The operator asked to run this step as if for the first time.
    pub(crate) fresh: bool,
}

/// Where a step's progress lines go: `(step id, message)`.
pub(crate) type ProgressSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Journals events on behalf of a step's helpers (the program runner, the
/// state store); the executor's run bus is one.
#[async_trait]
pub(crate) trait Recorder: Send + Sync {
    /// Queues an event (redacted like every other).
    fn queue(&self, event: Event);
    /// Waits until everything queued so far is durable.
    async fn commit(&self) -> crate::Result<()>;
}

/// The recorder of a context outside a plan: nothing is journaled.
struct Unrecorded;

#[async_trait]
impl Recorder for Unrecorded {
    fn queue(&self, _event: Event) {}
    async fn commit(&self) -> crate::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("run_id", &self.run_id)
            .field("step_id", &self.step_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl StepContext {
    /// A context for running a step or check outside a plan (tests, embedding).
    pub fn standalone(step_id: impl Into<String>, run_dir: impl Into<PathBuf>) -> Self {
        let run_dir = run_dir.into();
        StepContext {
            run_id: "standalone".into(),
            step_id: step_id.into(),
            attempt: 1,
            operator: crate::plan::default_operator(),
            reason: "standalone".into(),
            deadline: None,
            cancel: CancellationToken::new(),
            resolver: Arc::new(Resolver::new(BTreeMap::new())),
            state: Arc::new(RunDirState(run_dir.clone())),
            run_dir,
            approver: Arc::new(crate::approval::NonInteractive { assume_yes: false }),
            progress: Arc::new(|_, _| {}),
            recorder: Arc::new(Unrecorded),
            saved: Default::default(),
            rerun: false,
            fresh: false,
        }
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The id of the step (or the name of the check) being run.
    pub fn step_id(&self) -> &str {
        &self.step_id
    }

    /// 1 for the first attempt, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Who runs the plan.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// Why the run was started (`--reason`, or the trigger).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Outputs of the steps completed so far in this run, by step id (e.g. to
    /// find a verified backup taken earlier in the run).
    pub fn completed_outputs(&self) -> BTreeMap<String, Outputs> {
        self.resolver.all_outputs()
    }

    /// A copy with plan variables set (for tests and embedding).
    pub fn with_vars(mut self, vars: BTreeMap<String, String>) -> Self {
        self.resolver = Arc::new(Resolver::new(vars));
        self
    }

    /// When the plan's budget runs out, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the budget runs out.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Cancelled when the operator interrupts the run; long waits should
    /// `select!` on it.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Resolves `${env:NAME}`, `${file:PATH}`, `${var:NAME}` and
    /// `${steps.ID.NAME}` in `template`. Values from `env:` and `file:` are
    /// secrets: they are remembered so that [`StepContext::redact`] hides them.
    pub fn resolve(&self, template: &str) -> Result<String, StepError> {
        self.resolver
            .resolve(template)
            .map_err(|e| StepError::fatal(e.to_string()))
    }

    /// [`StepContext::resolve`] applied to every string inside a JSON value
    /// (a request body, a whole configuration).
    pub fn resolve_json(&self, value: &serde_json::Value) -> Result<serde_json::Value, StepError> {
        use serde_json::Value;
        Ok(match value {
            Value::String(s) => Value::String(self.resolve(s)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.resolve_json(v))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.resolve_json(v)?)))
                    .collect::<Result<_, StepError>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Replaces every secret value seen in this run by `***`. Everything that
    /// goes to the journal, the report and events passes through here already;
    /// use it for text a step shows by other means.
    pub fn redact(&self, text: &str) -> String {
        self.resolver.redact(text)
    }

    /// The plan's variables (after `--var` overrides).
    pub fn vars(&self) -> &BTreeMap<String, String> {
        self.resolver.vars()
    }

    /// Marks a value the step obtained (a token it logged in for, a secret it
    /// read) as secret: from now on it is redacted from the journal, reports,
    /// events and other steps' outputs, while later steps still receive it.
    pub fn mark_secret(&self, value: &str) {
        self.resolver.remember_secret(value);
    }

    /// The folder of the plan file, for paths in a step's configuration that
    /// are relative to the plan (as `${file:...}` is).
    pub fn plan_dir(&self) -> Option<&std::path::Path> {
        self.resolver.base_dir()
    }

    /// Reports progress of a long step (shown live, journaled).
    pub fn progress(&self, message: &str) {
        (self.progress)(&self.step_id, &self.resolver.redact(message));
    }

    /// A folder for this step's files (backups, saved copies) inside the run's
    /// directory in the state directory; created on first use.
    pub fn artifact_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.run_dir.join("artifacts").join(&self.step_id);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Asks for approval (the `confirm` kind, approval policies).
    pub fn approver(&self) -> &Arc<dyn Approver> {
        &self.approver
    }

    /// Whether an earlier attempt of this step started in this run (a retry,
    /// or a resume after its runner died): its effects may already be there,
    /// and a target it computed then must not be recomputed now.
    pub fn is_rerun(&self) -> bool {
        self.rerun
    }

    /// A copy marked as a re-run (for tests of a kind's resume path).
    pub fn as_rerun(mut self) -> Self {
        self.rerun = true;
        self
    }

    /// Keeps `bytes` as this step's piece `name` in the journal store,
    /// durably, before the step goes on: every runner of a shared journal can
    /// read it back (a resume, an undo). Refused when it holds a secret value
    /// of this run: keep secrets where they are already protected.
    pub async fn save_state(&self, name: &str, bytes: Vec<u8>) -> Result<(), StepError> {
        if self.resolver.has_secrets() {
            let text = String::from_utf8_lossy(&bytes);
            if self.resolver.redact(&text) != text {
                return Err(StepError::fatal(format!(
                    "step `{}` would keep `{name}` with a secret value in it in the journal store:                      secrets stay where they are protected",
                    self.step_id
                )));
            }
        }
        let len = bytes.len() as u64;
        self.state
            .put_state(&self.run_id, &self.step_id, name, bytes)
            .await
            .map_err(|e| {
                StepError::fatal(format!("cannot keep `{name}` in the journal store: {e}"))
            })?;
        self.recorder.queue(Event::StateSaved {
            step: self.step_id.clone(),
            name: name.to_string(),
            bytes: len,
        });
        self.recorder
            .commit()
            .await
            .map_err(|e| StepError::fatal(format!("cannot journal that `{name}` was kept: {e}")))?;
        self.saved
            .lock()
            .expect("saved state set")
            .insert((self.step_id.clone(), name.to_string()));
        Ok(())
    }

    /// This step's piece `name`, if it was kept. When the journal says it was
    /// kept and the store no longer has it, that is an error: a step that
    /// depends on what it did before must not guess (unless the operator
    /// asked to run the step fresh).
    pub async fn load_state(&self, name: &str) -> Result<Option<Vec<u8>>, StepError> {
        let found = self
            .state
            .get_state(&self.run_id, &self.step_id, name)
            .await
            .map_err(|e| {
                StepError::retryable(format!("cannot read `{name}` from the journal store: {e}"))
            })?;
        if found.is_some() || self.fresh {
            return Ok(found);
        }
        let recorded = self
            .saved
            .lock()
            .expect("saved state set")
            .contains(&(self.step_id.clone(), name.to_string()));
        if recorded {
            return Err(StepError::fatal(format!(
                "the `{name}` that step `{}` kept in run {} is missing from the journal store; without it the                  step would recompute its target from what it sees now, which can undo what it did. Check the                  target, then resume with `--fresh {}` to run the step as if for the first time",
                self.step_id, self.run_id, self.step_id
            )));
        }
        Ok(None)
    }

    /// Keeps what this step set out to do (`intent`), before its effect.
    pub async fn save_intent<T: Serialize>(&self, intent: &T) -> Result<(), StepError> {
        let bytes = serde_json::to_vec_pretty(intent).expect("an intent serializes");
        self.save_state("intent", bytes).await
    }

    /// What this step set out to do in an earlier attempt, if it got as far
    /// as saying (see [`StepContext::load_state`] for a missing one).
    pub async fn load_intent<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Option<T>, StepError> {
        match self.load_state("intent").await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                StepError::fatal(format!(
                    "the intent step `{}` kept cannot be read ({e}); resume with `--fresh {}` after checking                      the target",
                    self.step_id, self.step_id
                ))
            }),
        }
    }
}
