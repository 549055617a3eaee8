//! `prometheus`: a verifier that runs an instant query against Prometheus's
//! HTTP API (`GET /api/v1/query`) and compares the value with thresholds.
//!
//! As a check after a rollback it proves the error rate came down; as a
//! trigger rule (`triggers:`) a failing measurement held for `for:` starts the
//! rollback. A query that returns no data, or a Prometheus that cannot be
//! reached, is an error (the value is unknown), never a pass and never a
//! trigger.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::registry::ConfigError;
use crate::step::{Measurement, StepContext, StepError, Verifier};

/// Configuration of the `prometheus` verifier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusCheckConfig {
    /// Prometheus's base URL, e.g. `http://prometheus:9090`.
    pub url: String,
    /// A PromQL expression evaluated now, e.g.
    /// `sum(rate(http_requests_total{code=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))`.
    pub query: String,
    /// Passes while every value is at most this (e.g. error rate `0.05`).
    #[serde(default)]
    pub at_most: Option<f64>,
    /// Passes while every value is at least this (e.g. uptime `0.95`).
    #[serde(default)]
    pub at_least: Option<f64>,
    /// Extra request headers, e.g. `Authorization: Bearer ${env:PROM_TOKEN}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The `prometheus` verifier.
#[derive(Debug)]
pub struct PrometheusCheck {
    config: PrometheusCheckConfig,
    client: reqwest::Client,
}

impl PrometheusCheck {
    /// Checks the configuration: at least one threshold.
    pub fn new(config: PrometheusCheckConfig) -> Result<Self, ConfigError> {
        if config.at_most.is_none() && config.at_least.is_none() {
            return Err(ConfigError::new(
                "give a threshold: `at_most: 0.05` (e.g. error rate) or `at_least: 0.95` (e.g. uptime)",
            ));
        }
        if config.query.trim().is_empty() {
            return Err(ConfigError::field("query", "the query is empty"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ConfigError::new(format!("cannot build an HTTP client: {e}")))?;
        Ok(PrometheusCheck { config, client })
    }

    fn expected(&self) -> String {
        match (self.config.at_least, self.config.at_most) {
            (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
            (Some(lo), None) => format!(">= {lo}"),
            (None, Some(hi)) => format!("<= {hi}"),
            (None, None) => String::new(),
        }
    }

    fn ok(&self, v: f64) -> bool {
        self.config.at_most.is_none_or(|hi| v <= hi)
            && self.config.at_least.is_none_or(|lo| v >= lo)
    }
}

/// One sample of an instant query: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series labels (empty for a scalar).
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Parses the body of `GET /api/v1/query` (vector or scalar results).
pub fn parse_query_response(body: &serde_json::Value) -> Result<Vec<Sample>, String> {
    if body["status"] != "success" {
        let kind = body["errorType"].as_str().unwrap_or("error");
        let error = body["error"].as_str().unwrap_or("no error message");
        return Err(format!("Prometheus answered {kind}: {error}"));
    }
    let value_of = |pair: &serde_json::Value| -> Result<f64, String> {
        let text = pair
            .get(1)
            .and_then(|v| v.as_str())
            .ok_or("a sample without a value")?;
        text.parse::<f64>()
            .map_err(|_| format!("`{text}` is not a number"))
    };
    let data = &body["data"];
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .map(|s| {
                        let labels = s["metric"]
                            .as_object()
                            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                            .unwrap_or_default();
                        Ok(Sample { labels, value: value_of(&s["value"])? })
                    })
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new())),
        Some("scalar") => Ok(vec![Sample { labels: BTreeMap::new(), value: value_of(&data["result"])? }]),
        other => Err(format!(
            "the query returned a {} result: use an expression that yields an instant vector or a scalar",
            other.unwrap_or("unknown")
        )),
    }
}

fn series_name(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!(" {{{}}}", inner.join(","))
}

#[async_trait]
impl Verifier for PrometheusCheck {
    fn describe(&self) -> String {
        format!("Prometheus `{}` {}", self.config.query, self.expected())
    }

    async fn check(&self, ctx: &StepContext) -> Result<Measurement, StepError> {
        let base = ctx.resolve(&self.config.url)?;
        let query = ctx.resolve(&self.config.query)?;
        let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
        let mut request = self.client.get(&url).query(&[("query", query.as_str())]);
        for (k, v) in &self.config.headers {
            request = request.header(k, ctx.resolve(v)?);
        }
        let response = request.send().await.map_err(|e| {
            StepError::retryable(ctx.redact(&format!("cannot reach Prometheus at {url}: {e}")))
        })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| {
            StepError::retryable(format!(
                "Prometheus answered {status} with a body that is not JSON: {e}"
            ))
        })?;
        let samples = parse_query_response(&body).map_err(StepError::fatal)?;
        self.measure(&query, samples)
    }
}

impl PrometheusCheck {
    /// Judges the samples of one query. NaN (e.g. an error ratio of 0/0 while
    /// there is no traffic) is an unknown value like a missing series: it
    /// neither passes nor fails, so it can never start a rollback.
    fn measure(&self, query: &str, samples: Vec<Sample>) -> Result<Measurement, StepError> {
        let total = samples.len();
        let samples: Vec<Sample> = samples.into_iter().filter(|s| !s.value.is_nan()).collect();
        if samples.is_empty() {
            let why = if total == 0 {
                "no data (no matching series)".to_string()
            } else {
                format!("NaN for every series ({total}), e.g. a ratio with no traffic")
            };
            return Err(StepError::retryable(format!(
                "`{query}` returned {why}: the value is unknown"
            )));
        }
        // The worst series decides: every series must meet the thresholds.
        let worst = samples
            .iter()
            .find(|s| !self.ok(s.value))
            .or_else(|| samples.iter().max_by(|a, b| a.value.total_cmp(&b.value)))
            .expect("at least one sample");
        let passed = samples.iter().all(|s| self.ok(s.value));
        let more = if samples.len() > 1 {
            format!(" ({} series)", samples.len())
        } else {
            String::new()
        };
        Ok(Measurement::new(
            passed,
            format!("{}{}{more}", worst.value, series_name(&worst.labels)),
            self.expected(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vectors_scalars_and_errors() {
        let vector = serde_json::json!({"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"job":"api"},"value":[1700000000.1,"0.07"]},
            {"metric":{"job":"web"},"value":[1700000000.1,"0.01"]}]}});
        let samples = parse_query_response(&vector).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].value, 0.07);
        assert_eq!(samples[0].labels["job"], "api");
        let scalar = serde_json::json!({"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"1"]}});
        assert_eq!(parse_query_response(&scalar).unwrap()[0].value, 1.0);
        let error = serde_json::json!({"status":"error","errorType":"bad_data","error":"parse error at char 4"});
        assert!(parse_query_response(&error)
            .unwrap_err()
            .contains("bad_data: parse error"));
        let matrix =
            serde_json::json!({"status":"success","data":{"resultType":"matrix","result":[]}});
        assert!(parse_query_response(&matrix)
            .unwrap_err()
            .contains("matrix"));
    }

    #[test]
    fn nan_is_unknown_never_a_violation() {
        let check = PrometheusCheck::new(PrometheusCheckConfig {
            url: "http://127.0.0.1:9090".into(),
            query: "errors / requests".into(),
            at_most: Some(0.05),
            at_least: None,
            headers: BTreeMap::new(),
        })
        .unwrap();
        let sample = |value: f64| Sample {
            labels: BTreeMap::new(),
            value,
        };
        let body = serde_json::json!({"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"NaN"]}});
        let err = check
            .measure("q", parse_query_response(&body).unwrap())
            .unwrap_err();
        assert!(
            err.message().contains("NaN") && err.message().contains("unknown"),
            "{}",
            err.message()
        );
        let err = check.measure("q", Vec::new()).unwrap_err();
        assert!(err.message().contains("no data"), "{}", err.message());
        // A NaN series beside a real one: the real one decides.
        let m = check
            .measure("q", vec![sample(f64::NAN), sample(0.07)])
            .unwrap();
        assert!(!m.passed);
        let m = check
            .measure("q", vec![sample(f64::NAN), sample(0.01)])
            .unwrap();
        assert!(m.passed);
    }

    #[test]
    fn needs_a_threshold() {
        let config = PrometheusCheckConfig {
            url: "http://127.0.0.1:9090".into(),
            query: "up".into(),
            at_most: None,
            at_least: None,
            headers: BTreeMap::new(),
        };
        assert!(PrometheusCheck::new(config).is_err());
    }
}
