//! PostgreSQL restarted while a `db.restore`'s pg_restore runs: the run
//! fails, saying so; the live database is untouched; `rollback resume`
//! completes the restore and leaves no temporary database.
//!
//! The shared test server is never restarted (other tests use it): this
//! test starts a server of its own with the same binaries
//! (scripts/testenv/postgres.sh's), on a free port on 127.0.0.1, and stops
//! it at the end by its pid.

mod common;
mod pg_support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use pg_support::*;

const ROWS: u32 = 1_500_000;

/// A PostgreSQL server of this test's own; stopped (SIGINT to its
/// postmaster: a fast shutdown) when dropped.
struct PrivateServer {
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Runs a server program as the `postgres` user when this test runs as
/// root (the server refuses to run as root).
fn as_server_owner(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn checked(mut cmd: Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().expect(what);
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivateServer {
    fn start() -> PrivateServer {
        let dir = tempfile::Builder::new()
            .prefix("rollback-fault-pg")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        // The server's user must reach its data directory.
        checked(
            {
                let mut c = Command::new("chmod");
                c.args(["755"]).arg(dir.path());
                c
            },
            "chmod",
        );
        if is_root() {
            checked(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut initdb = as_server_owner(&pg_bin("initdb"));
        initdb.arg("--pgdata").arg(&data).args([
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]);
        checked(initdb, "initdb");
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            data.display()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("configure the server");
        let server = PrivateServer {
            _dir: dir,
            data,
            port,
        };
        server.pg_ctl(&["start", "-w", "-t", "120"]);
        server
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut cmd = as_server_owner(&pg_bin("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(args)
            .stdout(Stdio::null());
        checked(cmd, &format!("pg_ctl {}", args.join(" ")));
    }

    fn url(&self, db: &str) -> String {
        url_for(
            &format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            db,
        )
    }

    /// The postmaster's pid, from its pid file.
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            let deadline = std::time::Instant::now() + SLOW;
            while running(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn a_server_restart_mid_restore_fails_the_run_untouched_and_resume_completes_it() {
    // Needs the test server's binaries, as the other database tests do.
    if rollback_core::testing::require_env("PG_BIN_DIR").is_none() {
        return;
    }
    let server = PrivateServer::start();
    let admin = server.url("postgres");
    let live = "fault orders";
    psql(&admin, &format!("CREATE DATABASE {}", ident(live)));
    let db_url = server.url(live);
    seed_orders(&db_url, ROWS);
    let sb = Sandbox::new();
    let clean = sb.file("clean.dump");
    dump(&db_url, &clean);
    damage_orders(&db_url);
    let damaged = scalar(&db_url, "SELECT count(*) FROM orders");
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: fault-restore\nbudget: 10m\nsteps:\n\
             \x20 - id: restore\n    kind: db.restore\n    url: ${{env:DB_URL}}\n    from: {from}\n    jobs: 2\n    pg_bin_dir: {bin}\n",
            from = qp(&clean),
            bin = qp(&pg_bin("")),
        ),
    );
    let stderr = std::fs::File::create(sb.file("run-stderr.txt")).expect("stderr file");
    let mut cmd = sb.cmd([
        "run".as_ref(),
        plan.as_os_str(),
        "--reason".as_ref(),
        "test".as_ref(),
    ]);
    cmd.env("DB_URL", &db_url)
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
    let mut runner = cmd.spawn().expect("start rollback run");
    let temp_prefix = format!("{live}_restore_");
    wait_until(
        SLOW,
        "pg_restore to copy into the temporary database",
        || copying(&admin, &temp_prefix, true),
    );
    let before_restart = server.pid();
    server.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "120"]);
    assert_ne!(server.pid(), before_restart, "the server restarted");

    // The run fails (no `retries:` in the plan), saying what happened.
    let status = wait_child(&mut runner, SLOW, "the runner");
    let stderr = std::fs::read_to_string(sb.file("run-stderr.txt")).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "the step failed:\n{stderr}");
    let run_id = sb.only_run_id();
    let report = sb.show(&run_id);
    let restore = step(&report, "restore");
    assert_eq!(restore["outcome"], "failed", "{report:#}");
    assert_eq!(restore["attempts"], 1, "{report:#}");
    let error = restore["error"].as_str().unwrap_or_default();
    eprintln!("the failed run's error:\n{error}");
    assert!(error.contains("`pg_restore` exited with 1"), "{error}");
    assert!(
        error.contains(&format!("the live database `{live}` is untouched")),
        "{error}"
    );
    // Untouched: same rows, the corrupt one still there, still accepting connections.
    assert_eq!(scalar(&db_url, "SELECT count(*) FROM orders"), damaged);
    assert_eq!(
        scalar(&db_url, "SELECT count(*) FROM orders WHERE total < 0"),
        1
    );
    let temp_left = psql(
        &admin,
        &format!(
            "SELECT count(*) FROM pg_database WHERE starts_with(datname, {})",
            literal(&temp_prefix)
        ),
    );
    eprintln!("temporary databases left by the failed run: {temp_left}");

    let mut resume = sb.cmd(["resume", &run_id]);
    resume.env("DB_URL", &db_url);
    let out = run_within(resume, SLOW);
    out.expect_code(0);
    assert_eq!(scalar(&db_url, "SELECT count(*) FROM orders"), ROWS as i64);
    assert_eq!(
        scalar(&db_url, "SELECT count(*) FROM orders WHERE total < 0"),
        0
    );
    assert_eq!(
        psql(
            &admin,
            &format!(
                "SELECT count(*) FROM pg_database WHERE starts_with(datname, {})",
                literal(&temp_prefix)
            )
        ),
        "0",
        "no temporary database is left"
    );
}
