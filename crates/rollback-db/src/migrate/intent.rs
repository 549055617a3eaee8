//! What a `db.migrate_down` set out to do, kept in the journal store before
//! its first change: the version it started from and the version it goes
//! to. `steps: N` counts from the version the database is at, so a re-run
//! after a crash mid-step must not count again (it would revert N more): it
//! goes to the target the first attempt chose.

use serde::{Deserialize, Serialize};

use super::files::Version;
use super::ledger::LedgerState;

/// The intent of a `db.migrate_down`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateIntent {
    /// The ledger it read (`rails`, `golang_migrate`, `sqlx`).
    pub ledger: String,
    /// The version the database was at (`None`: nothing applied).
    pub from: Option<String>,
    /// The version it goes to: it stays applied, every later one is
    /// reverted (`0`: none stays).
    pub to: String,
    /// The versions it reverts, newest first.
    pub reverts: Vec<String>,
}

impl MigrateIntent {
    /// The version to go to.
    pub(crate) fn target(&self) -> Option<Version> {
        Version::parse(&self.to)
    }

    /// Its planned versions that `state` no longer holds as applied: what
    /// the step has reverted over all its attempts.
    pub(crate) fn reverted_in(&self, state: &LedgerState) -> Vec<String> {
        self.reverts
            .iter()
            .filter(|v| Version::parse(v).is_some_and(|v| !state.applied.contains(&v)))
            .cloned()
            .collect()
    }
}

/// The version that stays when `reverts` (newest first) are reverted from
/// `applied` (ascending): the newest applied version older than all of
/// them, or `0` when none is.
pub(crate) fn target_after<'a>(
    applied: impl DoubleEndedIterator<Item = &'a Version>,
    reverts: &[&Version],
) -> String {
    let oldest = reverts.iter().min();
    applied
        .rev()
        .find(|v| oldest.is_none_or(|o| *v < *o))
        .map(|v| v.to_string())
        .unwrap_or_else(|| "0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn the_target_is_the_newest_version_that_stays() {
        let applied = [v("1"), v("2"), v("5"), v("7")];
        assert_eq!(target_after(applied.iter(), &[&v("7"), &v("5")]), "2");
        assert_eq!(target_after(applied.iter(), &[&v("7")]), "5");
        assert_eq!(
            target_after(applied.iter(), &[&v("7"), &v("5"), &v("2"), &v("1")]),
            "0"
        );
    }
}
