//! Ctrl-C: a flag long-running loops poll, so they can stop their children, clean up
//! (temp dirs, VMs) and exit 130 instead of dying half-way.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the SIGINT/SIGTERM handler (idempotent).
pub fn install() {
    INSTALL.call_once(|| {
        if let Err(e) = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)) {
            tracing::warn!("cannot install the Ctrl-C handler: {e}");
        }
    });
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The error long operations return when the user interrupted them.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Exit status for an interrupted run (128 + SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;
