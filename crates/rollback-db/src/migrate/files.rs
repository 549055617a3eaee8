//! A directory of migrations: `<VERSION>_<name>.up.sql` and
//! `<VERSION>_<name>.down.sql` (Rails-style, golang-migrate and sqlx all use
//! this shape; sqlx also knows plain `<VERSION>_<name>.sql`, which has no down).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A migration version: digits, ordered by number (so `9` < `10`), kept as
/// written (Rails keeps `20250115120000` as text).
#[derive(Debug, Clone, Eq)]
pub struct Version {
    text: String,
    number: u128,
}

impl Version {
    /// A version from its digits.
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let number = text.parse::<u128>().ok()?;
        Some(Version {
            text: text.to_string(),
            number,
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The version as a number.
    pub fn number(&self) -> u128 {
        self.number
    }

    /// The version as an `i64` (golang-migrate and sqlx store a bigint).
    pub fn as_i64(&self) -> Option<i64> {
        i64::try_from(self.number).ok()
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.number == other.number
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.number.cmp(&other.number)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One version's files.
#[derive(Debug, Clone)]
pub struct MigrationFiles {
    /// The version.
    pub version: Version,
    /// The name after the version (`add_new_field`).
    pub name: String,
    /// The up file, if there is one (`.up.sql`, or sqlx's plain `.sql`).
    pub up: Option<PathBuf>,
    /// The down file, if there is one.
    pub down: Option<PathBuf>,
}

impl MigrationFiles {
    /// sqlx's description: the name with `_` replaced by spaces.
    pub fn sqlx_description(&self) -> String {
        self.name.replace('_', " ")
    }
}

/// Reads a migrations directory; files that do not look like migrations are
/// ignored (sqlx does the same).
pub fn read_dir(dir: &Path) -> Result<BTreeMap<Version, MigrationFiles>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        format!(
            "cannot read the migrations directory {}: {e}; check `migrations` (relative paths are taken from the \
             directory rollback runs in)",
            dir.display()
        )
    })?;
    let mut out: BTreeMap<Version, MigrationFiles> = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((version, rest)) = file_name.split_once('_') else {
            continue;
        };
        let Some(version) = Version::parse(version) else {
            continue;
        };
        let (name, direction) = if let Some(name) = rest.strip_suffix(".down.sql") {
            (name, Direction::Down)
        } else if let Some(name) = rest.strip_suffix(".up.sql") {
            (name, Direction::Up)
        } else if let Some(name) = rest.strip_suffix(".sql") {
            (name, Direction::Up)
        } else {
            continue;
        };
        let files = out
            .entry(version.clone())
            .or_insert_with(|| MigrationFiles {
                version: version.clone(),
                name: name.to_string(),
                up: None,
                down: None,
            });
        let slot = match direction {
            Direction::Up => &mut files.up,
            Direction::Down => &mut files.down,
        };
        if let Some(previous) = slot {
            return Err(format!(
                "two files for version {version} in {}: {} and {}; keep one",
                dir.display(),
                previous.display(),
                path.display()
            ));
        }
        *slot = Some(path);
    }
    Ok(out)
}

enum Direction {
    Up,
    Down,
}

/// Whether a migration asks to run outside a transaction (sqlx's marker: the
/// file starts with `-- no-transaction`).
pub fn wants_no_transaction(sql: &str) -> bool {
    sql.starts_with("-- no-transaction")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_number() {
        let a = Version::parse("9").unwrap();
        let b = Version::parse("10").unwrap();
        assert!(a < b);
        assert_eq!(Version::parse("0010").unwrap(), b);
        assert!(Version::parse("12a").is_none());
        assert!(Version::parse("").is_none());
    }

    #[test]
    fn reads_up_and_down_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            (
                "20250101000000_create_orders.up.sql",
                "CREATE TABLE orders (id int);",
            ),
            (
                "20250101000000_create_orders.down.sql",
                "DROP TABLE orders;",
            ),
            (
                "20250115120000_add_new_field.up.sql",
                "ALTER TABLE orders ADD new_field int;",
            ),
            ("3_plain.sql", "SELECT 1;"),
            ("README.md", "not a migration"),
        ] {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let files = read_dir(dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        let first = files.values().next().unwrap();
        assert_eq!(first.version.as_str(), "3");
        assert!(first.down.is_none() && first.up.is_some());
        let orders = &files[&Version::parse("20250101000000").unwrap()];
        assert_eq!(orders.sqlx_description(), "create orders");
        assert!(orders.down.is_some());
        assert!(files[&Version::parse("20250115120000").unwrap()]
            .down
            .is_none());
    }

    #[test]
    fn the_no_transaction_marker() {
        assert!(wants_no_transaction(
            "-- no-transaction\nDROP INDEX CONCURRENTLY i;"
        ));
        assert!(!wants_no_transaction("DROP TABLE t; -- no-transaction"));
    }
}
