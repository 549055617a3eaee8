//! `db.read_only` against every way a role can write that the real
//! PostgreSQL knows: column grants, sequences, TRUNCATE, REFERENCES, TRIGGER
//! (stopped and put back exactly), owners, superusers, PUBLIC and role
//! membership (refused, nothing changed), SECURITY DEFINER functions, default
//! privileges and CREATE (reported as not stopped).
//!
//! Each write is tried as the application role in a new session that first
//! runs `SET default_transaction_read_only = off`, as any client can.

mod restore_helpers;

use restore_helpers::*;
use rollback_core::Step;
use rollback_db::readonly::{ReadOnly, ReadOnlyConfig};
use serde_json::{json, Value};
use sqlx::{Connection, Executor};

const PASSWORD: &str = "app pw";

/// A database of the test's own and the server-wide roles it created; both
/// are dropped when this goes away, also when the test fails.
struct Fixture {
    admin: String,
    db: String,
    roles: Vec<String>,
    artifacts: tempfile::TempDir,
}

impl Fixture {
    /// `None`: no test server (skipped, or failing under CI=1).
    async fn new(db: &str, roles: &[&str]) -> Option<Fixture> {
        let admin = admin_url()?;
        fresh_db(&admin, db).await;
        let mut c = connect(&admin, "postgres").await;
        for role in roles {
            c.execute(format!("DROP ROLE IF EXISTS {}", q(role)).as_str())
                .await
                .unwrap();
            c.execute(format!("CREATE ROLE {} LOGIN PASSWORD '{PASSWORD}'", q(role)).as_str())
                .await
                .unwrap();
        }
        c.close().await.unwrap();
        Some(Fixture {
            admin,
            db: db.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            artifacts: tempfile::tempdir().unwrap(),
        })
    }

    async fn exec(&self, sql: &str) {
        exec_in(&self.admin, &self.db, sql).await
    }

    fn step(&self, config: Value) -> ReadOnly {
        let mut cfg = json!({"url": url_for(&self.admin, &self.db)});
        for (k, v) in config.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        ReadOnly::new(restore_helpers::config::<ReadOnlyConfig>(cfg)).expect("valid config")
    }

    fn ctx(&self, step: &str) -> rollback_core::StepContext {
        ctx(step, self.artifacts.path())
    }

    /// Runs `sql` as `role` in a new session that turned the read-only
    /// default off for itself; the SQLSTATE when it fails.
    async fn write_as(&self, role: &str, sql: &str) -> Result<(), String> {
        let url = url_with_user(&self.admin, role, PASSWORD, &self.db);
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        c.execute("SET default_transaction_read_only = off")
            .await
            .unwrap();
        let result = c.execute(sql).await.map(|_| ()).map_err(|e| match e {
            sqlx::Error::Database(d) => d.code().map(|c| c.to_string()).unwrap_or_default(),
            other => other.to_string(),
        });
        c.close().await.ok();
        result
    }

    /// The privilege catalog and the read-only setting: what `on` changes and
    /// `off` must put back.
    async fn catalog(&self) -> Vec<String> {
        let mut c = connect(&self.admin, &self.db).await;
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT format('table_privileges %s %s %s.%s %s %s', grantor, grantee, table_schema, table_name, \
                    privilege_type, is_grantable) \
             FROM information_schema.table_privileges WHERE table_schema IN ('public', 'scratch') \
             UNION ALL SELECT format('column_privileges %s %s %s.%s.%s %s %s', grantor, grantee, table_schema, \
                    table_name, column_name, privilege_type, is_grantable) \
             FROM information_schema.column_privileges WHERE table_schema IN ('public', 'scratch') \
             UNION ALL SELECT format('usage_privileges %s %s %s.%s %s %s', grantor, grantee, object_schema, \
                    object_name, object_type, is_grantable) \
             FROM information_schema.usage_privileges WHERE object_schema IN ('public', 'scratch') \
             UNION ALL SELECT format('relacl %s %s', c.oid::regclass, a) FROM pg_class c \
                    CROSS JOIN LATERAL unnest(c.relacl) a \
             WHERE c.relnamespace IN (SELECT oid FROM pg_namespace WHERE nspname IN ('public', 'scratch')) \
             UNION ALL SELECT format('attacl %s.%s %s', att.attrelid::regclass, att.attname, a) \
             FROM pg_attribute att CROSS JOIN LATERAL unnest(att.attacl) a \
             WHERE att.attrelid IN (SELECT oid FROM pg_class \
                    WHERE relnamespace IN (SELECT oid FROM pg_namespace WHERE nspname IN ('public', 'scratch'))) \
             UNION ALL SELECT format('default_acl %s %s %s', defaclrole::regrole, defaclnamespace, defaclacl) \
             FROM pg_default_acl \
             UNION ALL SELECT format('setting %s', s.setconfig) FROM pg_db_role_setting s \
             JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database() \
             ORDER BY 1",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
        rows
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let (admin, db, roles) = (self.admin.clone(), self.db.clone(), self.roles.clone());
        // Drop runs outside async: a runtime of its own on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut c = connect(&admin, "postgres").await;
                let _ = c
                    .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(&db)).as_str())
                    .await;
                for role in roles.iter().rev() {
                    let _ = c
                        .execute(format!("DROP ROLE IF EXISTS {}", q(role)).as_str())
                        .await;
                }
                c.close().await.ok();
            });
        })
        .join();
    }
}

/// One write per privilege `on` stops; `n` keeps created names apart.
fn writes(n: u32) -> Vec<(&'static str, String)> {
    vec![
        ("column UPDATE", "UPDATE cols SET c2 = c2 + 1".to_string()),
        (
            "column INSERT",
            "INSERT INTO cols (c1) VALUES (1)".to_string(),
        ),
        (
            "table and column UPDATE",
            "UPDATE \"Both Levels\" SET a = 1, b = 2".to_string(),
        ),
        (
            "sequence USAGE (nextval)",
            "SELECT nextval('order_ids')".to_string(),
        ),
        (
            "sequence UPDATE (setval)",
            "SELECT setval('invoice_ids', 100)".to_string(),
        ),
        ("DELETE", "DELETE FROM scratchpad".to_string()),
        ("TRUNCATE", "TRUNCATE scratchpad".to_string()),
        (
            "column REFERENCES",
            format!("CREATE TABLE scratch.code_refs_{n} (code text REFERENCES codes (code))"),
        ),
        (
            "INSERT through a view",
            "INSERT INTO notes VALUES ('x')".to_string(),
        ),
        (
            "REFERENCES",
            format!("CREATE TABLE scratch.refs_{n} (id int REFERENCES parents (id))"),
        ),
        (
            "TRIGGER",
            format!(
                "CREATE TRIGGER dedupe_{n} BEFORE UPDATE ON parents FOR EACH ROW \
                 EXECUTE FUNCTION suppress_redundant_updates_trigger()"
            ),
        ),
    ]
}

#[tokio::test]
async fn column_grants_sequences_truncate_references_and_trigger_stop_and_come_back_exactly() {
    let role = "rop \"cols\" app; --";
    let Some(fx) = Fixture::new("rop Columns \"Db\"", &[role]).await else {
        return;
    };
    let r = q(role);
    fx.exec(&format!(
        "CREATE TABLE cols (c1 int, c2 int DEFAULT 0); INSERT INTO cols VALUES (1, 1); \
         GRANT SELECT ON cols TO {r}; GRANT UPDATE (c2) ON cols TO {r}; GRANT INSERT (c1) ON cols TO {r}; \
         CREATE TABLE \"Both Levels\" (a int, b int); \
         GRANT SELECT, UPDATE ON \"Both Levels\" TO {r}; GRANT UPDATE (b) ON \"Both Levels\" TO {r} WITH GRANT OPTION; \
         CREATE SEQUENCE order_ids; GRANT USAGE ON SEQUENCE order_ids TO {r}; \
         CREATE SEQUENCE invoice_ids; GRANT UPDATE ON SEQUENCE invoice_ids TO {r}; \
         CREATE TABLE scratchpad (line text); GRANT TRUNCATE, DELETE ON scratchpad TO {r}; \
         CREATE TABLE codes (code text PRIMARY KEY); GRANT REFERENCES (code) ON codes TO {r}; \
         CREATE VIEW notes AS SELECT line FROM scratchpad; GRANT INSERT ON notes TO {r}; \
         CREATE TABLE parents (id int PRIMARY KEY); GRANT SELECT, REFERENCES, TRIGGER ON parents TO {r}; \
         CREATE SCHEMA scratch; GRANT USAGE, CREATE ON SCHEMA scratch TO {r};"
    ))
    .await;
    for (what, sql) in writes(1) {
        assert_eq!(fx.write_as(role, &sql).await, Ok(()), "{what} before `on`");
    }
    let before = fx.catalog().await;

    let on = fx.step(json!({"mode": "on", "role": role}));
    let out = on.run(&fx.ctx("stop_writes")).await.expect("on");
    for (what, sql) in writes(2) {
        assert_eq!(
            fx.write_as(role, &sql).await,
            Err("42501".to_string()),
            "{what} after `on` must be refused (permission denied)"
        );
    }
    // cols: UPDATE (c2), INSERT (c1); Both Levels: UPDATE, UPDATE (b); order_ids: USAGE;
    // invoice_ids: UPDATE; scratchpad: DELETE, TRUNCATE; codes: REFERENCES (code);
    // notes: INSERT; parents: REFERENCES, TRIGGER.
    assert_eq!(out["revoked"], json!(12), "{:#}", out["state"]);
    let reads = fx.write_as(role, "SELECT count(*) FROM cols").await;
    assert_eq!(reads, Ok(()), "reads still work");

    let off = fx.step(json!({"mode": "off", "state_file": out["state_file"]}));
    off.run(&fx.ctx("resume_writes")).await.expect("off");
    assert_eq!(
        fx.catalog().await,
        before,
        "off puts back exactly what was there"
    );
    for (what, sql) in writes(3) {
        assert_eq!(fx.write_as(role, &sql).await, Ok(()), "{what} after `off`");
    }
    // The preview names the column privileges too.
    let preview = on.preview(&fx.ctx("stop_writes")).await.expect("preview");
    assert!(
        preview
            .changes
            .iter()
            .any(|c| c == &format!("REVOKE UPDATE (\"c2\") ON TABLE \"public\".\"cols\" FROM {r}")),
        "{preview:?}"
    );
}

#[tokio::test]
async fn an_owner_is_refused_before_anything_changes() {
    let (app, owner) = ("rop owner app", "rop \"table owner\"");
    let Some(fx) = Fixture::new("rop Owner Db", &[app, owner]).await else {
        return;
    };
    fx.exec(&format!(
        "CREATE TABLE orders (id int); ALTER TABLE orders OWNER TO {a}; \
         CREATE TABLE invoices (id int); GRANT INSERT ON invoices TO {a}",
        a = q(app)
    ))
    .await;
    let before = fx.catalog().await;
    let on = fx.step(json!({"mode": "on", "role": app}));
    let err = on.run(&fx.ctx("stop_writes")).await.unwrap_err();
    let message = err.message().to_string();
    for part in [
        "role `rop owner app` owns (or is a member of the owner of) public.orders",
        "an owner can grant itself any privilege back",
        "nothing was changed",
        "stop the application's writers",
        "OWNER TO migrator",
        "NOLOGIN",
    ] {
        assert!(message.contains(part), "missing {part:?} in: {message}");
    }
    assert_eq!(
        on.preview(&fx.ctx("stop_writes"))
            .await
            .unwrap_err()
            .message(),
        message,
        "the preview says the same"
    );
    assert_eq!(fx.catalog().await, before, "nothing was changed");
    // Its grant on the table it does not own is still there too.
    assert_eq!(
        fx.write_as(app, "INSERT INTO invoices VALUES (1)").await,
        Ok(())
    );

    // Membership in the owning role is ownership too.
    fx.exec(&format!(
        "ALTER TABLE orders OWNER TO {o}; GRANT {o} TO {a}",
        o = q(owner),
        a = q(app)
    ))
    .await;
    let message = on
        .run(&fx.ctx("stop_writes"))
        .await
        .unwrap_err()
        .message()
        .to_string();
    assert!(
        message.contains("public.orders (owner rop \"table owner\")"),
        "{message}"
    );

    // The owner of the database owns the public schema (PostgreSQL 15 on),
    // and a schema's owner can drop the tables in it.
    let mut c = connect(&fx.admin, "postgres").await;
    c.execute(
        format!(
            "ALTER DATABASE {} OWNER TO {}; REVOKE {} FROM {}",
            q(&fx.db),
            q(app),
            q(owner),
            q(app)
        )
        .as_str(),
    )
    .await
    .unwrap();
    c.close().await.unwrap();
    let message = on
        .run(&fx.ctx("stop_writes"))
        .await
        .unwrap_err()
        .message()
        .to_string();
    assert!(
        message.contains("schema public (owner pg_database_owner)"),
        "{message}"
    );
}

#[tokio::test]
async fn writes_through_public_membership_or_another_grantor_are_refused_with_where_they_come_from()
{
    let (app, writer, grantor) = ("rop paths app", "rop writer", "rop grantor");
    let Some(fx) = Fixture::new("rop Paths Db", &[app, writer, grantor]).await else {
        return;
    };
    let (a, w, g) = (q(app), q(writer), q(grantor));
    fx.exec(&format!(
        "CREATE TABLE orders (id int, note text); GRANT SELECT, INSERT ON orders TO {a}; \
         GRANT UPDATE (note) ON orders TO PUBLIC"
    ))
    .await;
    let on = fx.step(json!({"mode": "on", "role": app}));
    let refused = |expected: &'static str| {
        let fx = &fx;
        let on = &on;
        async move {
            let before = fx.catalog().await;
            let message = on
                .run(&fx.ctx("stop_writes"))
                .await
                .unwrap_err()
                .message()
                .to_string();
            assert!(
                message.contains(expected),
                "missing {expected:?} in: {message}"
            );
            assert!(message.contains("nothing was changed"), "{message}");
            let preview = on.preview(&fx.ctx("stop_writes")).await.unwrap_err();
            assert!(
                preview.message().contains(expected),
                "{}",
                preview.message()
            );
            assert_eq!(fx.catalog().await, before, "nothing was changed");
        }
    };
    refused("public.orders: UPDATE (note) granted to PUBLIC").await;

    fx.exec(&format!(
        "REVOKE UPDATE (note) ON orders FROM PUBLIC; CREATE TABLE audit (line text); \
         GRANT INSERT ON audit TO {w}; GRANT {w} TO {a}"
    ))
    .await;
    refused("public.audit: INSERT through role \"rop writer\"").await;
    // Not inherited, but reachable with SET ROLE: the same.
    fx.exec(&format!("ALTER ROLE {a} NOINHERIT")).await;
    assert_eq!(
        fx.write_as(
            app,
            &format!("SET ROLE {w}; INSERT INTO audit VALUES ('x')")
        )
        .await,
        Ok(())
    );
    refused("public.audit: INSERT through role \"rop writer\"").await;

    fx.exec(&format!(
        "REVOKE {w} FROM {a}; ALTER ROLE {a} INHERIT; \
         GRANT DELETE ON orders TO {g} WITH GRANT OPTION; SET ROLE {g}; GRANT DELETE ON orders TO {a}; RESET ROLE"
    ))
    .await;
    refused("public.orders: DELETE granted by \"rop grantor\", not by the owner").await;

    // The advice for a member role works: stop the writer role first.
    fx.exec(&format!(
        "REVOKE DELETE ON orders FROM {g} CASCADE; GRANT {w} TO {a}"
    ))
    .await;
    let before = fx.catalog().await;
    let stop_writer = fx.step(json!({"mode": "on", "role": writer}));
    let writer_out = stop_writer
        .run(&fx.ctx("stop_writer"))
        .await
        .expect("writer");
    let out = on
        .run(&fx.ctx("stop_writes"))
        .await
        .expect("app, after its writer role");
    for sql in [
        "INSERT INTO orders VALUES (1)",
        "INSERT INTO audit VALUES ('y')",
    ] {
        assert_eq!(fx.write_as(app, sql).await, Err("42501".into()), "{sql}");
    }
    on.undo(&fx.ctx("stop_writes"), &out)
        .await
        .expect("undo app");
    stop_writer
        .undo(&fx.ctx("stop_writer"), &writer_out)
        .await
        .expect("undo writer");
    assert_eq!(fx.catalog().await, before);
    assert_eq!(
        fx.write_as(app, "INSERT INTO audit VALUES ('z')").await,
        Ok(())
    );
}

#[tokio::test]
async fn a_superuser_or_pg_write_all_data_member_is_refused() {
    let (app, admin_role) = ("rop super app", "rop admin");
    let Some(fx) = Fixture::new("rop Super Db", &[app, admin_role]).await else {
        return;
    };
    fx.exec(&format!(
        "CREATE TABLE orders (id int); GRANT pg_write_all_data TO {}",
        q(app)
    ))
    .await;
    let on = fx.step(json!({"mode": "on", "role": app}));
    let message = on
        .run(&fx.ctx("ro"))
        .await
        .unwrap_err()
        .message()
        .to_string();
    assert!(
        message.contains("is or can become pg_write_all_data"),
        "{message}"
    );
    fx.exec(&format!(
        "REVOKE pg_write_all_data FROM {a}; ALTER ROLE {s} SUPERUSER; GRANT {s} TO {a}",
        a = q(app),
        s = q(admin_role)
    ))
    .await;
    let before = fx.catalog().await;
    let message = on
        .run(&fx.ctx("ro"))
        .await
        .unwrap_err()
        .message()
        .to_string();
    assert!(
        message.contains("is or can become superuser \"rop admin\""),
        "{message}"
    );
    assert_eq!(fx.catalog().await, before);
    fx.exec(&format!("ALTER ROLE {} SUPERUSER", q(app))).await;
    let message = on
        .run(&fx.ctx("ro"))
        .await
        .unwrap_err()
        .message()
        .to_string();
    assert!(
        message.contains("role `rop super app` is or can become superuser \"rop super app\":"),
        "{message}"
    );
}

#[tokio::test]
async fn what_on_does_not_stop_is_said_at_on_and_in_the_preview() {
    let app = "rop unstopped app";
    let Some(fx) = Fixture::new("rop Unstopped Db", &[app]).await else {
        return;
    };
    let a = q(app);
    fx.exec(&format!(
        "CREATE TABLE orders (id int); GRANT SELECT, INSERT ON orders TO {a}; \
         CREATE FUNCTION add_order(n int) RETURNS void LANGUAGE sql SECURITY DEFINER \
           AS 'INSERT INTO public.orders VALUES (n)'; \
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT ON TABLES TO {a}; \
         GRANT CREATE ON SCHEMA public TO {a}; GRANT CREATE ON DATABASE {d} TO {a}",
        d = q(&fx.db)
    ))
    .await;
    let on = fx.step(json!({"mode": "on", "role": app}));
    let preview = on.preview(&fx.ctx("ro")).await.expect("preview");
    let out = on.run(&fx.ctx("ro")).await.expect("on");
    let not_stopped: Vec<String> = serde_json::from_value(out["not_stopped"].clone()).unwrap();
    assert_eq!(not_stopped.len(), 3, "{not_stopped:#?}");
    for (said, part) in not_stopped.iter().zip([
        "SECURITY DEFINER): public.add_order(n integer) (owner postgres)",
        "default privileges (ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public ON TABLES: INSERT)",
        "can create tables in schema public, the database (new schemas) (CREATE)",
    ]) {
        assert!(said.contains(part), "missing {part:?} in: {said}");
        assert!(
            preview.changes.contains(&format!("not stopped: {said}")),
            "{preview:?}"
        );
    }
    // What it says is true: the direct write is stopped, the definer's is not.
    assert_eq!(
        fx.write_as(app, "INSERT INTO orders VALUES (1)").await,
        Err("42501".into())
    );
    assert_eq!(fx.write_as(app, "SELECT add_order(2)").await, Ok(()));
    on.undo(&fx.ctx("ro"), &out).await.expect("undo");
}

#[tokio::test]
async fn off_skips_a_column_that_is_gone_and_gives_back_the_rest() {
    let role = "rop gone app";
    let Some(fx) = Fixture::new("rop Gone Column Db", &[role]).await else {
        return;
    };
    let r = q(role);
    fx.exec(&format!(
        "CREATE TABLE cols (c1 int, c2 int); GRANT SELECT ON cols TO {r}; \
         GRANT UPDATE (c2) ON cols TO {r}; GRANT INSERT (c1) ON cols TO {r}"
    ))
    .await;
    let on = fx.step(json!({"mode": "on", "role": role}));
    let out = on.run(&fx.ctx("ro")).await.expect("on");
    assert_eq!(out["revoked"], json!(2));
    // A restore brought back a copy without c2.
    fx.exec("BEGIN READ WRITE; ALTER TABLE cols DROP COLUMN c2; COMMIT")
        .await;
    on.undo(&fx.ctx("ro"), &out)
        .await
        .expect("undo skips the missing column");
    assert_eq!(
        fx.write_as(role, "INSERT INTO cols (c1) VALUES (1)").await,
        Ok(())
    );
}
