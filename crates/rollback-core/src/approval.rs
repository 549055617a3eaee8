//! Approvals: the `confirm` kind and approval policies ask an [`Approver`].

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A request for a person's go-ahead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The step asking.
    pub step: String,
    /// What is about to happen, in the plan author's words.
    pub message: String,
    /// Who is running the plan.
    pub operator: String,
}

/// A granted approval, recorded in the journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approval {
    /// Who approved.
    pub approved_by: String,
    /// How: `interactive` (answered at a terminal) or `--yes` (given up front).
    pub method: String,
}

/// Asks a person, or answers for them when the run was started with `--yes`.
#[async_trait]
pub trait Approver: Send + Sync {
    /// Returns the approval, or an explanation of why none was given.
    async fn approve(&self, request: &ApprovalRequest) -> Result<Approval, String>;
}

/// The approver of a run with no terminal: approves only when `assume_yes`
/// (the `--yes` flag) was given, and otherwise refuses with what to do.
#[derive(Debug, Clone)]
pub struct NonInteractive {
    /// Approve every request (the operator said `--yes`).
    pub assume_yes: bool,
}

#[async_trait]
impl Approver for NonInteractive {
    async fn approve(&self, request: &ApprovalRequest) -> Result<Approval, String> {
        if self.assume_yes {
            Ok(Approval {
                approved_by: request.operator.clone(),
                method: "--yes".into(),
            })
        } else {
            Err(format!(
                "step `{}` needs confirmation (\"{}\") but this run has no terminal to ask: \
                 run it from a terminal, or pass --yes to approve up front",
                request.step, request.message
            ))
        }
    }
}
