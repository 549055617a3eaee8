//! The run bus: every event of a run passes here once, is redacted, shown to
//! the observer, handed to the notifiers that want it and journaled, in that
//! order.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::approval::{Approval, ApprovalRequest, Approver};
use crate::error::Result;
use crate::event::{Event, RunInfo};
use crate::journal::{Record, RunJournal};
use crate::template::Resolver;

use super::EventObserver;

/// Shared by the tasks of one run: records, shows and announces events.
pub(crate) struct Bus {
    pub(crate) info: RunInfo,
    pub(crate) journal: Arc<dyn RunJournal>,
    pub(crate) resolver: Arc<Resolver>,
    observer: Option<EventObserver>,
    notifiers: Mutex<Vec<(Vec<String>, mpsc::UnboundedSender<Event>)>>,
    records: Mutex<Vec<Record>>,
    /// Roles that approved in this run; held while asking so that two
    /// guarded steps ask a role once.
    pub(crate) approved_roles: tokio::sync::Mutex<HashSet<String>>,
}

/// The event with every known secret replaced. Fails closed: an event that
/// cannot be rebuilt after redaction is replaced by a note saying so, never
/// passed on as it was. (A withheld step record only makes `resume` run that
/// idempotent step again.)
fn redact_event(resolver: &Resolver, event: Event) -> Event {
    let withheld = |step: String| Event::StepProgress {
        step,
        message: "a record was withheld: it could not be redacted".into(),
    };
    let step = event.step_id().unwrap_or("run").to_string();
    match serde_json::to_value(&event) {
        Ok(v) => {
            serde_json::from_value(resolver.redact_value(&v)).unwrap_or_else(|_| withheld(step))
        }
        Err(_) => withheld(step),
    }
}

impl Bus {
    pub(crate) fn new(
        info: RunInfo,
        journal: Arc<dyn RunJournal>,
        resolver: Arc<Resolver>,
        observer: Option<EventObserver>,
        earlier: Vec<Record>,
    ) -> Self {
        Bus {
            info,
            journal,
            resolver,
            observer,
            notifiers: Mutex::new(Vec::new()),
            records: Mutex::new(earlier),
            approved_roles: tokio::sync::Mutex::new(HashSet::new()),
        }
    }

    /// Records, shows and announces an event, in that order of queuing.
    pub(crate) fn queue(&self, event: Event) {
        // Everything leaving the engine passes here: redact it once, whole.
        let event = if self.resolver.has_secrets() {
            redact_event(&self.resolver, event)
        } else {
            event
        };
        let record = Record::now(event);
        if let Some(observer) = &self.observer {
            observer(&record);
        }
        let classes = record.event.notification_classes();
        if !classes.is_empty() {
            for (wanted, tx) in self.notifiers.lock().expect("notifier list").iter() {
                if wanted.iter().any(|w| classes.contains(&w.as_str())) {
                    let _ = tx.send(record.event.clone());
                }
            }
        }
        // One lock for both, so the journal and the report see one order.
        let mut records = self.records.lock().expect("records");
        records.push(record.clone());
        self.journal.queue(record);
    }

    /// Queues an event and waits until the journal holds it durably.
    pub(crate) async fn emit(&self, event: Event) -> Result<()> {
        self.queue(event);
        self.journal.commit().await
    }

    /// A notifier's queue: it receives the events of the classes it wants.
    pub(crate) fn subscribe(&self, classes: Vec<String>) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.notifiers
            .lock()
            .expect("notifier list")
            .push((classes, tx));
        rx
    }

    /// Ends the notifiers' queues (they finish what they hold).
    pub(crate) fn close_notifiers(&self) {
        self.notifiers.lock().expect("notifier list").clear();
    }

    /// Every record of the run so far (earlier segments included).
    pub(crate) fn records(&self) -> Vec<Record> {
        self.records.lock().expect("records").clone()
    }

    /// Whether any record so far matches.
    pub(crate) fn any_record(&self, matches: impl Fn(&Event) -> bool) -> bool {
        self.records
            .lock()
            .expect("records")
            .iter()
            .any(|r| matches(&r.event))
    }
}

#[async_trait]
impl crate::step::Recorder for Bus {
    fn queue(&self, event: Event) {
        Bus::queue(self, event);
    }

    async fn commit(&self) -> Result<()> {
        self.journal.commit().await
    }
}

/// Records approvals (confirmations and roles' approvals) in the journal.
pub(crate) struct RecordingApprover {
    pub(crate) inner: Arc<dyn Approver>,
    pub(crate) bus: Arc<Bus>,
}

#[async_trait]
impl Approver for RecordingApprover {
    async fn approve(&self, request: &ApprovalRequest) -> std::result::Result<Approval, String> {
        let approval = self.inner.approve(request).await?;
        self.bus.queue(Event::Approved {
            step: request.step.clone(),
            approved_by: approval.approved_by.clone(),
            method: approval.method.clone(),
            role: request.role.clone(),
        });
        Ok(approval)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A run journal in memory that counts its commits.
    #[derive(Default)]
    pub(crate) struct MemoryJournal {
        records: Mutex<Vec<Record>>,
        commits: AtomicU32,
    }

    impl MemoryJournal {
        pub(crate) fn commits(&self) -> u32 {
            self.commits.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl RunJournal for MemoryJournal {
        fn queue(&self, record: Record) {
            self.records.lock().unwrap().push(record);
        }
        async fn commit(&self) -> Result<()> {
            self.commits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    pub(crate) fn test_info() -> RunInfo {
        RunInfo {
            run_id: "r1".into(),
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
            started_at: "2026-12-01T00:00:00Z".into(),
        }
    }

    /// A bus over a memory journal.
    pub(crate) fn test_bus() -> (Arc<Bus>, Arc<MemoryJournal>) {
        let journal = Arc::new(MemoryJournal::default());
        let bus = Bus::new(
            test_info(),
            journal.clone(),
            Arc::new(Resolver::new(BTreeMap::new())),
            None,
            Vec::new(),
        );
        (Arc::new(bus), journal)
    }
}
