//! `db.backup` and `db.restore` against the real PostgreSQL started by
//! scripts/testenv/postgres.sh; each test in databases of its own.

mod restore_helpers;

use restore_helpers::*;
use rollback_core::{Step, StepContext};
use rollback_db::backup::{Backup, BackupConfig};
use rollback_db::restore::{Restore, RestoreConfig};
use serde_json::json;
use sqlx::{Connection, Executor};

/// Creates `name` with an `orders` table of `rows` rows (totals 1..=rows).
async fn seeded(admin: &str, name: &str, rows: i64) {
    fresh_db(admin, name).await;
    let mut c = connect(admin, name).await;
    c.execute("CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL)")
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders SELECT g, g FROM generate_series(1, $1) g")
        .bind(rows)
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
}

async fn count(admin: &str, db: &str, sql: &str) -> i64 {
    let mut c = connect(admin, db).await;
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap();
    c.close().await.unwrap();
    n
}

async fn backup(
    admin: &str,
    db: &str,
    ctx: &StepContext,
    extra: serde_json::Value,
) -> rollback_core::Outputs {
    let mut cfg = json!({"url": url_for(admin, db), "pg_bin_dir": bin_dir()});
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let step = Backup::new(config::<BackupConfig>(cfg)).unwrap();
    step.run(ctx).await.expect("backup")
}

/// Simulates the bad change a rollback undoes: rows lost, a corrupt row added.
async fn damage(admin: &str, db: &str) {
    let mut c = connect(admin, db).await;
    c.execute("DELETE FROM orders WHERE id > 50; INSERT INTO orders VALUES (1000, -5)")
        .await
        .unwrap();
    c.close().await.unwrap();
}

fn restore_step(admin: &str, db: &str, from: &str, checks: serde_json::Value) -> Restore {
    Restore::new(config::<RestoreConfig>(json!({
        "url": url_for(admin, db),
        "from": from,
        "jobs": 2,
        "pg_bin_dir": bin_dir(),
        "checks": checks,
    })))
    .unwrap()
}

#[tokio::test]
async fn backup_is_verified_and_its_size_and_checksum_describe_the_file() {
    let Some(admin) = admin_url() else { return };
    let db = "bk verified \"Quoted\" Db";
    seeded(&admin, db, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx("snap", dir.path());
    let out = backup(&admin, db, &ctx, json!({})).await;
    let path = out["path"].as_str().unwrap();
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(out["size"], json!(bytes.len()));
    use sha2::Digest;
    assert_eq!(
        out["sha256"],
        json!(hex::encode(sha2::Sha256::digest(&bytes)))
    );
    assert_eq!(out["verified"], json!(true));
    assert_eq!(out["format"], json!("custom"));
    assert_eq!(out["database"], json!(db));
    assert!(out["taken_at"].as_str().unwrap().ends_with('Z'));
    // Running it again reuses the verified file (idempotent).
    let again = backup(&admin, db, &ctx, json!({})).await;
    assert_eq!(again["sha256"], out["sha256"]);

    // The directory format, dumped in parallel, verifies too.
    let ctx2 = self::ctx("snapdir", dir.path());
    let out = backup(&admin, db, &ctx2, json!({"format": "directory", "jobs": 2})).await;
    assert!(std::path::Path::new(out["path"].as_str().unwrap()).is_dir());
    assert_eq!(out["format"], json!("directory"));
    assert!(out["size"].as_u64().unwrap() > 0);
    assert_eq!(out["sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn backup_failure_never_shows_the_password() {
    let Some(admin) = admin_url() else { return };
    let password = admin
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .to_string();
    std::env::set_var(
        "ROLLBACK_TEST_BK_URL",
        url_for(&admin, "bk no such database"),
    );
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx("snap", dir.path());
    let step = Backup::new(config::<BackupConfig>(json!({
        "url": "${env:ROLLBACK_TEST_BK_URL}", "pg_bin_dir": bin_dir()
    })))
    .unwrap();
    let err = step.run(&ctx).await.unwrap_err();
    let text = format!("{} {}", err.full_message(), err.detail().unwrap_or(""));
    assert!(text.contains("pg_dump"), "{text}");
    assert!(text.contains("bk no such database"), "{text}");
    assert!(!text.contains(&password), "password leaked: {text}");
}

#[tokio::test]
async fn restore_swaps_while_sessions_are_open_and_undo_swaps_back() {
    let Some(admin) = admin_url() else { return };
    // Injection-shaped, quoted, spaced and capitalised.
    let db = "rs Live\"; DROP DATABASE postgres; --";
    seeded(&admin, db, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx("restore", dir.path());
    let snap = backup(&admin, db, &ctx, json!({})).await;
    damage(&admin, db).await;

    // Sessions opened before the swap: one idle, one inside a transaction.
    let mut reader = connect(&admin, db).await;
    let mut in_tx = connect(&admin, db).await;
    in_tx
        .execute("BEGIN; SELECT count(*) FROM orders")
        .await
        .unwrap();

    let step = restore_step(
        &admin,
        db,
        snap["path"].as_str().unwrap(),
        json!([
            {"name": "all orders", "sql": "SELECT count(*) FROM orders", "expect": "= 100"},
            {"sql": "SELECT count(*) FROM orders WHERE total < 0", "expect": "= 0"}
        ]),
    );
    let out = step.run(&ctx).await.expect("restore");
    assert_eq!(out["database"], json!(db));
    assert!(out["sessions_ended"].as_u64().unwrap() >= 2, "{out:?}");
    assert_eq!(out["checks"].as_array().unwrap().len(), 2);
    let previous = out["previous"].as_str().unwrap().to_string();
    assert!(previous.starts_with("rs Live\"; DROP"));
    // A safety backup was taken (no verified backup in a standalone run).
    assert!(std::path::Path::new(out["safety_backup"].as_str().unwrap()).exists());

    // The old sessions were ended; readers reconnect and see the restored data.
    assert!(sqlx::query("SELECT 1").execute(&mut reader).await.is_err());
    assert!(sqlx::query("SELECT 1").execute(&mut in_tx).await.is_err());
    assert_eq!(count(&admin, db, "SELECT count(*) FROM orders").await, 100);
    assert_eq!(
        count(&admin, db, "SELECT count(*) FROM orders WHERE total < 0").await,
        0
    );
    // The replaced database is kept, with its damage, and accepts connections.
    assert_eq!(
        count(&admin, &previous, "SELECT count(*) FROM orders").await,
        51
    );
    assert!(
        databases_like(&admin, "rs Live\"; DROP DATABASE postgres; --_restore")
            .await
            .is_empty()
    );

    // Running it again is a no-op.
    let again = step.run(&ctx).await.expect("re-run");
    assert_eq!(again["database"], json!(db));
    assert_eq!(count(&admin, db, "SELECT count(*) FROM orders").await, 100);

    // Undo swaps back: the damaged database is live again, the restored one kept.
    step.undo(&ctx, &out).await.expect("undo");
    assert_eq!(count(&admin, db, "SELECT count(*) FROM orders").await, 51);
    let kept = databases_like(&admin, "rs Live\"; DROP DATABASE postgres; --_restore").await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        count(&admin, &kept[0], "SELECT count(*) FROM orders").await,
        100
    );
    assert!(databases_like(&admin, &previous).await.is_empty());
    // Undo again is a no-op.
    step.undo(&ctx, &out).await.expect("second undo");
    assert_eq!(count(&admin, db, "SELECT count(*) FROM orders").await, 51);
}

#[tokio::test]
async fn failing_check_leaves_the_live_database_untouched_and_no_temp_database() {
    let Some(admin) = admin_url() else { return };
    let db = "rf Check Fails";
    seeded(&admin, db, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx("restore", dir.path());
    let snap = backup(&admin, db, &ctx, json!({})).await;
    damage(&admin, db).await;
    let mut session = connect(&admin, db).await;

    let step = restore_step(
        &admin,
        db,
        snap["path"].as_str().unwrap(),
        json!([{"name": "too many", "sql": "SELECT count(*) FROM orders", "expect": ">= 1000"}]),
    );
    let err = step.run(&ctx).await.unwrap_err();
    assert!(
        err.message().contains("check `too many` failed"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("untouched"), "{}", err.message());
    // Live: same data, its session still works, no temporary database left.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(n, 51);
    assert_eq!(
        databases_like(&admin, "rf Check Fails").await,
        vec![db.to_string()]
    );
}

#[tokio::test]
async fn truncated_dump_fails_mid_restore_and_leaves_the_live_database_intact() {
    let Some(admin) = admin_url() else { return };
    let db = "rt Truncated Dump";
    seeded(&admin, db, 20000).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx("restore", dir.path());
    let snap = backup(&admin, db, &ctx, json!({"compress": 0})).await;
    let bytes = std::fs::read(snap["path"].as_str().unwrap()).unwrap();
    let cut = dir.path().join("truncated.dump");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    damage(&admin, db).await;

    let step = restore_step(&admin, db, cut.to_str().unwrap(), json!([]));
    let err = step.run(&ctx).await.unwrap_err();
    assert!(err.message().contains("failed"), "{}", err.message());
    assert!(err.message().contains("untouched"), "{}", err.message());
    assert_eq!(count(&admin, db, "SELECT count(*) FROM orders").await, 51);
    assert_eq!(
        databases_like(&admin, "rt Truncated Dump").await,
        vec![db.to_string()]
    );
    let mut c = connect(&admin, "postgres").await;
    let allowed: bool =
        sqlx::query_scalar("SELECT datallowconn FROM pg_database WHERE datname = $1")
            .bind(db)
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert!(allowed);
}

#[tokio::test]
async fn failure_during_the_swap_is_rolled_back_and_connections_allowed_again() {
    let Some(admin) = admin_url() else { return };
    // The restoring role owns the database and may create databases, but it
    // may not end a superuser's session: the swap fails after connections
    // were blocked, and must be repaired.
    let role = "rw swapper \"Role\"";
    let db = "rw Swap Fails";
    ensure_role(&admin, role, "LOGIN CREATEDB PASSWORD 'swap pw'").await;
    fresh_db(&admin, db).await;
    let mut c = connect(&admin, "postgres").await;
    c.execute(format!("ALTER DATABASE {} OWNER TO {}", q(db), q(role)).as_str())
        .await
        .unwrap();
    c.close().await.unwrap();
    let url = url_with_user(&admin, role, "swap pw", db);
    let mut owner = sqlx::PgConnection::connect(&url).await.unwrap();
    owner
        .execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric); INSERT INTO orders SELECT g, g FROM generate_series(1, 30) g")
        .await
        .unwrap();
    owner.close().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx("restore", dir.path());
    let backup = Backup::new(config::<BackupConfig>(
        json!({"url": url, "pg_bin_dir": bin_dir()}),
    ))
    .unwrap();
    let snap = backup.run(&ctx).await.expect("backup as owner");
    damage(&admin, db).await;
    // A superuser's session the owner cannot end.
    let mut superuser_session = connect(&admin, db).await;

    let step = Restore::new(config::<RestoreConfig>(json!({
        "url": url, "from": snap["path"], "pg_bin_dir": bin_dir()
    })))
    .unwrap();
    let err = step.run(&ctx).await.unwrap_err();
    assert!(
        err.message()
            .contains("the swap failed and was rolled back"),
        "{}",
        err.message()
    );
    // The live database: same name, same data, accepting connections; the
    // superuser's session still works; no restored copy left behind.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut superuser_session)
        .await
        .unwrap();
    assert_eq!(n, 31); // 30 rows, damage() adds one
    let mut fresh = sqlx::PgConnection::connect(&url)
        .await
        .expect("connections allowed again");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut fresh)
        .await
        .unwrap();
    assert_eq!(n, 31); // 30 rows, damage() adds one
    fresh.close().await.unwrap();
    assert_eq!(
        databases_like(&admin, "rw Swap Fails").await,
        vec![db.to_string()]
    );
}
