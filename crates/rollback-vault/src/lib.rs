#![doc = include_str!("../README.md")]

use rollback_core::Registry;

/// Registers this crate's kinds.
pub fn register(_registry: &mut Registry) {}
