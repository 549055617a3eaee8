//! Exit codes: few, documented, stable.

use rollback_core::{Error, RunReport, RunStatus};

/// The rollback finished and verification passed (or: the command worked).
pub const SUCCESS: i32 = 0;
/// A step failed; the rollback did not complete.
pub const STEP_FAILED: i32 = 1;
/// Bad input: an invalid plan, an unknown flag, a run that does not exist.
pub const INVALID_INPUT: i32 = 2;
/// The steps ran but a verification did not pass.
pub const VERIFICATION_FAILED: i32 = 3;
/// The budget ran out (or the run finished after it).
pub const BUDGET_EXCEEDED: i32 = 4;
/// Another run of the same plan holds its lock.
pub const LOCKED: i32 = 5;
/// A preflight check failed; nothing was changed.
pub const PREFLIGHT_FAILED: i32 = 6;
/// The journal or state directory could not be used, or the account lacks
/// a permission the engine needs (a plan lock it may not read or write).
pub const INTERNAL: i32 = 10;
/// The operator interrupted the run (Ctrl-C); `rollback resume` continues it.
pub const CANCELLED: i32 = 130;

/// The table printed by `--help`.
pub const TABLE: &str = "\
Exit codes:
    0    success: steps done, verification passed
    1    a step failed
    2    invalid input (plan, flags, unknown run)
    3    verification failed
    4    budget exceeded
    5    locked: the plan is being run by someone else
    6    preflight failed: nothing was changed
   10    internal error (journal, state directory) or permission denied
  130    cancelled (Ctrl-C); continue with `rollback resume RUN`";

/// The exit code for a finished run.
pub fn for_report(report: &RunReport) -> i32 {
    for_status(report.status, report.budget_exceeded)
}

/// The exit code for a run's status; `budget_exceeded` turns a success that
/// came too late into [`BUDGET_EXCEEDED`].
pub fn for_status(status: Option<RunStatus>, budget_exceeded: bool) -> i32 {
    match status {
        Some(RunStatus::Succeeded) if budget_exceeded => BUDGET_EXCEEDED,
        Some(RunStatus::Succeeded) => SUCCESS,
        Some(RunStatus::StepFailed) => STEP_FAILED,
        Some(RunStatus::VerificationFailed) => VERIFICATION_FAILED,
        Some(RunStatus::BudgetExceeded) => BUDGET_EXCEEDED,
        Some(RunStatus::PreflightFailed) => PREFLIGHT_FAILED,
        Some(RunStatus::Cancelled) => CANCELLED,
        None => INTERNAL,
    }
}

/// The exit code for an engine error.
pub fn for_error(error: &Error) -> i32 {
    match error {
        Error::InvalidPlan { .. }
        | Error::PlanUnreadable { .. }
        | Error::InvalidInput { .. }
        | Error::RunNotFound { .. }
        | Error::NotResumable { .. } => INVALID_INPUT,
        Error::Locked { .. } => LOCKED,
        Error::Permission { .. } => INTERNAL,
        _ => INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_error_is_exit_10_not_locked() {
        let error = Error::Permission {
            what: "taking the lock of plan `orders` (Lease rollback-plan-orders in namespace ops)"
                .into(),
            message: "the account may not get leases".into(),
        };
        assert_eq!(for_error(&error), INTERNAL);
        assert!(
            TABLE.contains("10    internal error (journal, state directory) or permission denied")
        );
    }
}
