//! Reading `ktstr-host run --json` rows, shared by the VM test targets, and the bounded rerun
//! of runs that failed only on timing.

use serde_json::Value;
use std::process::Output;
use std::sync::{Mutex, MutexGuard};

/// VM tests of one target take turns: in parallel they would compete for the 2 host cores and
/// skew the very CPU shares they measure.
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn rows(out: &Output) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON rows on stdout");
    v.as_array().expect("an array of rows").clone()
}

/// The row of catalog scenario `scenario` under `scheduler`. Panics when there is none: a
/// renamed or removed scenario must fail the tests that look it up, not turn them into passes.
pub fn scenario_row<'a>(rows: &'a [Value], scenario: &str, scheduler: &str) -> &'a Value {
    let mut found = rows.iter().filter(|r| r["scenario"] == scenario && r["scheduler"] == scheduler);
    let row = found.next().unwrap_or_else(|| {
        let ran: Vec<String> = rows.iter().map(|r| format!("{} under {}", r["scenario"], r["scheduler"])).collect();
        panic!("no row for scenario {scenario:?} under {scheduler}: renamed or removed from the catalog? rows: {ran:?}")
    });
    assert!(found.next().is_none(), "more than one row for scenario {scenario:?} under {scheduler}");
    row
}

pub fn check<'a>(row: &'a Value, name: &str) -> &'a Value {
    let checks = row["verdict"]["checks"].as_array().expect("a verdict with checks");
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in the row of {}", row["scenario"]))
}

pub fn detail<'a>(row: &'a Value, name: &str) -> &'a str {
    check(row, name)["detail"].as_str().unwrap()
}

/// The checks of a row that failed.
pub fn failed_checks(row: &Value) -> Vec<&Value> {
    row["verdict"]["checks"].as_array().map_or(Vec::new(), |c| c.iter().filter(|c| c["passed"] == false).collect())
}

/// A failed row: scenario, scheduler, record and each failed check with its detail.
pub fn failures(row: &Value) -> String {
    let failed: Vec<String> = failed_checks(row).iter().map(|c| format!("{}: {}", c["name"], c["detail"])).collect();
    format!("{} under {} ({}):\n  {}", row["scenario"], row["scheduler"], row["record"], failed.join("\n  "))
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

/// Checks whose limits are about time: CPU shares, gaps, latencies. Under TCG on 2 shared host
/// cores, a host that leaves a vCPU thread unscheduled for a while charges that time to
/// whatever guest task was current, so these can fail now and then with no fault in the
/// scheduler or the harness. Everything else (progress, isolation, errors) is never rerun.
pub const TIMING_CHECKS: &[&str] = &["fairness", "max_gap", "wake_latency", "throughput", "cpu_ratio"];

/// Failed, and only on timing checks (the VM ran to its end without a problem).
pub fn failed_only_on_timing(row: &Value) -> bool {
    let failed = failed_checks(row);
    row["passed"] == false && !failed.is_empty() && failed.iter().all(|c| TIMING_CHECKS.iter().any(|t| c["name"] == *t))
}

/// Runs each row that failed only on timing once more (`rerun` gives the new row, `None` when
/// it could not run) and keeps the rerun's row in its place; at most `max` reruns in all, so a
/// timing check that fails again, or fails often, still fails the test. Each rerun is printed.
/// Returns how many rows were rerun.
pub fn rerun_timing_failures(rows: &mut [Value], max: usize, mut rerun: impl FnMut(&Value) -> Option<Value>) -> usize {
    let mut done = 0;
    for row in rows.iter_mut() {
        if done == max || !failed_only_on_timing(row) {
            continue;
        }
        let Some(again) = rerun(row) else { continue };
        done += 1;
        eprintln!(
            "RERUN (host load {}) {}\n  rerun: {}",
            loadavg(),
            failures(row),
            if again["passed"] == true { "passed".to_string() } else { failures(&again) }
        );
        *row = again;
    }
    done
}
