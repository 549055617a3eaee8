//! Preflight and verification checks of a run: in parallel, each measured
//! until it passes or its window closes.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use crate::duration::millis;
use crate::event::{CheckPhase, Event};
use crate::measure::measure;
use crate::plan::PlanCheck;
use crate::step::StepContext;

use super::bus::Bus;

/// Runs checks in parallel; each is measured until it passes or its window
/// (`within`, capped by `deadline`) closes. Returns whether all passed.
pub(crate) async fn run_checks(
    checks: &[PlanCheck],
    phase: CheckPhase,
    base_ctx: &StepContext,
    bus: &Arc<Bus>,
    deadline: Option<Instant>,
) -> bool {
    let mut set = JoinSet::new();
    for check in checks {
        let check = check.clone();
        let mut ctx = base_ctx.clone();
        ctx.step_id = check.name.clone();
        let bus = bus.clone();
        set.spawn(async move {
            let start = Instant::now();
            let end = match (check.within.map(|w| start + w), deadline) {
                (Some(w), Some(d)) => Some(w.min(d)),
                (w, _) => w,
            };
            let mut attempts = 0;
            let measurement = loop {
                attempts += 1;
                ctx.attempt = attempts;
                let m = measure(&check, &ctx).await.into_measurement();
                let again = !m.passed
                    && end.is_some_and(|e| Instant::now() + check.interval < e)
                    && !ctx.cancel.is_cancelled();
                if !again {
                    break m;
                }
                tokio::select! {
                    _ = tokio::time::sleep(check.interval) => {}
                    _ = ctx.cancel.cancelled() => {}
                }
            };
            bus.queue(Event::CheckFinished {
                phase,
                name: check.name.clone(),
                kind: check.kind.clone(),
                passed: measurement.passed,
                observed: measurement.observed,
                expected: measurement.expected,
                attempts,
                duration_ms: millis(start.elapsed()),
            });
            measurement.passed
        });
    }
    let mut all = true;
    while let Some(joined) = set.join_next().await {
        all &= joined.unwrap_or(false);
    }
    let _ = bus.journal.commit().await;
    all
}
