//! Known-bug allow-lists, under one tight rule: a bug is recognised from the reason line of the
//! check that names it (never from the kernel log, scheduler output or console the verdict
//! appends after that line), at most one row of a test is exempted, and every other row of
//! that test must pass. So a known bug cannot hide a second failure, nor text that merely
//! appears in some context.

use super::{failed_checks, failures, note_known_bug};
use serde_json::Value;

/// An intermittent bug of a scheduler (or of the kernel under it) that these tests have hit
/// and the harness explained.
#[derive(Debug)]
pub struct KnownBug {
    /// Rows whose scheduler starts with this.
    pub scheduler: &'static str,
    /// The check whose reason line names the bug.
    pub check: &'static str,
    /// Text in that reason line.
    pub reason: &'static str,
    /// What the bug is, for the log.
    pub what: &'static str,
}

/// A check's reason: its detail up to the first line break (what follows is context).
pub fn reason_line(check: &Value) -> &str {
    check["detail"].as_str().unwrap_or_default().lines().next().unwrap_or_default()
}

/// The check that says why `row` failed: `scheduler` when it failed (what follows from a
/// disabled scheduler, such as steps never applied, is its consequence), else the row's only
/// failed check; `None` when several checks failed and none of them is `scheduler`.
fn telling_check(row: &Value) -> Option<&Value> {
    let failed = failed_checks(row);
    failed.iter().find(|c| c["name"] == "scheduler").or(failed.first().filter(|_| failed.len() == 1)).copied()
}

/// The known bug `row` failed with, if any.
pub fn known_bug<'b>(row: &Value, bugs: &'b [KnownBug]) -> Option<&'b KnownBug> {
    if row["passed"] != false {
        return None;
    }
    let check = telling_check(row)?;
    let scheduler = row["scheduler"].as_str().unwrap_or_default();
    bugs.iter().find(|b| {
        scheduler.starts_with(b.scheduler) && check["name"] == b.check && reason_line(check).contains(b.reason)
    })
}

/// The rule over the rows of one test, with `bug(row)` naming a row's known bug: `Ok` with the
/// exempted row (its index and what it hit), or `Err` listing every row that fails the test
/// (any failed row without a known bug, and a second known-bug row).
pub fn exempt_one(rows: &[Value], bug: impl Fn(&Value) -> Option<String>) -> Result<Option<(usize, String)>, String> {
    let mut exempted = None;
    let mut failing = Vec::new();
    for (i, row) in rows.iter().enumerate().filter(|(_, r)| r["passed"] != true) {
        match bug(row) {
            Some(what) if exempted.is_none() => exempted = Some((i, what)),
            Some(what) => {
                failing.push(format!("a second known-bug row ({what}), only one is exempted: {}", failures(row)))
            }
            None => failing.push(failures(row)),
        }
    }
    if failing.is_empty() { Ok(exempted) } else { Err(failing.join("\n")) }
}

/// `exempt_one` with a bug table, asserted: panics naming the failing rows; the exempted row
/// is printed and logged (see `note_known_bug`). Returns the exempted row's index.
pub fn assert_passed_but_one_known_bug(rows: &[Value], bugs: &[KnownBug]) -> Option<usize> {
    let verdict = exempt_one(rows, |r| known_bug(r, bugs).map(|b| format!("{}: {}", b.scheduler, b.what)));
    let exempted = verdict.unwrap_or_else(|failed| panic!("host load {}:\n{failed}", super::loadavg()));
    exempted.map(|(i, what)| {
        note_known_bug(&format!("{what}, hit by {} (record {})", rows[i]["scenario"], rows[i]["record"]));
        i
    })
}
