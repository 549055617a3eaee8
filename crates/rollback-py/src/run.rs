//! Driving a run from Python: the engine works on a tokio runtime with the GIL
//! released; the calling thread wakes every 50 ms to hand events to the
//! `on_event` callback and to check for Ctrl-C. Ctrl-C (or an exception from
//! the callback) cancels the run, waits until the executor has journaled it as
//! cancelled, then raises in the caller.

use std::future::Future;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;
use rollback_core::{Record, RunOptions};
use tokio_util::sync::CancellationToken;

use crate::convert::to_py;

/// The runtime every run uses (created on first use).
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rollback-engine")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the async runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `fut` to completion with the GIL released (no callback, no cancel):
/// for short engine calls (preview, history).
pub(crate) fn block_on<T: Send + 'static>(
    py: Python<'_>,
    fut: impl Future<Output = T> + Send + 'static,
) -> PyResult<T> {
    let rt = runtime()?;
    let handle = rt.spawn(fut);
    py.detach(|| rt.block_on(handle))
        .map_err(|e| PyRuntimeError::new_err(format!("engine task failed: {e}")))
}

/// How a run is watched.
pub(crate) struct Watch {
    cancel: CancellationToken,
    quit: CancellationToken,
    events: Mutex<mpsc::Receiver<Record>>,
    on_event: Option<Py<PyAny>>,
}

impl Watch {
    /// Sets up `options` to report events and be cancellable from here.
    pub(crate) fn new(options: RunOptions, on_event: Option<Py<PyAny>>) -> (Watch, RunOptions) {
        let cancel = CancellationToken::new();
        let quit = CancellationToken::new();
        let (tx, rx) = mpsc::channel::<Record>();
        let options = options
            .cancel(cancel.clone())
            .quit(quit.clone())
            .observer(move |record| {
                let _ = tx.send(record.clone());
            });
        (
            Watch {
                cancel,
                quit,
                events: Mutex::new(rx),
                on_event,
            },
            options,
        )
    }

    fn deliver(&self, py: Python<'_>, records: Vec<Record>, failure: &mut Option<PyErr>) {
        let Some(cb) = &self.on_event else { return };
        for record in records {
            if failure.is_some() {
                return;
            }
            let result = to_py(py, &record).and_then(|event| cb.bind(py).call1((event,)));
            if let Err(e) = result {
                // The callback failed: stop the run cleanly, raise afterwards.
                self.cancel.cancel();
                *failure = Some(e);
            }
        }
    }

    /// Runs `fut` (an executor run with the options from [`Watch::new`]).
    pub(crate) fn drive<T: Send + 'static>(
        &self,
        py: Python<'_>,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> PyResult<T> {
        let rt = runtime()?;
        let handle = rt.spawn(fut);
        let mut failure: Option<PyErr> = None;
        loop {
            let (records, finished) = py.detach(|| {
                let rx = self.events.lock().expect("event channel");
                let mut records = Vec::new();
                if let Ok(r) = rx.recv_timeout(Duration::from_millis(50)) {
                    records.push(r);
                    records.extend(rx.try_iter());
                }
                (records, handle.is_finished())
            });
            self.deliver(py, records, &mut failure);
            if let Err(e) = py.check_signals() {
                let second_interrupt =
                    self.cancel.is_cancelled() && e.is_instance_of::<PyKeyboardInterrupt>(py);
                self.cancel.cancel();
                if second_interrupt {
                    // A second Ctrl-C: the running steps are ended with
                    // their programs and journaled as interrupted; wait a
                    // moment for that, then raise.
                    self.quit.cancel();
                    let _ = py.detach(|| {
                        rt.block_on(async {
                            tokio::time::timeout(Duration::from_secs(3), handle).await
                        })
                    });
                    rollback_core::process::end_running_programs();
                    return Err(e);
                }
                failure.get_or_insert(e);
            }
            if finished {
                break;
            }
        }
        let result = py
            .detach(|| rt.block_on(handle))
            .map_err(|e| PyRuntimeError::new_err(format!("engine task failed: {e}")));
        let rest: Vec<Record> = self
            .events
            .lock()
            .expect("event channel")
            .try_iter()
            .collect();
        self.deliver(py, rest, &mut failure);
        match failure {
            Some(e) => Err(e),
            None => result,
        }
    }
}
