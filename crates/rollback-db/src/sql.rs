//! `db.sql`: an idempotent SQL script, run in one transaction.
//!
//! The script must be safe to run twice (the engine runs an interrupted step
//! again): guard its changes the way the seeds' rollback script does, with
//! `IF EXISTS`, `ON CONFLICT DO NOTHING`, or a `DO $$ … IF EXISTS … $$` block.
//! It runs whole or not at all: the step opens the transaction, so the script
//! must not contain its own `BEGIN` / `COMMIT`.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use rollback_core::{
    ConfigError, HumanDuration, OutputNames, Outputs, Preview, Step, StepContext, StepError,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::connect::{self, query_error, with_conn, DEFAULT_CONNECT_TIMEOUT};
use crate::migrate::guard;

/// Configuration of the `db.sql` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// The database: `postgres://…` or `sqlite:///path/app.db` (or a plain
    /// SQLite file path). Use `${env:DATABASE_URL}` for secrets.
    pub url: String,
    /// The script, inline (one or more statements). It must be idempotent
    /// and must not hold BEGIN/COMMIT: the step runs it in one transaction.
    #[serde(default)]
    pub sql: Option<String>,
    /// A file holding the script (instead of `sql`).
    #[serde(default)]
    pub file: Option<String>,
    /// A script that compensates this one, run (in one transaction) by undo.
    /// Without it the step cannot be undone.
    #[serde(default)]
    pub undo_sql: Option<String>,
    /// How long connecting may take (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
}

#[derive(Debug)]
enum Script {
    Inline(String),
    File(String),
}

/// The `db.sql` step.
#[derive(Debug)]
pub struct Sql {
    url: String,
    script: Script,
    undo_sql: Option<String>,
    connect_timeout: Duration,
}

fn check_script(field: &str, sql: &str) -> Result<(), String> {
    if sql.trim().is_empty() {
        return Err(format!("{field}: the script is empty"));
    }
    if let Some(statement) = guard::transaction_control(sql) {
        return Err(format!(
            "{field}: the script holds its own {statement}; remove BEGIN/COMMIT: db.sql runs the whole script in \
             one transaction"
        ));
    }
    Ok(())
}

impl Sql {
    /// Checks the configuration.
    pub fn new(config: SqlConfig) -> Result<Self, ConfigError> {
        let script = match (config.sql, config.file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new("give either `sql` or `file`, not both"))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "give the script: `sql: ...` inline or `file: path/to/script.sql`",
                ))
            }
            (Some(sql), None) => {
                check_script("sql", &sql).map_err(|m| ConfigError::field("sql", m))?;
                Script::Inline(sql)
            }
            (None, Some(file)) => Script::File(file),
        };
        if let Some(undo) = &config.undo_sql {
            check_script("undo_sql", undo).map_err(|m| ConfigError::field("undo_sql", m))?;
        }
        Ok(Sql {
            url: config.url,
            script,
            undo_sql: config.undo_sql,
            connect_timeout: config
                .connect_timeout
                .map(HumanDuration::get)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        })
    }

    fn script(&self, ctx: &StepContext) -> Result<String, StepError> {
        match &self.script {
            Script::Inline(sql) => Ok(sql.clone()),
            Script::File(file) => {
                let path = PathBuf::from(ctx.resolve(file)?);
                let sql = std::fs::read_to_string(&path).map_err(|e| {
                    StepError::fatal(format!(
                        "cannot read the script {}: {e}; check `file` (relative paths are taken from the \
                         directory rollback runs in)",
                        path.display()
                    ))
                })?;
                check_script("file", &sql).map_err(StepError::fatal)?;
                Ok(sql)
            }
        }
    }

    async fn execute(&self, ctx: &StepContext, sql: &str) -> Result<u64, StepError> {
        let (mut db, _url) = connect::connect(ctx, &self.url, self.connect_timeout).await?;
        let result = with_conn!(&mut db, c => {
            use sqlx::Connection;
            async {
                let mut tx = c.begin().await.map_err(|e| query_error("starting a transaction", e))?;
                let done = sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(sql)).await.map_err(|e| {
                    query_error("the script failed (its transaction was rolled back: nothing changed)", e)
                })?;
                tx.commit().await.map_err(|e| query_error("committing the script", e))?;
                Ok::<u64, StepError>(done.rows_affected())
            }
            .await
        });
        db.close().await;
        result.map_err(|e| connect::redact_error(ctx, e))
    }
}

#[async_trait]
impl Step for Sql {
    fn describe(&self) -> String {
        match &self.script {
            Script::Inline(sql) => {
                let first = sql
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("");
                format!("run SQL in one transaction: {first}")
            }
            Script::File(file) => format!("run the SQL script {file} in one transaction"),
        }
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["rows_affected"])
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let sql = self.script(ctx)?;
        let url = connect::DbUrl::parse(&ctx.resolve(&self.url)?)
            .map_err(|m| StepError::fatal(ctx.redact(&m)))?;
        Ok(Preview::new(
            ctx.redact(&format!("run SQL in one transaction on {}", url.display())),
            vec![ctx.redact(sql.trim_end())],
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let sql = self.script(ctx)?;
        let rows = self.execute(ctx, &sql).await?;
        let mut outputs = Outputs::new();
        outputs.insert("rows_affected".into(), Value::from(rows));
        Ok(outputs)
    }

    fn can_undo(&self) -> bool {
        self.undo_sql.is_some()
    }

    async fn undo(&self, ctx: &StepContext, _outputs: &Outputs) -> Result<(), StepError> {
        let Some(undo) = &self.undo_sql else {
            return Err(StepError::fatal(
                "this db.sql step has no `undo_sql`: add one to make it reversible",
            ));
        };
        self.execute(ctx, undo).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sql: Option<&str>, file: Option<&str>) -> SqlConfig {
        SqlConfig {
            url: "sqlite:app.db".into(),
            sql: sql.map(str::to_string),
            file: file.map(str::to_string),
            undo_sql: None,
            connect_timeout: None,
        }
    }

    #[test]
    fn scripts_with_their_own_transaction_are_refused() {
        let err = Sql::new(config(Some("BEGIN; UPDATE t SET a = 1; COMMIT;"), None)).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("sql"));
        assert!(err.message.contains("BEGIN"), "{}", err.message);
        assert!(Sql::new(config(
            Some("DO $$ BEGIN UPDATE t SET a = 1; END $$;"),
            None
        ))
        .is_ok());
        assert!(Sql::new(config(None, None)).is_err());
        assert!(Sql::new(config(Some("SELECT 1"), Some("x.sql"))).is_err());
    }
}
