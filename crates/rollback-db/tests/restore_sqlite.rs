//! `db.backup` and `db.restore` on SQLite files: no server needed.

use rollback_core::{Step, StepContext};
use rollback_db::backup::{Backup, BackupConfig};
use rollback_db::restore::{Restore, RestoreConfig};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Executor};

async fn open(path: &std::path::Path) -> SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap()
}

async fn orders(path: &std::path::Path) -> i64 {
    let mut c = open(path).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    n
}

#[tokio::test]
async fn sqlite_backup_restore_and_undo() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("shop's live.db");
    let mut c = open(&live).await;
    c.execute("PRAGMA journal_mode = WAL; CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL NOT NULL)")
        .await
        .unwrap();
    for i in 1..=100 {
        sqlx::query("INSERT INTO orders VALUES (?, ?)")
            .bind(i)
            .bind(i as f64)
            .execute(&mut c)
            .await
            .unwrap();
    }
    let url = format!("sqlite://{}", live.display());
    let ctx = StepContext::standalone("restore", dir.path().join("state"));

    // An online backup while a connection is open, verified.
    let backup =
        Backup::new(serde_json::from_value::<BackupConfig>(json!({"url": url})).unwrap()).unwrap();
    let snap = backup.run(&ctx).await.expect("backup");
    assert_eq!(snap["verified"], json!(true));
    assert_eq!(snap["format"], json!("sqlite"));
    let bytes = std::fs::read(snap["path"].as_str().unwrap()).unwrap();
    assert_eq!(snap["size"], json!(bytes.len()));
    use sha2::Digest;
    assert_eq!(
        snap["sha256"],
        json!(hex::encode(sha2::Sha256::digest(&bytes)))
    );

    // The bad change.
    c.execute("DELETE FROM orders WHERE id > 10; INSERT INTO orders VALUES (1000, -1)")
        .await
        .unwrap();
    c.close().await.unwrap();
    assert_eq!(orders(&live).await, 11);

    // A failing check leaves the live file alone and no copy behind.
    let failing = Restore::new(
        serde_json::from_value::<RestoreConfig>(json!({
            "url": url, "from": snap["path"],
            "checks": [{"sql": "SELECT count(*) FROM orders", "expect": "> 100"}]
        }))
        .unwrap(),
    )
    .unwrap();
    let err = failing.run(&ctx).await.unwrap_err();
    assert!(err.message().contains("untouched"), "{}", err.message());
    assert_eq!(orders(&live).await, 11);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let restore = Restore::new(
        serde_json::from_value::<RestoreConfig>(json!({
            "url": url, "from": snap["path"],
            "checks": [
                {"sql": "SELECT count(*) FROM orders", "expect": "= 100"},
                {"sql": "SELECT count(*) FROM orders WHERE total < 0", "expect": "= 0"}
            ]
        }))
        .unwrap(),
    )
    .unwrap();
    let out = restore.run(&ctx).await.expect("restore");
    assert_eq!(orders(&live).await, 100);
    let before = std::path::PathBuf::from(out["previous"].as_str().unwrap());
    assert!(before.to_string_lossy().ends_with(".before-standalone"));
    assert_eq!(orders(&before).await, 11);
    assert!(std::path::Path::new(out["safety_backup"].as_str().unwrap()).exists());
    // Again: a no-op.
    restore.run(&ctx).await.expect("re-run");
    assert_eq!(orders(&live).await, 100);

    // Undo swaps back; again is a no-op.
    restore.undo(&ctx, &out).await.expect("undo");
    assert_eq!(orders(&live).await, 11);
    restore.undo(&ctx, &out).await.expect("undo again");
    assert_eq!(orders(&live).await, 11);
}

/// A connection still reading the live file keeps its write-ahead log from
/// being checkpointed: the swap is refused (the log would be replayed into
/// the restored file) and the live file is left as it was.
#[tokio::test]
async fn sqlite_restore_refuses_while_the_live_file_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("busy.db");
    let mut writer = open(&live).await;
    writer
        .execute("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    writer
        .execute("INSERT INTO orders VALUES (1), (2), (3)")
        .await
        .unwrap();
    let url = format!("sqlite://{}", live.display());
    let ctx = StepContext::standalone("restore", dir.path().join("state"));
    let snap = Backup::new(serde_json::from_value::<BackupConfig>(json!({"url": url})).unwrap())
        .unwrap()
        .run(&ctx)
        .await
        .expect("backup");
    writer
        .execute("INSERT INTO orders VALUES (4)")
        .await
        .unwrap();
    // The application: an open read transaction pins the log.
    let mut reader = open(&live).await;
    reader.execute("BEGIN").await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut reader)
        .await
        .unwrap();
    assert_eq!(seen, 4);
    writer
        .execute("INSERT INTO orders VALUES (5)")
        .await
        .unwrap();

    let restore = Restore::new(
        serde_json::from_value::<RestoreConfig>(json!({"url": url, "from": snap["path"]})).unwrap(),
    )
    .unwrap();
    let err = restore.run(&ctx).await.unwrap_err();
    assert!(
        err.message().contains("is in use") && err.message().contains("stop the application"),
        "{}",
        err.message()
    );
    reader.execute("COMMIT").await.unwrap();
    reader.close().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut writer)
        .await
        .unwrap();
    assert_eq!(rows, 5, "the live file is untouched");
    writer.close().await.unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-") || n.contains(".before-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Once the application has let go, the same restore goes through.
    let out = restore.run(&ctx).await.expect("restore");
    assert_eq!(orders(&live).await, 3);
    assert!(out["previous"].as_str().is_some());
}
