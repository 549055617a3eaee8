//! Database checks: `db.ping`, `db.query`, `db.schema_version`,
//! `db.row_counts`, and the step `db.row_counts_snapshot` that `db.row_counts`
//! compares against.
//!
//! Checks run on a read-only session (PostgreSQL: every transaction READ
//! ONLY; SQLite: `PRAGMA query_only`), so a check cannot change the database
//! whatever SQL it holds.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rollback_core::{
    ConfigError, HumanDuration, Measurement, OutputNames, Outputs, Preview, Step, StepContext,
    StepError, Verifier,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::connect::{self, qualified, query_error, with_conn, Db, DbUrl, DEFAULT_CONNECT_TIMEOUT};
use crate::migrate::files::Version;
use crate::migrate::ledger::{self, LedgerChoice};

fn timeout(t: Option<HumanDuration>) -> Duration {
    t.map(HumanDuration::get).unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// Connects read-only; a connection that fails is a failed measurement, not
/// an error (the database being down is what a check is there to see).
async fn connect_for_check(
    ctx: &StepContext,
    url: &str,
    connect_timeout: Duration,
    expected: &str,
) -> Result<Result<(Db, DbUrl), Measurement>, StepError> {
    match connect::connect(ctx, url, connect_timeout).await {
        Ok((mut db, url)) => {
            db.set_read_only().await?;
            Ok(Ok((db, url)))
        }
        Err(e) => Ok(Err(Measurement::new(
            false,
            ctx.redact(e.message()),
            expected,
        ))),
    }
}

// ---------------------------------------------------------------- db.ping

/// Configuration of the `db.ping` check: connect and `SELECT 1` (the seeds'
/// `pg_isready`). The check's `timeout` bounds the whole measurement.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PingConfig {
    /// The database: `postgres://…` or `sqlite:///path/app.db` (or a plain
    /// SQLite file path). Use `${env:DATABASE_URL}` for secrets.
    pub url: String,
    /// How long connecting may take (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
}

/// The `db.ping` check.
#[derive(Debug)]
pub struct Ping {
    config: PingConfig,
}

impl Ping {
    /// Checks the configuration.
    pub fn new(config: PingConfig) -> Result<Self, ConfigError> {
        check_url(&config.url)?;
        Ok(Ping { config })
    }
}

fn check_url(url: &str) -> Result<(), ConfigError> {
    if url.contains("${") {
        return Ok(());
    }
    DbUrl::parse(url)
        .map(|_| ())
        .map_err(|m| ConfigError::field("url", connect::mask_password(&m)))
}

const PING_EXPECTED: &str = "connects and answers SELECT 1";

#[async_trait]
impl Verifier for Ping {
    fn describe(&self) -> String {
        "database answers SELECT 1".into()
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let started = std::time::Instant::now();
        let (mut db, _) = match connect_for_check(
            ctx,
            &self.config.url,
            timeout(self.config.connect_timeout),
            PING_EXPECTED,
        )
        .await?
        {
            Ok(found) => found,
            Err(failed) => return Ok(failed),
        };
        let result = db.ping().await;
        db.close().await;
        Ok(match result {
            Ok(_) => Measurement::new(
                true,
                format!("answered in {}ms", started.elapsed().as_millis()),
                PING_EXPECTED,
            ),
            Err(e) => Measurement::new(false, ctx.redact(e.message()), PING_EXPECTED),
        })
    }
}

// ---------------------------------------------------------------- db.query

/// An expected scalar: a number, or text compared as written.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    /// A number (compared numerically).
    Number(f64),
    /// Text (compared exactly).
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Number(n) => write!(f, "{n}"),
            Scalar::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// Configuration of the `db.query` check: a query returning one value, held
/// against a condition, e.g. `SELECT COUNT(*) FROM orders WHERE total < 0`
/// equals 0. Give `equals`, or `at_most` and/or `at_least`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// The database: `postgres://…` or `sqlite:///path/app.db` (or a plain
    /// SQLite file path). Use `${env:DATABASE_URL}` for secrets.
    pub url: String,
    /// The query; the first column of its first row is the measured value.
    /// It runs on a read-only session.
    pub query: String,
    /// The value must equal this (a number, or text).
    #[serde(default)]
    pub equals: Option<Scalar>,
    /// The value must be a number no greater than this.
    #[serde(default)]
    pub at_most: Option<f64>,
    /// The value must be a number no less than this.
    #[serde(default)]
    pub at_least: Option<f64>,
    /// How long connecting may take (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
}

/// The `db.query` check.
#[derive(Debug)]
pub struct Query {
    config: QueryConfig,
}

impl Query {
    /// Checks the configuration.
    pub fn new(config: QueryConfig) -> Result<Self, ConfigError> {
        check_url(&config.url)?;
        if config.query.trim().is_empty() {
            return Err(ConfigError::field("query", "the query is empty"));
        }
        let bounds = config.at_most.is_some() || config.at_least.is_some();
        match (&config.equals, bounds) {
            (None, false) => Err(ConfigError::new(
                "give a condition: `equals: 0`, `at_most: N` or `at_least: N`",
            )),
            (Some(_), true) => Err(ConfigError::new(
                "give `equals` alone, or `at_most` / `at_least` (not both kinds)",
            )),
            _ => {
                if let (Some(lo), Some(hi)) = (config.at_least, config.at_most) {
                    if lo > hi {
                        return Err(ConfigError::field(
                            "at_least",
                            format!("{lo} is above at_most {hi}: no value can pass"),
                        ));
                    }
                }
                Ok(Query { config })
            }
        }
    }

    fn expected(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = &self.config.equals {
            parts.push(format!("= {e}"));
        }
        if let Some(lo) = self.config.at_least {
            parts.push(format!(">= {lo}"));
        }
        if let Some(hi) = self.config.at_most {
            parts.push(format!("<= {hi}"));
        }
        parts.join(" and ")
    }

    fn passes(&self, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return false;
        };
        let number = value.trim().parse::<f64>().ok();
        if let Some(expected) = &self.config.equals {
            return match expected {
                Scalar::Number(n) => number == Some(*n),
                Scalar::Text(t) => value == t,
            };
        }
        let Some(number) = number else {
            return false;
        };
        self.config.at_least.is_none_or(|lo| number >= lo)
            && self.config.at_most.is_none_or(|hi| number <= hi)
    }
}

#[async_trait]
impl Verifier for Query {
    fn describe(&self) -> String {
        format!("`{}` {}", self.config.query.trim(), self.expected())
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let expected = self.expected();
        let (mut db, _) = match connect_for_check(
            ctx,
            &self.config.url,
            timeout(self.config.connect_timeout),
            &expected,
        )
        .await?
        {
            Ok(found) => found,
            Err(failed) => return Ok(failed),
        };
        let query = ctx.resolve(&self.config.query)?;
        let result = db.scalar_text(&query).await;
        db.close().await;
        let (had_row, value) = result.map_err(|e| connect::redact_error(ctx, e))?;
        let observed = match (&value, had_row) {
            (Some(v), _) => v.clone(),
            (None, true) => "NULL".into(),
            (None, false) => "no row".into(),
        };
        Ok(Measurement::new(
            self.passes(value.as_deref()),
            ctx.redact(&observed),
            expected,
        ))
    }
}

// ---------------------------------------------------------------- db.schema_version

/// Configuration of the `db.schema_version` check: the current version of
/// the database's migration ledger (see `db.migrate_down`). Give `equals` or
/// `at_least`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchemaVersionConfig {
    /// The database: `postgres://…` or `sqlite:///path/app.db` (or a plain
    /// SQLite file path). Use `${env:DATABASE_URL}` for secrets.
    pub url: String,
    /// Which ledger: `auto` (default), `rails`, `golang_migrate`, `sqlx`.
    #[serde(default)]
    pub ledger: LedgerChoice,
    /// The newest applied version must be exactly this (`0`: nothing applied).
    #[serde(default)]
    pub equals: Option<String>,
    /// The newest applied version must be at least this.
    #[serde(default)]
    pub at_least: Option<String>,
    /// How long connecting may take (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
}

/// The `db.schema_version` check.
#[derive(Debug)]
pub struct SchemaVersion {
    config: SchemaVersionConfig,
}

impl SchemaVersion {
    /// Checks the configuration.
    pub fn new(config: SchemaVersionConfig) -> Result<Self, ConfigError> {
        check_url(&config.url)?;
        match (&config.equals, &config.at_least) {
            (None, None) => {
                return Err(ConfigError::new(
                    "give `equals: VERSION` or `at_least: VERSION`",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new("give `equals` or `at_least`, not both"))
            }
            _ => {}
        }
        for (field, v) in [("equals", &config.equals), ("at_least", &config.at_least)] {
            if let Some(v) = v {
                if !v.contains("${") && Version::parse(v).is_none() {
                    return Err(ConfigError::field(
                        field,
                        format!("`{v}` is not a migration version (digits)"),
                    ));
                }
            }
        }
        Ok(SchemaVersion { config })
    }

    fn expected(&self) -> String {
        match (&self.config.equals, &self.config.at_least) {
            (Some(v), _) => format!("version {v}"),
            (_, Some(v)) => format!("version >= {v}"),
            _ => String::new(),
        }
    }
}

#[async_trait]
impl Verifier for SchemaVersion {
    fn describe(&self) -> String {
        format!("schema at {}", self.expected())
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let expected = self.expected();
        let (mut db, _) = match connect_for_check(
            ctx,
            &self.config.url,
            timeout(self.config.connect_timeout),
            &expected,
        )
        .await?
        {
            Ok(found) => found,
            Err(failed) => return Ok(failed),
        };
        let state = async {
            let which = ledger::detect(&mut db, self.config.ledger).await?;
            ledger::read(&mut db, which, &BTreeMap::new()).await
        }
        .await;
        db.close().await;
        let state = match state {
            Ok(s) => s,
            // A dirty ledger or a missing one is a failed check with its guidance.
            Err(e) => return Ok(Measurement::new(false, ctx.redact(e.message()), expected)),
        };
        let current = state.current.clone();
        let observed = format!(
            "version {} ({} ledger)",
            current
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "0 (nothing applied)".into()),
            state.ledger
        );
        let current_number = current.as_ref().map(Version::number).unwrap_or(0);
        let target = |v: &String| -> Result<u128, StepError> {
            let text = ctx.resolve(v)?;
            Version::parse(&text)
                .map(|v| v.number())
                .ok_or_else(|| StepError::fatal(format!("`{text}` is not a migration version")))
        };
        let passed = match (&self.config.equals, &self.config.at_least) {
            (Some(v), _) => current_number == target(v)?,
            (_, Some(v)) => current_number >= target(v)?,
            _ => false,
        };
        Ok(Measurement::new(passed, observed, expected))
    }
}

// ---------------------------------------------------------------- row counts

/// Counts rows of `tables` in one snapshot (PostgreSQL: one REPEATABLE READ
/// READ ONLY transaction; SQLite: one read transaction).
pub async fn count_tables(
    db: &mut Db,
    schema: Option<&str>,
    tables: &[String],
) -> Result<BTreeMap<String, i64>, StepError> {
    for table in tables {
        if !db.table_exists(schema, table).await? {
            return Err(StepError::fatal(format!(
                "table {} does not exist: check `tables` (names are exact, case included){}",
                qualified(schema, table),
                schema.map(|_| "").unwrap_or(" and `schema`")
            )));
        }
    }
    let postgres = matches!(db, Db::Postgres(_));
    with_conn!(db, c => {
        use sqlx::Connection;
        let mut tx = c.begin().await.map_err(|e| query_error("starting a read transaction", e))?;
        if postgres {
            sqlx::Executor::execute(&mut *tx, sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
                .await
                .map_err(|e| query_error("starting a snapshot", e))?;
        }
        let mut counts = BTreeMap::new();
        for table in tables {
            let sql = format!("SELECT COUNT(*) FROM {}", qualified(schema, table));
            let n: i64 = sqlx::query_scalar(&sql)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| query_error(&format!("counting the rows of {}", qualified(schema, table)), e))?;
            counts.insert(table.clone(), n);
        }
        tx.rollback().await.map_err(|e| query_error("ending the read transaction", e))?;
        Ok(counts)
    })
}

fn check_tables(tables: &[String]) -> Result<(), ConfigError> {
    if tables.iter().any(|t| t.is_empty()) {
        return Err(ConfigError::field("tables", "a table name is empty"));
    }
    Ok(())
}

/// Configuration of the `db.row_counts_snapshot` step: counts the rows of
/// `tables` so that a later `db.row_counts` check can prove nothing was lost.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RowCountsSnapshotConfig {
    /// The database: `postgres://…` or `sqlite:///path/app.db` (or a plain
    /// SQLite file path). Use `${env:DATABASE_URL}` for secrets.
    pub url: String,
    /// The tables to count, by exact name (quoted: case, spaces and quotes
    /// are kept as written).
    pub tables: Vec<String>,
    /// The schema holding them (PostgreSQL); the current schema when absent.
    #[serde(default)]
    pub schema: Option<String>,
    /// How long connecting may take (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
}

/// The `db.row_counts_snapshot` step. Outputs: `counts` (table → rows),
/// `database`, `taken_at` (RFC 3339).
#[derive(Debug)]
pub struct RowCountsSnapshot {
    config: RowCountsSnapshotConfig,
}

impl RowCountsSnapshot {
    /// Checks the configuration.
    pub fn new(config: RowCountsSnapshotConfig) -> Result<Self, ConfigError> {
        if config.tables.is_empty() {
            return Err(ConfigError::field(
                "tables",
                "list the tables to count, e.g. [orders, users]",
            ));
        }
        check_tables(&config.tables)?;
        Ok(RowCountsSnapshot { config })
    }
}

#[async_trait]
impl Step for RowCountsSnapshot {
    fn describe(&self) -> String {
        format!("count the rows of {}", self.config.tables.join(", "))
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(&["counts", "database", "taken_at"])
    }

    async fn preview(&self, _ctx: &StepContext) -> Result<Preview, StepError> {
        Ok(Preview::new(
            format!(
                "count the rows of {} (reads only)",
                self.config.tables.join(", ")
            ),
            Vec::new(),
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let (mut db, url) =
            connect::connect(ctx, &self.config.url, timeout(self.config.connect_timeout)).await?;
        db.set_read_only().await?;
        let counts =
            count_tables(&mut db, self.config.schema.as_deref(), &self.config.tables).await;
        db.close().await;
        let counts = counts.map_err(|e| connect::redact_error(ctx, e))?;
        let mut outputs = Outputs::new();
        outputs.insert(
            "counts".into(),
            Value::Object(
                counts
                    .into_iter()
                    .map(|(k, v)| (k, Value::from(v)))
                    .collect(),
            ),
        );
        outputs.insert("database".into(), Value::String(url.database()));
        outputs.insert(
            "taken_at".into(),
            Value::String(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
        );
        Ok(outputs)
    }
}

/// Configuration of the `db.row_counts` check: every table has at least as
/// many rows as a `db.row_counts_snapshot` step counted earlier in the run
/// (nothing lost).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RowCountsConfig {
    /// The database: `postgres://…` or `sqlite:///path/app.db` (or a plain
    /// SQLite file path). Use `${env:DATABASE_URL}` for secrets.
    pub url: String,
    /// The id of the `db.row_counts_snapshot` step to compare with.
    pub snapshot: String,
    /// The tables to compare (default: every table in the snapshot).
    #[serde(default)]
    pub tables: Option<Vec<String>>,
    /// The schema holding them (PostgreSQL); the current schema when absent.
    #[serde(default)]
    pub schema: Option<String>,
    /// How long connecting may take (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
}

/// The `db.row_counts` check.
#[derive(Debug)]
pub struct RowCounts {
    config: RowCountsConfig,
}

impl RowCounts {
    /// Checks the configuration.
    pub fn new(config: RowCountsConfig) -> Result<Self, ConfigError> {
        check_url(&config.url)?;
        if config.snapshot.trim().is_empty() {
            return Err(ConfigError::field(
                "snapshot",
                "give the id of a db.row_counts_snapshot step",
            ));
        }
        if let Some(tables) = &config.tables {
            check_tables(tables)?;
        }
        Ok(RowCounts { config })
    }

    fn expected(&self) -> String {
        format!(
            "no table has fewer rows than at snapshot `{}`",
            self.config.snapshot
        )
    }
}

#[async_trait]
impl Verifier for RowCounts {
    fn describe(&self) -> String {
        format!("row counts not below snapshot `{}`", self.config.snapshot)
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let snapshot = ctx
            .completed_outputs()
            .remove(&self.config.snapshot)
            .ok_or_else(|| {
                StepError::fatal(format!(
                    "no completed step `{}` in this run: add a db.row_counts_snapshot step with that id before \
                     the steps that change the data",
                    self.config.snapshot
                ))
            })?;
        let before: BTreeMap<String, i64> = snapshot
            .get("counts")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                    .collect()
            })
            .ok_or_else(|| {
                StepError::fatal(format!(
                    "step `{}` has no `counts` output: it must be a db.row_counts_snapshot step",
                    self.config.snapshot
                ))
            })?;
        let tables: Vec<String> = match &self.config.tables {
            Some(t) => t.clone(),
            None => before.keys().cloned().collect(),
        };
        if let Some(missing) = tables.iter().find(|t| !before.contains_key(*t)) {
            return Err(StepError::fatal(format!(
                "table {missing} was not counted by snapshot `{}`: add it to the snapshot's `tables`",
                self.config.snapshot
            )));
        }
        let expected = self.expected();
        let (mut db, _) = match connect_for_check(
            ctx,
            &self.config.url,
            timeout(self.config.connect_timeout),
            &expected,
        )
        .await?
        {
            Ok(found) => found,
            Err(failed) => return Ok(failed),
        };
        let now = count_tables(&mut db, self.config.schema.as_deref(), &tables).await;
        db.close().await;
        let now = match now {
            Ok(n) => n,
            // A table that vanished is lost data, not a broken check.
            Err(e) => return Ok(Measurement::new(false, ctx.redact(e.message()), expected)),
        };
        let mut passed = true;
        let mut parts = Vec::new();
        for table in &tables {
            let was = before[table];
            let is = now[table];
            if is < was {
                passed = false;
                parts.push(format!("{table}: {is} (was {was}, {} lost)", was - is));
            } else {
                parts.push(format!("{table}: {is} (was {was})"));
            }
        }
        Ok(Measurement::new(passed, parts.join("; "), expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(
        equals: Option<Scalar>,
        at_least: Option<f64>,
        at_most: Option<f64>,
    ) -> Result<Query, ConfigError> {
        Query::new(QueryConfig {
            url: "sqlite:app.db".into(),
            query: "SELECT 1".into(),
            equals,
            at_most,
            at_least,
            connect_timeout: None,
        })
    }

    #[test]
    fn query_conditions() {
        assert!(query(None, None, None).is_err());
        assert!(query(Some(Scalar::Number(0.0)), Some(1.0), None).is_err());
        assert!(query(None, Some(5.0), Some(1.0)).is_err());
        let q = query(Some(Scalar::Number(0.0)), None, None).unwrap();
        assert!(q.passes(Some("0")));
        assert!(q.passes(Some("0.00")));
        assert!(!q.passes(Some("3")));
        assert!(!q.passes(None));
        let q = query(None, Some(1.0), Some(10.0)).unwrap();
        assert!(q.passes(Some("10")) && q.passes(Some("1")) && !q.passes(Some("11")));
        assert!(!q.passes(Some("ten")));
        let q = query(Some(Scalar::Text("ok".into())), None, None).unwrap();
        assert!(q.passes(Some("ok")) && !q.passes(Some("OK")));
        assert_eq!(q.expected(), "= \"ok\"");
    }

    #[test]
    fn schema_version_needs_a_condition() {
        let config = |equals: Option<&str>, at_least: Option<&str>| SchemaVersionConfig {
            url: "sqlite:app.db".into(),
            ledger: LedgerChoice::Auto,
            equals: equals.map(str::to_string),
            at_least: at_least.map(str::to_string),
            connect_timeout: None,
        };
        assert!(SchemaVersion::new(config(None, None)).is_err());
        assert!(SchemaVersion::new(config(Some("1"), Some("1"))).is_err());
        assert!(SchemaVersion::new(config(Some("x1"), None)).is_err());
        assert!(SchemaVersion::new(config(None, Some("20250101000000"))).is_ok());
    }
}
