//! `db.backup`: a verified backup of a PostgreSQL database (`pg_dump` in the
//! custom or directory format, checked with `pg_restore --list`) or of a SQLite
//! file (online copy with `VACUUM INTO`, checked with `PRAGMA integrity_check`).
//!
//! The tools get the connection through libpq's environment (`PGHOST`,
//! `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`) set on the child process
//! only: no connection detail, and never the password, is on a command line.
//!
//! Also home of what the other database kinds share about backups and the
//! PostgreSQL client tools: [`Target`], [`PgTarget`], [`verified_backup_in_run`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rollback_core::process::OnResume;
use rollback_core::{ConfigError, OutputNames, Outputs, Preview, Step, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row};

use crate::backup_location::this_host;
pub(crate) use crate::pg_tools::PgTools;

/// The names of `db.backup`'s outputs (agreed with `db.migrate_down`, whose
/// data-loss guard reads them).
pub const BACKUP_OUTPUTS: &[&str] = &[
    "path", "host", "size", "sha256", "verified", "database", "format", "taken_at", "server",
];

/// How a PostgreSQL backup is written.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackupFormat {
    /// One compressed archive file (`pg_dump -Fc`); restorable in parallel.
    #[default]
    Custom,
    /// A folder with one file per table (`pg_dump -Fd`); dumped and restored in parallel.
    Directory,
}

impl BackupFormat {
    fn as_str(self) -> &'static str {
        match self {
            BackupFormat::Custom => "custom",
            BackupFormat::Directory => "directory",
        }
    }
}

/// Configuration of the `db.backup` step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The database to back up: `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`
    /// (write the password as `${env:NAME}`; it reaches `pg_dump` through
    /// `PGPASSWORD`, never its command line) or `sqlite://PATH`.
    pub url: String,
    /// PostgreSQL only: `custom` (one file, the default) or `directory`.
    #[serde(default)]
    pub format: Option<BackupFormat>,
    /// Folder to write the backup into: a folder every runner that may
    /// resume the run can read (shared storage). The step's folder in the
    /// run's artifacts (this runner's state directory) when absent: then
    /// only this runner can use the backup.
    #[serde(default)]
    pub dir: Option<String>,
    /// PostgreSQL `directory` format only: tables dumped in parallel (`pg_dump -j`).
    #[serde(default)]
    pub jobs: Option<u32>,
    /// PostgreSQL only: compression level 0-9 (`pg_dump -Z`); pg_dump's default when absent.
    #[serde(default)]
    pub compress: Option<u8>,
    /// Folder holding `pg_dump` and `pg_restore` (e.g. `/usr/lib/postgresql/16/bin`,
    /// the server's major version or newer); found on `PATH` when absent.
    #[serde(default)]
    pub pg_bin_dir: Option<String>,
}

/// The `db.backup` step.
#[derive(Debug)]
pub struct Backup {
    config: BackupConfig,
}

impl Backup {
    /// Checks the configuration.
    pub fn new(config: BackupConfig) -> Result<Self, ConfigError> {
        let scheme = Scheme::of(&config.url).map_err(|m| ConfigError::field("url", m))?;
        if scheme == Scheme::Sqlite {
            for (field, set) in [
                ("format", config.format.is_some()),
                ("jobs", config.jobs.is_some()),
                ("compress", config.compress.is_some()),
                ("pg_bin_dir", config.pg_bin_dir.is_some()),
            ] {
                if set {
                    return Err(ConfigError::field(
                        field,
                        "applies to PostgreSQL only; a SQLite backup is a plain database file",
                    ));
                }
            }
        }
        if let Some(jobs) = config.jobs {
            if jobs == 0 {
                return Err(ConfigError::field("jobs", "must be at least 1"));
            }
            if config.format != Some(BackupFormat::Directory) && jobs > 1 {
                return Err(ConfigError::field(
                    "jobs",
                    "pg_dump dumps in parallel only in the directory format: add `format: directory`",
                ));
            }
        }
        if matches!(config.compress, Some(c) if c > 9) {
            return Err(ConfigError::field("compress", "must be 0 to 9"));
        }
        Ok(Backup { config })
    }

    /// Takes the backup into `dir` (or the step's artifact folder) and verifies it.
    pub(crate) async fn take(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let url = ctx.resolve(&self.config.url)?;
        let target = Target::parse(&url).map_err(|e| StepError::fatal(ctx.redact(&e)))?;
        let dir = match &self.config.dir {
            Some(d) => PathBuf::from(ctx.resolve(d)?),
            None => ctx.artifact_dir().map_err(|e| {
                StepError::fatal("cannot create the step's artifact folder").with_source(e)
            })?,
        };
        tokio::fs::create_dir_all(&dir).await.map_err(|e| {
            StepError::fatal(format!("cannot create backup folder {}", dir.display()))
                .with_source(e)
        })?;
        match target {
            Target::Postgres(pg) => self.take_postgres(ctx, &pg, &dir).await,
            Target::Sqlite(path) => take_sqlite(ctx, &path, &dir).await,
        }
    }

    async fn take_postgres(
        &self,
        ctx: &StepContext,
        pg: &PgTarget,
        dir: &Path,
    ) -> Result<Outputs, StepError> {
        let format = self.config.format.unwrap_or_default();
        let tools = PgTools::new(
            self.config
                .pg_bin_dir
                .as_deref()
                .map(|d| ctx.resolve(d))
                .transpose()?,
        );
        let database = pg.database().to_string();
        let ext = match format {
            BackupFormat::Custom => "dump",
            BackupFormat::Directory => "dumpdir",
        };
        let path = dir.join(format!(
            "{}-{}-{}.{ext}",
            file_safe(&database),
            file_safe(ctx.run_id()),
            file_safe(ctx.step_id())
        ));
        let env = pg.child_env(None);
        // A finished backup from an earlier attempt of this run is reused when it
        // still verifies; anything else at that path is replaced.
        if exists(&path).await {
            if tools.list(ctx, &env, &path).await.is_ok() {
                ctx.progress("reusing the verified backup of an earlier attempt");
                return describe_backup(&path, &database, format.as_str(), pg.server(), true).await;
            }
            remove_path(&path).await?;
        }
        let partial = path.with_extension(format!("{ext}.partial"));
        remove_path(&partial).await?;
        let mut args: Vec<String> = vec![
            format!(
                "--format={}",
                if format == BackupFormat::Custom {
                    "c"
                } else {
                    "d"
                }
            ),
            "--file".into(),
            partial.to_string_lossy().into_owned(),
        ];
        if let Some(jobs) = self.config.jobs {
            args.push(format!("--jobs={jobs}"));
        }
        if let Some(level) = self.config.compress {
            args.push(format!("--compress={level}"));
        }
        ctx.progress(&format!("pg_dump of `{database}` ({})", format.as_str()));
        // A resume ends a pg_dump its dead runner left: this step then
        // removes the partial file and dumps again, and a survivor would
        // still be writing that same file.
        let pg_dump = tools.command("pg_dump", &args, &env, OnResume::End);
        if let Err(e) = tools.run(ctx, pg_dump).await {
            let _ = remove_path(&partial).await;
            return Err(e);
        }
        if let Err(e) = tools.list(ctx, &env, &partial).await {
            let _ = remove_path(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, &path).await.map_err(|e| {
            StepError::fatal(format!("cannot move the backup into {}", path.display()))
                .with_source(e)
        })?;
        sync_parent(&path).await;
        describe_backup(&path, &database, format.as_str(), pg.server(), true).await
    }
}

async fn take_sqlite(ctx: &StepContext, live: &Path, dir: &Path) -> Result<Outputs, StepError> {
    if !exists(live).await {
        return Err(StepError::fatal(format!(
            "SQLite database {} does not exist: check the `url`",
            live.display()
        )));
    }
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    let path = dir.join(format!(
        "{}-{}-{}.sqlite",
        file_safe(&name),
        file_safe(ctx.run_id()),
        file_safe(ctx.step_id())
    ));
    let database = live.to_string_lossy().into_owned();
    if exists(&path).await {
        if sqlite_integrity(&path).await.is_ok() {
            return describe_backup(&path, &database, "sqlite", None, true).await;
        }
        remove_path(&path).await?;
    }
    let partial = path.with_extension("sqlite.partial");
    remove_path(&partial).await?;
    let mut conn = sqlite_connect(live, false).await?;
    // VACUUM INTO is an online, consistent copy: readers and writers of the
    // live file carry on (the copy sees one snapshot).
    sqlx::query("VACUUM INTO ?")
        .bind(partial.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .map_err(|e| {
            StepError::retryable(format!("VACUUM INTO {} failed", partial.display())).with_source(e)
        })?;
    let _ = conn.close().await;
    if let Err(e) = sqlite_integrity(&partial).await {
        let _ = remove_path(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, &path).await.map_err(|e| {
        StepError::fatal(format!("cannot move the backup into {}", path.display())).with_source(e)
    })?;
    sync_parent(&path).await;
    describe_backup(&path, &database, "sqlite", None, true).await
}

#[async_trait]
impl Step for Backup {
    fn describe(&self) -> String {
        match Scheme::of(&self.config.url) {
            Ok(Scheme::Sqlite) => "online backup of a SQLite database, verified".into(),
            _ => format!(
                "pg_dump ({}) verified with pg_restore --list",
                self.config.format.unwrap_or_default().as_str()
            ),
        }
    }

    fn outputs(&self) -> OutputNames {
        OutputNames::Fixed(BACKUP_OUTPUTS)
    }

    async fn preview(&self, ctx: &StepContext) -> Result<Preview, StepError> {
        let url = ctx.resolve(&self.config.url)?;
        let target = Target::parse(&url).map_err(|e| StepError::fatal(ctx.redact(&e)))?;
        let dir = match &self.config.dir {
            Some(d) => ctx.resolve(d)?,
            None => "the run's artifact folder".into(),
        };
        let what = match &target {
            Target::Postgres(pg) => format!(
                "pg_dump `{}` on {} ({} format) into {dir}, then pg_restore --list",
                pg.database(),
                pg.server().unwrap_or_default(),
                self.config.format.unwrap_or_default().as_str()
            ),
            Target::Sqlite(p) => format!(
                "VACUUM INTO a copy of {} in {dir}, then PRAGMA integrity_check",
                p.display()
            ),
        };
        Ok(Preview::new(
            format!("back up: {what}"),
            vec![format!("write a backup: {what}")],
        ))
    }

    async fn run(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        self.take(ctx).await
    }
}

/// The newest verified backup of `database` taken by a step completed earlier
/// in this run (any kind whose outputs follow `db.backup`'s names), as
/// `(step id, outputs)`. `database` is the database name (PostgreSQL) or file
/// path (SQLite) the backup's `database` output names.
pub fn verified_backup_in_run(ctx: &StepContext, database: &str) -> Option<(String, Outputs)> {
    ctx.completed_outputs()
        .into_iter()
        .filter(|(_, out)| {
            out.get("verified") == Some(&Value::Bool(true))
                && out.get("database").and_then(Value::as_str) == Some(database)
                && out.get("format").and_then(Value::as_str).is_some()
                && out.get("path").and_then(Value::as_str).is_some()
        })
        .max_by(|a, b| {
            let t = |o: &Outputs| {
                o.get("taken_at")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            t(&a.1).cmp(&t(&b.1))
        })
}

/// Which kind of database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Postgres,
    Sqlite,
}

impl Scheme {
    pub(crate) fn of(url: &str) -> Result<Scheme, String> {
        let t = url.trim_start();
        if t.starts_with("postgres://") || t.starts_with("postgresql://") {
            Ok(Scheme::Postgres)
        } else if t.starts_with("sqlite:") {
            Ok(Scheme::Sqlite)
        } else if t.starts_with("${") {
            // Known only at run time; checked then.
            Ok(Scheme::Postgres)
        } else {
            Err("must start with postgres://, postgresql:// or sqlite:// (e.g. postgres://app@127.0.0.1:5432/orders)".into())
        }
    }
}

/// A resolved database URL.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Postgres(Box<PgTarget>),
    Sqlite(PathBuf),
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        match Scheme::of(url)? {
            Scheme::Postgres if url.starts_with("${") => {
                Err("the url did not resolve to a postgres:// or sqlite:// URL".into())
            }
            Scheme::Postgres => PgTarget::parse(url).map(|t| Target::Postgres(Box::new(t))),
            Scheme::Sqlite => {
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(|e| format!("not a valid sqlite URL: {e}"))?;
                Ok(Target::Sqlite(opts.get_filename().to_path_buf()))
            }
        }
    }
}

/// A PostgreSQL server and database, parsed from a URL.
#[derive(Clone)]
pub struct PgTarget {
    opts: PgConnectOptions,
    password: Option<String>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("server", &self.server())
            .field("database", &self.database())
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Parses `postgres://USER:PASSWORD@HOST:PORT/DATABASE?...`.
    pub fn parse(url: &str) -> Result<PgTarget, String> {
        let opts = PgConnectOptions::from_str(url)
            // sqlx's message may quote the URL; say only what is wrong.
            .map_err(|_| {
                "not a valid postgres:// URL (postgres://USER@HOST:PORT/DATABASE)".to_string()
            })?
            .application_name("rollback")
            .disable_statement_logging();
        Ok(PgTarget {
            opts,
            password: url_password(url),
        })
    }

    /// The database the URL names (the user name when it names none, as libpq does).
    pub fn database(&self) -> &str {
        self.opts
            .get_database()
            .unwrap_or_else(|| self.opts.get_username())
    }

    /// `host:port`, or the socket folder.
    pub fn server(&self) -> Option<String> {
        match self.opts.get_socket() {
            Some(s) => Some(s.display().to_string()),
            None => Some(format!("{}:{}", self.opts.get_host(), self.opts.get_port())),
        }
    }

    /// Connection options for `database` on the same server with the same credentials.
    pub fn options_for(&self, database: &str) -> PgConnectOptions {
        self.opts.clone().database(database)
    }

    /// Connects to `database` (the URL's own when `None`).
    pub async fn connect(&self, database: Option<&str>) -> Result<PgConnection, StepError> {
        let db = database.unwrap_or(self.database());
        self.options_for(db).connect().await.map_err(|e| {
            StepError::retryable(format!(
                "cannot connect to database `{db}` on {}",
                self.server().unwrap_or_default()
            ))
            .with_source(e)
        })
    }

    /// libpq environment for a client tool connecting to `database` (the URL's
    /// own when `None`): the password travels here, never on the command line.
    pub fn child_env(&self, database: Option<&str>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        match self.opts.get_socket() {
            Some(s) => env.insert("PGHOST".into(), s.display().to_string()),
            None => env.insert("PGHOST".into(), self.opts.get_host().to_string()),
        };
        env.insert("PGPORT".into(), self.opts.get_port().to_string());
        env.insert("PGUSER".into(), self.opts.get_username().to_string());
        env.insert(
            "PGDATABASE".into(),
            database.unwrap_or(self.database()).to_string(),
        );
        env.insert("PGAPPNAME".into(), "rollback".into());
        if let Some(p) = &self.password {
            env.insert("PGPASSWORD".into(), p.clone());
        }
        env
    }
}

/// The percent-decoded password of a URL's user info, if any.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    Some(percent_decode(password))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A libpq connection string holding only `dbname`, for tools whose `-d`
/// would otherwise read a name containing `=` as a connection string.
pub(crate) fn conninfo_dbname(database: &str) -> String {
    let escaped = database.replace('\\', "\\\\").replace('\'', "\\'");
    format!("dbname='{escaped}'")
}

/// Opens a SQLite file.
pub(crate) async fn sqlite_connect(
    path: &Path,
    read_only: bool,
) -> Result<SqliteConnection, StepError> {
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(read_only)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10))
        .disable_statement_logging()
        .connect()
        .await
        .map_err(|e| {
            StepError::retryable(format!("cannot open SQLite database {}", path.display()))
                .with_source(e)
        })
}

/// `PRAGMA integrity_check` answers `ok`; returns the number of tables.
pub(crate) async fn sqlite_integrity(path: &Path) -> Result<u64, StepError> {
    let mut conn = sqlite_connect(path, true).await?;
    let rows = sqlx::query("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| {
            StepError::fatal(format!(
                "{} is not a readable SQLite database",
                path.display()
            ))
            .with_source(e)
        })?;
    let answers: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
    if answers != ["ok"] {
        return Err(StepError::fatal(format!(
            "PRAGMA integrity_check of {} failed: {}",
            path.display(),
            answers.join("; ")
        )));
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| StepError::fatal("cannot count tables").with_source(e))?;
    let _ = conn.close().await;
    Ok(tables as u64)
}

/// The outputs describing a verified backup at `path`.
async fn describe_backup(
    path: &Path,
    database: &str,
    format: &str,
    server: Option<String>,
    verified: bool,
) -> Result<Outputs, StepError> {
    let p = path.to_path_buf();
    let (size, sha256, modified) = tokio::task::spawn_blocking(move || checksum(&p))
        .await
        .map_err(|e| StepError::fatal("checksum task failed").with_source(e))?
        .map_err(|e| {
            StepError::fatal(format!("cannot read back {}", path.display())).with_source(e)
        })?;
    let mut out = Outputs::new();
    out.insert("path".into(), json!(path.to_string_lossy()));
    // Another runner resuming the run needs to know where to look.
    out.insert("host".into(), json!(this_host()));
    out.insert("size".into(), json!(size));
    out.insert("sha256".into(), json!(sha256));
    out.insert("verified".into(), json!(verified));
    out.insert("database".into(), json!(database));
    out.insert("format".into(), json!(format));
    out.insert(
        "taken_at".into(),
        json!(rollback_core::journal::timestamp(modified)),
    );
    out.insert("server".into(), json!(server));
    Ok(out)
}

/// Size and SHA-256 of a file, or of a folder's files (sha256 over the sorted
/// lines `NAME\0HEX\n`); and the newest modification time.
pub fn checksum(path: &Path) -> std::io::Result<(u64, String, SystemTime)> {
    fn file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        Ok((size, hasher.finalize().into()))
    }
    let meta = std::fs::metadata(path)?;
    let mut modified = meta.modified()?;
    if meta.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let mut hasher = Sha256::new();
        let mut total = 0;
        for name in names {
            let p = path.join(&name);
            let (size, digest) = file(&p)?;
            modified = modified.max(std::fs::metadata(&p)?.modified()?);
            total += size;
            hasher.update(name.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(hex::encode(digest).as_bytes());
            hasher.update(b"\n");
        }
        Ok((total, hex::encode(hasher.finalize()), modified))
    } else {
        let (size, digest) = file(path)?;
        Ok((size, hex::encode(digest), modified))
    }
}

/// A name made safe for a file name.
pub(crate) fn file_safe(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    cleaned.chars().take(80).collect()
}

pub(crate) async fn exists(path: &Path) -> bool {
    tokio::fs::symlink_metadata(path).await.is_ok()
}

/// Removes a file or folder if it is there.
pub(crate) async fn remove_path(path: &Path) -> Result<(), StepError> {
    let result = match tokio::fs::symlink_metadata(path).await {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(path).await,
        Ok(_) => tokio::fs::remove_file(path).await,
    };
    result.map_err(|e| StepError::fatal(format!("cannot remove {}", path.display())).with_source(e))
}

/// Makes a rename durable.
pub(crate) async fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent().map(Path::to_path_buf) {
        let _ = tokio::task::spawn_blocking(move || std::fs::File::open(parent)?.sync_all()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_taken_from_the_url_and_decoded() {
        assert_eq!(
            url_password("postgres://app:s%40cr%3At@127.0.0.1:5432/orders").as_deref(),
            Some("s@cr:t")
        );
        assert_eq!(url_password("postgres://app@127.0.0.1/orders"), None);
        let pg = PgTarget::parse("postgres://app:pw@127.0.0.1:54329/My%20%22Db%22").unwrap();
        let env = pg.child_env(None);
        assert_eq!(env["PGDATABASE"], "My \"Db\"");
        assert_eq!(env["PGPASSWORD"], "pw");
        assert_eq!(env["PGPORT"], "54329");
        assert!(!format!("{pg:?}").contains("pw"));
    }

    #[test]
    fn conninfo_escapes_quotes_and_backslashes() {
        assert_eq!(conninfo_dbname(r"a'b\c=d"), r"dbname='a\'b\\c=d'");
    }

    #[test]
    fn config_is_checked() {
        let cfg = |v: serde_json::Value| serde_json::from_value::<BackupConfig>(v).unwrap();
        assert!(Backup::new(cfg(json!({"url": "mysql://x"}))).is_err());
        assert!(Backup::new(cfg(json!({"url": "sqlite://a.db", "format": "custom"}))).is_err());
        assert!(Backup::new(cfg(json!({"url": "postgres://a/b", "jobs": 4}))).is_err());
        assert!(Backup::new(cfg(
            json!({"url": "postgres://a/b", "jobs": 4, "format": "directory"})
        ))
        .is_ok());
        assert!(Backup::new(cfg(json!({"url": "${env:DB_URL}"}))).is_ok());
        assert!(serde_json::from_value::<BackupConfig>(json!({"url": "x", "typo": 1})).is_err());
    }
}
