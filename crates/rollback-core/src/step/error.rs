//! [`StepError`]: why a step, verifier or notifier could not do its work,
//! with a [`ErrorKind`] that decides whether another attempt can help, and
//! the one classification of HTTP statuses and error chains every adapter
//! uses (as sqlx's drivers each implement `DatabaseError::kind`).

use std::fmt;

/// What kind of failure an error is. The executor's retry policy retries
/// [`ErrorKind::Unavailable`] and [`ErrorKind::Conflict`]; the others need
/// a change before another attempt can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The work failed and another attempt will not fix it.
    Failed,
    /// The system could not be reached or is overloaded (a refused
    /// connection, a timeout, 429, 5xx): another attempt may succeed.
    Unavailable,
    /// A concurrent writer changed the target first (409, a failed
    /// compare-and-set): another attempt, on fresh state, may succeed.
    Conflict,
    /// The account may not do this (401, 403): grant it, then run again.
    Permission,
    /// The target does not exist (404): check the plan's names.
    NotFound,
    /// The request was refused as malformed (400, 422): fix the plan.
    Invalid,
    /// The run was cancelled (Ctrl-C): the step is journaled as
    /// interrupted, never retried nor compensated, and `resume` runs it again.
    Interrupted,
}

impl ErrorKind {
    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Conflict)
    }

    /// The kind of an HTTP answer's status; `None` for a success.
    pub fn of_status(status: u16) -> Option<ErrorKind> {
        Some(match status {
            200..=399 => return None,
            401 | 403 => ErrorKind::Permission,
            404 | 410 => ErrorKind::NotFound,
            409 | 412 => ErrorKind::Conflict,
            408 | 425 | 429 => ErrorKind::Unavailable,
            400 | 405 | 406 | 411 | 413..=416 | 422 => ErrorKind::Invalid,
            501 | 505 => ErrorKind::Failed,
            500..=599 => ErrorKind::Unavailable,
            _ => ErrorKind::Failed,
        })
    }

    /// The kind of a failure to talk to a system at all, from its error and
    /// causes: connection refused / reset / aborted, timeouts and a closed
    /// connection are [`ErrorKind::Unavailable`]; a permission denied by the
    /// OS is [`ErrorKind::Permission`]; anything else is `fallback`.
    pub fn of_chain(error: &(dyn std::error::Error + 'static), fallback: ErrorKind) -> ErrorKind {
        use std::io::ErrorKind as Io;
        let mut cause = Some(error);
        while let Some(err) = cause {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    Io::ConnectionRefused
                    | Io::ConnectionReset
                    | Io::ConnectionAborted
                    | Io::NotConnected
                    | Io::TimedOut
                    | Io::BrokenPipe
                    | Io::UnexpectedEof
                    | Io::AddrNotAvailable
                    | Io::HostUnreachable
                    | Io::NetworkUnreachable
                    | Io::Interrupted => ErrorKind::Unavailable,
                    Io::PermissionDenied => ErrorKind::Permission,
                    _ => fallback,
                };
            }
            if let Some(http) = err.downcast_ref::<reqwest::Error>() {
                if http.is_timeout() || http.is_connect() {
                    return ErrorKind::Unavailable;
                }
                if let Some(kind) = http.status().and_then(|s| ErrorKind::of_status(s.as_u16())) {
                    return kind;
                }
            }
            cause = err.source();
        }
        fallback
    }
}

/// Why a step, verifier or notifier could not do its work.
///
/// Its [`ErrorKind`] tells the executor's retry policy whether another
/// attempt can help (a refused connection, a conflict, a 503); a wrong
/// argument or a missing object is not retryable.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    message: String,
    kind: ErrorKind,
    detail: Option<String>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StepError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            kind,
            detail: None,
            source: None,
        }
    }

    /// An error that another attempt will not fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    /// An error that may go away if the step is attempted again (the system
    /// is unavailable for now).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// The step stopped because the run was cancelled (Ctrl-C), not because
    /// its work failed. The journal records it as interrupted, it is never
    /// retried nor compensated for, and `resume` runs it again.
    pub fn interrupted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Interrupted, message)
    }

    /// The error for an HTTP answer with `status` (its kind from the status).
    pub fn from_status(status: u16, message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::of_status(status).unwrap_or(ErrorKind::Failed),
            message,
        )
    }

    /// The error for a failure to talk to a system, its kind read from
    /// `source`'s chain ([`ErrorKind::of_chain`], `fallback` otherwise),
    /// `source` kept as the cause.
    pub fn from_chain(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
        fallback: ErrorKind,
    ) -> Self {
        let kind = ErrorKind::of_chain(&source, fallback);
        Self::new(kind, message).with_source(source)
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Attaches longer evidence (the tail of stderr, a response body).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The same error with another kind.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The same error with its message and detail passed through `redact`
    /// (e.g. [`super::StepContext::redact`]). The cause is dropped: its text
    /// cannot be rewritten and may hold what was redacted.
    pub fn redacted(self, redact: impl Fn(&str) -> String) -> Self {
        StepError {
            message: redact(&self.message),
            kind: self.kind,
            detail: self.detail.as_deref().map(&redact),
            source: None,
        }
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// Whether the step stopped for a cancellation rather than a failure.
    pub fn is_interrupted(&self) -> bool {
        self.kind == ErrorKind::Interrupted
    }

    /// The short message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Longer evidence, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The message followed by its chain of causes, for reports.
    pub fn full_message(&self) -> String {
        error_chain(self)
    }
}

/// An error followed by its causes, `a: b: c`, each cause left out when the
/// text so far already says it (many errors repeat their cause).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(err) = cause {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = err.source();
    }
    text
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Failed => "failed",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Permission => "permission",
            ErrorKind::NotFound => "not found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Interrupted => "interrupted",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_message_includes_causes_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = StepError::fatal("reading config").with_source(io);
        assert_eq!(err.full_message(), "reading config: no such file");
        assert!(!err.is_retryable());
    }

    #[test]
    fn statuses_have_one_classification() {
        let kind = |s| ErrorKind::of_status(s);
        assert_eq!(kind(204), None);
        assert_eq!(kind(403), Some(ErrorKind::Permission));
        assert_eq!(kind(404), Some(ErrorKind::NotFound));
        assert_eq!(kind(409), Some(ErrorKind::Conflict));
        assert_eq!(kind(422), Some(ErrorKind::Invalid));
        for busy in [408, 429, 500, 502, 503, 504] {
            assert_eq!(kind(busy), Some(ErrorKind::Unavailable), "{busy}");
        }
        assert_eq!(kind(501), Some(ErrorKind::Failed));
        assert!(StepError::from_status(503, "busy").is_retryable());
        assert!(StepError::from_status(409, "changed").is_retryable());
        assert!(!StepError::from_status(400, "bad").is_retryable());
    }

    #[test]
    fn a_chain_is_read_to_the_io_error_that_says_why() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error")]
        struct Wrapper(#[source] std::io::Error);
        let refused = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(
            ErrorKind::of_chain(&refused, ErrorKind::Failed),
            ErrorKind::Unavailable
        );
        let denied = Wrapper(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(
            ErrorKind::of_chain(&denied, ErrorKind::Failed),
            ErrorKind::Permission
        );
        let other = Wrapper(std::io::Error::other("odd"));
        assert_eq!(
            ErrorKind::of_chain(&other, ErrorKind::Invalid),
            ErrorKind::Invalid
        );
        let err = StepError::from_chain("cannot reach the API", refused, ErrorKind::Failed);
        assert!(err.is_retryable());
        assert_eq!(
            err.full_message(),
            "cannot reach the API: client error: connection refused"
        );
    }
}
