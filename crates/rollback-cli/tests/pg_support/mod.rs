//! PostgreSQL for the tests that run database plans through the real
//! binary: databases of the test's own on the server started by
//! scripts/testenv/postgres.sh (dropped at the end), a private server where a
//! test must restart one, and bounded waits on what the server shows.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{exit_code, wait_child, Out};

/// How long a database step of these tests may take on a busy machine.
pub const SLOW: Duration = Duration::from_secs(240);

/// A client or server program of the test server's PostgreSQL.
pub fn pg_bin(name: &str) -> PathBuf {
    match std::env::var("PG_BIN_DIR") {
        Ok(dir) if !dir.is_empty() => Path::new(&dir).join(name),
        _ => PathBuf::from(name),
    }
}

/// `url` with its database replaced by `db` (percent-encoded).
pub fn url_for(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").expect("a URL") + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let encoded: String = db
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{}/{encoded}{query}", &base[..path_start])
}

/// Quotes an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Runs `sql` with psql against `url` (stopping at the first error); the
/// unaligned, tuples-only output.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A number `sql` returns.
pub fn scalar(url: &str, sql: &str) -> i64 {
    let text = psql(url, sql);
    text.parse()
        .unwrap_or_else(|_| panic!("{sql} returned {text:?}"))
}

/// Databases of a test: each name starts with the test's prefix; all of
/// them are dropped when this goes away (also when the test fails).
pub struct TestDatabases {
    /// The server's superuser URL (its `postgres` database).
    pub admin: String,
    /// What every database of the test starts with.
    pub prefix: String,
}

impl TestDatabases {
    /// Drops what an earlier run of the test left, then creates `prefix` itself.
    pub fn new(admin: &str, prefix: &str) -> Self {
        let dbs = TestDatabases {
            admin: admin.to_string(),
            prefix: prefix.to_string(),
        };
        dbs.drop_all();
        psql(admin, &format!("CREATE DATABASE {}", ident(prefix)));
        dbs
    }

    /// The URL of database `db` on the server.
    pub fn url(&self, db: &str) -> String {
        url_for(&self.admin, db)
    }

    /// The test's databases that exist now, sorted.
    pub fn existing(&self) -> Vec<String> {
        let rows = psql(
            &self.admin,
            &format!(
                "SELECT datname FROM pg_database WHERE starts_with(datname, {}) ORDER BY datname",
                literal(&self.prefix)
            ),
        );
        rows.lines().map(str::to_string).collect()
    }

    fn drop_all(&self) {
        for db in self.existing() {
            psql(
                &self.admin,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&db)),
            );
        }
    }
}

impl Drop for TestDatabases {
    fn drop(&mut self) {
        self.drop_all();
    }
}

/// Fills `orders` in `url`'s database with `rows` rows of about 100 bytes
/// (enough that dumping and restoring take seconds).
pub fn seed_orders(url: &str, rows: u32) {
    psql(
        url,
        &format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL, note text NOT NULL); \
             INSERT INTO orders SELECT g, g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, {rows}) g"
        ),
    );
}

/// The bad change a restore undoes: most rows gone, a corrupt one added.
pub fn damage_orders(url: &str) {
    psql(
        url,
        "DELETE FROM orders WHERE id > 1000; INSERT INTO orders VALUES (-1, -5, 'corrupt')",
    );
}

/// `pg_dump -Fc` of `url`'s database into `path` (the "last clean backup").
pub fn dump(url: &str, path: &Path) {
    let out = Command::new(pg_bin("pg_dump"))
        .arg("-Fc")
        .arg("-f")
        .arg(path)
        .arg("-d")
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `what` every 20 ms until it holds; fails after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut holds: impl FnMut() -> bool) {
    let start = Instant::now();
    while !holds() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a session of the database `db` (or of one whose name starts with
/// it, when `prefix`) is running a `COPY`: a dump or restore is under way.
pub fn copying(admin: &str, db: &str, prefix: bool) -> bool {
    let matches = if prefix {
        format!("starts_with(datname, {})", literal(db))
    } else {
        format!("datname = {}", literal(db))
    };
    scalar(
        admin,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {matches} AND state = 'active' \
             AND query ILIKE 'COPY %' AND pid <> pg_backend_pid()"
        ),
    ) > 0
}

/// Runs a prepared command to its end within `timeout`, capturing both streams.
pub fn run_within(mut cmd: Command, timeout: Duration) -> Out {
    let out_file = tempfile::tempfile().expect("temp file");
    let err_file = tempfile::tempfile().expect("temp file");
    cmd.stdout(out_file.try_clone().expect("dup"))
        .stderr(err_file.try_clone().expect("dup"));
    let mut child = cmd.spawn().expect("start rollback");
    let status = wait_child(&mut child, timeout, &format!("{cmd:?}"));
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        f.rewind().expect("rewind");
        f.read_to_string(&mut s).expect("read output");
        s
    };
    Out {
        code: exit_code(status),
        stdout: read(out_file),
        stderr: read(err_file),
    }
}

/// Whether process `pid` is running (and not a zombie).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Ends (SIGKILL) the process groups of programs the product should have
/// ended, if they still run when the test ends, so a failed test leaves
/// nothing behind.
pub struct EndOnDrop(pub Vec<u32>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            if running(*pid) {
                let _ = Command::new("kill")
                    .args(["-9", "--", &format!("-{pid}")])
                    .status();
            }
        }
    }
}

/// The journal records of a run, in order, read from the state directory
/// (file journal).
pub fn file_records(state: &Path, run_id: &str) -> Vec<serde_json::Value> {
    let path = state.join("runs").join(run_id).join("journal.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The id of the only run in a state directory, once it exists.
pub fn only_run_dir(state: &Path) -> String {
    let runs = state.join("runs");
    let mut found = String::new();
    wait_until(Duration::from_secs(20), "the run's folder", || {
        let names: Vec<String> = std::fs::read_dir(&runs)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        match names.as_slice() {
            [one] => {
                found = one.clone();
                true
            }
            _ => false,
        }
    });
    found
}

/// The `program_started` records whose command mentions `needle`.
pub fn programs<'a>(records: &'a [serde_json::Value], needle: &str) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| {
            r["event"] == "program_started"
                && r["program"]["command"]
                    .as_str()
                    .is_some_and(|c| c.contains(needle))
        })
        .collect()
}

/// The index of the first record satisfying `pred`.
pub fn position(
    records: &[serde_json::Value],
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> usize {
    records
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no {what} in {records:#?}"))
}
