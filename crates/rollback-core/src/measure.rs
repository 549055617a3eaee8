//! One measurement of a check, as the executor (verification, preflight
//! checks), `rollback preflight` and `rollback watch` all take it: within the
//! check's timeout, an error turned into a failed (or unknown) measurement,
//! and the text redacted.

use crate::plan::PlanCheck;
use crate::step::{Measurement, StepContext};

/// The result of measuring a check once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Measured {
    /// A value was measured; it passed or not.
    Taken(Measurement),
    /// No value could be measured (an error, no answer in time): a failure
    /// for verification, "unknown" for a trigger.
    Unmeasurable {
        /// Why, redacted.
        observed: String,
        /// What the check expects.
        expected: String,
    },
}

impl Measured {
    /// A measurement where "could not measure" counts as failed.
    pub(crate) fn into_measurement(self) -> Measurement {
        match self {
            Measured::Taken(m) => m,
            Measured::Unmeasurable { observed, expected } => {
                Measurement::new(false, format!("could not measure: {observed}"), expected)
            }
        }
    }
}

/// Measures `check` once, within its timeout.
pub(crate) async fn measure(check: &PlanCheck, ctx: &StepContext) -> Measured {
    match tokio::time::timeout(check.timeout, check.verifier.check(ctx)).await {
        Ok(Ok(m)) => Measured::Taken(Measurement {
            passed: m.passed,
            observed: ctx.redact(&m.observed),
            expected: ctx.redact(&m.expected),
        }),
        Ok(Err(e)) => Measured::Unmeasurable {
            observed: ctx.redact(&e.full_message()),
            expected: check.verifier.describe(),
        },
        Err(_) => Measured::Unmeasurable {
            observed: format!(
                "no result within {}",
                humantime::format_duration(check.timeout)
            ),
            expected: check.verifier.describe(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::step::{StepError, Verifier};

    #[derive(Debug)]
    struct Fixed(Result<bool, &'static str>, Duration);

    #[async_trait]
    impl Verifier for Fixed {
        fn describe(&self) -> String {
            "fixed".into()
        }
        async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
            tokio::time::sleep(self.1).await;
            let token = ctx.resolve("${env:ROLLBACK_MEASURE_TEST_TOKEN}")?;
            match self.0 {
                Ok(passed) => Ok(Measurement::new(passed, format!("saw {token}"), "ok")),
                Err(e) => Err(StepError::fatal(format!("{e} with {token}"))),
            }
        }
    }

    fn check(verifier: Fixed) -> PlanCheck {
        let mut c = PlanCheck::new("c", "fixed", Arc::new(verifier));
        c.timeout = Duration::from_millis(200);
        c
    }

    #[tokio::test]
    async fn errors_and_timeouts_are_unmeasurable_and_everything_is_redacted() {
        std::env::set_var("ROLLBACK_MEASURE_TEST_TOKEN", "tok-4f1d");
        let ctx = StepContext::standalone("c", std::env::temp_dir());
        let taken = measure(&check(Fixed(Ok(true), Duration::ZERO)), &ctx).await;
        assert_eq!(
            taken,
            Measured::Taken(Measurement::new(true, "saw ***", "ok"))
        );
        let failed = measure(&check(Fixed(Err("refused"), Duration::ZERO)), &ctx).await;
        let m = failed.into_measurement();
        assert!(!m.passed);
        assert_eq!(m.observed, "could not measure: refused with ***");
        let slow = measure(&check(Fixed(Ok(true), Duration::from_secs(30))), &ctx).await;
        assert!(
            matches!(&slow, Measured::Unmeasurable { observed, .. } if observed.starts_with("no result within")),
            "{slow:?}"
        );
    }
}
