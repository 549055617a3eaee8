#![doc = include_str!("../README.md")]

pub mod approval;
pub mod duration;
pub mod event;
pub mod kinds;
pub mod plan;
pub mod registry;
pub mod step;
pub mod template;

pub use approval::{Approval, ApprovalRequest, Approver, NonInteractive};
pub use duration::HumanDuration;
pub use event::{CheckPhase, Event, Outcome, RunInfo, RunStatus};
pub use registry::{ConfigError, Registry};
pub use step::{Measurement, Notifier, OutputNames, Outputs, Preview, Step, StepContext, StepError, Verifier};
