//! `rollback watch`: evaluates a plan's trigger rules; when one has failed
//! continuously for its `for:`, runs the plan once (under the plan lock) with
//! the reason `trigger: RULE = VALUE`, then cools down.
//!
//! The rules' state (since when each has been failing, when the plan last
//! fired) is kept in `STATE/watch/PLAN.json`, so `rollback watch --once` from
//! cron accumulates `for:` across invocations just as the long-running loop
//! does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::duration::millis;
use crate::error::{Error, LockHolder, Result};
use crate::event::RunStatus;
use crate::executor::{Executor, RunOptions};
use crate::journal::timestamp;
use crate::measure::{measure, Measured};
use crate::plan::Plan;
use crate::step::StepContext;

/// What is remembered between evaluations.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WatchState {
    /// Per rule.
    pub rules: BTreeMap<String, RuleMemory>,
    /// When the plan last ran because of a trigger (RFC 3339).
    pub last_fired: Option<String>,
    /// That run's id.
    pub last_run: Option<String>,
}

/// What is remembered of one rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RuleMemory {
    /// Since when it has been failing without interruption (RFC 3339).
    pub violating_since: Option<String>,
    /// The last value measured.
    pub last_observed: Option<String>,
}

/// A rule's condition at one evaluation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleCondition {
    /// The check passed.
    Ok,
    /// The check failed: the rule is violated.
    Violating,
    /// The value could not be measured (no data, unreachable): neither resets
    /// nor advances the rule.
    Unknown,
}

/// One rule's state after an evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuleStatus {
    /// The rule's name.
    pub name: String,
    /// Its check kind.
    pub kind: String,
    /// Its condition now.
    pub condition: RuleCondition,
    /// What was measured (or why nothing could be).
    pub observed: String,
    /// What passing means.
    pub expected: String,
    /// How long it has been violated without interruption.
    pub violating_for_ms: Option<u64>,
    /// How long it must be violated before the plan runs (`for:`).
    pub hold_for_ms: u64,
}

/// What happened when a rule fired.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fired {
    /// The rule that fired.
    pub rule: String,
    /// The reason given to the run.
    pub reason: String,
    /// The run's id, if it ran.
    pub run_id: Option<String>,
    /// How the run ended, if it ran.
    pub status: Option<RunStatus>,
    /// Who held the plan's lock, if it could not run.
    pub locked_by: Option<LockHolder>,
}

/// One evaluation of all rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tick {
    /// When (RFC 3339).
    pub at: String,
    /// Each rule's state.
    pub rules: Vec<RuleStatus>,
    /// Set when a rule fired and the plan was started.
    pub fired: Option<Fired>,
    /// While cooling down after a run: until when (RFC 3339).
    pub cooling_down_until: Option<String>,
}

/// Evaluates a plan's triggers and runs it when one holds.
#[derive(Debug)]
pub struct Watcher {
    state_path: PathBuf,
    state: WatchState,
    run_dir: PathBuf,
}

fn parse_time(s: &Option<String>) -> Option<SystemTime> {
    s.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok())
}

impl Watcher {
    /// Opens the watch state of `plan` in `state_dir` (empty if none yet).
    pub fn open(state_dir: &Path, plan: &Plan) -> Result<Watcher> {
        let dir = state_dir.join("watch");
        let state_path = dir.join(format!("{}.json", plan.name));
        let state = match std::fs::read_to_string(&state_path) {
            // A state that cannot be read must not silently forget the
            // cooldown (and start a second rollback): say so instead.
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                Error::journal(
                    &state_path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the watch state is not valid ({e}): repair it, or delete it to forget the \
                             cooldown and how long each rule has held"
                        ),
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => WatchState::default(),
            Err(e) => return Err(Error::journal(&state_path, e)),
        };
        Ok(Watcher {
            state_path,
            state,
            run_dir: dir,
        })
    }

    /// The remembered state.
    pub fn state(&self) -> &WatchState {
        &self.state
    }

    fn save(&self) -> Result<()> {
        let dir = self.state_path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::journal(dir, e))?;
        let tmp = self.state_path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&self.state).expect("state serializes"),
        )
        .and_then(|_| std::fs::rename(&tmp, &self.state_path))
        .map_err(|e| Error::journal(&self.state_path, e))
    }

    /// Measures every rule once (in parallel) and updates the state.
    pub async fn evaluate(&mut self, plan: &Plan) -> Vec<RuleStatus> {
        let now = SystemTime::now();
        let mut set = JoinSet::new();
        for (i, trigger) in plan.triggers.iter().enumerate() {
            let check = trigger.check.clone();
            let ctx = StepContext::standalone(format!("trigger:{}", check.name), &self.run_dir)
                .with_vars(plan.vars.clone());
            set.spawn(async move {
                let (condition, observed, expected) = match measure(&check, &ctx).await {
                    Measured::Taken(m) if m.passed => (RuleCondition::Ok, m.observed, m.expected),
                    Measured::Taken(m) => (RuleCondition::Violating, m.observed, m.expected),
                    Measured::Unmeasurable { observed, expected } => {
                        (RuleCondition::Unknown, observed, expected)
                    }
                };
                (i, condition, observed, expected)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = set.join_next().await {
            if let Ok(r) = joined {
                results.push(r);
            }
        }
        results.sort_by_key(|r| r.0);
        results
            .into_iter()
            .map(|(i, condition, observed, expected)| {
                let trigger = &plan.triggers[i];
                let memory = self
                    .state
                    .rules
                    .entry(trigger.check.name.clone())
                    .or_default();
                match condition {
                    RuleCondition::Ok => memory.violating_since = None,
                    RuleCondition::Violating if memory.violating_since.is_none() => {
                        memory.violating_since = Some(timestamp(now))
                    }
                    _ => {}
                }
                if condition != RuleCondition::Unknown {
                    memory.last_observed = Some(observed.clone());
                }
                let violating_for_ms = match condition {
                    RuleCondition::Violating => parse_time(&memory.violating_since)
                        .and_then(|since| now.duration_since(since).ok())
                        .map(millis),
                    _ => None,
                };
                RuleStatus {
                    name: trigger.check.name.clone(),
                    kind: trigger.check.kind.clone(),
                    condition,
                    observed,
                    expected,
                    violating_for_ms,
                    hold_for_ms: millis(trigger.hold_for),
                }
            })
            .collect()
    }

    /// Until when the watcher is cooling down after a run, if it is.
    pub fn cooling_down_until(&self, plan: &Plan) -> Option<SystemTime> {
        parse_time(&self.state.last_fired)
            .map(|t| t + plan.watch.cooldown)
            .filter(|until| *until > SystemTime::now())
    }

    /// The end of a cooldown started by a triggered run of this plan found in
    /// the journal, newer than the state this watcher remembers.
    async fn cooling_by_journal(&mut self, plan: &Plan, executor: &Executor) -> Option<SystemTime> {
        let runs = executor.store().list().await.ok()?;
        let newest = runs
            .iter()
            .filter(|r| r.plan == plan.name && r.trigger.is_some())
            .filter_map(|r| humantime::parse_rfc3339(&r.started_at).ok().map(|t| (t, r)))
            .max_by_key(|(t, _)| *t)?;
        let until = newest.0 + plan.watch.cooldown;
        if until <= SystemTime::now() {
            return None;
        }
        self.state.last_fired = Some(newest.1.started_at.clone());
        self.state.last_run = Some(newest.1.run_id.clone());
        Some(until)
    }

    /// One evaluation; runs the plan when a rule has held for its `for:`
    /// and the watcher is not cooling down. `options` builds the run's options
    /// from the reason.
    pub async fn tick(
        &mut self,
        plan: &Plan,
        executor: &Executor,
        options: impl FnOnce(String) -> RunOptions,
    ) -> Result<Tick> {
        let rules = self.evaluate(plan).await;
        let at = timestamp(SystemTime::now());
        let cooling = self.cooling_down_until(plan);
        let due = rules.iter().find(|r| {
            r.condition == RuleCondition::Violating
                && r.violating_for_ms.is_some_and(|v| v >= r.hold_for_ms)
        });
        let mut fired = None;
        // Another watcher of this plan (a second `watch --once` from cron) may
        // have fired since this one read its state: the journal decides.
        let cooling = match (due, cooling) {
            (Some(_), None) => self.cooling_by_journal(plan, executor).await,
            _ => cooling,
        };
        if let (Some(rule), None) = (due, cooling) {
            let reason = format!("trigger: {} = {}", rule.name, rule.observed);
            let mut run_options = options(reason.clone());
            run_options.trigger = Some(reason.clone());
            match executor.run(plan, run_options).await {
                Ok(report) => {
                    self.state.last_fired = Some(timestamp(SystemTime::now()));
                    self.state.last_run = Some(report.run.run_id.clone());
                    // A fresh start after the cooldown: every rule must hold anew.
                    for memory in self.state.rules.values_mut() {
                        memory.violating_since = None;
                    }
                    fired = Some(Fired {
                        rule: rule.name.clone(),
                        reason,
                        run_id: Some(report.run.run_id.clone()),
                        status: report.status,
                        locked_by: None,
                    });
                }
                Err(Error::Locked { holder, .. }) => {
                    fired = Some(Fired {
                        rule: rule.name.clone(),
                        reason,
                        run_id: None,
                        status: None,
                        locked_by: Some(*holder),
                    })
                }
                Err(e) => {
                    self.save()?;
                    return Err(e);
                }
            }
        }
        self.save()?;
        Ok(Tick {
            at,
            rules,
            fired,
            cooling_down_until: self.cooling_down_until(plan).map(timestamp),
        })
    }
}

/// The interval to wait before the next evaluation (never below 100 ms, so a
/// mistyped `interval` cannot hammer a monitoring system).
pub fn next_interval(plan: &Plan) -> Duration {
    plan.watch.interval.max(Duration::from_millis(100))
}
