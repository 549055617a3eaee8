//! The kind registry: maps a plan file's `kind:` to a constructor. Adapter
//! crates add their kinds; core never names them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::step::{Notifier, Step, Verifier};

/// A kind's configuration is well-typed but wrong (an empty argv, two
/// exclusive fields); raised by a kind's constructor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field at fault, if one is.
    pub field: Option<String>,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl ConfigError {
    /// An error about the configuration as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            field: None,
            message: message.into(),
        }
    }

    /// An error about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why a kind could not be built from its configuration.
#[derive(Debug, Clone)]
pub(crate) enum BuildError {
    /// The configuration does not fit the kind's fields (serde's message and
    /// the path of the offending field).
    Shape {
        path: Vec<crate::yaml::PathSeg>,
        message: String,
    },
    /// The constructor refused it.
    Config(ConfigError),
}

type Builder<T> = Box<dyn Fn(serde_json::Value) -> Result<Arc<T>, BuildError> + Send + Sync>;

pub(crate) struct KindEntry<T: ?Sized> {
    pub(crate) summary: &'static str,
    pub(crate) schema: serde_json::Value,
    build: Builder<T>,
}

impl<T: ?Sized> KindEntry<T> {
    pub(crate) fn build(&self, config: serde_json::Value) -> Result<Arc<T>, BuildError> {
        (self.build)(config)
    }
}

fn entry<C, T: ?Sized>(
    summary: &'static str,
    build: impl Fn(C) -> Result<Arc<T>, ConfigError> + Send + Sync + 'static,
) -> KindEntry<T>
where
    C: DeserializeOwned + JsonSchema,
{
    // Inlined, so each kind's schema stands alone inside the plan schema.
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let schema = serde_json::to_value(generator.into_root_schema_for::<C>()).unwrap_or_default();
    KindEntry {
        summary,
        schema,
        build: Box::new(move |value| {
            let config: C = serde_path_to_error::deserialize(value).map_err(|e| {
                use serde_path_to_error::Segment;
                let path = e
                    .path()
                    .iter()
                    .filter_map(|seg| match seg {
                        Segment::Seq { index } => Some(crate::yaml::PathSeg::Index(*index)),
                        Segment::Map { key } => Some(crate::yaml::PathSeg::Key(key.clone())),
                        Segment::Enum { variant } => {
                            Some(crate::yaml::PathSeg::Key(variant.clone()))
                        }
                        Segment::Unknown => None,
                    })
                    .collect();
                BuildError::Shape {
                    path,
                    message: e.into_inner().to_string(),
                }
            })?;
            build(config).map_err(BuildError::Config)
        }),
    }
}

/// Kinds of steps, verifiers and notifiers a plan may use.
#[derive(Default)]
pub struct Registry {
    pub(crate) steps: BTreeMap<String, KindEntry<dyn Step>>,
    pub(crate) verifiers: BTreeMap<String, KindEntry<dyn Verifier>>,
    pub(crate) notifiers: BTreeMap<String, KindEntry<dyn Notifier>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .field("verifiers", &self.verifiers.keys().collect::<Vec<_>>())
            .field("notifiers", &self.notifiers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// A registry with no kinds at all.
    pub fn empty() -> Self {
        Registry::default()
    }

    /// A registry with core's generic kinds: steps `exec`, `http`, `wait`,
    /// `confirm`, `git.restore`; verifiers `http`, `exec`, `tcp`.
    pub fn with_core_kinds() -> Self {
        let mut registry = Registry::empty();
        crate::kinds::register(&mut registry);
        registry
    }

    /// Adds a step kind. `C` is its configuration (everything in the plan
    /// entry except `id`, `kind`, `after`, `timeout`, `retries`, `backoff`);
    /// give it `#[serde(deny_unknown_fields)]` so misspelt fields are caught.
    pub fn step<C, S>(
        &mut self,
        kind: &str,
        summary: &'static str,
        build: impl Fn(C) -> Result<S, ConfigError> + Send + Sync + 'static,
    ) -> &mut Self
    where
        C: DeserializeOwned + JsonSchema,
        S: Step,
    {
        let e = entry(summary, move |c: C| {
            build(c).map(|s| Arc::new(s) as Arc<dyn Step>)
        });
        self.steps.insert(kind.to_string(), e);
        self
    }

    /// Adds a verifier kind (usable under `verify:`, `preflight:`).
    pub fn verifier<C, V>(
        &mut self,
        kind: &str,
        summary: &'static str,
        build: impl Fn(C) -> Result<V, ConfigError> + Send + Sync + 'static,
    ) -> &mut Self
    where
        C: DeserializeOwned + JsonSchema,
        V: Verifier,
    {
        let e = entry(summary, move |c: C| {
            build(c).map(|v| Arc::new(v) as Arc<dyn Verifier>)
        });
        self.verifiers.insert(kind.to_string(), e);
        self
    }

    /// Adds a notifier kind (usable under `notify:`).
    pub fn notifier<C, N>(
        &mut self,
        kind: &str,
        summary: &'static str,
        build: impl Fn(C) -> Result<N, ConfigError> + Send + Sync + 'static,
    ) -> &mut Self
    where
        C: DeserializeOwned + JsonSchema,
        N: Notifier,
    {
        let e = entry(summary, move |c: C| {
            build(c).map(|n| Arc::new(n) as Arc<dyn Notifier>)
        });
        self.notifiers.insert(kind.to_string(), e);
        self
    }

    /// Step kinds with their one-line summaries.
    pub fn step_kinds(&self) -> Vec<(&str, &'static str)> {
        self.steps
            .iter()
            .map(|(k, e)| (k.as_str(), e.summary))
            .collect()
    }

    /// Verifier kinds with their one-line summaries.
    pub fn verifier_kinds(&self) -> Vec<(&str, &'static str)> {
        self.verifiers
            .iter()
            .map(|(k, e)| (k.as_str(), e.summary))
            .collect()
    }

    /// Notifier kinds with their one-line summaries.
    pub fn notifier_kinds(&self) -> Vec<(&str, &'static str)> {
        self.notifiers
            .iter()
            .map(|(k, e)| (k.as_str(), e.summary))
            .collect()
    }
}
