//! Visible skips: a test that cannot run here says why, and the reason reaches the skip log
//! that `./dev.sh test` summarises at the end (libtest captures a passing test's output, so
//! without the log a skipped test would only show `ok`).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// The environment variable naming the skip log (set by dev.sh; unset, skips are only printed).
pub const SKIP_LOG_VAR: &str = "KTSTR_SKIP_LOG";

/// Skip reasons of this kind are the only ones a CI machine may have (dev.sh checks the log).
pub const NEEDS_HARDWARE_KVM: &str = "needs hardware KVM";

/// Prints `skipped: <reason>` and appends `<test target> <test name>: <reason>` to the skip log.
/// Call it on every early return of a test that cannot run here: `return skip("...")`.
pub fn skip(reason: impl std::fmt::Display) {
    let log = std::env::var_os(SKIP_LOG_VAR);
    log_skip(log.as_deref().map(Path::new), &reason.to_string());
}

/// `skip` with the log given: the line is written once per test (helpers that skip on behalf of
/// a test may be reached more than once).
pub fn log_skip(log: Option<&Path>, reason: &str) {
    eprintln!("skipped: {reason}");
    append_once(log, reason);
}

/// A row exempted by a known-bug allow-list (see `known_bugs`): printed, and logged as
/// `<test target> <test name>: known bug: <what>` so the summary shows it next to the skips.
pub fn note_known_bug(what: &str) {
    eprintln!("known bug: {what}");
    let log = std::env::var_os(SKIP_LOG_VAR);
    append_once(log.as_deref().map(Path::new), &format!("{KNOWN_BUG}{what}"));
}

/// The prefix of known-bug lines in the skip log.
pub const KNOWN_BUG: &str = "known bug: ";

fn append_once(log: Option<&Path>, what: &str) {
    static LOGGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let line = format!("{} {}: {what}", env!("CARGO_CRATE_NAME"), test_name());
    let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    if !logged.get_or_insert_with(HashSet::new).insert(line.clone()) {
        return;
    }
    let Some(log) = log else { return };
    // One short write with O_APPEND: lines from tests running in parallel do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        panic!("cannot append to the skip log {} ({SKIP_LOG_VAR}): {e}", log.display());
    }
}

/// The running test's name: libtest runs each test on a thread named after it.
fn test_name() -> String {
    std::thread::current().name().unwrap_or("(unnamed thread)").to_string()
}
