//! Notifications travel beside the run: each notifier has a queue of the
//! events it wants and delivers them in order, each delivery within its
//! timeout and retried under the same retry policy as steps (an error that
//! another attempt cannot fix is not retried). A failure is journaled, never
//! a failure of the run.

use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;
use crate::plan::PlanNotifier;
use crate::retry::{ExponentialBackoff, RetryPolicy};
use crate::step::{StepContext, StepError};

use super::bus::Bus;
use super::Executor;

/// The first pause before a notification is sent again; it doubles.
const NOTIFY_BACKOFF: Duration = Duration::from_millis(500);

/// Delivers one event, retrying as `policy` says; the last error if it
/// could not be delivered.
async fn deliver(
    n: &PlanNotifier,
    policy: &dyn RetryPolicy,
    ctx: &StepContext,
    bus: &Bus,
    event: &Event,
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error =
            match tokio::time::timeout(n.timeout, n.notifier.notify(ctx, &bus.info, event)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => StepError::retryable(format!(
                    "no answer within {}",
                    humantime::format_duration(n.timeout)
                )),
            };
        match policy.delay(attempt, &error) {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return Err(error.full_message()),
        }
    }
}

impl Executor {
    pub(crate) fn start_notifiers(
        &self,
        notifiers: &[PlanNotifier],
        bus: &Arc<Bus>,
        base_ctx: &StepContext,
    ) {
        let mut handles = self.notifications.lock().expect("notification tasks");
        for n in notifiers {
            let mut rx = bus.subscribe(n.events.clone());
            let n = n.clone();
            let bus = bus.clone();
            let mut ctx = base_ctx.clone();
            ctx.step_id = format!("notify:{}", n.kind);
            let policy = ExponentialBackoff::new(n.retries, NOTIFY_BACKOFF);
            handles.push(tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    if let Err(error) = deliver(&n, &policy, &ctx, &bus, &event).await {
                        bus.queue(Event::NotificationFailed {
                            notifier: n.notifier.describe(),
                            about: event
                                .notification_class()
                                .unwrap_or(event.name())
                                .to_string(),
                            error,
                        });
                    }
                }
                let _ = bus.journal.commit().await;
            }));
        }
    }
}
