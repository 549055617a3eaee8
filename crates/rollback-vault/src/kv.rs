//! KV version 2 operations: metadata, reading a version, check-and-set writes,
//! and what may be said about a secret's data without revealing it.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use vaultrs::api::kv2::requests::SetSecretRequestOptions;
use vaultrs::error::ClientError;

use crate::connection::Session;
use crate::error::{version_list, Error};

/// The text Vault answers (400) when a check-and-set write loses the race.
const CAS_MISMATCH: &str = "check-and-set parameter did not match the current version";

/// What is left of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VersionState {
    /// Readable.
    Live,
    /// Soft-deleted at this time; `vault kv undelete` brings it back.
    Deleted(String),
    /// Destroyed: the data is gone for good.
    Destroyed,
}

/// A secret's metadata (`GET /v1/{mount}/metadata/{path}`).
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub(crate) current: u64,
    pub(crate) oldest: u64,
    pub(crate) versions: BTreeMap<u64, VersionState>,
    /// The whole `data` object Vault returned, for snapshots.
    pub(crate) raw: Value,
}

impl Metadata {
    /// Versions whose data can be read, oldest first.
    pub(crate) fn usable(&self) -> Vec<u64> {
        self.versions
            .iter()
            .filter(|(_, s)| **s == VersionState::Live)
            .map(|(v, _)| *v)
            .collect()
    }

    /// Fails with a message naming the usable versions unless `version` can be read.
    pub(crate) fn require_usable(&self, resource: &str, version: u64) -> Result<(), Error> {
        let usable = version_list(&self.usable());
        match self.versions.get(&version) {
            Some(VersionState::Live) => Ok(()),
            Some(VersionState::Deleted(at)) => Err(Error::VersionUnusable {
                resource: resource.to_string(),
                version,
                state: format!("deleted (at {at})"),
                undelete: format!(
                    " (it can be brought back with `vault kv undelete -versions={version}`)"
                ),
                usable,
            }),
            Some(VersionState::Destroyed) => Err(Error::VersionUnusable {
                resource: resource.to_string(),
                version,
                state: "destroyed".into(),
                undelete: " and cannot be brought back".into(),
                usable,
            }),
            None => Err(Error::NoSuchVersion {
                resource: resource.to_string(),
                version,
                current: self.current,
                oldest: self.oldest,
                usable,
            }),
        }
    }
}

impl Session {
    /// Reads the secret's metadata.
    pub(crate) async fn metadata(&self) -> Result<Metadata, Error> {
        let action = "reading the metadata";
        let meta = vaultrs::kv2::read_metadata(&self.client, &self.mount, &self.path)
            .await
            .map_err(|e| self.classify(action, e))?;
        let malformed = |reason: String| Error::Malformed {
            action: action.into(),
            resource: self.resource(),
            mount: self.mount.clone(),
            reason,
        };
        let mut versions = BTreeMap::new();
        for (key, v) in &meta.versions {
            let n: u64 = key
                .parse()
                .map_err(|_| malformed(format!("version key `{key}` is not a number")))?;
            let state = if v.destroyed {
                VersionState::Destroyed
            } else if !v.deletion_time.is_empty() {
                VersionState::Deleted(v.deletion_time.clone())
            } else {
                VersionState::Live
            };
            versions.insert(n, state);
        }
        let raw = serde_json::to_value(&meta).map_err(|e| malformed(e.to_string()))?;
        Ok(Metadata {
            current: meta.current_version,
            oldest: meta.oldest_version,
            versions,
            raw,
        })
    }

    /// Reads the data of `version` (which the metadata says is readable).
    pub(crate) async fn read_version(&self, version: u64) -> Result<Value, Error> {
        let action = format!("reading version {version}");
        let data: Value =
            vaultrs::kv2::read_version(&self.client, &self.mount, &self.path, version)
                .await
                .map_err(|e| self.classify(&action, e))?;
        if !data.is_object() {
            return Err(Error::Malformed {
                action,
                resource: self.resource(),
                mount: self.mount.clone(),
                reason: "the version's data is not a JSON object".into(),
            });
        }
        Ok(data)
    }

    /// Writes `data` as a new version if the current version is still `cas`;
    /// returns the new version number.
    pub(crate) async fn write_cas(&self, data: &Value, cas: u64) -> Result<u64, Error> {
        let action = format!("writing a new version over version {cas}");
        let cas32 = u32::try_from(cas).map_err(|_| Error::Setup {
            message: format!("version {cas} is too large for a check-and-set write"),
        })?;
        let options = SetSecretRequestOptions { cas: cas32 };
        match vaultrs::kv2::set_with_options(&self.client, &self.mount, &self.path, data, options)
            .await
        {
            Ok(meta) => Ok(meta.version),
            Err(ClientError::APIError { code: 400, errors })
                if errors.iter().any(|e| e.contains(CAS_MISMATCH)) =>
            {
                let found = match self.metadata().await {
                    Ok(meta) => format!("now it is at version {}", meta.current),
                    Err(_) => "a newer version was written".into(),
                };
                Err(Error::CasConflict {
                    resource: self.resource(),
                    expected: cas,
                    found,
                })
            }
            Err(e) => Err(self.classify(&action, e)),
        }
    }
}

/// The data with object keys sorted, as bytes: the same data always hashes
/// the same whatever order Vault sent the keys in.
fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push(b'{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, out);
            }
            out.push(b']');
        }
        other => out.extend(serde_json::to_vec(other).unwrap_or_default()),
    }
}

/// `sha256:` and the hex SHA-256 of the canonical data: lets later steps and
/// the journal tell versions apart without holding their values.
pub(crate) fn data_hash(data: &Value) -> String {
    let mut bytes = Vec::new();
    canonical(data, &mut bytes);
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

/// The top-level keys of the data, sorted.
pub(crate) fn data_keys(data: &Value) -> Vec<String> {
    let mut keys: Vec<String> = data
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// Hides the values of a secret in text bound for a message (a validator's
/// stderr may echo what it read).
#[derive(Debug, Default)]
pub(crate) struct Scrubber {
    values: Vec<String>,
}

impl Scrubber {
    /// Remembers every leaf value of `data` at least 3 characters long.
    pub(crate) fn new(data: &Value) -> Self {
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => m.values().for_each(|v| walk(v, out)),
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                Value::String(s) => out.push(s.clone()),
                Value::Number(n) => out.push(n.to_string()),
                Value::Bool(_) | Value::Null => {}
            }
        }
        let mut values = Vec::new();
        walk(data, &mut values);
        values.retain(|v| v.len() >= 3);
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Scrubber { values }
    }

    /// `text` with every remembered value replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":"s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":2},"b":1}"#).unwrap();
        assert_eq!(data_hash(&a), data_hash(&b));
        assert_ne!(
            data_hash(&a),
            data_hash(&json!({"b": 2, "a": {"x": "s", "y": 2}}))
        );
        assert!(data_hash(&a).starts_with("sha256:"));
    }

    #[test]
    fn scrubber_hides_nested_values() {
        let s = Scrubber::new(&json!({"db": {"password": "hunter22"}, "port": 5432, "x": "ab"}));
        assert_eq!(
            s.scrub("bad password hunter22 on 5432 (ab)"),
            "bad password *** on *** (ab)"
        );
    }

    #[test]
    fn usable_versions_skip_deleted_and_destroyed() {
        let meta = Metadata {
            current: 4,
            oldest: 1,
            versions: BTreeMap::from([
                (1, VersionState::Live),
                (2, VersionState::Destroyed),
                (3, VersionState::Deleted("2024-01-01T00:00:00Z".into())),
                (4, VersionState::Live),
            ]),
            raw: Value::Null,
        };
        assert_eq!(meta.usable(), vec![1, 4]);
        let err = meta
            .require_usable("secret/app", 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("deleted") && err.contains("1, 4") && err.contains("undelete"),
            "{err}"
        );
        let err = meta
            .require_usable("secret/app", 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("destroyed") && err.contains("1, 4"), "{err}");
        let err = meta
            .require_usable("secret/app", 9)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("1, 4"),
            "{err}"
        );
    }
}

/// A version number in a plan: a number, or a string that is one after its
/// references are resolved (`${var:config_version}`, `${steps.snap.version}`).
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum VersionRef {
    /// A version number (1 is the first version).
    Number(u64),
    /// A reference resolved at run time, or a number written as a string.
    Text(String),
}

impl VersionRef {
    /// Checks a literal before the run; references are checked when resolved.
    pub(crate) fn check(&self, field: &str) -> Result<(), rollback_core::ConfigError> {
        match self {
            VersionRef::Number(0) => Err(rollback_core::ConfigError::field(
                field,
                "versions start at 1",
            )),
            VersionRef::Number(_) => Ok(()),
            VersionRef::Text(t) if t.contains("${") => Ok(()),
            VersionRef::Text(t) => parse_version(t)
                .map(drop)
                .map_err(|m| rollback_core::ConfigError::field(field, m)),
        }
    }

    /// The number, references resolved.
    pub(crate) fn resolve(
        &self,
        ctx: &rollback_core::StepContext,
        field: &str,
    ) -> Result<u64, rollback_core::StepError> {
        match self {
            VersionRef::Number(n) => Ok(*n),
            VersionRef::Text(t) => {
                let text = ctx.resolve(t)?;
                parse_version(&text).map_err(|m| {
                    rollback_core::StepError::fatal(ctx.redact(&format!("{field}: {m}")))
                })
            }
        }
    }
}

impl std::fmt::Display for VersionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionRef::Number(n) => write!(f, "{n}"),
            VersionRef::Text(t) => f.write_str(t),
        }
    }
}

fn parse_version(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("versions start at 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "`{}` is not a version number: write a whole number such as 7",
            text.trim()
        )),
    }
}
