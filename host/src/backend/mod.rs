//! VM backends.
