#![doc = include_str!("../README.md")]

pub mod approval;
pub mod duration;
pub mod error;
pub mod event;
pub mod executor;
pub mod journal;
pub mod kinds;
mod measure;
pub mod plan;
pub mod preflight;
pub mod process;
pub mod registry;
pub mod report;
pub mod retry;
pub mod schema;
pub mod state;
pub mod step;
pub mod template;
pub mod testing;
pub mod watch;
pub mod yaml;

pub use approval::{Approval, ApprovalRequest, Approver, NonInteractive, PresetApprovals};
pub use duration::HumanDuration;
pub use error::{Diagnostic, Error, LockHolder, Result};
pub use event::{CheckPhase, Event, Outcome, RunInfo, RunStatus};
pub use executor::{Executor, PreviewReport, RunOptions, StepPreview};
pub use journal::{
    FileJournal, JournalStore, PlanLockGuard, PlanLocker, Record, RunJournal, RunSummary, StoredRun,
};
pub use plan::{
    BudgetPolicy, FailurePolicy, Plan, PlanApproval, PlanCheck, PlanNotifier, PlanSource, PlanStep,
};
pub use registry::{ConfigError, Registry};
pub use report::{ApprovalRecord, CheckReport, ProgramReport, RunReport, StepReport};
pub use state::{StateEntry, StateStore};
pub use step::{
    ErrorKind, Measurement, Notifier, OutputNames, Outputs, Preview, Step, StepContext, StepError,
    StepOutputs, Verifier,
};

#[doc(hidden)]
pub use serde as __serde;

// `step_outputs!` names serde through this crate's path, inside it too.
extern crate self as rollback_core;
