//! What wraps a step from outside, as tower wraps a `Service`: a timeout on
//! each attempt, a durable journal record before each attempt, and retries
//! decided by a [`RetryPolicy`]. A step kind implements none of this.
//!
//! ```text
//! Retry(policy) ─▶ Journaled (step_started, attempt N) ─▶ Timeout ─▶ Step::run
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::duration::millis;
use crate::error::Error;
use crate::event::{Event, Outcome};
use crate::retry::RetryPolicy;
use crate::step::{Outputs, Step, StepContext, StepError};

use super::bus::Bus;

/// Why an attempt did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The step's own work failed, timed out or was interrupted.
    Step {
        /// `Failed`, `TimedOut` or `Interrupted`.
        outcome: Outcome,
        /// What went wrong.
        error: StepError,
    },
    /// The engine could not journal the attempt: the run stops.
    Engine(Error),
}

impl Failure {
    fn step(outcome: Outcome, error: StepError) -> Self {
        Failure::Step { outcome, error }
    }
}

/// One attempt of a step.
#[async_trait]
pub(crate) trait Attempt: Send + Sync {
    async fn attempt(&self, ctx: &StepContext) -> Result<Outputs, Failure>;
}

/// The step itself: one call of `run`.
pub(crate) struct Run(pub(crate) Arc<dyn Step>);

#[async_trait]
impl Attempt for Run {
    async fn attempt(&self, ctx: &StepContext) -> Result<Outputs, Failure> {
        self.0.run(ctx).await.map_err(|error| {
            let outcome = if error.is_interrupted() {
                Outcome::Interrupted
            } else {
                Outcome::Failed
            };
            Failure::step(outcome, error)
        })
    }
}

/// Ends an attempt that takes longer than `limit`; dropping it ends what it
/// was running (its programs' process groups included). A timeout may be
/// retried.
pub(crate) struct Timeout<A> {
    pub(crate) inner: A,
    pub(crate) limit: Option<Duration>,
}

#[async_trait]
impl<A: Attempt> Attempt for Timeout<A> {
    async fn attempt(&self, ctx: &StepContext) -> Result<Outputs, Failure> {
        let Some(limit) = self.limit else {
            return self.inner.attempt(ctx).await;
        };
        match tokio::time::timeout(limit, self.inner.attempt(ctx)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::step(
                Outcome::TimedOut,
                StepError::retryable(format!(
                    "timed out after {}",
                    humantime::format_duration(limit)
                )),
            )),
        }
    }
}

/// Journals each attempt's start, durably, before it runs: after a crash
/// the journal shows which step was under way.
pub(crate) struct Journaled<A> {
    pub(crate) inner: A,
    pub(crate) bus: Arc<Bus>,
    pub(crate) kind: String,
}

#[async_trait]
impl<A: Attempt> Attempt for Journaled<A> {
    async fn attempt(&self, ctx: &StepContext) -> Result<Outputs, Failure> {
        self.bus
            .emit(Event::StepStarted {
                step: ctx.step_id().to_string(),
                kind: self.kind.clone(),
                attempt: ctx.attempt(),
            })
            .await
            .map_err(Failure::Engine)?;
        self.inner.attempt(ctx).await
    }
}

/// Tries again while the policy says so, no retry starting after the
/// deadline nor after a cancellation; the wait between attempts ends early
/// on cancellation (the step is then interrupted, and `resume` makes the
/// next attempt).
pub(crate) struct Retry<A> {
    pub(crate) inner: A,
    pub(crate) policy: Arc<dyn RetryPolicy>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) bus: Arc<Bus>,
}

impl<A: Attempt> Retry<A> {
    /// The last attempt's result and how many attempts were made.
    pub(crate) async fn run(&self, ctx: &StepContext) -> (Result<Outputs, Failure>, u32) {
        let mut attempt = 1;
        loop {
            let mut ctx = ctx.clone();
            ctx.attempt = attempt;
            ctx.rerun |= attempt > 1;
            let error = match self.inner.attempt(&ctx).await {
                Ok(outputs) => return (Ok(outputs), attempt),
                Err(Failure::Step { outcome, error }) if outcome != Outcome::Interrupted => {
                    (outcome, error)
                }
                Err(other) => return (Err(other), attempt),
            };
            let (outcome, error) = error;
            let delay = self.policy.delay(attempt, &error).filter(|d| {
                self.deadline.is_none_or(|dl| Instant::now() + *d < dl)
                    && !ctx.cancellation().is_cancelled()
            });
            let Some(delay) = delay else {
                return (Err(Failure::step(outcome, error)), attempt);
            };
            self.bus.queue(Event::StepRetrying {
                step: ctx.step_id().to_string(),
                attempt,
                error: report_message(&error),
                delay_ms: millis(delay),
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = ctx.cancellation().cancelled() => {
                    let message = format!("{}\nnot retried: the run was cancelled", report_message(&error));
                    return (Err(Failure::step(Outcome::Interrupted, StepError::interrupted(message))), attempt);
                }
            }
            attempt += 1;
        }
    }
}

/// An error as the journal shows it: the message with its causes, then the
/// evidence (the end of stderr, a response body).
pub(crate) fn report_message(error: &StepError) -> String {
    let mut message = error.full_message();
    if let Some(detail) = error.detail() {
        message.push('\n');
        message.push_str(detail);
    }
    message
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::executor::bus::tests::test_bus;
    use crate::retry::ExponentialBackoff;

    /// Fails with `error` for the first `failures` attempts, then succeeds.
    struct Flaky {
        calls: AtomicU32,
        failures: u32,
        retryable: bool,
    }

    #[async_trait]
    impl Attempt for Flaky {
        async fn attempt(&self, _ctx: &StepContext) -> Result<Outputs, Failure> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= self.failures {
                let error = if self.retryable {
                    StepError::retryable(format!("busy {n}"))
                } else {
                    StepError::fatal("bad input")
                };
                return Err(Failure::step(Outcome::Failed, error));
            }
            Ok(Outputs::from([("n".to_string(), serde_json::json!(n))]))
        }
    }

    fn flaky(failures: u32, retryable: bool) -> Flaky {
        Flaky {
            calls: AtomicU32::new(0),
            failures,
            retryable,
        }
    }

    fn policy(retries: u32) -> Arc<dyn RetryPolicy> {
        Arc::new(ExponentialBackoff::new(retries, Duration::from_millis(1)))
    }

    fn ctx() -> StepContext {
        StepContext::standalone("s", std::env::temp_dir())
    }

    #[tokio::test]
    async fn retry_tries_a_retryable_error_again_within_the_policy() {
        let (bus, _) = test_bus();
        let retry = Retry {
            inner: flaky(2, true),
            policy: policy(3),
            deadline: None,
            bus: bus.clone(),
        };
        let (result, attempts) = retry.run(&ctx()).await;
        assert_eq!(result.unwrap()["n"], 3);
        assert_eq!(attempts, 3);
        let retrying = bus
            .records()
            .iter()
            .filter(|r| matches!(r.event, Event::StepRetrying { .. }))
            .count();
        assert_eq!(retrying, 2);
    }

    #[tokio::test]
    async fn retry_gives_up_on_a_fatal_error_and_when_the_policy_is_spent() {
        let (bus, _) = test_bus();
        let fatal = Retry {
            inner: flaky(5, false),
            policy: policy(3),
            deadline: None,
            bus: bus.clone(),
        };
        let (result, attempts) = fatal.run(&ctx()).await;
        assert!(matches!(
            result,
            Err(Failure::Step {
                outcome: Outcome::Failed,
                ..
            })
        ));
        assert_eq!(attempts, 1);
        let spent = Retry {
            inner: flaky(5, true),
            policy: policy(2),
            deadline: None,
            bus,
        };
        assert_eq!(spent.run(&ctx()).await.1, 3);
    }

    #[tokio::test]
    async fn retry_starts_no_attempt_past_the_deadline() {
        let (bus, _) = test_bus();
        let retry = Retry {
            inner: flaky(5, true),
            policy: Arc::new(ExponentialBackoff::new(3, Duration::from_secs(10))),
            deadline: Some(Instant::now() + Duration::from_secs(1)),
            bus,
        };
        assert_eq!(retry.run(&ctx()).await.1, 1);
    }

    #[tokio::test]
    async fn a_cancellation_while_waiting_to_retry_interrupts_the_step() {
        let (bus, _) = test_bus();
        let ctx = ctx();
        let retry = Retry {
            inner: flaky(5, true),
            policy: Arc::new(ExponentialBackoff::new(3, Duration::from_secs(60))),
            deadline: None,
            bus,
        };
        let cancel = ctx.cancellation().clone();
        let run = retry.run(&ctx);
        let (result, _) = tokio::join!(run, async { cancel.cancel() }).0;
        let Err(Failure::Step { outcome, error }) = result else {
            panic!("expected an interrupted step")
        };
        assert_eq!(outcome, Outcome::Interrupted);
        assert!(error
            .message()
            .contains("not retried: the run was cancelled"));
    }

    #[tokio::test]
    async fn timeout_ends_a_slow_attempt_as_timed_out_and_retryable() {
        struct Slow;
        #[async_trait]
        impl Attempt for Slow {
            async fn attempt(&self, _ctx: &StepContext) -> Result<Outputs, Failure> {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Outputs::new())
            }
        }
        let timeout = Timeout {
            inner: Slow,
            limit: Some(Duration::from_millis(20)),
        };
        let Err(Failure::Step { outcome, error }) = timeout.attempt(&ctx()).await else {
            panic!("expected a timeout")
        };
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(error.is_retryable());
    }

    #[tokio::test]
    async fn journaled_records_the_attempt_durably_before_it_runs() {
        struct SeesJournal(Arc<Bus>);
        #[async_trait]
        impl Attempt for SeesJournal {
            async fn attempt(&self, _ctx: &StepContext) -> Result<Outputs, Failure> {
                let started = self
                    .0
                    .records()
                    .iter()
                    .any(|r| matches!(r.event, Event::StepStarted { attempt: 2, .. }));
                assert!(started, "the start record comes first");
                Ok(Outputs::new())
            }
        }
        let (bus, durable) = test_bus();
        let journaled = Journaled {
            inner: SeesJournal(bus.clone()),
            bus,
            kind: "exec".into(),
        };
        let mut ctx = ctx();
        ctx.attempt = 2;
        journaled.attempt(&ctx).await.unwrap();
        assert_eq!(durable.commits(), 1);
    }
}
