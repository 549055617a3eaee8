//! What can go wrong talking to Vault, and how it reaches the engine.

use rollback_core::StepError;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a Vault step or check failed. Messages never hold tokens or secret
/// values: only mount, path, version numbers and Vault's own error strings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable at run time (an address that is not a
    /// URL, an unreadable CA file, a version that is not a number).
    #[error("{message}")]
    Setup {
        /// What is wrong and what to do.
        message: String,
    },
    /// No answer from Vault (refused, timed out, TLS failure).
    #[error("cannot reach Vault at {address} while {action}: {reason}: check the address, that Vault is up and unsealed, and the network path from here")]
    Unreachable {
        /// Vault's address.
        address: String,
        /// What was being done.
        action: String,
        /// The transport's explanation.
        reason: String,
    },
    /// 403: the token lacks a policy for this request.
    #[error("Vault denied {action} on `{resource}` (403 permission denied): check that the token (or AppRole) is valid, not expired, and has a policy allowing it{namespace_hint}")]
    PermissionDenied {
        /// What was being done.
        action: String,
        /// `mount/path`.
        resource: String,
        /// `; the request used namespace X` or empty.
        namespace_hint: String,
    },
    /// 404 on the metadata: no such secret.
    #[error("secret `{resource}` does not exist (404){namespace_hint}: check `mount` and `path` (a KV v2 path is written without `data/`)")]
    NotFound {
        /// `mount/path`.
        resource: String,
        /// `in namespace X` or empty.
        namespace_hint: String,
    },
    /// A version number the secret never had (or no longer keeps).
    #[error("version {version} of `{resource}` does not exist (current version {current}, oldest kept {oldest}): versions that can be used: {usable}")]
    NoSuchVersion {
        /// `mount/path`.
        resource: String,
        /// The version asked for.
        version: u64,
        /// The current version.
        current: u64,
        /// The oldest version Vault keeps.
        oldest: u64,
        /// Readable versions, e.g. `2, 4-6`.
        usable: String,
    },
    /// The version exists but its data is gone (soft-deleted or destroyed).
    #[error("version {version} of `{resource}` is {state}: its data cannot be read{undelete}; versions that can be used: {usable}")]
    VersionUnusable {
        /// `mount/path`.
        resource: String,
        /// The version asked for.
        version: u64,
        /// `deleted (at ...)` or `destroyed`.
        state: String,
        /// How to get it back when it can be.
        undelete: String,
        /// Readable versions, e.g. `2, 4-6`.
        usable: String,
    },
    /// The check-and-set write was refused: someone wrote in between.
    #[error("`{resource}` changed while rolling back: it was at version {expected} when read, {found}; nothing was written (check-and-set). Look at the new version, then run again if the rollback is still wanted")]
    CasConflict {
        /// `mount/path`.
        resource: String,
        /// The version the write was based on.
        expected: u64,
        /// `now it is at version N` or `a newer version was written`.
        found: String,
    },
    /// Another refusal from Vault (400, 405, 5xx...).
    #[error("Vault answered {status} to {action} on `{resource}`: {errors}")]
    Api {
        /// What was being done.
        action: String,
        /// `mount/path` or the auth path.
        resource: String,
        /// The HTTP status.
        status: u16,
        /// Vault's `errors`, joined.
        errors: String,
    },
    /// AppRole login failed.
    #[error("AppRole login at `auth/{mount}/login` failed ({status}: {errors}): check role_id and secret_id (a secret_id may have expired or reached its use limit) and the auth mount")]
    Login {
        /// The AppRole mount.
        mount: String,
        /// The HTTP status, 0 when there was no answer.
        status: u16,
        /// Vault's `errors`, joined.
        errors: String,
    },
    /// The validator refused the version's data.
    #[error(
        "validation rejected version {version} of `{resource}`: {reason}; Vault was not changed"
    )]
    Rejected {
        /// `mount/path`.
        resource: String,
        /// The version that was checked.
        version: u64,
        /// The validator's verdict (no secret values).
        reason: String,
    },
    /// Undo found that someone else wrote after the rollback.
    #[error("cannot undo the rollback of `{resource}`: version {current} was written after the rollback wrote version {written}; not overwriting it. Put version {replaced} back by hand if that is still wanted")]
    UndoOverwrite {
        /// `mount/path`.
        resource: String,
        /// Current version now.
        current: u64,
        /// The version the rollback wrote.
        written: u64,
        /// The version the rollback replaced.
        replaced: u64,
    },
    /// A response did not have the KV v2 shape.
    #[error("unexpected answer from Vault to {action} on `{resource}`: {reason}: is `{mount}` a KV version 2 mount?")]
    Malformed {
        /// What was being done.
        action: String,
        /// `mount/path`.
        resource: String,
        /// The mount.
        mount: String,
        /// What did not fit.
        reason: String,
    },
}

impl Error {
    /// Whether another attempt may help (no answer, 429, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Api { status, .. } => *status == 429 || *status >= 500,
            Error::Login { status, .. } => *status == 0 || *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Converts to the engine's error; `redact` hides secrets the run resolved.
    pub fn into_step_error(self, redact: impl Fn(&str) -> String) -> StepError {
        let message = redact(&self.to_string());
        if self.is_retryable() {
            StepError::retryable(message)
        } else {
            StepError::fatal(message)
        }
    }
}

/// `1, 2, 4-6` from a sorted list of versions; `none` when empty.
pub(crate) fn version_list(versions: &[u64]) -> String {
    if versions.is_empty() {
        return "none (every kept version is deleted or destroyed)".into();
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < versions.len() {
        let start = versions[i];
        let mut end = start;
        while i + 1 < versions.len() && versions[i + 1] == end + 1 {
            i += 1;
            end = versions[i];
        }
        parts.push(if end == start {
            start.to_string()
        } else if end == start + 1 {
            format!("{start}, {end}")
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lists_compress_runs() {
        assert_eq!(version_list(&[1, 2, 4, 5, 6, 9]), "1, 2, 4-6, 9");
        assert_eq!(version_list(&[3]), "3");
        assert!(version_list(&[]).starts_with("none"));
    }

    #[test]
    fn only_transport_and_server_errors_are_retryable() {
        let unreachable = Error::Unreachable {
            address: "http://127.0.0.1:1".into(),
            action: "reading metadata".into(),
            reason: "refused".into(),
        };
        assert!(unreachable.is_retryable());
        let cas = Error::CasConflict {
            resource: "secret/app".into(),
            expected: 3,
            found: "now it is at version 4".into(),
        };
        assert!(!cas.is_retryable());
        let unavailable = Error::Api {
            action: "reading".into(),
            resource: "secret/app".into(),
            status: 503,
            errors: "Vault is sealed".into(),
        };
        assert!(unavailable.is_retryable());
    }
}
