//! Core's generic kinds.

use crate::registry::Registry;

/// Registers core's kinds.
pub fn register(_registry: &mut Registry) {}
