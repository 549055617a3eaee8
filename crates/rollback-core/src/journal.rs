//! The journal: a durable record of every run, and the per-plan lock.
//!
//! The embedded store keeps one folder per run in the state directory:
//!
//! ```text
//! STATE/runs/RUN_ID/journal.jsonl   one JSON event per line, fsync'd
//! STATE/runs/RUN_ID/plan.yaml       the plan text the run used (for resume)
//! STATE/runs/RUN_ID/artifacts/      files steps keep (backups, saved copies)
//! STATE/locks/PLAN.lock             flock(2) held while a run of PLAN is active
//! ```
//!
//! Appends go through one writer thread that batches whatever is queued into
//! one `write` and one `fdatasync` (group commit), so parallel steps share the
//! cost of durability. A line cut short by a crash is ignored on reading.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{Error, LockHolder, Result};
use crate::event::{Event, Outcome, RunInfo, RunStatus};
use crate::state::{self, StateEntry, StateStore};
use crate::step::Outputs;

/// A journal line: when, and what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// RFC 3339 time with microseconds.
    pub at: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

impl Record {
    /// A record of `event` stamped now.
    pub fn now(event: Event) -> Self {
        Record {
            at: timestamp(SystemTime::now()),
            event,
        }
    }

    /// The time as a `SystemTime`.
    pub fn time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.at).ok()
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// A run as read back from the journal.
#[derive(Debug, Clone)]
pub struct StoredRun {
    /// Who, why, which plan.
    pub info: RunInfo,
    /// The plan text it ran.
    pub plan_text: String,
    /// Every record, in order.
    pub records: Vec<Record>,
    /// A last line was cut short (the process died while writing it).
    pub torn_tail: bool,
}

impl StoredRun {
    /// How the run ended, if it did; a run resumed after it ended counts from
    /// its last resumption.
    pub fn status(&self) -> Option<RunStatus> {
        let mut status = None;
        for r in &self.records {
            match &r.event {
                Event::RunFinished { status: s, .. } => status = Some(*s),
                Event::RunResumed { .. } => status = None,
                _ => {}
            }
        }
        status
    }

    /// Steps that completed and were not undone, with their outputs. A step
    /// whose outputs were redacted (they held a secret) is left out: a
    /// resume runs it again to get the real values.
    pub fn completed_steps(&self) -> BTreeMap<String, Outputs> {
        let mut done = BTreeMap::new();
        for r in &self.records {
            match &r.event {
                Event::StepFinished {
                    step,
                    outcome: Outcome::Succeeded,
                    outputs,
                    redacted: false,
                    ..
                } => {
                    done.insert(step.clone(), outputs.clone());
                }
                Event::StepFinished { step, .. } => {
                    done.remove(step);
                }
                Event::UndoFinished {
                    step,
                    outcome: Outcome::Succeeded,
                    ..
                } => {
                    done.remove(step);
                }
                _ => {}
            }
        }
        done
    }

    /// Whether compensation ran in this run.
    pub fn compensated(&self) -> bool {
        self.records
            .iter()
            .any(|r| matches!(r.event, Event::UndoStarted { .. }))
    }
}

/// One line per run for `rollback history`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Plan name.
    pub plan: String,
    /// When it started.
    pub started_at: String,
    /// Who ran it.
    pub operator: String,
    /// Why.
    pub reason: String,
    /// Whether it was a drill.
    pub drill: bool,
    /// How it ended; `None` while running or after a crash.
    pub status: Option<RunStatus>,
    /// Duration of its last segment.
    pub duration_ms: Option<u64>,
    /// Plan digest.
    pub digest: String,
    /// What started it, when not a person (`trigger: error-rate = 0.07`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// Writes one run's records.
///
/// `queue` adds a record in order without waiting; `commit` returns once every
/// record queued before it is durable. The executor commits before a step
/// starts and after it ends, so concurrent steps share one flush.
#[async_trait]
pub trait RunJournal: Send + Sync {
    /// Queues a record (ordered with all others).
    fn queue(&self, record: Record);
    /// Waits until everything queued so far is durable.
    async fn commit(&self) -> Result<()>;
}

/// Held while a run of a plan is active; dropping it releases the lock.
#[async_trait]
pub trait PlanLockGuard: Send + Sync {
    /// Releases the lock and waits until that is done. Dropping the guard
    /// releases it too, but a lock that lives on a server (a Kubernetes
    /// Lease) may then be released in the background, too late if the
    /// process exits right after the run.
    async fn release(self: Box<Self>) {}
}

/// Mutual exclusion between runs of the same plan, when it must come from a
/// shared system (a Kubernetes Lease, a Postgres advisory lock) rather than the
/// journal store's own lock.
#[async_trait]
pub trait PlanLocker: Send + Sync {
    /// Takes the exclusive lock of `plan`, or reports who holds it
    /// ([`Error::Locked`]).
    async fn lock(&self, plan: &str, holder: &LockHolder) -> Result<Box<dyn PlanLockGuard>>;
}

/// Where runs are recorded and plans are locked, and where their state is
/// kept ([`StateStore`]).
#[async_trait]
pub trait JournalStore: StateStore {
    /// Records a new run (its plan text included) and returns its writer.
    async fn create(&self, run: &RunInfo, plan_text: &str) -> Result<Arc<dyn RunJournal>>;
    /// A writer that appends to an existing run (resume).
    async fn reopen(&self, run_id: &str) -> Result<Arc<dyn RunJournal>>;
    /// Reads a run back.
    async fn read(&self, run_id: &str) -> Result<StoredRun>;
    /// All runs, newest first.
    async fn list(&self) -> Result<Vec<RunSummary>>;
    /// Takes the exclusive lock of `plan`, or reports who holds it.
    async fn lock(&self, plan: &str, holder: &LockHolder) -> Result<Box<dyn PlanLockGuard>>;
    /// The local folder for a run's files (artifacts, reports).
    fn run_dir(&self, run_id: &str) -> PathBuf;
    /// Where a run's records are, for people (`rollback show`).
    fn location(&self, run_id: &str) -> String {
        self.run_dir(run_id)
            .join("journal.jsonl")
            .display()
            .to_string()
    }
}

/// Resolves `last` to the newest run (the newest unfinished one when
/// `unfinished_only`, as `resume last` wants); any other id is returned as is.
pub async fn resolve_run_id(
    store: &dyn JournalStore,
    run_id: &str,
    unfinished_only: bool,
) -> Result<String> {
    if run_id != "last" {
        return Ok(run_id.to_string());
    }
    let runs = store.list().await?;
    runs.iter()
        .find(|r| !unfinished_only || r.status != Some(RunStatus::Succeeded))
        .map(|r| r.run_id.clone())
        .ok_or_else(|| Error::InvalidInput {
            message: if unfinished_only {
                "no unfinished run to resume".into()
            } else {
                "no runs yet".into()
            },
        })
}

/// The embedded store: files in a state directory, no server.
#[derive(Debug, Clone)]
pub struct FileJournal {
    root: PathBuf,
}

/// The state directory when none is given: `$ROLLBACK_STATE_DIR`, else
/// `$XDG_STATE_HOME/rollback`, else `~/.local/state/rollback`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROLLBACK_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("rollback");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/rollback")
}

impl FileJournal {
    /// A store rooted at `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileJournal { root: dir.into() }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }

    fn journal_path(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("journal.jsonl")
    }

    /// The run's folder, for an id that cannot leave the runs folder.
    fn checked_run_dir(&self, run_id: &str) -> Result<PathBuf> {
        if run_id.is_empty() || run_id.contains(['/', '\\']) || run_id.starts_with('.') {
            return Err(Error::RunNotFound {
                run_id: run_id.into(),
                dir: self.runs(),
            });
        }
        Ok(self.run_dir(run_id))
    }

    fn read_sync(&self, run_id: &str) -> Result<StoredRun> {
        self.checked_run_dir(run_id)?;
        let path = self.journal_path(run_id);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::RunNotFound {
                    run_id: run_id.into(),
                    dir: self.runs(),
                })
            }
            Err(e) => return Err(Error::journal(path, e)),
        };
        let plan_text =
            fs::read_to_string(self.run_dir(run_id).join("plan.yaml")).unwrap_or_default();
        parse_journal(&text, &path, plan_text)
    }
}

/// Parses journal text; a last line cut short is dropped and flagged.
pub fn parse_journal(text: &str, path: &Path, plan_text: String) -> Result<StoredRun> {
    let mut records = Vec::new();
    let mut torn_tail = false;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => torn_tail = true,
            Err(e) => {
                return Err(Error::journal(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("line {}: {e}", i + 1),
                    ),
                ))
            }
        }
    }
    let info = match records.first().map(|r| &r.event) {
        Some(Event::RunStarted { run, .. }) => run.clone(),
        _ => {
            return Err(Error::journal(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "journal does not start with run_started",
                ),
            ))
        }
    };
    Ok(StoredRun {
        info,
        plan_text,
        records,
        torn_tail,
    })
}

/// Drops a last line cut short (a write the runner did not finish: a crash,
/// a full disk), so that the records appended next start on a line of their
/// own.
fn cut_torn_tail(path: &Path) -> std::io::Result<()> {
    let bytes = fs::read(path)?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(keep as u64)?;
    file.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl JournalStore for FileJournal {
    async fn create(&self, run: &RunInfo, plan_text: &str) -> Result<Arc<dyn RunJournal>> {
        let dir = self.run_dir(&run.run_id);
        let runs = self.runs();
        let plan_text = plan_text.to_string();
        let dir2 = dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            fs::create_dir_all(&dir2)?;
            write_synced(&dir2.join("plan.yaml"), plan_text.as_bytes())?;
            sync_dir(&runs)
        })
        .await
        .expect("journal set-up task")
        .map_err(|e| Error::journal(&dir, e))?;
        Ok(Arc::new(FileRunJournal::open(
            &self.journal_path(&run.run_id),
        )?))
    }

    async fn reopen(&self, run_id: &str) -> Result<Arc<dyn RunJournal>> {
        let path = self.journal_path(run_id);
        if !path.exists() {
            return Err(Error::RunNotFound {
                run_id: run_id.into(),
                dir: self.runs(),
            });
        }
        cut_torn_tail(&path).map_err(|e| Error::journal(&path, e))?;
        Ok(Arc::new(FileRunJournal::open(&path)?))
    }

    async fn read(&self, run_id: &str) -> Result<StoredRun> {
        let this = self.clone();
        let run_id = run_id.to_string();
        tokio::task::spawn_blocking(move || this.read_sync(&run_id))
            .await
            .expect("journal read task")
    }

    async fn list(&self) -> Result<Vec<RunSummary>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let entries = match fs::read_dir(this.runs()) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(Error::journal(this.runs(), e)),
            };
            let mut out = Vec::new();
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().to_string();
                let Ok(run) = this.read_sync(&id) else {
                    continue;
                };
                let duration_ms = run.records.iter().rev().find_map(|r| match r.event {
                    Event::RunFinished { duration_ms, .. } => Some(duration_ms),
                    _ => None,
                });
                out.push(RunSummary {
                    status: run.status(),
                    run_id: id,
                    plan: run.info.plan.clone(),
                    started_at: run.info.started_at.clone(),
                    operator: run.info.operator.clone(),
                    reason: run.info.reason.clone(),
                    drill: run.info.drill,
                    duration_ms,
                    digest: run.info.digest.clone(),
                    trigger: run.info.trigger.clone(),
                });
            }
            out.sort_by(|a, b| {
                b.started_at
                    .cmp(&a.started_at)
                    .then(b.run_id.cmp(&a.run_id))
            });
            Ok(out)
        })
        .await
        .expect("journal list task")
    }

    async fn lock(&self, plan: &str, holder: &LockHolder) -> Result<Box<dyn PlanLockGuard>> {
        let dir = self.root.join("locks");
        let path = dir.join(format!("{plan}.lock"));
        let holder = holder.clone();
        let plan = plan.to_string();
        tokio::task::spawn_blocking(move || FileLock::acquire(&dir, &path, &plan, &holder))
            .await
            .expect("lock task")
            .map(|l| Box::new(l) as Box<dyn PlanLockGuard>)
    }

    fn run_dir(&self, run_id: &str) -> PathBuf {
        self.runs().join(run_id)
    }
}

#[async_trait]
impl StateStore for FileJournal {
    async fn put_state(&self, run_id: &str, step: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
        let dir = self.checked_run_dir(run_id)?;
        let (step, name) = (step.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || state::put_in_dir(&dir, &step, &name, &bytes))
            .await
            .expect("state write task")
    }

    async fn get_state(&self, run_id: &str, step: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let dir = self.checked_run_dir(run_id)?;
        let (step, name) = (step.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || state::get_in_dir(&dir, &step, &name))
            .await
            .expect("state read task")
    }

    async fn list_state(&self, run_id: &str) -> Result<Vec<StateEntry>> {
        let dir = self.checked_run_dir(run_id)?;
        tokio::task::spawn_blocking(move || state::list_in_dir(&dir))
            .await
            .expect("state list task")
    }
}

/// An flock(2) on `STATE/locks/PLAN.lock`: the kernel releases it when the
/// process dies, so a crashed run never leaves a stale lock behind.
struct FileLock {
    _file: File,
}

impl PlanLockGuard for FileLock {}

impl FileLock {
    fn acquire(dir: &Path, path: &Path, plan: &str, holder: &LockHolder) -> Result<FileLock> {
        fs::create_dir_all(dir).map_err(|e| Error::journal(dir, e))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::journal(path, e))?;
        match file.try_lock() {
            Ok(()) => {
                let text = serde_json::to_vec(holder).expect("holder serializes");
                file.set_len(0)
                    .and_then(|_| file.rewind())
                    .and_then(|_| file.write_all(&text))
                    .map_err(|e| Error::journal(path, e))?;
                Ok(FileLock { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = serde_json::from_str(&text).unwrap_or_else(|_| LockHolder {
                    operator: "unknown".into(),
                    host: "unknown".into(),
                    pid: 0,
                    since: "unknown".into(),
                    run_id: "unknown".into(),
                });
                Err(Error::Locked {
                    plan: plan.to_string(),
                    holder: Box::new(holder),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(Error::journal(path, e)),
        }
    }
}

type Ack = oneshot::Sender<std::result::Result<(), String>>;

/// Appends to one journal file through a writer thread with group commit.
struct FileRunJournal {
    path: PathBuf,
    tx: Mutex<mpsc::Sender<(Vec<u8>, Option<Ack>)>>,
    /// First error of a write nobody waited for; reported at the next
    /// durable append so a broken disk cannot go unnoticed.
    failed: Arc<Mutex<Option<String>>>,
}

impl FileRunJournal {
    fn open(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::journal(path, e))?;
        let (tx, rx) = mpsc::channel::<(Vec<u8>, Option<Ack>)>();
        let failed = Arc::new(Mutex::new(None));
        let failed2 = failed.clone();
        std::thread::Builder::new()
            .name("rollback-journal".into())
            .spawn(move || {
                let mut buf = Vec::new();
                let mut acks: Vec<Ack> = Vec::new();
                // Written but not yet flushed: a commit with nothing new to
                // flush is answered without another fdatasync.
                let mut dirty = false;
                let mut result: std::result::Result<(), String> = Ok(());
                while let Ok((bytes, ack)) = rx.recv() {
                    buf.extend_from_slice(&bytes);
                    acks.extend(ack);
                    while let Ok((bytes, ack)) = rx.try_recv() {
                        buf.extend_from_slice(&bytes);
                        acks.extend(ack);
                    }
                    if result.is_ok() && !buf.is_empty() {
                        result = file.write_all(&buf).map_err(|e| e.to_string());
                        dirty = true;
                    }
                    buf.clear();
                    if acks.is_empty() {
                        continue;
                    }
                    if result.is_ok() && dirty {
                        result = file.sync_data().map_err(|e| e.to_string());
                        dirty = false;
                    }
                    if let Err(e) = &result {
                        failed2
                            .lock()
                            .expect("journal error slot")
                            .get_or_insert_with(|| e.clone());
                    }
                    for ack in acks.drain(..) {
                        let _ = ack.send(result.clone());
                    }
                }
                if dirty && result.is_ok() {
                    let _ = file.sync_data();
                }
            })
            .map_err(|e| Error::journal(path, e))?;
        Ok(FileRunJournal {
            path: path.to_path_buf(),
            tx: Mutex::new(tx),
            failed,
        })
    }
}

#[async_trait]
impl RunJournal for FileRunJournal {
    fn queue(&self, record: Record) {
        let mut line = serde_json::to_vec(&record).expect("records serialize");
        line.push(b'\n');
        // A send fails only when the writer thread is gone; commit reports it.
        let _ = self.tx.lock().expect("journal sender").send((line, None));
    }

    async fn commit(&self) -> Result<()> {
        let io_err = |msg: String| Error::journal(&self.path, std::io::Error::other(msg));
        if let Some(e) = self.failed.lock().expect("journal error slot").clone() {
            return Err(io_err(e));
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        self.tx
            .lock()
            .expect("journal sender")
            .send((Vec::new(), Some(ack_tx)))
            .map_err(|_| io_err("journal writer stopped".into()))?;
        ack_rx
            .await
            .map_err(|_| io_err("journal writer stopped".into()))?
            .map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn info(run_id: &str) -> RunInfo {
        RunInfo {
            run_id: run_id.into(),
            plan: "p".into(),
            digest: "sha256:00".into(),
            plan_path: None,
            operator: "alice".into(),
            reason: "test".into(),
            trigger: None,
            host: "h".into(),
            pid: 1,
            vars: BTreeMap::new(),
            budget_ms: None,
            drill: false,
            version: "0".into(),
            started_at: timestamp(SystemTime::now()),
        }
    }

    #[tokio::test]
    async fn records_round_trip_and_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileJournal::new(dir.path());
        let j = store.create(&info("r1"), "name: p\n").await.unwrap();
        j.queue(Record::now(Event::RunStarted {
            run: info("r1"),
            steps: vec![],
        }));
        j.queue(Record::now(Event::StepFinished {
            step: "a".into(),
            outcome: Outcome::Succeeded,
            attempts: 1,
            duration_ms: 3,
            outputs: Outputs::from([("k".to_string(), serde_json::json!("v"))]),
            error: None,
            redacted: false,
        }));
        j.commit().await.unwrap();
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.journal_path("r1"))
            .unwrap();
        f.write_all(b"{\"at\":\"2026").unwrap();
        let run = store.read("r1").await.unwrap();
        assert!(run.torn_tail);
        // Reopened, the cut line is dropped and new records follow whole.
        let j = store.reopen("r1").await.unwrap();
        j.queue(Record::now(Event::CancelRequested { running: vec![] }));
        j.commit().await.unwrap();
        let again = store.read("r1").await.unwrap();
        assert!(!again.torn_tail);
        assert_eq!(again.records.len(), 3);
        assert_eq!(run.plan_text, "name: p\n");
        assert_eq!(run.completed_steps()["a"]["k"], serde_json::json!("v"));
        assert_eq!(run.status(), None);
        let list = store.list().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].operator, "alice");
    }

    #[tokio::test]
    async fn second_lock_names_the_holder_and_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileJournal::new(dir.path());
        let holder = LockHolder {
            operator: "alice".into(),
            host: "web1".into(),
            pid: 42,
            since: "2026-11-21T10:00:00Z".into(),
            run_id: "r1".into(),
        };
        let guard = store.lock("orders", &holder).await.unwrap();
        let Err(Error::Locked { holder: held, .. }) = store.lock("orders", &holder).await else {
            panic!("second lock must fail")
        };
        assert_eq!(*held, holder);
        drop(guard);
        store.lock("orders", &holder).await.unwrap();
    }

    #[tokio::test]
    async fn unknown_run_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileJournal::new(dir.path());
        assert!(matches!(
            store.read("nope").await,
            Err(Error::RunNotFound { .. })
        ));
        assert!(matches!(
            store.read("../etc").await,
            Err(Error::RunNotFound { .. })
        ));
    }
}
