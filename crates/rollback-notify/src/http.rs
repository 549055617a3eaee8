//! Shared by the notifiers that speak plain HTTP (`statuspage`, `webhook`):
//! how an answer or a transport error becomes a [`StepError`].

use std::time::Duration;

use reqwest::{Response, StatusCode};
use rollback_core::StepError;

/// The longest `Retry-After` one delivery waits out by itself; a longer one
/// is left to the executor's retries.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Seconds in a `Retry-After` header (the delay form; dates are ignored).
pub(crate) fn retry_after(response: &Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A transport error (refused, reset, timed out): worth another attempt.
/// `check` says what to look at, e.g. "check `api_url:` and the network".
pub(crate) fn unreachable(what: &str, check: &str, err: reqwest::Error) -> StepError {
    // reqwest's message names the URL, which holds no secret here (keys go
    // in headers), but strip it anyway: a URL may carry a token.
    StepError::retryable(format!("could not reach {what} ({check})")).with_source(err.without_url())
}

/// An unexpected status: 408, 429 and 5xx are retryable, the rest are not.
pub(crate) fn status_error(what: &str, status: StatusCode, body: &str, hint: &str) -> StepError {
    let mut message = format!("{what} answered {status}");
    if !hint.is_empty() {
        message.push_str(": ");
        message.push_str(hint);
    }
    let detail: String = body.chars().take(500).collect();
    let err = if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.as_u16() == 420
    {
        StepError::retryable(message)
    } else {
        StepError::fatal(message)
    };
    if detail.is_empty() {
        err
    } else {
        err.with_detail(detail)
    }
}
