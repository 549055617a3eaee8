//! `${...}` references in plan strings and their late resolution.
//!
//! - `${env:NAME}`: an environment variable (a secret).
//! - `${file:PATH}`: a file's content without its trailing newline (a secret);
//!   a relative path is taken from the plan file's folder. `PATH` may hold
//!   `${var:NAME}` (`${file:${var:config_file}}`), nothing else.
//! - `${var:NAME}`: a plan variable (`vars:`, `--var NAME=VALUE`); not secret.
//! - `${steps.ID.NAME}`: output `NAME` of the earlier step `ID`.
//! - `$${` writes a literal `${`.
//!
//! Secret values are remembered by the [`Resolver`] only to redact them: every
//! string bound for the journal, a report or an event passes through
//! [`Resolver::redact`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use crate::step::Outputs;

/// Secrets shorter than this are not redacted: replacing every `ab` in a
/// report would destroy it while hiding nothing of value.
const MIN_REDACTED_LEN: usize = 3;

/// One `${...}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `${env:NAME}`
    Env(String),
    /// `${file:PATH}`
    File(String),
    /// `${var:NAME}`
    Var(String),
    /// `${steps.ID.NAME}`
    StepOutput {
        /// The step's id.
        step: String,
        /// The output's name.
        output: String,
    },
}

/// A `${...}` that cannot be understood or resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${` without a closing `}`.
    #[error("`${{` at byte {offset} has no closing `}}` (write `$${{` for a literal `${{`)")]
    Unclosed {
        /// Byte offset in the string.
        offset: usize,
    },
    /// A reference of an unknown form.
    #[error("`${{{text}}}` is not a reference: use ${{env:NAME}}, ${{file:PATH}}, ${{var:NAME}} or ${{steps.ID.OUTPUT}}")]
    Malformed {
        /// What stood between the braces.
        text: String,
    },
    /// The environment variable is not set.
    #[error("environment variable `{name}` is not set")]
    EnvUnset {
        /// Its name.
        name: String,
    },
    /// The file cannot be read.
    #[error("cannot read secret file `{path}`: {reason}")]
    FileUnreadable {
        /// Its path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// No such plan variable.
    #[error(
        "plan variable `{name}` is not defined: add it under `vars:` or pass --var {name}=VALUE"
    )]
    VarUndefined {
        /// Its name.
        name: String,
    },
    /// The step has not produced that output (yet).
    #[error("output `{output}` of step `{step}` is not available: the step has not completed or did not return it")]
    OutputMissing {
        /// The step.
        step: String,
        /// The output.
        output: String,
    },
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn parse_reference(inner: &str) -> Result<Reference, TemplateError> {
    let malformed = || TemplateError::Malformed {
        text: inner.to_string(),
    };
    if let Some(name) = inner.strip_prefix("env:") {
        return if is_name(name) && !name.contains('.') {
            Ok(Reference::Env(name.into()))
        } else {
            Err(malformed())
        };
    }
    if let Some(path) = inner.strip_prefix("file:") {
        // Only plan variables may stand in a secret file's path: a path
        // built from another secret or from a step's output is not allowed.
        let only_vars = pieces(path)
            .map(|ps| {
                ps.iter()
                    .all(|p| matches!(p, Piece::Text(_) | Piece::Ref(Reference::Var(_))))
            })
            .unwrap_or(false);
        return if path.is_empty() || !only_vars {
            Err(malformed())
        } else {
            Ok(Reference::File(path.into()))
        };
    }
    if let Some(name) = inner.strip_prefix("var:") {
        return if is_name(name) {
            Ok(Reference::Var(name.into()))
        } else {
            Err(malformed())
        };
    }
    if let Some(rest) = inner.strip_prefix("steps.") {
        if let Some((step, output)) = rest.split_once('.') {
            if is_name(step) && !step.contains('.') && is_name(output) {
                return Ok(Reference::StepOutput {
                    step: step.into(),
                    output: output.into(),
                });
            }
        }
    }
    Err(malformed())
}

enum Piece<'a> {
    Text(&'a str),
    Ref(Reference),
}

/// The index of the `}` that closes the `${` at the start of `text`, past
/// any `${...}` nested inside (`${file:${var:path}}`).
fn closing_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
            depth += 1;
            i += 2;
            continue;
        }
        if bytes[i] == b'}' {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = template;
    let mut consumed = 0;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos..];
        if after.starts_with("$${") {
            out.push(Piece::Text(&rest[..pos]));
            out.push(Piece::Text("${"));
            rest = &rest[pos + 3..];
            consumed += pos + 3;
        } else if after.starts_with("${") {
            out.push(Piece::Text(&rest[..pos]));
            let close = closing_brace(after).ok_or(TemplateError::Unclosed {
                offset: consumed + pos,
            })?;
            out.push(Piece::Ref(parse_reference(&after[2..close])?));
            rest = &after[close + 1..];
            consumed += pos + close + 1;
        } else {
            out.push(Piece::Text(&rest[..pos + 1]));
            rest = &rest[pos + 1..];
            consumed += pos + 1;
        }
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// The references in `template` (those inside a `${file:...}` path too), for
/// validation before a run.
pub fn references(template: &str) -> Result<Vec<Reference>, TemplateError> {
    let mut found = Vec::new();
    for piece in pieces(template)? {
        if let Piece::Ref(r) = piece {
            if let Reference::File(path) = &r {
                found.extend(references(path)?);
            }
            found.push(r);
        }
    }
    Ok(found)
}

/// Resolves references during a run and redacts the secrets it handed out.
#[derive(Debug)]
pub struct Resolver {
    vars: BTreeMap<String, String>,
    base_dir: Option<PathBuf>,
    outputs: RwLock<HashMap<String, Outputs>>,
    secrets: Mutex<Vec<String>>,
    /// In a dry run, outputs of steps that have not run show as
    /// `<steps.ID.NAME>` instead of failing.
    placeholder_outputs: bool,
}

impl Resolver {
    /// A resolver for the given plan variables.
    pub fn new(vars: BTreeMap<String, String>) -> Self {
        Resolver {
            vars,
            base_dir: None,
            outputs: RwLock::new(HashMap::new()),
            secrets: Mutex::new(Vec::new()),
            placeholder_outputs: false,
        }
    }

    /// Relative `${file:...}` paths are taken from `dir`.
    pub fn with_base_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.base_dir = dir;
        self
    }

    /// For previews: unknown step outputs resolve to a placeholder.
    pub fn with_placeholder_outputs(mut self) -> Self {
        self.placeholder_outputs = true;
        self
    }

    /// Records a completed step's outputs for later references.
    pub fn set_outputs(&self, step: &str, outputs: Outputs) {
        self.outputs
            .write()
            .expect("outputs lock")
            .insert(step.to_string(), outputs);
    }

    /// Outputs of every step recorded so far.
    pub fn all_outputs(&self) -> std::collections::BTreeMap<String, Outputs> {
        self.outputs
            .read()
            .expect("outputs lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Outputs recorded for `step`.
    pub fn outputs_of(&self, step: &str) -> Option<Outputs> {
        self.outputs
            .read()
            .expect("outputs lock")
            .get(step)
            .cloned()
    }

    /// Remembers a secret value so that it is redacted from everything
    /// journaled, reported or shown.
    pub fn remember_secret(&self, value: &str) {
        if value.len() >= MIN_REDACTED_LEN {
            let mut secrets = self.secrets.lock().expect("secrets lock");
            if !secrets.iter().any(|s| s == value) {
                secrets.push(value.to_string());
                // Longest first, so a secret containing another is hidden whole.
                secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
            }
        }
    }

    /// Resolves every reference in `template`.
    pub fn resolve(&self, template: &str) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(template.len());
        for piece in pieces(template)? {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Ref(r) => out.push_str(&self.resolve_reference(&r)?),
            }
        }
        Ok(out)
    }

    fn resolve_reference(&self, reference: &Reference) -> Result<String, TemplateError> {
        match reference {
            Reference::Env(name) => {
                let value = std::env::var(name)
                    .map_err(|_| TemplateError::EnvUnset { name: name.clone() })?;
                self.remember_secret(&value);
                Ok(value)
            }
            Reference::File(path) => {
                let path = &self.resolve(path)?;
                let full = match &self.base_dir {
                    Some(dir) if !std::path::Path::new(path).is_absolute() => dir.join(path),
                    _ => PathBuf::from(path),
                };
                let mut value =
                    std::fs::read_to_string(&full).map_err(|e| TemplateError::FileUnreadable {
                        path: full.display().to_string(),
                        reason: e.to_string(),
                    })?;
                while value.ends_with('\n') || value.ends_with('\r') {
                    value.pop();
                }
                self.remember_secret(&value);
                Ok(value)
            }
            Reference::Var(name) => self
                .vars
                .get(name)
                .cloned()
                .ok_or_else(|| TemplateError::VarUndefined { name: name.clone() }),
            Reference::StepOutput { step, output } => {
                let outputs = self.outputs.read().expect("outputs lock");
                match outputs.get(step).and_then(|o| o.get(output)) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(other) => Ok(other.to_string()),
                    None if self.placeholder_outputs => Ok(format!("<steps.{step}.{output}>")),
                    None => Err(TemplateError::OutputMissing {
                        step: step.clone(),
                        output: output.clone(),
                    }),
                }
            }
        }
    }

    /// Whether any secret has been resolved (and so may need redacting).
    pub fn has_secrets(&self) -> bool {
        !self.secrets.lock().expect("secrets lock").is_empty()
    }

    /// Replaces every secret resolved so far by `***`.
    pub fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.lock().expect("secrets lock");
        let mut out = text.to_string();
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }

    /// [`Resolver::redact`] applied to every string inside a JSON value.
    pub fn redact_value(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.redact_value(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.redact_value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// [`Resolver::redact_value`] over a step's outputs.
    pub fn redact_outputs(&self, outputs: &Outputs) -> Outputs {
        outputs
            .iter()
            .map(|(k, v)| (k.clone(), self.redact_value(v)))
            .collect()
    }

    /// The folder relative `${file:...}` paths are read from (the plan's).
    pub fn base_dir(&self) -> Option<&std::path::Path> {
        self.base_dir.as_deref()
    }

    /// The plan variables.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_path_may_hold_plan_variables_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db.pw"), "s3cret-pw\n").unwrap();
        let r = Resolver::new(BTreeMap::from([(
            "secrets".to_string(),
            dir.path().display().to_string(),
        )]));
        assert_eq!(
            r.resolve("pw=${file:${var:secrets}/db.pw}!").unwrap(),
            "pw=s3cret-pw!"
        );
        assert_eq!(r.redact("got s3cret-pw"), "got ***");
        assert_eq!(
            references("${file:${var:secrets}/db.pw}").unwrap(),
            [
                Reference::Var("secrets".into()),
                Reference::File("${var:secrets}/db.pw".into())
            ]
        );
        for bad in [
            "${file:${env:HOME}/x}",
            "${file:${steps.a.path}}",
            "${file:${file:/x}}",
        ] {
            assert!(
                matches!(references(bad), Err(TemplateError::Malformed { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            references("${file:${var:x}"),
            Err(TemplateError::Unclosed { .. })
        ));
    }

    #[test]
    fn parses_all_reference_forms() {
        let refs = references(
            "a ${env:TOKEN} b ${file:/run/s} ${var:ns} ${steps.backup.path} $${literal}",
        )
        .unwrap();
        assert_eq!(
            refs,
            vec![
                Reference::Env("TOKEN".into()),
                Reference::File("/run/s".into()),
                Reference::Var("ns".into()),
                Reference::StepOutput {
                    step: "backup".into(),
                    output: "path".into()
                },
            ]
        );
    }

    #[test]
    fn rejects_malformed_and_unclosed() {
        assert!(matches!(
            references("${nope}"),
            Err(TemplateError::Malformed { .. })
        ));
        assert!(matches!(
            references("x ${env:A"),
            Err(TemplateError::Unclosed { offset: 2 })
        ));
        assert!(matches!(
            references("${steps.only}"),
            Err(TemplateError::Malformed { .. })
        ));
    }

    #[test]
    fn resolves_and_redacts_secrets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "hunter22\n").unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("ns".to_string(), "production".to_string());
        let r = Resolver::new(vars).with_base_dir(Some(dir.path().to_path_buf()));
        let mut out = Outputs::new();
        out.insert("n".into(), serde_json::json!(3));
        r.set_outputs("scale", out);
        let s = r
            .resolve("$${x} ${var:ns} ${file:pw} ${steps.scale.n} $5")
            .unwrap();
        assert_eq!(s, "${x} production hunter22 3 $5");
        assert_eq!(r.redact("login hunter22 ok"), "login *** ok");
        assert!(matches!(
            r.resolve("${steps.scale.m}"),
            Err(TemplateError::OutputMissing { .. })
        ));
        assert!(matches!(
            r.resolve("${var:zone}"),
            Err(TemplateError::VarUndefined { .. })
        ));
    }
}
