//! The guest init, built statically by build.rs and embedded in this binary.

/// The bytes of the static `ktstr-init` that matches this host's wire protocol.
pub static KTSTR_INIT: &[u8] = include_bytes!(env!("KTSTR_INIT_EMBED"));
