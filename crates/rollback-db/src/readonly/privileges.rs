//! What an application role can write, read from PostgreSQL's catalogs.
//!
//! `on` revokes the role's own grants (table, column and sequence
//! privileges, as the owner granted them) and then asks the server, with
//! `has_*_privilege`, whether the role or any role it is a member of can
//! still write. What privileges cannot stop (an owner, a superuser) is
//! refused before anything changes; what `on` does not stop (functions that
//! run as their owner, default privileges for tables created later, CREATE)
//! is reported as not stopped.

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::restore::quote_ident;

/// Table privileges that write the table or change what it holds or accepts:
/// rows (INSERT, UPDATE, DELETE, TRUNCATE), triggers on it (TRIGGER) and
/// foreign keys that point at it (REFERENCES adds triggers to it).
pub const TABLE_WRITES: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

/// The same, granted on single columns (`GRANT UPDATE (c) ON t`).
pub const COLUMN_WRITES: &[&str] = &["INSERT", "UPDATE", "REFERENCES"];

/// Sequence privileges that advance or set it (`nextval` needs USAGE or
/// UPDATE, `setval` UPDATE).
pub const SEQUENCE_WRITES: &[&str] = &["USAGE", "UPDATE"];

/// Relation kinds whose privileges are revoked: tables, partitioned tables,
/// views (updatable ones write their table), foreign tables, sequences.
const KINDS: &str = "('r', 'p', 'v', 'f', 'S')";

/// What a revoked privilege was on.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Object {
    /// A table, view or foreign table (`ON TABLE`).
    #[default]
    Table,
    /// A sequence (`ON SEQUENCE`).
    Sequence,
}

/// One privilege `on` revoked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct RevokedPrivilege {
    /// Schema of the table or sequence.
    pub schema: String,
    /// The table or sequence.
    pub table: String,
    /// Table (the default, also in records written before sequences were
    /// covered) or sequence.
    #[serde(default)]
    pub object: Object,
    /// The column, for a column privilege (`GRANT UPDATE (c) ON t`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER or (sequences) USAGE.
    pub privilege: String,
    /// Whether the role could grant it on (WITH GRANT OPTION).
    pub grantable: bool,
}

impl RevokedPrivilege {
    /// `PRIV [(column)] ON TABLE|SEQUENCE schema.name`.
    pub fn target(&self) -> String {
        let column = self
            .column
            .as_deref()
            .map(|c| format!(" ({})", quote_ident(c)))
            .unwrap_or_default();
        let object = match self.object {
            Object::Table => "TABLE",
            Object::Sequence => "SEQUENCE",
        };
        format!(
            "{}{column} ON {object} {}.{}",
            self.privilege,
            quote_ident(&self.schema),
            quote_ident(&self.table)
        )
    }

    /// The statement that takes it from `role`.
    pub fn revoke_sql(&self, role: &str) -> String {
        format!("REVOKE {} FROM {}", self.target(), quote_ident(role))
    }

    /// The statement that gives it back to `role`, exactly as it was.
    pub fn grant_sql(&self, role: &str) -> String {
        format!(
            "GRANT {} TO {}{}",
            self.target(),
            quote_ident(role),
            if self.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        )
    }
}

/// The role's write privileges on the schemas' tables, columns and
/// sequences, as granted by each object's owner (relacl, or the owner's
/// defaults when it is NULL; attacl). A grant by anyone else is not removed
/// by the owner's REVOKE: [`write_paths`] reports it.
pub async fn write_grants(
    conn: &mut PgConnection,
    role: &str,
    schemas: &[String],
) -> Result<Vec<RevokedPrivilege>, sqlx::Error> {
    let sql = format!(
        "WITH app AS (SELECT oid FROM pg_roles WHERE rolname = $2), \
         rel AS (SELECT c.oid, n.nspname, c.relname, c.relkind, c.relowner, c.relacl \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN {KINDS} AND n.nspname = ANY($1)) \
         SELECT r.nspname::text, r.relname::text, r.relkind = 'S', NULL::text, a.privilege_type, a.is_grantable \
         FROM rel r CROSS JOIN LATERAL aclexplode(coalesce(r.relacl, \
              acldefault(CASE WHEN r.relkind = 'S' THEN 's'::\"char\" ELSE 'r'::\"char\" END, r.relowner))) a \
         WHERE a.grantee = (SELECT oid FROM app) AND a.grantor = r.relowner \
           AND a.privilege_type = ANY(CASE WHEN r.relkind = 'S' THEN $4 ELSE $3 END) \
         UNION ALL \
         SELECT r.nspname::text, r.relname::text, false, att.attname::text, a.privilege_type, a.is_grantable \
         FROM rel r JOIN pg_attribute att ON att.attrelid = r.oid AND att.attnum > 0 AND NOT att.attisdropped \
         CROSS JOIN LATERAL aclexplode(att.attacl) a \
         WHERE r.relkind <> 'S' AND a.grantee = (SELECT oid FROM app) AND a.grantor = r.relowner \
           AND a.privilege_type = ANY($5) \
         ORDER BY 1, 2, 4 NULLS FIRST, 5"
    );
    let rows = sqlx::query(&sql)
        .bind(schemas)
        .bind(role)
        .bind(TABLE_WRITES)
        .bind(SEQUENCE_WRITES)
        .bind(COLUMN_WRITES)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .map(|r| RevokedPrivilege {
            schema: r.get(0),
            table: r.get(1),
            object: if r.get::<bool, _>(2) {
                Object::Sequence
            } else {
                Object::Table
            },
            column: r.get(3),
            privilege: r.get(4),
            grantable: r.get(5),
        })
        .collect())
}

/// Why privileges cannot stop `role` at all, if they cannot: it is (or can
/// become) a superuser, is a member of `pg_write_all_data`, or owns (or is a
/// member of the owner of) a table, sequence or schema of `schemas`. Read
/// before anything changes.
pub async fn unstoppable(
    conn: &mut PgConnection,
    role: &str,
    schemas: &[String],
) -> Result<Option<String>, sqlx::Error> {
    // A superuser is a member of every role: name only itself then.
    let powers: Vec<String> = sqlx::query_scalar(
        "SELECT CASE WHEN rolsuper THEN format('superuser %I', rolname) ELSE format('%I', rolname) END \
         FROM pg_roles WHERE (rolsuper OR rolname = 'pg_write_all_data') AND pg_has_role($1, oid, 'MEMBER') \
           AND (rolname = $1 OR NOT (SELECT rolsuper FROM pg_roles WHERE rolname = $1)) \
         ORDER BY 1",
    )
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    if !powers.is_empty() {
        return Ok(Some(format!(
            "role `{role}` is or can become {}: privileges do not bind a superuser, and pg_write_all_data writes \
             every table whatever the grants say, so read-only mode cannot stop its writes. Give the \
             application a role without them, or stop the application's writers instead",
            powers.join(", ")
        )));
    }
    let owned: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT format('%I.%I', n.nspname, c.relname), pg_get_userbyid(c.relowner)::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN {KINDS} AND n.nspname = ANY($1) AND pg_has_role($2, c.relowner, 'MEMBER') \
         UNION ALL \
         SELECT format('schema %I', n.nspname), pg_get_userbyid(n.nspowner)::text FROM pg_namespace n \
         WHERE n.nspname = ANY($1) AND pg_has_role($2, n.nspowner, 'MEMBER') \
         ORDER BY 1"
    ))
    .bind(schemas)
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    if owned.is_empty() {
        return Ok(None);
    }
    const SHOWN: usize = 8;
    let mut listed: Vec<String> = owned
        .iter()
        .take(SHOWN)
        .map(|(object, owner)| {
            if owner == role {
                object.clone()
            } else {
                format!("{object} (owner {owner})")
            }
        })
        .collect();
    if owned.len() > SHOWN {
        listed.push(format!("and {} more", owned.len() - SHOWN));
    }
    Ok(Some(format!(
        "role `{role}` owns (or is a member of the owner of) {}: an owner can grant itself any privilege \
         back, and alter, truncate or drop what it owns (a schema's owner can drop its tables), so revoking \
         privileges cannot stop its writes, and nothing was changed. Instead: stop the application's writers \
         (scale them down, or a compose.stop / k8s step before this one); or, once, outside an incident, \
         make the tables belong to a migration role (ALTER TABLE … OWNER TO migrator) and let the \
         application connect as a role that only holds grants, then name that role here; or, if an outage \
         of this role is acceptable, ALTER ROLE {} NOLOGIN and end its sessions (its reads stop too)",
        listed.join(", "),
        quote_ident(role)
    )))
}

/// Grants other than the role's own from the owner that let it write tables
/// and sequences of `schemas`, one line per object: grants to PUBLIC, to a
/// role it is a member of (inherited, or reachable with SET ROLE), or to it
/// by someone other than the owner (the owner's REVOKE leaves those). `on`
/// refuses when there are any; revoking them would take them from others.
pub async fn other_write_paths(
    conn: &mut PgConnection,
    role: &str,
    schemas: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!(
        "WITH app AS (SELECT oid FROM pg_roles WHERE rolname = $2), \
         member AS (SELECT oid FROM pg_roles WHERE pg_has_role($2, oid, 'MEMBER')), \
         rel AS (SELECT c.oid, n.nspname, c.relname, c.relkind, c.relowner, c.relacl \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN {KINDS} AND n.nspname = ANY($1)), \
         acl AS ( \
             SELECT r.nspname, r.relname, r.relowner, NULL::name AS col, a.* FROM rel r CROSS JOIN LATERAL \
               aclexplode(coalesce(r.relacl, \
                 acldefault(CASE WHEN r.relkind = 'S' THEN 's'::\"char\" ELSE 'r'::\"char\" END, r.relowner))) a \
             WHERE a.privilege_type = ANY(CASE WHEN r.relkind = 'S' THEN $4 ELSE $3 END) \
             UNION ALL \
             SELECT r.nspname, r.relname, r.relowner, att.attname, a.* FROM rel r \
               JOIN pg_attribute att ON att.attrelid = r.oid AND att.attnum > 0 AND NOT att.attisdropped \
               CROSS JOIN LATERAL aclexplode(att.attacl) a WHERE a.privilege_type = ANY($5)) \
         SELECT format('%I.%I: ', nspname, relname) || string_agg(DISTINCT privilege_type \
             || coalesce(' (' || quote_ident(col::text) || ')', '') || ' ' || CASE \
               WHEN grantee = 0 THEN 'granted to PUBLIC' \
               WHEN grantee = (SELECT oid FROM app) \
                 THEN format('granted by %I, not by the owner', pg_get_userbyid(grantor)) \
               ELSE format('through role %I', pg_get_userbyid(grantee)) END, '; ') \
         FROM acl WHERE grantee = 0 \
           OR (grantee IN (SELECT oid FROM member) AND grantee <> (SELECT oid FROM app)) \
           OR (grantee = (SELECT oid FROM app) AND grantor <> relowner) \
         GROUP BY nspname, relname ORDER BY 1"
    );
    sqlx::query_scalar(&sql)
        .bind(schemas)
        .bind(role)
        .bind(TABLE_WRITES)
        .bind(SEQUENCE_WRITES)
        .bind(COLUMN_WRITES)
        .fetch_all(&mut *conn)
        .await
}

/// Tables and sequences of `schemas` that `role`, or a role it can act as,
/// can write, as the server decides it (`has_*_privilege`): the check after
/// revoking, which also sees what no ACL shows.
pub async fn still_writable(
    conn: &mut PgConnection,
    role: &str,
    schemas: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "WITH member AS (SELECT oid FROM pg_roles WHERE pg_has_role($2, oid, 'MEMBER')) \
         SELECT DISTINCT format('%I.%I', n.nspname, c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN member m \
         WHERE c.relkind IN {KINDS} AND n.nspname = ANY($1) AND CASE WHEN c.relkind = 'S' \
             THEN has_sequence_privilege(m.oid, c.oid, 'USAGE, UPDATE') \
             ELSE has_any_column_privilege(m.oid, c.oid, 'INSERT, UPDATE, REFERENCES') \
               OR has_table_privilege(m.oid, c.oid, 'DELETE, TRUNCATE, TRIGGER') END \
         ORDER BY 1"
    ))
    .bind(schemas)
    .bind(role)
    .fetch_all(&mut *conn)
    .await
}

/// Ways `role` can still write that `on` does not stop, one sentence each.
pub async fn not_stopped(
    conn: &mut PgConnection,
    role: &str,
    schemas: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let mut out = Vec::new();
    let definers: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I(%s) (owner %I)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), \
                pg_get_userbyid(p.proowner)) \
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND NOT pg_has_role($1, p.proowner, 'MEMBER') AND has_function_privilege($1, p.oid, 'EXECUTE') \
         ORDER BY 1",
    )
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    if !definers.is_empty() {
        out.push(format!(
            "`{role}` may call functions that run with their owner's privileges (SECURITY DEFINER): {}. \
             Whatever they write is not stopped; if they write, REVOKE EXECUTE on them FROM PUBLIC and from \
             `{role}` before this step",
            definers.join(", ")
        ));
    }
    let defaults: Vec<String> = sqlx::query_scalar(
        "WITH member AS (SELECT oid FROM pg_roles WHERE pg_has_role($2, oid, 'MEMBER')) \
         SELECT format('FOR ROLE %I%s ON %s: %s', pg_get_userbyid(d.defaclrole), \
                coalesce(' IN SCHEMA ' || quote_ident(n.nspname::text), ''), \
                CASE d.defaclobjtype WHEN 'S' THEN 'SEQUENCES' ELSE 'TABLES' END, \
                string_agg(DISTINCT a.privilege_type, ', ')) \
         FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace \
         CROSS JOIN LATERAL aclexplode(d.defaclacl) a \
         WHERE d.defaclobjtype IN ('r', 'S') AND (d.defaclnamespace = 0 OR n.nspname = ANY($1)) \
           AND (a.grantee = 0 OR a.grantee IN (SELECT oid FROM member)) \
           AND a.privilege_type = ANY($3) \
         GROUP BY d.defaclrole, n.nspname, d.defaclobjtype ORDER BY 1",
    )
    .bind(schemas)
    .bind(role)
    .bind([
        "INSERT",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "REFERENCES",
        "TRIGGER",
        "USAGE",
    ])
    .fetch_all(&mut *conn)
    .await?;
    if !defaults.is_empty() {
        out.push(format!(
            "tables or sequences created while read-only get write privileges for `{role}` from default \
             privileges (ALTER DEFAULT PRIVILEGES {}): only those that exist at `on` are covered",
            defaults.join("; ")
        ));
    }
    let create: Vec<String> = sqlx::query_scalar(
        "WITH member AS (SELECT oid FROM pg_roles WHERE pg_has_role($2, oid, 'MEMBER')) \
         SELECT DISTINCT format('schema %I', n.nspname) FROM pg_namespace n CROSS JOIN member m \
         WHERE n.nspname = ANY($1) AND has_schema_privilege(m.oid, n.oid, 'CREATE') \
         UNION SELECT 'the database (new schemas)' FROM member m \
         WHERE has_database_privilege(m.oid, current_database(), 'CREATE') ORDER BY 1",
    )
    .bind(schemas)
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    if !create.is_empty() {
        out.push(format!(
            "`{role}` can create tables in {} (CREATE): tables it creates are its own and it can write them; \
             the existing tables stay protected",
            create.join(", ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_written_before_columns_and_sequences_reads_as_a_table_privilege() {
        let old: RevokedPrivilege = serde_json::from_str(
            r#"{"schema": "public", "table": "Audit Log", "privilege": "INSERT", "grantable": true}"#,
        )
        .unwrap();
        assert_eq!(old.object, Object::Table);
        assert_eq!(old.column, None);
        assert_eq!(
            old.grant_sql("app"),
            r#"GRANT INSERT ON TABLE "public"."Audit Log" TO "app" WITH GRANT OPTION"#
        );
    }

    #[test]
    fn column_and_sequence_privileges_are_quoted() {
        let column = RevokedPrivilege {
            schema: "s".into(),
            table: "t\"x".into(),
            object: Object::Table,
            column: Some("c; --".into()),
            privilege: "UPDATE".into(),
            grantable: false,
        };
        assert_eq!(
            column.revoke_sql("app"),
            r#"REVOKE UPDATE ("c; --") ON TABLE "s"."t""x" FROM "app""#
        );
        let sequence = RevokedPrivilege {
            object: Object::Sequence,
            column: None,
            privilege: "USAGE".into(),
            ..column
        };
        assert_eq!(
            sequence.grant_sql("app"),
            r#"GRANT USAGE ON SEQUENCE "s"."t""x" TO "app""#
        );
        // The record keeps no empty column field.
        assert!(!serde_json::to_string(&sequence).unwrap().contains("column"));
    }
}
