//! How far a PostgreSQL `db.restore` got: its intent in the journal store,
//! saved before each phase's effect, and what a re-run does next given what
//! the server holds.
//!
//! A re-run (a retry, or a resume after its runner died, maybe on another
//! runner of a shared journal) never recomputes what the first attempt set
//! out to do: it reads the intent and checks that the server agrees with it.
//! When the two disagree, it stops and says what it sees.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::databases::DbState;
use super::postgres::Names;
use crate::backup_location::BackupRef;

/// The phase a restore was in when its intent was last saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Creating the temporary database, restoring into it and verifying it:
    /// the live database is untouched.
    Restoring,
    /// The temporary database is verified; the swap is about to happen or
    /// was under way.
    Swapping,
    /// The swap committed: the restored copy is the live database.
    Swapped,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Restoring => "restoring into the temporary database (the live one untouched)",
            Phase::Swapping => "swapping the verified copy into place",
            Phase::Swapped => "done: the restored copy was swapped into place",
        }
    }
}

/// What a `db.restore` set out to do and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreIntent {
    /// How far it got.
    pub phase: Phase,
    /// The live database.
    pub live: String,
    /// The temporary database it restores into.
    pub temp: String,
    /// The name the live database is kept under by the swap.
    pub before: String,
    /// The backup restored, as resolved.
    pub from: String,
    /// The backup restored, when a step of this run took it.
    pub source: Option<BackupRef>,
    /// The safety backup of the live database.
    pub safety: BackupRef,
    /// The live database's `ALLOW_CONNECTIONS` before the swap (from
    /// `swapping` on): the kept database gets it back.
    #[serde(default)]
    pub allow_connections: Option<bool>,
    /// Tables of the verified copy (from `swapping` on).
    #[serde(default)]
    pub tables: Option<u64>,
    /// Results of the checks on the verified copy (from `swapping` on).
    #[serde(default)]
    pub checks: Option<Value>,
    /// Sessions the swap ended (once `swapped`).
    #[serde(default)]
    pub sessions_ended: Option<u64>,
    /// How long the swap took (once `swapped`).
    #[serde(default)]
    pub swap_ms: Option<u64>,
}

impl RestoreIntent {
    /// The intent of a first attempt, before its first change to the server.
    pub(crate) fn new(
        names: &Names,
        from: String,
        source: Option<BackupRef>,
        safety: BackupRef,
    ) -> Self {
        RestoreIntent {
            phase: Phase::Restoring,
            live: names.live.clone(),
            temp: names.temp.clone(),
            before: names.before.clone(),
            from,
            source,
            safety,
            allow_connections: None,
            tables: None,
            checks: None,
            sessions_ended: None,
            swap_ms: None,
        }
    }

    /// The names it works with (the marker is this run's and step's).
    pub(crate) fn names(&self, marker: &str) -> Names {
        Names {
            live: self.live.clone(),
            temp: self.temp.clone(),
            before: self.before.clone(),
            marker: marker.to_string(),
        }
    }
}

/// The three databases of a restore as the server shows them.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) live: Option<DbState>,
    pub(crate) temp: Option<DbState>,
    pub(crate) before: Option<DbState>,
    pub(crate) names: Names,
}

impl Seen {
    fn marked(&self, db: &Option<DbState>) -> bool {
        db.as_ref()
            .is_some_and(|d| d.comment.as_deref() == Some(self.names.marker.as_str()))
    }

    /// The live name holds the copy this step restored.
    pub(crate) fn live_is_restored(&self) -> bool {
        self.marked(&self.live)
    }

    /// The temporary database was restored and verified by this step.
    pub(crate) fn temp_verified(&self) -> bool {
        self.marked(&self.temp)
    }

    /// What the server holds, for people.
    pub(crate) fn describe(&self) -> String {
        let n = &self.names;
        let live = match &self.live {
            None => format!("`{}` does not exist", n.live),
            Some(_) if self.live_is_restored() => {
                format!("`{}` is the copy this step restored", n.live)
            }
            Some(d) => format!(
                "`{}` is not the copy this step restored (the original){}",
                n.live,
                if d.allow_connections {
                    ""
                } else {
                    " and refuses connections"
                }
            ),
        };
        let temp = match &self.temp {
            None => format!("`{}` does not exist", n.temp),
            Some(_) if self.temp_verified() => format!("`{}` is the verified copy", n.temp),
            Some(_) => format!(
                "`{}` exists, not verified (a restore that did not finish)",
                n.temp
            ),
        };
        let before = match &self.before {
            None => format!("`{}` does not exist", n.before),
            Some(_) => format!("`{}` exists (the database a swap kept)", n.before),
        };
        format!("{live}; {temp}; {before}")
    }
}

/// What a re-run does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// The live database is untouched and no verified copy exists: drop
    /// what is left of the temporary database and restore again.
    Restore,
    /// The live database is untouched and the verified copy is waiting:
    /// swap it in.
    Swap,
    /// The swap committed: give the kept database its connection setting
    /// back and report.
    FinishSwap,
    /// Nothing is left to do.
    Done,
    /// The server does not hold what the intent says: stop, saying why.
    Stop(String),
}

/// What a re-run does, given its intent and what the server holds.
pub(crate) fn next_step(step: &str, intent: &RestoreIntent, seen: &Seen) -> Next {
    let untouched = seen.live.is_some() && !seen.live_is_restored() && seen.before.is_none();
    let swapped = seen.live_is_restored() && seen.before.is_some() && seen.temp.is_none();
    match intent.phase {
        Phase::Restoring | Phase::Swapping if untouched => {
            if seen.temp_verified() {
                Next::Swap
            } else {
                Next::Restore
            }
        }
        // The intent is saved as `swapping` before the swap begins.
        Phase::Swapping if swapped => Next::FinishSwap,
        Phase::Swapped if swapped => Next::Done,
        phase => Next::Stop(format!(
            "the intent of step `{step}` says it was {}, but the server holds: {}. Nothing was changed: \
             check which database holds the data you want under the name `{}`, rename by hand (ALTER \
             DATABASE … RENAME TO …) if needed, then resume with `--fresh {step}` to let the step start \
             from what it sees",
            phase.describe(),
            seen.describe(),
            intent.live
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKER: &str = "rollback db.restore run=r step=restore verified";

    fn intent(phase: Phase) -> RestoreIntent {
        RestoreIntent {
            phase,
            live: "orders".into(),
            temp: "orders_restore_r".into(),
            before: "orders_before_r".into(),
            from: "/b/orders.dump".into(),
            source: None,
            safety: BackupRef {
                path: "/b/safety.dump".into(),
                host: Some("a".into()),
                sha256: None,
                step: "restore".into(),
            },
            allow_connections: Some(true),
            tables: None,
            checks: None,
            sessions_ended: None,
            swap_ms: None,
        }
    }

    fn db(restored: bool, allow: bool) -> Option<DbState> {
        Some(DbState {
            allow_connections: allow,
            comment: restored.then(|| MARKER.to_string()),
        })
    }

    fn seen(live: Option<DbState>, temp: Option<DbState>, before: Option<DbState>) -> Seen {
        Seen {
            live,
            temp,
            before,
            names: intent(Phase::Restoring).names(MARKER),
        }
    }

    #[test]
    fn a_rerun_continues_from_the_phase_and_what_the_server_holds() {
        // Killed while pg_restore ran: restore again.
        let half = seen(db(false, true), db(false, true), None);
        assert_eq!(
            next_step("restore", &intent(Phase::Restoring), &half),
            Next::Restore
        );
        // Killed after verifying: swap without restoring again.
        let ready = seen(db(false, true), db(true, true), None);
        assert_eq!(
            next_step("restore", &intent(Phase::Restoring), &ready),
            Next::Swap
        );
        // Killed mid-swap, connections already blocked: swap.
        let blocked = seen(db(false, false), db(true, true), None);
        assert_eq!(
            next_step("restore", &intent(Phase::Swapping), &blocked),
            Next::Swap
        );
        // Killed after the swap committed, before the intent said so.
        let swapped = seen(db(true, true), None, db(false, false));
        assert_eq!(
            next_step("restore", &intent(Phase::Swapping), &swapped),
            Next::FinishSwap
        );
        assert_eq!(
            next_step("restore", &intent(Phase::Swapped), &swapped),
            Next::Done
        );
        // A failed swap was repaired (copy dropped): restore again.
        let repaired = seen(db(false, true), None, None);
        assert_eq!(
            next_step("restore", &intent(Phase::Swapping), &repaired),
            Next::Restore
        );
    }

    #[test]
    fn a_server_that_disagrees_with_the_intent_stops_the_step_saying_what_it_holds() {
        // Swapped by the intent, but the original is live again (someone
        // swapped back by hand): never restore over it.
        let back = seen(db(false, true), db(true, true), None);
        let Next::Stop(message) = next_step("restore", &intent(Phase::Swapped), &back) else {
            panic!("must stop")
        };
        assert!(
            message.contains("it was done: the restored copy was swapped"),
            "{message}"
        );
        assert!(
            message.contains("`orders` is not the copy this step restored (the original)"),
            "{message}"
        );
        assert!(
            message.contains("`orders_restore_r` is the verified copy"),
            "{message}"
        );
        assert!(message.contains("--fresh"), "{message}");
        // Restoring, but the live database is gone.
        let gone = seen(None, db(false, true), db(false, true));
        assert!(matches!(
            next_step("restore", &intent(Phase::Restoring), &gone),
            Next::Stop(_)
        ));
    }
}
