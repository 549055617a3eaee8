//! Step outputs declared once, as a struct: its field names are what
//! `${steps.ID.NAME}` may name (checked when the plan is loaded), and its
//! value is what `run` returns. Declare one with [`crate::step_outputs!`].

use super::{OutputNames, Outputs};

/// A struct of a step's outputs. Implemented by [`crate::step_outputs!`].
pub trait StepOutputs: serde::Serialize {
    /// The field names, in declaration order.
    const NAMES: &'static [&'static str];

    /// The names as a step's [`crate::Step::outputs`] answer.
    fn names() -> OutputNames {
        OutputNames::Fixed(Self::NAMES)
    }

    /// The values, as `run` returns them.
    fn into_outputs(self) -> Outputs
    where
        Self: Sized,
    {
        match serde_json::to_value(&self) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => Outputs::new(),
        }
    }
}

/// Declares a struct of step outputs, e.g.
///
/// ```
/// rollback_core::step_outputs! {
///     /// What a backup step returns.
///     pub struct BackupOutputs {
///         /// Where the backup is.
///         pub path: String,
///         /// Its size in bytes.
///         pub size: u64,
///     }
/// }
/// use rollback_core::StepOutputs;
/// assert_eq!(BackupOutputs::NAMES, ["path", "size"]);
/// let outputs = BackupOutputs { path: "/b/1.dump".into(), size: 42 }.into_outputs();
/// assert_eq!(outputs["size"], 42);
/// ```
#[macro_export]
macro_rules! step_outputs {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, $crate::__serde::Serialize)]
        #[serde(crate = "rollback_core::__serde")]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $ty ),*
        }

        impl $crate::StepOutputs for $name {
            const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];
        }
    };
}
