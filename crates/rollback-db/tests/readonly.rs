//! `db.read_only` against the real PostgreSQL started by scripts/testenv/postgres.sh.

mod restore_helpers;

use restore_helpers::*;
use rollback_core::Step;
use rollback_db::readonly::{ReadOnly, ReadOnlyConfig};
use serde_json::json;
use sqlx::{Connection, Executor};

/// `admin` URL with the user and password replaced.
fn url_as(admin: &str, user: &str, password: &str, db: &str) -> String {
    let url = url_for(admin, db);
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').unwrap().1;
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!("{scheme}://{}:{}@{host}", enc(user), enc(password))
}

/// A database with two tables, an application role holding write grants
/// (one with grant option), returning the role's URL.
async fn setup(admin: &str, db: &str, role: &str) -> String {
    fresh_db(admin, db).await;
    ensure_role(admin, role, "LOGIN PASSWORD 'app pw'").await;
    let mut c = connect(admin, db).await;
    c.execute(
        format!(
            "CREATE TABLE orders (id int); CREATE TABLE \"Audit Log\" (line text); \
             GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {r}; \
             GRANT SELECT ON \"Audit Log\" TO {r}; GRANT INSERT ON \"Audit Log\" TO {r} WITH GRANT OPTION",
            r = q(role)
        )
        .as_str(),
    )
    .await
    .unwrap();
    c.close().await.unwrap();
    url_as(admin, role, "app pw", db)
}

/// The role's privileges on the database's tables and the database setting.
async fn snapshot(admin: &str, db: &str, role: &str) -> (Vec<(String, String, bool)>, Vec<String>) {
    let mut c = connect(admin, db).await;
    let grants: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, a.privilege_type, a.is_grantable FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1) \
         ORDER BY 1, 2",
    )
    .bind(role)
    .fetch_all(&mut c)
    .await
    .unwrap();
    let settings: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
         WHERE d.datname = $1 AND s.setrole = 0",
    )
    .bind(db)
    .fetch_optional(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    (grants, settings.unwrap_or_default())
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn read_only_rejects_writes_from_an_open_session_and_off_restores_exactly() {
    let Some(admin) = admin_url() else { return };
    let (db, role) = ("ro Open \"Session\" Db", "ro app \"Role\"; --");
    let app_url = setup(&admin, db, role).await;
    let before = snapshot(&admin, db, role).await;

    let mut app = sqlx::PgConnection::connect(&app_url).await.unwrap();
    app.execute("INSERT INTO orders VALUES (1)").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx("read_only", dir.path());
    let on = ReadOnly::new(config::<ReadOnlyConfig>(json!({
        "url": url_for(&admin, db), "mode": "on", "role": role, "terminate_sessions": false
    })))
    .unwrap();
    let out = on.run(&ctx).await.expect("on");
    assert_eq!(out["revoked"], json!(4)); // orders: INSERT, UPDATE, DELETE; "Audit Log": INSERT
    assert_eq!(out["state"]["setting_before"], json!(null));
    let state_file = out["state_file"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&state_file).exists());

    // The session opened before the stop cannot write, even after undoing
    // the read-only default for itself.
    let err = app
        .execute("INSERT INTO orders VALUES (2)")
        .await
        .unwrap_err();
    assert!(
        matches!(sqlstate(&err).as_deref(), Some("42501") | Some("25006")),
        "{err}"
    );
    app.execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    let err = app
        .execute("INSERT INTO \"Audit Log\" VALUES ('x')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(n, 1, "reads still work");
    // A new session starts read-only.
    let mut fresh = sqlx::PgConnection::connect(&app_url).await.unwrap();
    let ro: String = sqlx::query_scalar("SHOW default_transaction_read_only")
        .fetch_one(&mut fresh)
        .await
        .unwrap();
    assert_eq!(ro, "on");
    // Running `on` again changes nothing and keeps the first record.
    let again = on.run(&ctx).await.expect("on again");
    assert_eq!(again["state"]["revoked"], out["state"]["revoked"]);

    // `off` from the state file puts back exactly what was there.
    let off = ReadOnly::new(config::<ReadOnlyConfig>(json!({
        "url": url_for(&admin, db), "mode": "off", "state_file": state_file
    })))
    .unwrap();
    off.run(&self::ctx("read_write", dir.path()))
        .await
        .expect("off");
    assert_eq!(snapshot(&admin, db, role).await, before);
    app.execute("INSERT INTO orders VALUES (3)").await.unwrap();
}

#[tokio::test]
async fn read_only_ends_the_roles_sessions_and_undo_restores_the_previous_setting() {
    let Some(admin) = admin_url() else { return };
    let (db, role) = ("ro Ends Sessions", "ro app ends");
    let app_url = setup(&admin, db, role).await;
    // A setting that was there before must come back as it was.
    let mut c = connect(&admin, "postgres").await;
    c.execute(
        format!(
            "ALTER DATABASE {} SET default_transaction_read_only = off",
            q(db)
        )
        .as_str(),
    )
    .await
    .unwrap();
    c.close().await.unwrap();
    let before = snapshot(&admin, db, role).await;

    let mut in_tx = sqlx::PgConnection::connect(&app_url).await.unwrap();
    in_tx
        .execute("BEGIN; INSERT INTO orders VALUES (1)")
        .await
        .unwrap();
    let mut admin_session = connect(&admin, db).await;

    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx("read_only", dir.path());
    let on = ReadOnly::new(config::<ReadOnlyConfig>(json!({
        "url": url_for(&admin, db), "mode": "on", "role": role
    })))
    .unwrap();
    let out = on.run(&ctx).await.expect("on");
    assert_eq!(out["sessions_ended"], json!(1));
    assert_eq!(out["state"]["setting_before"], json!("off"));
    // The application's open transaction is gone; the admin's session is not.
    assert!(in_tx.execute("COMMIT").await.is_err());
    sqlx::query("SELECT 1")
        .execute(&mut admin_session)
        .await
        .unwrap();
    let mut app = sqlx::PgConnection::connect(&app_url).await.unwrap();
    let err = app
        .execute("INSERT INTO orders VALUES (2)")
        .await
        .unwrap_err();
    assert!(
        matches!(sqlstate(&err).as_deref(), Some("42501") | Some("25006")),
        "{err}"
    );

    on.undo(&ctx, &out).await.expect("undo");
    assert_eq!(snapshot(&admin, db, role).await, before);
    let mut app = sqlx::PgConnection::connect(&app_url).await.unwrap();
    app.execute("INSERT INTO orders VALUES (4)").await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(n, 1, "the ended transaction's row was never committed");
}
