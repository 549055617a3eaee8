//! Before a resume runs a step again: the programs its earlier attempt
//! started that outlived their runner. They are ended (or, where their kind
//! said so, waited for) so that two copies never race on the same target.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal};

use super::{procfs, OnResume, ProgramInfo, RUN_ID_VAR};
use crate::event::Event;
use crate::journal::Record;

/// How long a survivor gets to end after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How long the kernel gets to end a survivor after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// A program started in an earlier segment of the run with no end record.
#[derive(Debug, Clone)]
pub(crate) struct Unfinished {
    pub step: String,
    pub info: ProgramInfo,
}

/// Programs of `records` that started and have no end record.
pub(crate) fn unfinished(records: &[Record]) -> Vec<Unfinished> {
    let ended: HashSet<(u32, u64)> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::ProgramEnded {
                pid, start_ticks, ..
            } => Some((*pid, *start_ticks)),
            Event::ProgramSettled { program, .. } => Some((program.pid, program.start_ticks)),
            _ => None,
        })
        .collect();
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::ProgramStarted { step, program }
                if !ended.contains(&(program.pid, program.start_ticks)) =>
            {
                Some(Unfinished {
                    step: step.clone(),
                    info: program.clone(),
                })
            }
            _ => None,
        })
        .collect()
}

/// What became of a survivor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settled {
    /// It had already ended.
    Gone,
    /// The machine restarted since: it cannot be running.
    Rebooted,
    /// It ended after SIGTERM.
    Terminated,
    /// It was still running after SIGTERM and its grace period: SIGKILL.
    Killed,
    /// It finished by itself while the resume waited.
    Waited,
    /// It ran on another host; the operator said it has ended there.
    AssumedEnded,
}

impl Settled {
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Settled::Gone => "had already ended",
            Settled::Rebooted => "cannot be running: the machine restarted since",
            Settled::Terminated => "was still running: ended it (SIGTERM)",
            Settled::Killed => "was still running and ignored SIGTERM: ended it (SIGKILL)",
            Settled::Waited => "was still running: waited until it finished",
            Settled::AssumedEnded => "ran on another host; the operator confirmed it has ended",
        }
    }
}

/// Why survivors could not be settled.
#[derive(Debug)]
pub(crate) enum SettleError {
    /// Programs ran on hosts this runner cannot see.
    OtherHost(Vec<Unfinished>),
    /// A survivor did not end (in time, or at all).
    StillRunning(Unfinished, String),
}

/// Settles each survivor: ended, waited for, or confirmed gone.
/// `ended_on` lists hosts whose programs the operator says have ended.
pub(crate) async fn settle(
    programs: Vec<Unfinished>,
    run_id: &str,
    ended_on: &[String],
    deadline: Option<Instant>,
) -> Result<Vec<(Unfinished, Settled)>, SettleError> {
    let host = crate::executor::hostname();
    let elsewhere: Vec<Unfinished> = programs
        .iter()
        .filter(|p| p.info.host != host && !ended_on.contains(&p.info.host))
        .cloned()
        .collect();
    if !elsewhere.is_empty() {
        return Err(SettleError::OtherHost(elsewhere));
    }
    let boot = procfs::boot_id();
    let mut out = Vec::new();
    for program in programs {
        let settled = if program.info.host != host {
            Settled::AssumedEnded
        } else if program.info.boot_id != boot {
            Settled::Rebooted
        } else {
            settle_local(&program, run_id, deadline).await?
        };
        out.push((program, settled));
    }
    Ok(out)
}

/// Members of the program's process group that belong to this run.
fn survivors_of(info: &ProgramInfo, run_id: &str) -> Vec<i32> {
    let leader = info.pid as i32;
    procfs::group_members(leader, info.start_ticks)
        .into_iter()
        .filter(|&pid| match procfs::environ_has(pid, RUN_ID_VAR, run_id) {
            Some(ours) => ours,
            // Unreadable: only the leader itself, known by its start time.
            None => pid == leader && procfs::is_same_process(pid, info.start_ticks),
        })
        .collect()
}

async fn settle_local(
    program: &Unfinished,
    run_id: &str,
    deadline: Option<Instant>,
) -> Result<Settled, SettleError> {
    let members = survivors_of(&program.info, run_id);
    if members.is_empty() {
        return Ok(Settled::Gone);
    }
    let still = |why: String| SettleError::StillRunning(program.clone(), why);
    match program.info.on_resume {
        OnResume::Wait => {
            let limit = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(24 * 3600));
            if wait_for_exit(&members, limit).await {
                Ok(Settled::Waited)
            } else {
                Err(still("it did not finish within the run's budget".into()))
            }
        }
        OnResume::End => {
            signal_group(program.info.pid, Signal::TERM);
            if wait_for_exit(&members, TERM_GRACE).await {
                return Ok(Settled::Terminated);
            }
            signal_group(program.info.pid, Signal::KILL);
            if wait_for_exit(&survivors_of(&program.info, run_id), KILL_GRACE).await {
                Ok(Settled::Killed)
            } else {
                Err(still(
                    "it is still running after SIGKILL (stuck in the kernel?)".into(),
                ))
            }
        }
    }
}

fn signal_group(pgid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
        // ESRCH: nothing left in the group.
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Waits until every one of `pids` has ended, at most `limit`: each pid's
/// pidfd becomes readable when it exits, so the kernel wakes the wait (no
/// polling of `/proc`).
async fn wait_for_exit(pids: &[i32], limit: Duration) -> bool {
    let pids = pids.to_vec();
    let until = Instant::now() + limit;
    tokio::task::spawn_blocking(move || pids.iter().all(|&pid| wait_one(pid, until)))
        .await
        .unwrap_or(false)
}

/// Blocks until `pid` has ended or `until` has passed.
fn wait_one(pid: i32, until: Instant) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let Some(raw) = Pid::from_raw(pid) else {
        return true;
    };
    let Ok(fd) = rustix::process::pidfd_open(raw, PidfdFlags::empty()) else {
        // ESRCH: already gone.
        return true;
    };
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let timeout = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => continue,
            // No way to wait: look at /proc once.
            Err(_) => return procfs::start_ticks(pid).is_none(),
        }
    }
}
