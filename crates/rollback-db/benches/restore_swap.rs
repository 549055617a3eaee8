//! Restore a pgbench database while readers and a writer keep querying it:
//! `db.restore` (restore into a temporary database, verify, swap) against the
//! seeds' sequence (pg_dump, create temp, pg_restore, rename), in the same run,
//! with a bare `pg_restore -j2` of the same dump as the yardstick.
//!
//!     source $ROLLBACK_TESTENV_DIR/postgres.env   # scripts/testenv/postgres.sh
//!     cargo bench -p rollback-db --bench restore_swap
//!
//! `BENCH_SCALE` (default 50) is pgbench's scale; `BENCH_READERS` (default 4)
//! the number of reader tasks. Reported: each approach's total time and the
//! windows in which reads and writes failed.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollback_core::{Executor, FileJournal, Plan, Registry, RunOptions, RunStatus};
use rollback_db::backup::PgTarget;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Executor as _};

const LIVE: &str = "bench_live";

/// One query by a load task: when it started and ended, whether it worked.
#[derive(Clone, Copy)]
struct Op {
    start: Instant,
    end: Instant,
    ok: bool,
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn admin(opts: &PgConnectOptions) -> PgConnection {
    opts.clone()
        .database("postgres")
        .connect()
        .await
        .expect("connect to postgres")
}

fn tool(bin: &Option<String>, name: &str) -> std::path::PathBuf {
    match bin {
        Some(d) => std::path::Path::new(d).join(name),
        None => name.into(),
    }
}

fn run(cmd: &mut std::process::Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().expect("start tool");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// A reader (or the writer) keeping one session to the live database,
/// reconnecting after every failure.
async fn load(opts: PgConnectOptions, write: bool, rows: i64, stop: Arc<AtomicBool>) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut conn: Option<PgConnection> = None;
    let mut i: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        if conn.is_none() {
            match opts.clone().connect().await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    ops.push(Op {
                        start,
                        end: Instant::now(),
                        ok: false,
                    });
                    // A client's reconnect back-off.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        i = (i * 7919 + 17) % rows + 1;
        let c = conn.as_mut().expect("connected");
        let result = if write {
            sqlx::query("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = $1")
                .bind(i)
                .execute(&mut *c)
                .await
                .map(|_| ())
        } else {
            sqlx::query_scalar::<_, i32>("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
                .bind(i)
                .fetch_optional(&mut *c)
                .await
                .map(|_| ())
        };
        let ok = result.is_ok();
        ops.push(Op {
            start,
            end: Instant::now(),
            ok,
        });
        if !ok {
            conn = None;
        }
    }
    ops
}

/// Windows (union over tasks) in [from, to] during which operations failed:
/// from a failed operation's start to the next successful one's end.
fn failure_windows(tasks: &[Vec<Op>], from: Instant, to: Instant) -> Vec<(Instant, Instant)> {
    let mut windows = Vec::new();
    for ops in tasks {
        let mut open: Option<Instant> = None;
        for op in ops.iter().filter(|o| o.start >= from && o.start <= to) {
            match (op.ok, open) {
                (false, None) => open = Some(op.start),
                (true, Some(s)) => {
                    windows.push((s, op.end));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(s) = open {
            windows.push((s, to));
        }
    }
    windows.sort();
    let mut merged: Vec<(Instant, Instant)> = Vec::new();
    for (s, e) in windows {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

fn describe_windows(w: &[(Instant, Instant)], origin: Instant) -> String {
    if w.is_empty() {
        return "none".into();
    }
    let total: Duration = w.iter().map(|(s, e)| *e - *s).sum();
    let longest = w.iter().map(|(s, e)| *e - *s).max().unwrap_or_default();
    let list: Vec<String> = w
        .iter()
        .take(5)
        .map(|(s, e)| {
            format!(
                "+{:.2}s..+{:.2}s",
                (*s - origin).as_secs_f64(),
                (*e - origin).as_secs_f64()
            )
        })
        .collect();
    format!(
        "{} window(s), longest {:.3}s, total {:.3}s [{}{}]",
        w.len(),
        longest.as_secs_f64(),
        total.as_secs_f64(),
        list.join(", "),
        if w.len() > 5 { ", ..." } else { "" }
    )
}

async fn drop_db(admin: &mut PgConnection, name: &str) {
    admin
        .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(name)).as_str())
        .await
        .expect("drop database");
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("restore_swap: DATABASE_URL is not set; run scripts/testenv/postgres.sh and source its .env");
        return;
    };
    let bin = std::env::var("PG_BIN_DIR").ok().filter(|s| !s.is_empty());
    let scale: i64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let readers: usize = std::env::var("BENCH_READERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let rows = scale * 100_000;
    let base = PgConnectOptions::from_str(&url)
        .expect("DATABASE_URL")
        .disable_statement_logging();
    let target = PgTarget::parse(&url).expect("DATABASE_URL");
    let env = |db: &str| target.child_env(Some(db));
    let mut adm = admin(&base).await;

    // Leftovers of an earlier run.
    let old: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%'")
            .fetch_all(&mut adm)
            .await
            .unwrap();
    for db in old {
        drop_db(&mut adm, &db).await;
    }
    adm.execute(format!("CREATE DATABASE {}", q(LIVE)).as_str())
        .await
        .unwrap();
    eprintln!("pgbench -i -s {scale} into `{LIVE}` ...");
    let init = run(std::process::Command::new(tool(&bin, "pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string()])
        .envs(env(LIVE)));
    let size: String = sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size($1))")
        .bind(LIVE)
        .fetch_one(&mut adm)
        .await
        .unwrap();
    eprintln!("  {:.1}s, database size {size}", init.as_secs_f64());

    // Load: readers and a writer on the live database for the whole run.
    let live_opts = base.clone().database(LIVE);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..readers {
        tasks.push(tokio::spawn(load(
            live_opts.clone(),
            false,
            rows,
            stop.clone(),
        )));
    }
    let writer = tokio::spawn(load(live_opts.clone(), true, rows, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let origin = Instant::now();

    // 1. Ours: a plan with db.backup then db.restore (which uses that backup
    //    as its safety backup, so it does not dump twice).
    std::env::set_var("BENCH_LIVE_URL", url_for(&url, LIVE));
    let plan_text = format!(
        r#"
name: bench-restore-swap
budget: 30m
steps:
  - id: dump
    kind: db.backup
    url: ${{env:BENCH_LIVE_URL}}
    pg_bin_dir: "{bin}"
  - id: restore
    kind: db.restore
    after: [dump]
    url: ${{env:BENCH_LIVE_URL}}
    from: ${{steps.dump.path}}
    jobs: 2
    pg_bin_dir: "{bin}"
    checks:
      - name: accounts
        sql: SELECT count(*) FROM pgbench_accounts
        expect: "= {rows}"
"#,
        bin = bin.clone().unwrap_or_default()
    );
    let mut registry = Registry::with_core_kinds();
    rollback_db::register(&mut registry);
    let plan =
        Plan::from_yaml(&plan_text, "bench.yaml", &registry, &BTreeMap::new()).expect("plan");
    let state = tempfile::tempdir().unwrap();
    let executor = Executor::new(Arc::new(FileJournal::new(state.path())));
    eprintln!("ours: db.backup + db.restore (jobs 2) ...");
    let ours_started = Instant::now();
    let report = executor
        .run(
            &plan,
            RunOptions::new("benchmark").observer(|record| {
                if let rollback_core::Event::StepProgress { step, message } = &record.event {
                    eprintln!("  [{step}] {message}");
                }
            }),
        )
        .await
        .expect("run");
    let ours_done = Instant::now();
    assert_eq!(report.status, Some(RunStatus::Succeeded), "{report:#?}");
    let dump = report.steps.iter().find(|s| s.id == "dump").unwrap();
    let restore = report.steps.iter().find(|s| s.id == "restore").unwrap();
    let dump_path = dump.outputs["path"].as_str().unwrap().to_string();
    let restore_started = ours_started + Duration::from_millis(restore.start_ms.unwrap_or(0));
    let ours_dump_s = dump.duration_ms.unwrap_or(0) as f64 / 1000.0;
    let ours_restore_s = restore.duration_ms.unwrap_or(0) as f64 / 1000.0;
    let swap_ms = restore.outputs["swap_ms"].as_u64().unwrap_or(0);
    let previous = restore.outputs["previous"].as_str().unwrap().to_string();

    // 2. The yardstick: bare pg_restore -j2 of the same dump into an empty
    //    database, under the same load.
    let mut bares = Vec::new();
    for round in 1..=2 {
        adm.execute("CREATE DATABASE bench_bare").await.unwrap();
        eprintln!("bare pg_restore -j2 (round {round}) ...");
        bares.push(run(std::process::Command::new(tool(&bin, "pg_restore"))
            .args([
                "--jobs=2",
                "--exit-on-error",
                "--dbname",
                "dbname=bench_bare",
                &dump_path,
            ])
            .envs(env("bench_bare"))));
        drop_db(&mut adm, "bench_bare").await;
    }
    drop_db(&mut adm, &previous).await;

    // 3. The seeds' sequence (data-rollback.sh steps 2-4): pg_dump, drop and
    //    create the temp database, pg_restore (one job, as written), then the
    //    two renames in one transaction.
    eprintln!("seeds: pg_dump, create temp, pg_restore, rename ...");
    let seeds_started = Instant::now();
    let seed_dump = state.path().join("rollback_safety.dump");
    let seeds_dump = run(std::process::Command::new(tool(&bin, "pg_dump"))
        .args(["-Fc", "-f", seed_dump.to_str().unwrap()])
        .envs(env(LIVE)));
    let t = Instant::now();
    drop_db(&mut adm, "bench_live_temp").await;
    adm.execute("CREATE DATABASE bench_live_temp")
        .await
        .unwrap();
    run(std::process::Command::new(tool(&bin, "pg_restore"))
        .args(["--dbname", "dbname=bench_live_temp", dump_path.as_str()])
        .envs(env("bench_live_temp")));
    let seeds_restore = t.elapsed();
    let swap_started = Instant::now();
    // As written: fails while the application is connected.
    let literal = rename(&mut adm).await;
    let _ = adm.execute("ROLLBACK").await;
    let literal_result = match &literal {
        Ok(()) => "succeeded".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    // What an operator then does: end the sessions and try again, until no
    // client reconnects in between.
    let mut attempts = 1;
    if literal.is_err() {
        loop {
            attempts += 1;
            adm.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = 'bench_live' AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
            match rename(&mut adm).await {
                Ok(()) => break,
                Err(_) => {
                    let _ = adm.execute("ROLLBACK").await;
                    if attempts > 1000 {
                        panic!("the seeds' rename never got through");
                    }
                }
            }
        }
    }
    let seeds_swap = swap_started.elapsed();
    let seeds_done = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut read_ops = Vec::new();
    for t in tasks {
        read_ops.push(t.await.unwrap());
    }
    let write_ops = vec![writer.await.unwrap()];
    drop_db(&mut adm, "bench_live_old").await;
    let _ = std::fs::remove_file(&seed_dump);

    let reads_ours = failure_windows(&read_ops, restore_started, ours_done);
    let writes_ours = failure_windows(&write_ops, restore_started, ours_done);
    let reads_seeds = failure_windows(&read_ops, seeds_started, seeds_done);
    let writes_seeds = failure_windows(&write_ops, seeds_started, seeds_done);
    let total_reads: usize = read_ops.iter().map(Vec::len).sum();
    let total_writes: usize = write_ops.iter().map(Vec::len).sum();

    let bare_s = bares.iter().map(Duration::as_secs_f64).sum::<f64>() / bares.len() as f64;
    println!("restore_swap: pgbench scale {scale} ({rows} accounts, {size}), {readers} readers + 1 writer, 2 cores shared");
    println!(
        "  yardstick  bare pg_restore -j2 of the same dump: {bare_s:.2}s (mean of {})",
        bares
            .iter()
            .map(|d| format!("{:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  ours       db.restore (create temp, pg_restore -j2, checks, swap): {ours_restore_s:.2}s = {:.2}x bare; swap {swap_ms} ms; (db.backup before it: {ours_dump_s:.2}s)",
        ours_restore_s / bare_s
    );
    println!(
        "             reads failed:  {}",
        describe_windows(&reads_ours, origin)
    );
    println!(
        "             writes failed: {}",
        describe_windows(&writes_ours, origin)
    );
    println!(
        "  seeds      pg_dump {:.2}s + create temp & pg_restore (1 job) {:.2}s + rename {:.3}s = {:.2}s",
        seeds_dump.as_secs_f64(),
        seeds_restore.as_secs_f64(),
        seeds_swap.as_secs_f64(),
        (seeds_done - seeds_started).as_secs_f64()
    );
    println!("             rename as written {literal_result}; got through after {attempts} attempt(s) with pg_terminate_backend");
    println!(
        "             reads failed:  {}",
        describe_windows(&reads_seeds, origin)
    );
    println!(
        "             writes failed: {}",
        describe_windows(&writes_seeds, origin)
    );
    // Like for like: both sequences take a dump of the live database first.
    println!(
        "  end to end (dump + restore + swap): ours {:.2}s, seeds {:.2}s",
        (ours_done - ours_started).as_secs_f64(),
        (seeds_done - seeds_started).as_secs_f64()
    );
    println!("  load: {total_reads} reads, {total_writes} writes in total");
    let longest_read = reads_ours
        .iter()
        .map(|(s, e)| *e - *s)
        .max()
        .unwrap_or_default();
    println!(
        "  targets: reads fail < 1s: {} ({:.3}s); ours within 1.2x of bare: {} ({:.2}x)",
        if longest_read < Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        },
        longest_read.as_secs_f64(),
        if ours_restore_s <= 1.2 * bare_s {
            "met"
        } else {
            "MISSED"
        },
        ours_restore_s / bare_s
    );
    drop_db(&mut adm, LIVE).await;
}

/// The seeds' swap: both renames in one transaction.
async fn rename(adm: &mut PgConnection) -> Result<(), sqlx::Error> {
    adm.execute(
        "BEGIN; ALTER DATABASE bench_live RENAME TO bench_live_old; \
         ALTER DATABASE bench_live_temp RENAME TO bench_live; COMMIT",
    )
    .await
    .map(|_| ())
}

/// `url` with its database replaced (names here are plain).
fn url_for(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").unwrap() + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..path_start])
}
