//! What `/proc` says about processes: when one started (so a recorded pid is
//! not confused with a later process that got the same number), which
//! process group it is in, which run started it, and whether it has ended.

use std::path::Path;

/// The fields of `/proc/PID/stat` a survivor check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Process group.
    pub pgrp: i32,
    /// Start time in clock ticks after boot (field 22).
    pub start_ticks: u64,
    /// A zombie has ended; it only waits to be reaped.
    pub zombie: bool,
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) ... starttime(19).
    Some(ProcStat {
        zombie: *fields.first()? == "Z",
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// `/proc/PID/stat` of a live process, `None` when it is gone.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

/// When `pid` started (clock ticks after boot), if it is running.
pub(crate) fn start_ticks(pid: i32) -> Option<u64> {
    stat(pid).filter(|s| !s.zombie).map(|s| s.start_ticks)
}

/// Clock ticks per second in `/proc` times (USER_HZ: 100 on every Linux
/// architecture the kernel exports it for).
const TICKS_PER_SECOND: u64 = 100;

/// When `pid` started, as wall-clock time, if it is running.
pub(crate) fn started_at(pid: i32) -> Option<std::time::SystemTime> {
    let ticks = start_ticks(pid)?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let since_boot = std::time::Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(boot) + since_boot)
}

/// This boot's id: pids and start times of an earlier boot mean nothing now.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether `pid` is still the process that started at `start_ticks`.
pub(crate) fn is_same_process(pid: i32, start_ticks: u64) -> bool {
    self::start_ticks(pid) == Some(start_ticks)
}

/// Whether the environment of `pid` carries `NAME=VALUE`; `None` when it
/// cannot be read (another user's process).
pub(crate) fn environ_has(pid: i32, name: &str, value: &str) -> Option<bool> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let wanted = format!("{name}={value}");
    Some(
        bytes
            .split(|b| *b == 0)
            .any(|entry| entry == wanted.as_bytes()),
    )
}

/// Live (not zombie) members of process group `pgrp` that started at or
/// after `not_before` ticks: later processes cannot be in a group whose
/// leader started then, unless the number was reused.
pub(crate) fn group_members(pgrp: i32, not_before: u64) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(Path::new("/proc")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat(pid).is_some_and(|s| s.pgrp == pgrp && !s.zombie && s.start_ticks >= not_before)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_awkward_name() {
        let text = "4242 (pg_restore) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.start_ticks, 987654);
        assert!(!s.zombie);
        let zombie = "7 (sh) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert!(parse_stat(zombie).unwrap().zombie);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).expect("this process is running");
        assert!(is_same_process(me, ticks));
        assert!(!is_same_process(me, ticks + 1));
        assert!(!boot_id().is_empty());
        let started = started_at(me).unwrap();
        let now = std::time::SystemTime::now();
        assert!(started <= now + std::time::Duration::from_secs(2));
        let pgrp = stat(me).unwrap().pgrp;
        assert!(group_members(pgrp, 0).contains(&me));
    }
}
