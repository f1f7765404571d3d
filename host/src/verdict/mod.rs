//! Verdicts: pure functions from a [`RunRecord`] and [`Thresholds`] to a [`Verdict`], so a
//! record can be judged again later with other thresholds (`ktstr-host judge`).
//!
//! Every check either passes, fails with messages that name the cgroup, worker, CPU and time
//! ("worker 3 in cg_1 made no progress for 2.4 s on cpu 5 at 1.3 s"), or is skipped with the
//! reason (a check that could not fail is never reported as passed). Times are seconds since
//! the workers were released. The thresholds, their defaults and what each check means are in
//! [`THRESHOLD_DOCS`] and [`CHECK_DOCS`], which `ktstr-host explain` prints.

use std::fmt::Write as _;

use ktstr_shared::scenario::WorkType;
use ktstr_shared::wire::ScenarioEventKind;
use serde::{Deserialize, Serialize};

use crate::record::RunRecord;
use crate::scenario::timeline::{self, Placement, Timeline};

#[cfg(test)]
mod fuzz_tests;
mod latency;
mod placement;
mod progress;
mod scheduler;
mod shares;
#[cfg(test)]
mod tests;
mod thresholds;
mod topology;

use placement::Mask;
pub use thresholds::*;

/// Failure messages listed per check; the rest are counted.
pub const MAX_LISTED: usize = 6;

/// What a check (or a whole verdict) concluded. A check that inspected nothing is `NotJudged`,
/// never `Pass`: it does not fail the run, but it is shown as not judged (JUnit: skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Pass,
    Fail,
    NotJudged,
}

impl Status {
    /// As tables print it.
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::NotJudged => "NOT JUDGED",
        }
    }
}

/// One check's outcome: `passed` is false only for a failure; `skipped` marks a check that
/// did not apply or had nothing to inspect (its `status` is then `not_judged`), with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    #[serde(default)]
    pub status: Status,
    pub passed: bool,
    pub skipped: bool,
    /// For a failure: what failed, naming cgroup, worker, CPU and time. Otherwise what was measured.
    pub detail: String,
}

impl Check {
    pub(super) fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Pass, passed: true, skipped: false, detail: detail.into() }
    }

    pub(super) fn skip(name: &str, why: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::NotJudged, passed: true, skipped: true, detail: why.into() }
    }

    /// Fails with `failures` (listed up to [`MAX_LISTED`]); passes with `ok` when there are none.
    pub(super) fn from_failures(name: &str, failures: Vec<String>, ok: impl FnOnce() -> String) -> Check {
        if failures.is_empty() {
            return Check::pass(name, ok());
        }
        let mut detail = failures.iter().take(MAX_LISTED).cloned().collect::<Vec<_>>().join("; ");
        if failures.len() > MAX_LISTED {
            let _ = write!(detail, "; and {} more", failures.len() - MAX_LISTED);
        }
        Check { name: name.into(), status: Status::Fail, passed: false, skipped: false, detail }
    }
}

/// The numbers a summary table shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyNumbers {
    pub workers: usize,
    pub units: u64,
    pub cpu_s: f64,
    pub max_gap_ms: Option<f64>,
    pub spread_pct: Option<f64>,
    pub p99_wake_us: Option<f64>,
    pub cpu_ratio: Option<f64>,
    pub ticks: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub scenario: String,
    pub run_id: String,
    /// `pass` only when no check failed and the run was judged at all (see [`JUDGED_CORE`]).
    #[serde(default)]
    pub status: Status,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub thresholds: Thresholds,
    pub numbers: KeyNumbers,
}

impl Verdict {
    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// Checks of which at least one must have judged something (not `not_judged`) for a verdict
/// to pass: a run whose workers did nothing measurable never passes.
pub const JUDGED_CORE: &[&str] = &["not_starved", "max_gap"];

/// The verdict's status from its checks: any failure fails; no failure but none of
/// [`JUDGED_CORE`] judged is not judged; else pass.
fn overall(checks: &[Check]) -> Status {
    if checks.iter().any(|c| c.status == Status::Fail) {
        Status::Fail
    } else if !checks.iter().any(|c| JUDGED_CORE.contains(&c.name.as_str()) && c.status == Status::Pass) {
        Status::NotJudged
    } else {
        Status::Pass
    }
}

/// Judges `rec` against `th`.
pub fn judge(rec: &RunRecord, th: &Thresholds) -> Verdict {
    let cx = Ctx::new(rec, th);
    let mut numbers = KeyNumbers {
        workers: cx.n_workers,
        units: rec.reports.iter().fold(0u64, |a, r| a.saturating_add(r.work_units)),
        cpu_s: rec.reports.iter().map(|r| r.cpu_time_ns as f64).sum::<f64>() / 1e9,
        max_gap_ms: rec.reports.iter().map(|r| r.max_gap_ns).max().map(|g| g as f64 / 1e6),
        ticks: rec.ticks.len(),
        ..Default::default()
    };
    let checks = vec![
        progress::run_completed(&cx),
        progress::steps_applied(&cx),
        progress::guest_errors(&cx),
        progress::telemetry(&cx),
        progress::not_starved(&cx),
        progress::max_gap(&cx),
        placement::isolation(&cx, Mask::Cpuset),
        placement::isolation(&cx, Mask::Affinity),
        shares::fairness(&cx, &mut numbers),
        shares::cpu_ratio(&cx, &mut numbers),
        latency::wake_latency(&cx, &mut numbers),
        latency::throughput(&cx),
        scheduler::scheduler(&cx),
        topology::topology(&cx),
    ];
    let status = overall(&checks);
    Verdict {
        scenario: rec.meta.scenario.name.clone(),
        run_id: rec.meta.run_id.clone(),
        status,
        passed: status == Status::Pass,
        checks,
        thresholds: th.clone(),
        numbers,
    }
}

/// What the checks share: names and times for messages, the placement timeline.
pub(super) struct Ctx<'a> {
    pub(super) rec: &'a RunRecord,
    pub(super) th: &'a Thresholds,
    /// Release time (guest clock), when known.
    pub(super) t0: Option<u64>,
    pub(super) cgroups: Vec<&'a str>,
    /// Per worker id: work type name, fairness class, index of its spec.
    pub(super) workers: Vec<WorkerMeta>,
    pub(super) n_workers: usize,
    pub(super) timeline: Timeline,
    /// Per step: the guest-time window in which it may have taken effect.
    pub(super) windows: Vec<(u64, u64)>,
}

pub(super) struct WorkerMeta {
    pub(super) work: WorkType,
    pub(super) spec: usize,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(rec: &'a RunRecord, th: &'a Thresholds) -> Ctx<'a> {
        let cgroups = rec.meta.plan.cgroup_defs().map(|d| d.name.as_str()).collect();
        let mut spec_ids: Vec<*const ktstr_shared::scenario::WorkerSpec> = Vec::new();
        let workers: Vec<WorkerMeta> = rec
            .meta
            .plan
            .workers()
            .map(|w| {
                let ptr = std::ptr::from_ref(w.spec);
                let spec = spec_ids.iter().position(|&p| p == ptr).unwrap_or_else(|| {
                    spec_ids.push(ptr);
                    spec_ids.len() - 1
                });
                WorkerMeta { work: w.spec.work.clone(), spec }
            })
            .collect();
        let n_workers = workers.len();
        let timeline = timeline::build(&rec.meta.plan, rec.meta.topology.cpus());
        let mut cx = Ctx { rec, th, t0: rec.started_ns(), cgroups, workers, n_workers, timeline, windows: Vec::new() };
        cx.windows = rec.meta.plan.step_starts_ms().enumerate().map(|(k, s)| cx.step_window(k, s)).collect();
        cx
    }

    pub(super) fn cgroup(&self, idx: u16) -> String {
        self.cgroups.get(idx as usize).map_or_else(|| format!("cgroup #{idx}"), |n| n.to_string())
    }

    pub(super) fn worker(&self, id: u32, cgroup: u16) -> String {
        format!("worker {id} in {}", self.cgroup(cgroup))
    }

    /// Seconds since the release.
    pub(super) fn secs(&self, t_ns: u64) -> f64 {
        t_ns.saturating_sub(self.t0.unwrap_or(t_ns)) as f64 / 1e9
    }

    pub(super) fn at(&self, t_ns: u64) -> String {
        match self.t0 {
            Some(_) => format!("at {:.2} s", self.secs(t_ns)),
            None => format!("at guest time {:.2} s", t_ns as f64 / 1e9),
        }
    }

    pub(super) fn finished_ns(&self) -> Option<u64> {
        self.rec.events.iter().find(|e| e.kind == ScenarioEventKind::Finished).map(|e| e.t_ns)
    }

    pub(super) fn cgroups_applied(&self) -> Option<bool> {
        self.rec.events.iter().find_map(|e| match e.kind {
            ScenarioEventKind::Started { cgroups_applied, .. } => Some(cgroups_applied),
            _ => None,
        })
    }

    /// Time window (guest clock) in which step `k` may have taken effect.
    pub(super) fn step_window(&self, k: usize, start_ms: u64) -> (u64, u64) {
        let grace = ms_to_ns(self.th.isolation_grace_ms);
        let t0 = self.t0.unwrap_or(0);
        let lo = t0.saturating_add(ms_to_ns(start_ms)).saturating_sub(grace);
        let applied = self.rec.events.iter().find_map(|e| match e.kind {
            ScenarioEventKind::Step { index, .. } if index as usize == k => Some(e.t_ns),
            _ => None,
        });
        (lo, applied.map_or(u64::MAX, |t| t.saturating_add(grace)))
    }

    /// Placements worker `id` may have had at guest time `t_ns`: one, or both sides of a step.
    pub(super) fn placements(&self, id: u32, t_ns: u64) -> Vec<&Placement> {
        let newest = self.windows.iter().take_while(|w| w.0 <= t_ns).count();
        let oldest = self.windows.iter().take_while(|w| w.1 <= t_ns).count().min(newest);
        (oldest..=newest).filter_map(|e| self.timeline.epochs.get(e)?.workers.get(id as usize)?.as_ref()).collect()
    }
}
