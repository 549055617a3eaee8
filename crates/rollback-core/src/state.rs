//! A run's state that a resume or an undo needs: each step's intent (what it
//! set out to do, written before its effect) and small artifacts (objects it
//! captured, files it saved). It lives in the journal store, beside the
//! run's records, so that any runner of a shared journal can finish the run.
//!
//! The file journal keeps each piece as `runs/RUN_ID/state/STEP/NAME`,
//! written to a temporary file, flushed, renamed and the folder flushed: a
//! reader sees the old piece or the new one, never half of one. The
//! PostgreSQL journal keeps them in a table.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest piece of state the journal store takes (16 MiB). A database
/// backup belongs on storage of its own (`dir:`), with its host, path and
/// checksum in the step's outputs.
pub const MAX_STATE_BYTES: usize = 16 << 20;

/// The "step" under which pieces of the run as a whole are kept (drill
/// reports): no step id can be written with `@`.
pub const RUN_PIECES: &str = "@run";

/// One piece of a run's state, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    /// The step that saved it.
    pub step: String,
    /// Its name within the step (`intent`, `objects.json`).
    pub name: String,
    /// Its size.
    pub bytes: u64,
}

/// Where a run's state is kept. Every [`crate::JournalStore`] is one.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Keeps `bytes` as the piece `name` of `step`, durably, replacing what
    /// was kept under that name.
    async fn put_state(&self, run_id: &str, step: &str, name: &str, bytes: Vec<u8>) -> Result<()>;
    /// The piece `name` of `step`, if one is kept.
    async fn get_state(&self, run_id: &str, step: &str, name: &str) -> Result<Option<Vec<u8>>>;
    /// Every piece kept for a run.
    async fn list_state(&self, run_id: &str) -> Result<Vec<StateEntry>>;
}

/// Refuses a piece larger than [`MAX_STATE_BYTES`] (every store applies it).
pub fn check_size(step: &str, name: &str, len: usize) -> Result<()> {
    if len > MAX_STATE_BYTES {
        return Err(Error::InvalidInput {
            message: format!(
                "step `{step}` tried to keep `{name}` ({len} bytes) in the journal store, which takes at most \
                 {MAX_STATE_BYTES} bytes per piece: keep large files in a `dir:` on shared storage"
            ),
        });
    }
    Ok(())
}

/// A file name for a step id or a piece name: letters, digits, `_`, `-` and
/// `.` stay (a leading `.` does not); anything else is `%XX`.
pub(crate) fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, b) in text.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// The inverse of [`encode_component`].
pub(crate) fn decode_component(text: &str) -> Option<String> {
    if text == "%00" {
        return Some(String::new());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn piece_path(run_dir: &Path, step: &str, name: &str) -> PathBuf {
    run_dir
        .join("state")
        .join(encode_component(step))
        .join(encode_component(name))
}

/// Writes a piece under `run_dir/state/`: temporary file, flush, rename,
/// flush of the folders created or changed.
pub(crate) fn put_in_dir(run_dir: &Path, step: &str, name: &str, bytes: &[u8]) -> Result<()> {
    check_size(step, name, bytes.len())?;
    let path = piece_path(run_dir, step, name);
    let dir = path.parent().expect("a piece has a folder").to_path_buf();
    let io = |e: std::io::Error| Error::journal(&path, e);
    let created = !dir.exists();
    fs::create_dir_all(&dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{:08x}",
        encode_component(name),
        fastrand::u32(..)
    ));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&dir)?.sync_all()?;
        if created {
            // The new step folder and `state/` must survive a power loss too.
            for parent in [dir.parent(), dir.parent().and_then(Path::parent)]
                .into_iter()
                .flatten()
            {
                File::open(parent)?.sync_all()?;
            }
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// Reads a piece under `run_dir/state/`.
pub(crate) fn get_in_dir(run_dir: &Path, step: &str, name: &str) -> Result<Option<Vec<u8>>> {
    let path = piece_path(run_dir, step, name);
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::journal(path, e)),
    }
}

/// Lists the pieces under `run_dir/state/`.
pub(crate) fn list_in_dir(run_dir: &Path) -> Result<Vec<StateEntry>> {
    let root = run_dir.join("state");
    let steps = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::journal(root, e)),
    };
    let mut out = Vec::new();
    for step_dir in steps.flatten() {
        let Some(step) = step_dir.file_name().to_str().and_then(decode_component) else {
            continue;
        };
        let Ok(pieces) = fs::read_dir(step_dir.path()) else {
            continue;
        };
        for piece in pieces.flatten() {
            let file_name = piece.file_name();
            let Some(name) = file_name
                .to_str()
                .filter(|n| !n.starts_with('.'))
                .and_then(decode_component)
            else {
                continue;
            };
            let bytes = piece.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(StateEntry {
                step: step.clone(),
                name,
                bytes,
            });
        }
    }
    out.sort_by(|a, b| (&a.step, &a.name).cmp(&(&b.step, &b.name)));
    Ok(out)
}

/// The state of one run kept in its folder: what a context outside a plan
/// (tests, embedding) uses.
#[derive(Debug, Clone)]
pub(crate) struct RunDirState(pub(crate) PathBuf);

#[async_trait]
impl StateStore for RunDirState {
    async fn put_state(&self, _run: &str, step: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
        let (dir, step, name) = (self.0.clone(), step.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || put_in_dir(&dir, &step, &name, &bytes))
            .await
            .expect("state write task")
    }

    async fn get_state(&self, _run: &str, step: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let (dir, step, name) = (self.0.clone(), step.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || get_in_dir(&dir, &step, &name))
            .await
            .expect("state read task")
    }

    async fn list_state(&self, _run: &str) -> Result<Vec<StateEntry>> {
        let dir = self.0.clone();
        tokio::task::spawn_blocking(move || list_in_dir(&dir))
            .await
            .expect("state list task")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_file_names() {
        for name in [
            "intent",
            "objects.json",
            "notify:slack",
            "a/b",
            ".hidden",
            "",
            "é",
        ] {
            let encoded = encode_component(name);
            assert!(
                !encoded.contains('/') && !encoded.starts_with('.'),
                "{encoded}"
            );
            assert_eq!(decode_component(&encoded).as_deref(), Some(name));
        }
    }

    #[tokio::test]
    async fn pieces_are_replaced_whole_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunDirState(dir.path().to_path_buf());
        assert_eq!(store.get_state("r", "undo", "intent").await.unwrap(), None);
        store
            .put_state("r", "undo", "intent", b"one".to_vec())
            .await
            .unwrap();
        store
            .put_state("r", "undo", "intent", b"two".to_vec())
            .await
            .unwrap();
        store
            .put_state("r", "snap", "objects/a.json", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(
            store
                .get_state("r", "undo", "intent")
                .await
                .unwrap()
                .as_deref(),
            Some(&b"two"[..])
        );
        let names: Vec<(String, String)> = store
            .list_state("r")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.step, e.name))
            .collect();
        assert_eq!(
            names,
            [
                ("snap".to_string(), "objects/a.json".to_string()),
                ("undo".to_string(), "intent".to_string())
            ]
        );
    }

    #[test]
    fn a_piece_too_large_is_refused_with_what_to_do() {
        let err = check_size("backup", "dump", MAX_STATE_BYTES + 1).unwrap_err();
        assert!(err.to_string().contains("shared storage"), "{err}");
    }
}
