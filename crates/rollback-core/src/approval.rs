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
    /// The role whose approval is needed (the plan's `approvals:`); `None`
    /// for a plain confirmation, which the operator gives themself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A granted approval, recorded in the journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approval {
    /// Who approved.
    pub approved_by: String,
    /// How: `interactive` (answered at a terminal), `--yes` or
    /// `--approved-by` (given up front).
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
        if let Some(role) = &request.role {
            return Err(format!(
                "step `{}` needs approval by {role}; pass --approved-by '{role}=NAME' naming who approved, \
                 or run from a terminal to be asked (--yes does not stand in for a named approver)",
                request.step
            ));
        }
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

/// Approvals by named roles given up front (`--approved-by ROLE=NAME`); any
/// other request goes to `fallback` (a terminal, or [`NonInteractive`]).
pub struct PresetApprovals {
    /// Role to the name of the person who approved.
    pub approvals: std::collections::BTreeMap<String, String>,
    /// Asked for everything not given up front.
    pub fallback: std::sync::Arc<dyn Approver>,
}

impl std::fmt::Debug for PresetApprovals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresetApprovals")
            .field("approvals", &self.approvals)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Approver for PresetApprovals {
    async fn approve(&self, request: &ApprovalRequest) -> Result<Approval, String> {
        if let Some(name) = request.role.as_ref().and_then(|r| self.approvals.get(r)) {
            return Ok(Approval {
                approved_by: name.clone(),
                method: "--approved-by".into(),
            });
        }
        self.fallback.approve(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(role: Option<&str>) -> ApprovalRequest {
        ApprovalRequest {
            step: "swap".into(),
            message: "swap databases".into(),
            operator: "olga".into(),
            role: role.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn yes_approves_confirmations_but_never_stands_in_for_a_role() {
        let yes = NonInteractive { assume_yes: true };
        assert_eq!(
            yes.approve(&request(None)).await.unwrap().approved_by,
            "olga"
        );
        let err = yes
            .approve(&request(Some("engineering-manager")))
            .await
            .unwrap_err();
        assert!(
            err.contains("--approved-by 'engineering-manager=NAME'"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn preset_approvals_answer_their_roles_only() {
        let preset = PresetApprovals {
            approvals: [("cto".to_string(), "amara".to_string())].into(),
            fallback: std::sync::Arc::new(NonInteractive { assume_yes: false }),
        };
        let ok = preset.approve(&request(Some("cto"))).await.unwrap();
        assert_eq!(
            (ok.approved_by.as_str(), ok.method.as_str()),
            ("amara", "--approved-by")
        );
        assert!(preset.approve(&request(Some("devops-lead"))).await.is_err());
        assert!(preset.approve(&request(None)).await.is_err());
    }
}
