//! Where runs are journaled: files in the state directory by default, or
//! PostgreSQL (`postgres://...`) so several runners share one history, one
//! advisory lock per plan and the runs' kept state; plan locks may instead
//! come from a Kubernetes Lease.

use std::path::PathBuf;
use std::sync::Arc;
#[cfg(feature = "k8s")]
use std::time::Duration;

use rollback_core::{Error, Executor, FileJournal, JournalStore, PlanLocker, Result};

/// How to open the journal.
#[derive(Debug, Clone, Default)]
pub struct JournalOptions {
    /// The local state directory (runs' files only this runner needs; the
    /// whole journal when no `url` is given).
    pub state_dir: PathBuf,
    /// A `postgres://` URL of a shared journal.
    pub url: Option<String>,
    /// Take plan locks as Leases in this Kubernetes namespace.
    pub lease_namespace: Option<String>,
}

impl JournalOptions {
    /// Files in `dir`, no server.
    pub fn in_state_dir(dir: impl Into<PathBuf>) -> Self {
        JournalOptions {
            state_dir: dir.into(),
            ..Default::default()
        }
    }
}

/// An open journal: the store, and where plan locks come from.
#[derive(Clone)]
pub struct Journal {
    /// The local state directory.
    pub state_dir: PathBuf,
    /// Runs, their records and their kept state.
    pub store: Arc<dyn JournalStore>,
    /// Plan locks from elsewhere than the store (a Kubernetes Lease).
    pub locker: Option<Arc<dyn PlanLocker>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("state_dir", &self.state_dir)
            .field("lease_locks", &self.locker.is_some())
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens the store (connecting to PostgreSQL, creating its tables if
    /// missing) and the Lease locker if asked for.
    pub async fn open(options: JournalOptions) -> Result<Journal> {
        let locker = match options.lease_namespace.as_deref() {
            None => None,
            Some(namespace) => Some(lease_locker(&options.state_dir, namespace).await?),
        };
        let store = open_store(&options).await?;
        Ok(Journal {
            state_dir: options.state_dir,
            store,
            locker,
        })
    }

    /// An executor on this journal, with its plan locks.
    pub fn executor(&self) -> Executor {
        let executor = Executor::new(self.store.clone());
        match &self.locker {
            Some(locker) => executor.with_locker(locker.clone()),
            None => executor,
        }
    }
}

async fn open_store(options: &JournalOptions) -> Result<Arc<dyn JournalStore>> {
    let Some(url) = options.url.as_deref() else {
        return Ok(Arc::new(FileJournal::new(&options.state_dir)));
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::InvalidInput {
            message: "--journal takes a postgres:// URL (without it, runs are journaled in the state directory)"
                .into(),
        });
    }
    #[cfg(feature = "db")]
    {
        let store =
            rollback_db::PgJournalStore::connect(url, "rollback", &options.state_dir).await?;
        Ok(Arc::new(store))
    }
    #[cfg(not(feature = "db"))]
    Err(Error::InvalidInput {
        message: "this build has no PostgreSQL journal: build rollback with the `db` feature"
            .into(),
    })
}

/// Plan locks as Leases in `namespace` (in a cluster: the Job's own
/// namespace), so runners in different pods exclude each other.
#[cfg(feature = "k8s")]
async fn lease_locker(state_dir: &std::path::Path, namespace: &str) -> Result<Arc<dyn PlanLocker>> {
    let target = rollback_k8s::Target {
        kubeconfig: None,
        context: None,
        namespace: Some(namespace.to_string()),
    };
    let ctx = rollback_core::StepContext::standalone("plan-lock", state_dir);
    let conn = target
        .connect(&ctx)
        .await
        .map_err(|e| Error::InvalidInput {
            message: format!(
                "--lease-namespace {namespace}: cannot reach the Kubernetes API: {}",
                e.full_message()
            ),
        })?;
    Ok(Arc::new(rollback_k8s::LeaseLocker::new(
        conn,
        Duration::from_secs(30),
    )))
}

#[cfg(not(feature = "k8s"))]
async fn lease_locker(
    _state_dir: &std::path::Path,
    _namespace: &str,
) -> Result<Arc<dyn PlanLocker>> {
    Err(Error::InvalidInput {
        message: "this build has no Kubernetes support: build rollback with the `k8s` feature"
            .into(),
    })
}
