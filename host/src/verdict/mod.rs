//! Verdicts: pure functions from a [`RunRecord`] and [`Thresholds`] to a [`Verdict`], so a
//! record can be judged again later with other thresholds (`ktstr-host judge`).
//!
//! Every check either passes, fails with messages that name the cgroup, worker, CPU and time
//! ("worker 3 in cg_1 made no progress for 2.4 s on cpu 5 at 1.3 s"), or is skipped with the
//! reason (a check that could not fail is never reported as passed). Times are seconds since
//! the workers were released. The thresholds, their defaults and what each check means are in
//! [`THRESHOLD_DOCS`] and [`CHECK_DOCS`], which `ktstr-host explain` prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ktstr_shared::hist;
use ktstr_shared::scenario::{Op, WorkType};
use ktstr_shared::wire::{
    LogLevel, Outcome, ScenarioEventKind, SchedEventKind, ScxState, WorkerEnd, WorkerReport, mask_cpus,
};
use serde::{Deserialize, Serialize};

use crate::record::{RunRecord, SchedulerKind, Tick};
use crate::scenario::timeline::{self, Placement, Timeline};
use crate::scenario::{CpuRatio, Expect};

pub const DEFAULT_MAX_GAP_MS: u64 = 2000;
pub const DEFAULT_MAX_SPREAD_PCT: f64 = 15.0;
pub const DEFAULT_ISOLATION_GRACE_MS: u64 = 250;
/// Share of the run at its start that fairness leaves out; 0 = judge whole-run totals. Whole
/// runs are the default: EEVDF evens out CPU time over time (a task charged for a stall of its
/// vCPU gets less later), so totals are steadier than any window, and they include the start,
/// where workers forked on one LLC are spread by load balancing (~1 s across LLCs here).
pub const DEFAULT_FAIRNESS_WARMUP_PCT: f64 = 0.0;
/// Under QEMU TCG emulation the host schedules the vCPU threads on shared cores while the
/// guest's clock runs on: the guest charges that time to whatever task was current, which skews
/// CPU shares (short-running tasks such as the sampling init look far costlier) and wake-up
/// latencies, and a vCPU thread the host does not run for a while shows up as a gap in the guest.
/// Gap, spread and latency limits that come from the defaults or the scenario are multiplied
/// by this for emulated runs; limits given on the command line apply as given.
pub const EMULATION_SLACK: f64 = 2.0;
/// Failure messages listed per check; the rest are counted.
pub const MAX_LISTED: usize = 6;

/// Each threshold: name, default, meaning.
pub const THRESHOLD_DOCS: &[(&str, &str, &str)] = &[
    ("max_gap_ms", "2000", "longest time any worker may go without completing a work unit (max_gap, not_starved)"),
    (
        "max_spread_pct",
        "15",
        "largest (max - min) / mean of CPU time among like CPU-bound workers (same cgroup, same spec) (fairness)",
    ),
    (
        "fairness",
        "on",
        "judge the spread at all; a scenario whose workers are not meant to get equal shares turns it off",
    ),
    ("fairness_metric", "cpu-time", "what the spread is computed on: cpu-time (schedstat) or units (work done)"),
    (
        "fairness_warmup_pct",
        "0",
        "0: fairness judges whole-run totals; above 0, what workers gained after that part (in % of the run) \
         from the samples, leaving out stalled sampling intervals",
    ),
    ("p99_wake_us", "off", "largest p99 wake-up latency of any worker that measures wake-ups (wake_latency)"),
    ("min_units_per_sec", "off", "fewest work units per second of run time any worker may do (throughput)"),
    (
        "emulation_slack",
        "2",
        "under QEMU TCG, gap, spread and p99 limits from the defaults or the scenario are multiplied by this \
         (the host's scheduling of vCPU threads skews guest time accounting); command-line limits are not",
    ),
    (
        "isolation_grace_ms",
        "250",
        "around a step that changes cpusets, affinity or cgroups, CPUs of the states before and after both count",
    ),
];

/// Each check and what it proves.
pub const CHECK_DOCS: &[(&str, &str)] = &[
    ("run_completed", "the guest ran the scenario to its end, released the workers and reported every worker"),
    ("steps_applied", "every step was applied at its time and none of its operations failed"),
    ("guest_errors", "the guest init logged no error"),
    ("telemetry", "the protocol channel and the samples arrived intact (no rejected frames or parts)"),
    ("not_starved", "every worker made progress, and none stopped making progress for good"),
    ("max_gap", "no worker went longer than max_gap_ms without progress"),
    ("cpuset_isolation", "every worker ran only on CPUs of its cgroup's effective cpuset at each point in time"),
    ("affinity", "every worker with an affinity mask ran only on CPUs of that mask"),
    ("fairness", "like CPU-bound workers of a cgroup got CPU time within max_spread_pct of each other"),
    ("cpu_ratio", "the CPU time of two cgroups has the ratio the scenario expects (e.g. 2:1 for weights 200:100)"),
    ("wake_latency", "p99 wake-up latency of every worker that measures it is within p99_wake_us"),
    ("throughput", "every worker did at least min_units_per_sec work units per second"),
    ("scheduler", "sched_ext: the BPF scheduler stayed attached; EEVDF: no BPF scheduler was attached"),
];

/// What the spread of the fairness check is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    #[default]
    CpuTime,
    Units,
}

impl Metric {
    /// As on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Metric::CpuTime => "cpu-time",
            Metric::Units => "units",
        }
    }
}

/// The limits a verdict applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub max_gap_ms: u64,
    pub max_spread_pct: f64,
    pub fairness: bool,
    pub fairness_metric: Metric,
    pub fairness_warmup_pct: f64,
    pub p99_wake_us: Option<u64>,
    pub min_units_per_sec: Option<f64>,
    pub isolation_grace_ms: u64,
    /// Factor applied to the gap, spread and p99 limits (1 unless the run was emulated).
    pub emulation_slack: f64,
    /// From the scenario's `[expect]`.
    pub cpu_ratio: Option<CpuRatio>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_gap_ms: DEFAULT_MAX_GAP_MS,
            max_spread_pct: DEFAULT_MAX_SPREAD_PCT,
            fairness: true,
            fairness_metric: Metric::CpuTime,
            fairness_warmup_pct: DEFAULT_FAIRNESS_WARMUP_PCT,
            p99_wake_us: None,
            min_units_per_sec: None,
            isolation_grace_ms: DEFAULT_ISOLATION_GRACE_MS,
            emulation_slack: 1.0,
            cpu_ratio: None,
        }
    }
}

/// Thresholds from the command line; each wins over the scenario's `[expect]` and the default.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Overrides {
    /// Longest time a worker may go without progress, ms [default: 2000]
    #[arg(long, value_name = "MS")]
    pub max_gap_ms: Option<u64>,
    /// Largest CPU-time spread among like workers of a cgroup, % [default: 15]
    #[arg(long, value_name = "PCT", value_parser = positive)]
    pub max_spread_pct: Option<f64>,
    /// What the fairness spread is computed on [default: cpu-time]
    #[arg(long, value_enum, value_name = "METRIC")]
    pub fairness_metric: Option<Metric>,
    /// Start of the run left out of fairness, % of the run time [default: 0 = whole run]
    #[arg(long, value_name = "PCT", value_parser = percent)]
    pub fairness_warmup_pct: Option<f64>,
    /// Fail when a worker's p99 wake-up latency is above this, us [default: off]
    #[arg(long, value_name = "US")]
    pub p99_wake_us: Option<u64>,
    /// Fail when a worker does fewer work units per second [default: off]
    #[arg(long, value_name = "N", value_parser = positive)]
    pub min_units_per_sec: Option<f64>,
    /// Slack around cpuset/affinity changes for the isolation checks, ms [default: 250]
    #[arg(long, value_name = "MS")]
    pub isolation_grace_ms: Option<u64>,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..100.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a percentage in 0..100")),
    }
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number above 0")),
    }
}

impl Thresholds {
    /// Defaults, then the scenario's expectations, then the command line. For an `emulated`
    /// run, gap, spread and p99 limits that do not come from the command line get
    /// [`EMULATION_SLACK`].
    pub fn resolve(expect: &Expect, o: &Overrides, emulated: bool) -> Thresholds {
        let d = Thresholds::default();
        let slack = if emulated { EMULATION_SLACK } else { 1.0 };
        let spread = o.max_spread_pct.unwrap_or(expect.max_spread_pct.unwrap_or(d.max_spread_pct) * slack);
        let p99 = o.p99_wake_us.or(expect.p99_wake_us.map(|us| (us as f64 * slack) as u64));
        Thresholds {
            max_gap_ms: o.max_gap_ms.unwrap_or((expect.max_gap_ms.unwrap_or(d.max_gap_ms) as f64 * slack) as u64),
            max_spread_pct: spread,
            fairness: expect.fairness.unwrap_or(true),
            fairness_metric: o.fairness_metric.unwrap_or(d.fairness_metric),
            fairness_warmup_pct: o.fairness_warmup_pct.unwrap_or(d.fairness_warmup_pct),
            p99_wake_us: p99,
            min_units_per_sec: o.min_units_per_sec.or(expect.min_units_per_sec),
            isolation_grace_ms: o.isolation_grace_ms.unwrap_or(d.isolation_grace_ms),
            emulation_slack: slack,
            cpu_ratio: expect.cpu_ratio.clone(),
        }
    }

    /// The thresholds a record is judged with: its scenario's, for its backend, then `o`.
    pub fn for_record(rec: &RunRecord, o: &Overrides) -> Thresholds {
        Thresholds::resolve(&rec.meta.expect, o, rec.emulated())
    }

    /// One line per threshold: name, value.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "off".into());
        vec![
            ("max_gap_ms", self.max_gap_ms.to_string()),
            ("max_spread_pct", self.max_spread_pct.to_string()),
            ("fairness", if self.fairness { "on" } else { "off (the scenario expects unequal shares)" }.into()),
            ("fairness_metric", self.fairness_metric.name().into()),
            ("fairness_warmup_pct", self.fairness_warmup_pct.to_string()),
            ("p99_wake_us", opt(self.p99_wake_us.map(|v| v.to_string()))),
            ("min_units_per_sec", opt(self.min_units_per_sec.map(|v| v.to_string()))),
            ("isolation_grace_ms", self.isolation_grace_ms.to_string()),
            ("emulation_slack", self.emulation_slack.to_string()),
            (
                "cpu_ratio",
                opt(self.cpu_ratio.as_ref().map(|r| {
                    format!("{}:{} = {} +- {:.0}%", r.cgroups[0], r.cgroups[1], r.ratio, r.tolerance * 100.0)
                })),
            ),
        ]
    }
}

/// One check's outcome. A skipped check passes and says why it did not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub skipped: bool,
    /// For a failure: what failed, naming cgroup, worker, CPU and time. Otherwise what was measured.
    pub detail: String,
}

impl Check {
    fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check { name: name.into(), passed: true, skipped: false, detail: detail.into() }
    }

    fn skip(name: &str, why: impl Into<String>) -> Check {
        Check { name: name.into(), passed: true, skipped: true, detail: why.into() }
    }

    /// Fails with `failures` (listed up to [`MAX_LISTED`]); passes with `ok` when there are none.
    fn from_failures(name: &str, failures: Vec<String>, ok: impl FnOnce() -> String) -> Check {
        if failures.is_empty() {
            return Check::pass(name, ok());
        }
        let mut detail = failures.iter().take(MAX_LISTED).cloned().collect::<Vec<_>>().join("; ");
        if failures.len() > MAX_LISTED {
            let _ = write!(detail, "; and {} more", failures.len() - MAX_LISTED);
        }
        Check { name: name.into(), passed: false, skipped: false, detail }
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

/// Judges `rec` against `th`.
pub fn judge(rec: &RunRecord, th: &Thresholds) -> Verdict {
    let cx = Ctx::new(rec, th);
    let mut numbers = KeyNumbers {
        workers: cx.n_workers,
        units: rec.reports.iter().map(|r| r.work_units).sum(),
        cpu_s: rec.reports.iter().map(|r| r.cpu_time_ns as f64).sum::<f64>() / 1e9,
        max_gap_ms: rec.reports.iter().map(|r| r.max_gap_ns).max().map(|g| g as f64 / 1e6),
        ticks: rec.ticks.len(),
        ..Default::default()
    };
    let checks = vec![
        run_completed(&cx),
        steps_applied(&cx),
        guest_errors(&cx),
        telemetry(&cx),
        not_starved(&cx),
        max_gap(&cx),
        isolation(&cx, Mask::Cpuset),
        isolation(&cx, Mask::Affinity),
        fairness(&cx, &mut numbers),
        cpu_ratio(&cx, &mut numbers),
        wake_latency(&cx, &mut numbers),
        throughput(&cx),
        scheduler(&cx),
    ];
    Verdict {
        scenario: rec.meta.scenario.name.clone(),
        run_id: rec.meta.run_id.clone(),
        passed: checks.iter().all(|c| c.passed),
        checks,
        thresholds: th.clone(),
        numbers,
    }
}

/// What the checks share: names and times for messages, the placement timeline.
struct Ctx<'a> {
    rec: &'a RunRecord,
    th: &'a Thresholds,
    /// Release time (guest clock), when known.
    t0: Option<u64>,
    cgroups: Vec<&'a str>,
    /// Per worker id: work type name, fairness class, index of its spec.
    workers: Vec<WorkerMeta>,
    n_workers: usize,
    timeline: Timeline,
    /// Per step: the guest-time window in which it may have taken effect.
    windows: Vec<(u64, u64)>,
}

struct WorkerMeta {
    work: WorkType,
    spec: usize,
}

impl<'a> Ctx<'a> {
    fn new(rec: &'a RunRecord, th: &'a Thresholds) -> Ctx<'a> {
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

    fn cgroup(&self, idx: u16) -> String {
        self.cgroups.get(idx as usize).map_or_else(|| format!("cgroup #{idx}"), |n| n.to_string())
    }

    fn worker(&self, id: u32, cgroup: u16) -> String {
        format!("worker {id} in {}", self.cgroup(cgroup))
    }

    /// Seconds since the release.
    fn secs(&self, t_ns: u64) -> f64 {
        t_ns.saturating_sub(self.t0.unwrap_or(t_ns)) as f64 / 1e9
    }

    fn at(&self, t_ns: u64) -> String {
        match self.t0 {
            Some(_) => format!("at {:.2} s", self.secs(t_ns)),
            None => format!("at guest time {:.2} s", t_ns as f64 / 1e9),
        }
    }

    fn finished_ns(&self) -> Option<u64> {
        self.rec.events.iter().find(|e| e.kind == ScenarioEventKind::Finished).map(|e| e.t_ns)
    }

    fn cgroups_applied(&self) -> Option<bool> {
        self.rec.events.iter().find_map(|e| match e.kind {
            ScenarioEventKind::Started { cgroups_applied, .. } => Some(cgroups_applied),
            _ => None,
        })
    }

    /// Time window (guest clock) in which step `k` may have taken effect.
    fn step_window(&self, k: usize, start_ms: u64) -> (u64, u64) {
        let grace = self.th.isolation_grace_ms * 1_000_000;
        let t0 = self.t0.unwrap_or(0);
        let lo = (t0 + start_ms * 1_000_000).saturating_sub(grace);
        let applied = self.rec.events.iter().find_map(|e| match e.kind {
            ScenarioEventKind::Step { index, .. } if index as usize == k => Some(e.t_ns),
            _ => None,
        });
        (lo, applied.map_or(u64::MAX, |t| t.saturating_add(grace)))
    }

    /// Placements worker `id` may have had at guest time `t_ns`: one, or both sides of a step.
    fn placements(&self, id: u32, t_ns: u64) -> Vec<&Placement> {
        let newest = self.windows.iter().take_while(|w| w.0 <= t_ns).count();
        let oldest = self.windows.iter().take_while(|w| w.1 <= t_ns).count().min(newest);
        (oldest..=newest).filter_map(|e| self.timeline.epochs.get(e)?.workers.get(id as usize)?.as_ref()).collect()
    }
}

fn run_completed(cx: &Ctx) -> Check {
    let rec = cx.rec;
    let mut f = Vec::new();
    if let Some(p) = &rec.end.vm_problem {
        f.push(p.lines().next().unwrap_or_default().to_string());
    }
    match rec.end.result.as_ref().map(|r| &r.outcome) {
        None if rec.end.vm_problem.is_none() => f.push("the guest sent no result".into()),
        None | Some(Outcome::Completed) => {}
        Some(Outcome::TimedOut) => {
            f.push(format!("the run hit its deadline of {} ms before the scenario ended", rec.meta.deadline_ms))
        }
        Some(Outcome::SchedulerFailed { reason }) => f.push(format!("the run was cut short: {reason}")),
        Some(o) => f.push(format!("the run ended as {o:?}, not Completed")),
    }
    if cx.t0.is_none() && rec.end.result.is_some() {
        f.push("the workers were never released (no Started event)".into());
    }
    let reported: Vec<bool> = (0..cx.n_workers).map(|id| rec.reports.iter().any(|r| r.id as usize == id)).collect();
    let missing: Vec<String> =
        reported.iter().enumerate().filter(|(_, r)| !**r).map(|(id, _)| id.to_string()).collect();
    if !missing.is_empty() && rec.end.result.is_some() {
        f.push(format!("no report from worker(s) {}", missing.join(", ")));
    }
    for r in &rec.reports {
        let how = match r.end {
            WorkerEnd::Exited { code } => format!("exited early with code {code}"),
            WorkerEnd::Signaled { signal } => format!("was killed early by signal {signal}"),
            _ => continue,
        };
        let when = exit_time(cx, r.id).map(|t| format!(" {}", cx.at(t))).unwrap_or_default();
        f.push(format!("{} {how}{when}", cx.worker(r.id, r.cgroup)));
    }
    Check::from_failures("run_completed", f, || format!("completed; {} workers reported", rec.reports.len()))
}

fn exit_time(cx: &Ctx, id: u32) -> Option<u64> {
    cx.rec.events.iter().find_map(|e| match e.kind {
        ScenarioEventKind::WorkerExited { id: i } if i == id => Some(e.t_ns),
        _ => None,
    })
}

fn steps_applied(cx: &Ctx) -> Check {
    let plan = &cx.rec.meta.plan;
    if plan.steps.is_empty() {
        return Check::skip("steps_applied", "the scenario has no steps");
    }
    let mut f = Vec::new();
    for (k, step) in plan.steps.iter().enumerate() {
        let ops: Vec<String> = step.ops.iter().map(Op::describe).collect();
        let what = if ops.is_empty() { "hold".into() } else { ops.join(", ") };
        let event = cx.rec.events.iter().find_map(|e| match e.kind {
            ScenarioEventKind::Step { index, failed_ops } if index as usize == k => Some((e.t_ns, failed_ops)),
            _ => None,
        });
        match event {
            None => f.push(format!("step {k} ({what}) was never applied")),
            Some((t, failed)) if failed > 0 => {
                let tag = format!("steps[{k}].");
                let why: Vec<&str> =
                    cx.rec.logs.iter().filter(|l| l.text.starts_with(&tag)).map(|l| l.text.as_str()).collect();
                f.push(format!("step {k} ({what}) {}: {failed} operation(s) failed: {}", cx.at(t), why.join(" | ")));
            }
            Some(_) => {}
        }
    }
    Check::from_failures("steps_applied", f, || {
        format!("{} steps applied on time, no operation failed", plan.steps.len())
    })
}

fn guest_errors(cx: &Ctx) -> Check {
    let errors: Vec<String> = cx
        .rec
        .logs
        .iter()
        .filter(|l| l.level == LogLevel::Error)
        .map(|l| format!("guest error {}: {}", cx.at(l.t_ns), l.text))
        .collect();
    let mut f = errors;
    let unlisted = cx.rec.telemetry.error_logs.saturating_sub(f.len() as u64);
    if unlisted > 0 {
        f.push(format!("{unlisted} more guest errors beyond the log limit"));
    }
    let warnings = cx.rec.logs.iter().filter(|l| l.level == LogLevel::Warn).count();
    Check::from_failures("guest_errors", f, || format!("no error logged ({warnings} warnings)"))
}

fn telemetry(cx: &Ctx) -> Check {
    let (rec, t) = (cx.rec, &cx.rec.telemetry);
    let mut f = Vec::new();
    if rec.decode.rejected > 0 {
        let d = &rec.decode;
        f.push(format!(
            "{} frames rejected on the protocol channel (crc {}, cobs {}, postcard {}, oversize {})",
            d.rejected, d.bad_crc, d.bad_cobs, d.bad_postcard, d.oversize
        ));
    }
    for (n, what) in [
        (t.parts_rejected, "sample parts rejected (out of range, duplicate or inconsistent)"),
        (t.incomplete_ticks, "ticks missing parts"),
        (t.reports_rejected, "worker reports rejected (unknown or duplicate worker)"),
    ] {
        if n > 0 {
            f.push(format!("{n} {what}"));
        }
    }
    let n = cx.n_workers as u32;
    let unknown = rec.ticks.iter().flat_map(|t| &t.workers).filter(|w| w.id >= n).count()
        + rec.reports.iter().filter(|r| r.id >= n).count();
    if unknown > 0 {
        f.push(format!("{unknown} samples or reports name workers the scenario does not have (it has {n})"));
    }
    let period = u64::from(rec.meta.plan.sample_period_ms);
    let ran_ms = match (cx.t0, cx.finished_ns()) {
        (Some(a), Some(b)) => b.saturating_sub(a) / 1_000_000,
        _ => 0,
    };
    if period > 0 && ran_ms > 3 * period && rec.ticks.is_empty() {
        f.push(format!("no samples in a {ran_ms} ms run sampled every {period} ms"));
    }
    Check::from_failures("telemetry", f, || {
        let kept = if t.stride > 1 { format!(", every {}th tick kept", t.stride) } else { String::new() };
        format!("{} frames, {} ticks{kept}", rec.decode.frames, rec.ticks.len())
    })
}

/// When each worker last progressed according to the samples: (tick time, last progress, cpu).
fn last_progress(cx: &Ctx) -> BTreeMap<u32, (u64, u64, u32)> {
    let mut last = BTreeMap::new();
    for tick in &cx.rec.ticks {
        for w in &tick.workers {
            last.insert(w.id, (tick.t_ns, w.last_progress_ns, w.last_cpu));
        }
    }
    last
}

fn not_starved(cx: &Ctx) -> Check {
    if cx.rec.reports.is_empty() {
        return Check::skip("not_starved", "no worker reports to judge");
    }
    let limit_ns = cx.th.max_gap_ms * 1_000_000;
    let last = last_progress(cx);
    let end = cx.finished_ns();
    let mut f = Vec::new();
    for r in &cx.rec.reports {
        let who = cx.worker(r.id, r.cgroup);
        if r.work_units == 0 {
            f.push(format!("{who} made no progress at all in {:.1} s (cpu {})", r.wall_ns as f64 / 1e9, r.max_gap_cpu));
            continue;
        }
        if r.end == WorkerEnd::Removed {
            continue; // its cgroup was removed: it stopped by design
        }
        // A gap still open at the end: from the last sample, else from the report.
        let open = match (last.get(&r.id), end) {
            (Some(&(_, progress, cpu)), Some(end)) => Some((end.saturating_sub(progress), progress, cpu)),
            _ => end
                .filter(|&e| r.max_gap_at_ns + r.max_gap_ns + 1_000_000 >= e)
                .map(|_| (r.max_gap_ns, r.max_gap_at_ns, r.max_gap_cpu)),
        };
        if let Some((stall, from, cpu)) = open.filter(|o| o.0 > limit_ns) {
            let (s, at) = (stall as f64 / 1e9, cx.secs(from));
            f.push(format!("{who} made no progress for {s:.1} s on cpu {cpu} (from {at:.2} s to the end of the run)"));
        }
    }
    Check::from_failures("not_starved", f, || {
        let min = cx.rec.reports.iter().min_by_key(|r| r.work_units);
        let least = min.map(|r| format!("; fewest units: {} by {}", r.work_units, cx.worker(r.id, r.cgroup)));
        format!("all {} workers progressed to the end{}", cx.rec.reports.len(), least.unwrap_or_default())
    })
}

fn max_gap(cx: &Ctx) -> Check {
    let Some(worst) = cx.rec.reports.iter().max_by_key(|r| r.max_gap_ns) else {
        return Check::skip("max_gap", "no worker reports to judge");
    };
    let limit_ns = cx.th.max_gap_ms * 1_000_000;
    let describe = |r: &WorkerReport| {
        format!(
            "{} made no progress for {:.2} s on cpu {} {}",
            cx.worker(r.id, r.cgroup),
            r.max_gap_ns as f64 / 1e9,
            r.max_gap_cpu,
            cx.at(r.max_gap_at_ns)
        )
    };
    let mut over: Vec<_> = cx.rec.reports.iter().filter(|r| r.max_gap_ns > limit_ns).collect();
    over.sort_by_key(|r| std::cmp::Reverse(r.max_gap_ns));
    let f = over.iter().map(|r| format!("{} (limit {} ms)", describe(r), cx.th.max_gap_ms)).collect();
    Check::from_failures("max_gap", f, || {
        format!(
            "longest gap {:.1} ms ({} on cpu {} {}), limit {} ms",
            worst.max_gap_ns as f64 / 1e6,
            cx.worker(worst.id, worst.cgroup),
            worst.max_gap_cpu,
            cx.at(worst.max_gap_at_ns),
            cx.th.max_gap_ms
        )
    })
}

/// Which mask an isolation check enforces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mask {
    Cpuset,
    Affinity,
}

impl Mask {
    fn name(self) -> &'static str {
        match self {
            Mask::Cpuset => "cpuset_isolation",
            Mask::Affinity => "affinity",
        }
    }

    fn restricts(self, p: &Placement) -> bool {
        match self {
            Mask::Cpuset => p.cpuset_restricted,
            Mask::Affinity => p.affinity_restricted,
        }
    }

    fn cpus(self, p: &Placement) -> &[u32] {
        match self {
            Mask::Cpuset => &p.cpuset,
            Mask::Affinity => &p.allowed,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Mask::Cpuset => "cpuset",
            Mask::Affinity => "affinity mask",
        }
    }
}

fn isolation(cx: &Ctx, mask: Mask) -> Check {
    let name = mask.name();
    if cx.cgroups_applied() == Some(false) && mask == Mask::Cpuset {
        return Check::skip(name, "cgroups were not applied (host mode without a cgroup root): no cpuset to check");
    }
    let restricted = cx.timeline.epochs.iter().flat_map(|e| e.workers.iter().flatten()).any(|p| mask.restricts(p));
    if !restricted {
        return Check::skip(name, format!("no {} restricts any worker", mask.what()));
    }
    if cx.t0.is_none() {
        return Check::skip(name, "the workers were never released: nothing ran");
    }
    let mut first: BTreeMap<u32, (String, usize)> = BTreeMap::new();
    let mut checked = 0usize;
    for tick in &cx.rec.ticks {
        for w in &tick.workers {
            let places = cx.placements(w.id, w.last_progress_ns);
            if places.is_empty() || !places.iter().any(|p| mask.restricts(p)) {
                continue;
            }
            checked += 1;
            if places.iter().any(|p| mask.cpus(p).contains(&w.last_cpu)) {
                continue;
            }
            let allowed = union(places.iter().map(|p| mask.cpus(p)));
            let entry = first.entry(w.id).or_insert_with(|| {
                let cg = cx.cgroup(places[0].cgroup);
                let msg = format!(
                    "{cg}: worker {} ran on cpu {} outside its {} {} {}",
                    w.id,
                    w.last_cpu,
                    mask.what(),
                    cpu_list(&allowed),
                    cx.at(w.last_progress_ns)
                );
                (msg, 0)
            });
            entry.1 += 1;
        }
    }
    let mut f: Vec<String> =
        first.into_values().map(|(msg, n)| if n > 1 { format!("{msg} ({n} samples)") } else { msg }).collect();
    f.extend(cpus_used_violations(cx, mask));
    Check::from_failures(name, f, || {
        let changes = cx.rec.meta.plan.steps.len();
        format!("{checked} samples checked across {changes} steps: no worker outside its {}", mask.what())
    })
}

/// Whole-run check from the reports: every CPU a worker used was in some mask it ever had.
fn cpus_used_violations(cx: &Ctx, mask: Mask) -> Vec<String> {
    let mut f = Vec::new();
    for r in &cx.rec.reports {
        let ever: Vec<&Placement> =
            cx.timeline.epochs.iter().filter_map(|e| e.workers.get(r.id as usize)?.as_ref()).collect();
        if ever.is_empty() || !ever.iter().all(|p| mask.restricts(p)) {
            continue;
        }
        let allowed = union(ever.iter().map(|p| mask.cpus(p)));
        let outside: Vec<u32> = mask_cpus(&r.cpus_used).filter(|c| !allowed.contains(c)).collect();
        if !outside.is_empty() {
            f.push(format!(
                "{} ran on cpu {} during the run, outside every {} it had ({})",
                cx.worker(r.id, r.cgroup),
                cpu_list(&outside),
                mask.what(),
                cpu_list(&allowed)
            ));
        }
    }
    f
}

fn union<'a>(sets: impl Iterator<Item = &'a [u32]>) -> Vec<u32> {
    let mut all: Vec<u32> = sets.flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn cpu_list(cpus: &[u32]) -> String {
    ktstr_shared::scenario::CpuList(cpus.to_vec()).to_string()
}

/// CPU-bound work whose workers should get equal shares.
fn fair_class(w: &WorkType) -> bool {
    matches!(w, WorkType::CpuSpin | WorkType::CachePressure { .. } | WorkType::YieldHeavy)
}

fn fairness(cx: &Ctx, numbers: &mut KeyNumbers) -> Check {
    const NAME: &str = "fairness";
    if !cx.th.fairness {
        return Check::skip(NAME, "the scenario declares that its workers are not meant to get equal shares");
    }
    // Like workers: same final cgroup, same spec, CPU-bound, ran to the end.
    let mut groups: BTreeMap<(u16, usize), Vec<&WorkerReport>> = BTreeMap::new();
    for r in &cx.rec.reports {
        let Some(meta) = cx.workers.get(r.id as usize) else { continue };
        if fair_class(&meta.work) && matches!(r.end, WorkerEnd::Stopped | WorkerEnd::Killed) {
            groups.entry((r.cgroup, meta.spec)).or_default().push(r);
        }
    }
    groups.retain(|_, g| g.len() >= 2);
    if groups.is_empty() {
        return Check::skip(NAME, "no group of two or more like CPU-bound workers in one cgroup");
    }
    let steady = (cx.th.fairness_warmup_pct > 0.0).then(|| steady_state(cx)).flatten();
    let mut f = Vec::new();
    let mut widest: Option<(f64, String)> = None;
    for ((cg, _), g) in &groups {
        let Some(s) = spread(g, cx.th.fairness_metric, steady.as_ref()) else { continue };
        let label = format!("{} ({} {} workers)", cx.cgroup(*cg), g.len(), cx.workers[g[0].id as usize].work.name());
        if widest.as_ref().is_none_or(|w| s.pct > w.0) {
            widest = Some((s.pct, label.clone()));
        }
        if s.pct > cx.th.max_spread_pct {
            f.push(format!(
                "{label}: {} spread {:.1}% > {}% {} (worker {}: {}, worker {}: {}, mean {})",
                s.metric,
                s.pct,
                cx.th.max_spread_pct,
                s.window,
                s.min.0,
                s.fmt(s.min.1),
                s.max.0,
                s.fmt(s.max.1),
                s.fmt(s.mean)
            ));
        }
    }
    numbers.spread_pct = widest.as_ref().map(|w| w.0);
    Check::from_failures(NAME, f, || match widest {
        Some((pct, label)) => format!("largest spread {pct:.1}% ({label}), limit {}%", cx.th.max_spread_pct),
        None => "no measurable group".into(),
    })
}

/// Worker id and its (cpu time ns, units).
type Gained = (u32, (u64, u64));

/// What each worker gained over a span of the sampled run.
struct Steady {
    /// Worker id -> (cpu time ns, units).
    gained: BTreeMap<u32, (u64, u64)>,
    window: String,
}

/// Fairness looks at the run after the warm-up.
fn steady_state(cx: &Ctx) -> Option<Steady> {
    let t0 = cx.t0?;
    let last = cx.rec.ticks.last()?;
    let end = cx.finished_ns().unwrap_or(last.t_ns).max(last.t_ns);
    gains(cx, t0 + (end.saturating_sub(t0) as f64 * cx.th.fairness_warmup_pct / 100.0) as u64)
}

/// What each worker gained in the sampling intervals from guest time `from` on, leaving out
/// intervals more than twice the median long: the guest (or its sampler) did not run then, and
/// under emulation such a stall is charged whole to whichever task happened to be current.
fn gains(cx: &Ctx, from: u64) -> Option<Steady> {
    let ticks: Vec<&Tick> = cx.rec.ticks.iter().filter(|t| t.t_ns >= from).collect();
    let (first, last) = (ticks.first()?, ticks.last()?);
    let mut dts: Vec<u64> = ticks.windows(2).map(|w| w[1].t_ns.saturating_sub(w[0].t_ns)).collect();
    if dts.is_empty() {
        return None;
    }
    dts.sort_unstable();
    let limit = dts[dts.len() / 2].saturating_mul(2).max(1);
    let mut gained: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut stalled = 0;
    for w in ticks.windows(2) {
        if w[1].t_ns.saturating_sub(w[0].t_ns) > limit {
            stalled += 1;
            continue;
        }
        let before: BTreeMap<u32, (u64, u64)> = w[0].workers.iter().map(|s| (s.id, (s.cpu_time_ns, s.units))).collect();
        for s in &w[1].workers {
            if let Some(&(cpu, units)) = before.get(&s.id) {
                let g = gained.entry(s.id).or_default();
                g.0 += s.cpu_time_ns.saturating_sub(cpu);
                g.1 += s.units.saturating_sub(units);
            }
        }
    }
    let mut window = format!("from {:.2} s to {:.2} s", cx.secs(first.t_ns), cx.secs(last.t_ns));
    if stalled > 0 {
        let _ = write!(window, " without {stalled} stalled sampling interval(s)");
    }
    Some(Steady { gained, window })
}

struct Spread {
    metric: &'static str,
    pct: f64,
    min: (u32, f64),
    max: (u32, f64),
    mean: f64,
    seconds: bool,
    window: String,
}

impl Spread {
    fn fmt(&self, v: f64) -> String {
        if self.seconds { format!("{:.2} s", v / 1e9) } else { format!("{v:.0} units") }
    }
}

/// (max - min) / mean of the metric over the steady state (the whole run when a worker has no
/// samples), falling back to units without schedstat CPU times.
fn spread(g: &[&WorkerReport], metric: Metric, steady: Option<&Steady>) -> Option<Spread> {
    let window_of = |r: &WorkerReport| steady.and_then(|s| s.gained.get(&r.id)).copied();
    let steady_pairs: Option<Vec<Gained>> = g.iter().map(|r| Some((r.id, window_of(r)?))).collect();
    let (pairs, window) = match steady_pairs {
        Some(p) => (p, steady.map(|s| s.window.clone()).unwrap_or_default()),
        None => (g.iter().map(|r| (r.id, (r.cpu_time_ns, r.work_units))).collect(), "over the whole run".into()),
    };
    let cpu = metric == Metric::CpuTime && pairs.iter().any(|p| p.1.0 > 0);
    let vals: Vec<(u32, f64)> = pairs.iter().map(|&(id, (c, u))| (id, if cpu { c as f64 } else { u as f64 })).collect();
    let mean = vals.iter().map(|v| v.1).sum::<f64>() / vals.len() as f64;
    let min = *vals.iter().min_by(|a, b| a.1.total_cmp(&b.1))?;
    let max = *vals.iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
    let pct = if mean > 0.0 { (max.1 - min.1) / mean * 100.0 } else { 0.0 };
    Some(Spread { metric: if cpu { "cpu time" } else { "units" }, pct, min, max, mean, seconds: cpu, window })
}

fn cpu_ratio(cx: &Ctx, numbers: &mut KeyNumbers) -> Check {
    const NAME: &str = "cpu_ratio";
    let Some(r) = &cx.th.cpu_ratio else { return Check::skip(NAME, "the scenario expects no CPU ratio") };
    // Whole-run totals: EEVDF evens out what a stall of the vCPU charged to one side.
    let sum = |name: &str| -> f64 {
        let prefix = format!("{name}/");
        let in_subtree = |cg: u16| cx.cgroups.get(cg as usize).is_some_and(|n| *n == name || n.starts_with(&prefix));
        cx.rec.reports.iter().filter(|w| in_subtree(w.cgroup)).map(|w| w.cpu_time_ns as f64).sum()
    };
    let (a, b) = (sum(&r.cgroups[0]), sum(&r.cgroups[1]));
    let pair = format!("{}:{}", r.cgroups[0], r.cgroups[1]);
    if b <= 0.0 {
        let why = format!("{} got no CPU time: the ratio {pair} is undefined", r.cgroups[1]);
        return Check::from_failures(NAME, vec![why], String::new);
    }
    let ratio = a / b;
    numbers.cpu_ratio = Some(ratio);
    if let Some(line) = no_weight_support(cx) {
        return Check::skip(NAME, format!("not applicable (measured {ratio:.2}): the kernel says {line}"));
    }
    let text = format!(
        "cpu time {pair} = {ratio:.2} ({:.2} s / {:.2} s), expected {} +- {:.0}%",
        a / 1e9,
        b / 1e9,
        r.ratio,
        r.tolerance * 100.0
    );
    let f = if (ratio / r.ratio - 1.0).abs() > r.tolerance { vec![text.clone()] } else { Vec::new() };
    Check::from_failures(NAME, f, || text)
}

/// The kernel's warning that the sched_ext scheduler ignores cgroup cpu.weight, if it gave one.
fn no_weight_support<'a>(cx: &Ctx<'a>) -> Option<&'a str> {
    if cx.rec.meta.scheduler.kind != SchedulerKind::SchedExt {
        return None;
    }
    let line = cx
        .rec
        .sched_events
        .iter()
        .find(|e| e.kind == SchedEventKind::KernelLog && e.text.contains("does not implement cgroup cpu.weight"))?;
    Some(line.text.trim_start_matches("sched_ext: "))
}

/// Work types whose latency histogram holds wake-up latencies.
fn measures_wakeups(w: &WorkType) -> bool {
    match w {
        WorkType::PeriodicTimer { .. }
        | WorkType::PipePingPong { .. }
        | WorkType::FutexPingPong { .. }
        | WorkType::FutexFanOut { .. }
        | WorkType::Mixed { .. }
        | WorkType::Bursty { .. } => true,
        WorkType::Sequence { phases } => phases.iter().any(|p| measures_wakeups(&p.work)),
        _ => false,
    }
}

fn wake_latency(cx: &Ctx, numbers: &mut KeyNumbers) -> Check {
    const NAME: &str = "wake_latency";
    let measured: Vec<_> = cx
        .rec
        .reports
        .iter()
        .filter(|r| cx.workers.get(r.id as usize).is_some_and(|m| measures_wakeups(&m.work)))
        .filter(|r| hist::total(&r.latency) > 0)
        .collect();
    if measured.is_empty() {
        return Check::skip(NAME, "no worker measured wake-up latencies");
    }
    let mut all = vec![0u64; hist::BUCKETS];
    for r in &measured {
        for (a, &c) in all.iter_mut().zip(r.latency.iter()) {
            *a = a.saturating_add(c);
        }
    }
    let us = |q: f64, h: &[u64]| hist::quantile(h, q).unwrap_or(0) as f64 / 1e3;
    numbers.p99_wake_us = Some(us(0.99, &all));
    let summary = format!(
        "p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us over {} wake-ups of {} workers",
        us(0.5, &all),
        us(0.99, &all),
        us(0.999, &all),
        hist::total(&all),
        measured.len()
    );
    let Some(limit) = cx.th.p99_wake_us else {
        return Check::skip(NAME, format!("{summary} (no limit set: --p99-wake-us)"));
    };
    let f = measured
        .iter()
        .filter(|r| us(0.99, &r.latency) > limit as f64)
        .map(|r| {
            let p99 = us(0.99, &r.latency);
            format!("{} p99 wake-up latency {p99:.0} us > {limit} us", cx.worker(r.id, r.cgroup))
        })
        .collect();
    Check::from_failures(NAME, f, || format!("{summary}, limit {limit} us"))
}

fn throughput(cx: &Ctx) -> Check {
    const NAME: &str = "throughput";
    let rate = |r: &WorkerReport| r.work_units as f64 / (r.wall_ns.max(1) as f64 / 1e9);
    let judged: Vec<_> = cx.rec.reports.iter().filter(|r| r.end != WorkerEnd::Removed && r.wall_ns > 0).collect();
    let slowest = judged.iter().min_by(|a, b| rate(a).total_cmp(&rate(b)));
    let summary = slowest.map(|r| format!("slowest {} at {:.0} units/s", cx.worker(r.id, r.cgroup), rate(r)));
    let Some(floor) = cx.th.min_units_per_sec else {
        let s = summary.unwrap_or_else(|| "no workers".into());
        return Check::skip(NAME, format!("{s} (no floor set: --min-units-per-sec)"));
    };
    let f = judged
        .iter()
        .filter(|r| rate(r) < floor)
        .map(|r| format!("{} did {:.0} units/s < {floor}", cx.worker(r.id, r.cgroup), rate(r)))
        .collect();
    Check::from_failures(NAME, f, || format!("{}, floor {floor} units/s", summary.unwrap_or_default()))
}

fn scheduler(cx: &Ctx) -> Check {
    const NAME: &str = "scheduler";
    let systems = || cx.rec.ticks.iter().filter_map(|t| Some((t.t_ns, t.system?)));
    match cx.rec.meta.scheduler.kind {
        SchedulerKind::Eevdf => {
            let attached = systems().find(|(_, s)| matches!(s.scx, ScxState::Enabled | ScxState::Enabling));
            match attached {
                Some((t, s)) => Check::from_failures(
                    NAME,
                    vec![format!("sched_ext reported {:?} {} in a run meant for EEVDF", s.scx, cx.at(t))],
                    String::new,
                ),
                None => Check::skip(NAME, "not applicable: EEVDF (no BPF scheduler to stay attached)"),
            }
        }
        SchedulerKind::SchedExt => scx_attached(cx),
    }
}

/// sched_ext: attached before the run, enabled at every tick with one enable sequence, no
/// exit/error/stall/detach event, and stopped at the end with the kernel back on EEVDF.
/// A failure quotes the kernel's reason and adds the scheduler's last output lines, the
/// kernel's sched_ext log and dump lines, and the console's last lines.
fn scx_attached(cx: &Ctx) -> Check {
    let name = &cx.rec.meta.scheduler.name;
    let events = &cx.rec.sched_events;
    let mut f: Vec<String> = events
        .iter()
        .filter(|e| e.kind.is_failure())
        .map(|e| format!("{name} {} {}: {}", event_word(e.kind), cx.at(e.t_ns), e.text))
        .collect();
    if let Some(Outcome::SchedulerFailed { reason }) = cx.rec.end.result.as_ref().map(|r| &r.outcome)
        && f.is_empty()
    {
        f.push(reason.to_string());
    }
    let attached = events.iter().find(|e| e.kind == SchedEventKind::Attached);
    if attached.is_none() && f.is_empty() {
        f.push(format!("{name} was never seen attached"));
    }
    let mut seq = None;
    let mut n = 0usize;
    for (t, s) in cx.rec.ticks.iter().filter_map(|t| Some((t.t_ns, t.system?))) {
        n += 1;
        if s.scx != ScxState::Enabled {
            f.push(format!("sched_ext state was {:?} {} ({name} not attached)", s.scx, cx.at(t)));
            break;
        }
        if let Some(cur) = s.scx_enable_seq {
            if seq.is_some_and(|prev| prev != cur) {
                f.push(format!("sched_ext enable_seq changed to {cur} {}: {name} was reloaded", cx.at(t)));
                break;
            }
            seq = Some(cur);
        }
    }
    if n == 0 && cx.t0.is_some() {
        f.push(format!("no system samples: cannot tell whether {name} stayed attached"));
    }
    let stopped = events.iter().find(|e| e.kind == SchedEventKind::Stopped);
    if f.is_empty() && stopped.is_none() && cx.rec.end.result.is_some() {
        f.push(format!("{name} was not seen stopping: the return to EEVDF was not confirmed"));
    }
    if f.is_empty() {
        let how = attached.map_or(String::new(), |e| format!("attached as {}; ", e.text));
        let end = stopped.map_or(String::new(), |e| format!("; {}", e.text));
        return Check::pass("scheduler", format!("{how}enabled at all {n} ticks, no exit or error{end}"));
    }
    let mut check = Check::from_failures("scheduler", f, String::new);
    check.detail.push_str(&failure_context(cx));
    check
}

fn event_word(kind: SchedEventKind) -> &'static str {
    match kind {
        SchedEventKind::Exited => "exited",
        SchedEventKind::Error => "was disabled by the kernel (error)",
        SchedEventKind::Stall => "was disabled by the sched_ext watchdog (stall)",
        SchedEventKind::Detached => "detached",
        _ => "reported",
    }
}

/// Lines of each context kind shown in a failed verdict (all are in the record).
const CONTEXT_LINES: usize = 12;

/// The kernel's log and dump lines, the scheduler's last output and the console's last lines.
fn failure_context(cx: &Ctx) -> String {
    let lines = |kind: SchedEventKind| -> Vec<&str> {
        cx.rec.sched_events.iter().filter(|e| e.kind == kind).map(|e| e.text.as_str()).collect()
    };
    let mut out = String::new();
    let mut section = |title: &str, all: Vec<&str>, last: bool| {
        if all.is_empty() {
            return;
        }
        let shown =
            if last { &all[all.len().saturating_sub(CONTEXT_LINES)..] } else { &all[..all.len().min(CONTEXT_LINES)] };
        let _ = write!(out, "\n    {title} ({} of {} lines):", shown.len(), all.len());
        for l in shown {
            let _ = write!(out, "\n      {l}");
        }
    };
    section("kernel log", lines(SchedEventKind::KernelLog), false);
    section("sched_ext debug dump", lines(SchedEventKind::Dump), false);
    section("scheduler output, last", lines(SchedEventKind::Output), true);
    section("console, last", cx.rec.console_tail.lines().collect(), true);
    out
}

#[cfg(test)]
mod tests {
    //! Every check against fake (synthetic) records: a passing one and failing ones.

    use super::*;
    use crate::record::{KernelInfo, RunMeta, SchedulerInfo, Telemetry, Tick};
    use crate::scenario::from_toml;
    use ktstr_shared::wire::{GuestMsg, RunResult, ScenarioEvent, SystemSample, WorkerReport, WorkerSample, cpu_mask};

    const MS: u64 = 1_000_000;
    const T0: u64 = 10_000 * MS;

    /// A fake record of `toml` (catalog format, resolved on 1n2l2c1t) in which every worker
    /// ran the whole run on the first CPU it may use, with even progress and CPU time.
    fn fake_record(toml: &str) -> RunRecord {
        let topo = "1n2l2c1t".parse().unwrap();
        let r = from_toml(toml, "fake.toml", "fake.toml", &topo, 1.0).unwrap();
        let duration = u64::from(r.scenario.duration_ms) * MS;
        let tl = timeline::build(&r.scenario, 4);
        let mut tel = Telemetry::default();
        let started = ScenarioEventKind::Started { workers: 0, cgroups: 0, cgroups_applied: true };
        tel.push(GuestMsg::Scenario(ScenarioEvent { t_ns: T0, kind: started }));
        for (k, start) in r.scenario.step_starts_ms().enumerate() {
            let kind = ScenarioEventKind::Step { index: k as u16, failed_ops: 0 };
            tel.push(GuestMsg::Scenario(ScenarioEvent { t_ns: T0 + start * MS + MS, kind }));
        }
        tel.push(GuestMsg::Scenario(ScenarioEvent { t_ns: T0 + duration, kind: ScenarioEventKind::Finished }));
        let names: Vec<&str> = r.scenario.cgroup_defs().map(|d| d.name.as_str()).collect();
        for w in r.scenario.workers() {
            let cpu = tl.epochs[0].workers[w.id as usize].as_ref().map_or(0, |p| p.allowed[0]);
            let mut report = fake_report(w.id, w.cgroup, cpu, duration);
            // The expected ratio, where the scenario declares one.
            if let Some(ratio) = r.expect.cpu_ratio.as_ref().filter(|x| x.cgroups[0] == names[w.cgroup as usize]) {
                report.cpu_time_ns = (report.cpu_time_ns as f64 * ratio.ratio) as u64;
            }
            tel.push(GuestMsg::WorkerReport(report));
        }
        let meta = RunMeta {
            run_id: "fake".into(),
            scenario: r.info.clone(),
            plan: r.scenario.clone(),
            expect: r.expect.clone(),
            topology: topo,
            scheduler: SchedulerInfo::eevdf(),
            kernel: KernelInfo::default(),
            backend: "fake".into(),
            emulated: false,
            memory_mib: 512,
            deadline_ms: 60_000,
            kernel_append: None,
        };
        let mut rec = RunRecord::new(meta, tel);
        rec.end.result = Some(RunResult {
            outcome: Outcome::Completed,
            wall_ns: duration,
            stdout: Default::default(),
            stderr: Default::default(),
        });
        rec.ticks = fake_ticks(&r.scenario, &tl, duration);
        if let Some(ratio) = &r.expect.cpu_ratio {
            let ids: Vec<u32> =
                rec.reports.iter().filter(|w| names[w.cgroup as usize] == ratio.cgroups[0]).map(|w| w.id).collect();
            for id in ids {
                cpu_curve(&mut rec, id, |ms| (ms as f64 * ratio.ratio / 2.0) as u64);
            }
        }
        rec
    }

    fn fake_report(id: u32, cgroup: u16, cpu: u32, duration: u64) -> WorkerReport {
        WorkerReport {
            id,
            cgroup,
            work_units: 1000,
            cpu_time_ns: duration / 2,
            wall_ns: duration,
            run_delay_ns: 0,
            timeslices: 10,
            voluntary_switches: 0,
            involuntary_switches: 0,
            migrations: Some(0),
            observed_migrations: 0,
            cpus_used: cpu_mask([cpu]),
            max_gap_ns: 5 * MS,
            max_gap_at_ns: T0 + 100 * MS,
            max_gap_cpu: cpu,
            latency: Default::default(),
            end: WorkerEnd::Stopped,
        }
    }

    /// A tick every 100 ms; each worker progressed just before it on an allowed CPU.
    fn fake_ticks(scn: &ktstr_shared::scenario::Scenario, tl: &Timeline, duration: u64) -> Vec<Tick> {
        let starts: Vec<u64> = scn.step_starts_ms().collect();
        (1..duration / (100 * MS))
            .map(|i| {
                let t = T0 + i * 100 * MS;
                let epoch = starts.iter().filter(|&&s| T0 + s * MS + 300 * MS <= t).count();
                let workers = tl.epochs[epoch]
                    .workers
                    .iter()
                    .enumerate()
                    .filter_map(|(id, p)| {
                        let p = p.as_ref()?;
                        Some(WorkerSample {
                            id: id as u32,
                            cgroup: p.cgroup,
                            units: i * 10,
                            cpu_time_ns: (t - T0) / 2,
                            last_cpu: p.allowed[id % p.allowed.len()],
                            last_progress_ns: t - MS,
                            ..Default::default()
                        })
                    })
                    .collect();
                let system =
                    SystemSample { scx: ScxState::Disabled, scx_enable_seq: None, procs_running: None, cost_ns: 0 };
                Tick { seq: i as u32, t_ns: t, parts: 1, received: 1, workers, cpus: Vec::new(), system: Some(system) }
            })
            .collect()
    }

    fn check<'v>(v: &'v Verdict, name: &str) -> &'v Check {
        v.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}"))
    }

    fn judge_default(rec: &RunRecord) -> Verdict {
        judge(rec, &Thresholds::for_record(rec, &Overrides::default()))
    }

    fn catalog(name: &str) -> RunRecord {
        fake_record(crate::scenario::catalog::get(name).unwrap())
    }

    #[test]
    fn fake_records_of_the_whole_catalog_pass() {
        for name in crate::scenario::catalog::names() {
            let v = judge_default(&catalog(name));
            assert!(v.passed, "{name}: {:#?}", v.failures().collect::<Vec<_>>());
            assert_eq!(v.checks.len(), CHECK_DOCS.len());
            for (c, (doc_name, _)) in v.checks.iter().zip(CHECK_DOCS) {
                assert_eq!(c.name, *doc_name, "CHECK_DOCS lists the checks in order");
            }
        }
    }

    #[test]
    fn fake_record_incomplete_run_fails_run_completed() {
        let mut rec = catalog("basic_spin");
        rec.end.result.as_mut().unwrap().outcome = Outcome::TimedOut;
        rec.reports.retain(|r| r.id != 2);
        rec.reports[0].end = WorkerEnd::Exited { code: 3 };
        let c = check(&judge_default(&rec), "run_completed").clone();
        assert!(!c.passed);
        assert!(c.detail.contains("deadline of 60000 ms"), "{}", c.detail);
        assert!(c.detail.contains("no report from worker(s) 2"), "{}", c.detail);
        assert!(c.detail.contains("worker 0 in cg_0 exited early with code 3"), "{}", c.detail);
        rec.end.result = None;
        rec.end.vm_problem = Some("guest kernel panic:\nKernel panic - not syncing".into());
        let c = check(&judge_default(&rec), "run_completed").clone();
        assert!(!c.passed && c.detail.contains("guest kernel panic"), "{}", c.detail);
    }

    #[test]
    fn fake_record_failed_or_missing_steps_fail() {
        let mut rec = catalog("cpuset_swap");
        for e in &mut rec.events {
            if let ScenarioEventKind::Step { index: 1, failed_ops } = &mut e.kind {
                *failed_ops = 1;
            }
        }
        rec.logs.push(crate::record::LogLine {
            t_ns: T0,
            level: LogLevel::Error,
            text: "steps[1].ops[0] (set_cpuset cg_0): write \"2-3\" to cpuset.cpus: EINVAL".into(),
        });
        rec.telemetry.error_logs = 1;
        let v = judge_default(&rec);
        let c = check(&v, "steps_applied");
        assert!(
            !c.passed
                && c.detail.contains(
                    "step 1 (set_cpuset cg_0, set_cpuset cg_1) at 2.00 s: 1 operation(s) failed: steps[1].ops[0]"
                ),
            "{}",
            c.detail
        );
        let e = check(&v, "guest_errors");
        assert!(!e.passed && e.detail.contains("guest error at 0.00 s: steps[1]"), "{}", e.detail);
        rec.events.retain(|e| !matches!(e.kind, ScenarioEventKind::Step { index: 1, .. }));
        let c = check(&judge_default(&rec), "steps_applied").clone();
        assert!(
            !c.passed && c.detail.contains("step 1 (set_cpuset cg_0, set_cpuset cg_1) was never applied"),
            "{}",
            c.detail
        );
        assert!(check(&judge_default(&catalog("basic_spin")), "steps_applied").skipped);
    }

    #[test]
    fn fake_record_bad_telemetry_fails() {
        let mut rec = catalog("basic_spin");
        rec.decode.rejected = 2;
        rec.decode.bad_crc = 2;
        rec.telemetry.incomplete_ticks = 1;
        rec.ticks[0].workers[0].id = 99;
        let c = check(&judge_default(&rec), "telemetry").clone();
        assert!(!c.passed);
        assert!(c.detail.contains("2 frames rejected") && c.detail.contains("1 ticks missing parts"), "{}", c.detail);
        assert!(c.detail.contains("name workers the scenario does not have (it has 4)"), "{}", c.detail);
        rec = catalog("basic_spin");
        rec.ticks.clear();
        assert!(check(&judge_default(&rec), "telemetry").detail.contains("no samples in a 4000 ms run"));
    }

    #[test]
    fn fake_record_stalled_worker_fails_starvation_and_gap_naming_it() {
        let mut rec = catalog("cpuset_apply");
        // Worker 5 (cg_1 on cpus 2-3) stops progressing on cpu 3 at 1.0 s until the end.
        let stop = T0 + 1000 * MS;
        for t in &mut rec.ticks {
            if let Some(w) = t.workers.iter_mut().find(|w| w.id == 5) {
                w.last_progress_ns = w.last_progress_ns.min(stop);
                w.last_cpu = 3;
            }
        }
        let r = rec.reports.iter_mut().find(|r| r.id == 5).unwrap();
        (r.max_gap_ns, r.max_gap_at_ns, r.max_gap_cpu) = (3000 * MS, stop, 3);
        let v = judge_default(&rec);
        assert!(!v.passed);
        let s = check(&v, "not_starved");
        assert!(
            !s.passed
                && s.detail.contains(
                    "worker 5 in cg_1 made no progress for 3.0 s on cpu 3 (from 1.00 s to the end of the run)"
                ),
            "{}",
            s.detail
        );
        let g = check(&v, "max_gap");
        assert!(
            !g.passed
                && g.detail.contains("worker 5 in cg_1 made no progress for 3.00 s on cpu 3 at 1.00 s (limit 2000 ms)"),
            "{}",
            g.detail
        );
        // A higher limit lets the same record pass: thresholds are applied at judge time.
        let lax = Overrides { max_gap_ms: Some(5000), ..Default::default() };
        let v = judge(&rec, &Thresholds::for_record(&rec, &lax));
        assert!(check(&v, "max_gap").passed && check(&v, "not_starved").passed);
        // No progress at all.
        rec.reports[0].work_units = 0;
        let s = check(&judge_default(&rec), "not_starved").clone();
        assert!(s.detail.contains("worker 0 in cg_0 made no progress at all in 4.0 s"), "{}", s.detail);
    }

    #[test]
    fn fake_record_cpu_outside_the_cpuset_fails_isolation() {
        let mut rec = catalog("cpuset_apply");
        // cg_0 is on cpus 0-1: a sample on cpu 3 at 2.0 s.
        let tick = rec.ticks.iter_mut().find(|t| t.t_ns == T0 + 2000 * MS).unwrap();
        tick.workers[1].last_cpu = 3;
        let c = check(&judge_default(&rec), "cpuset_isolation").clone();
        assert!(!c.passed);
        assert!(c.detail.contains("cg_0: worker 1 ran on cpu 3 outside its cpuset 0-1 at 2.00 s"), "{}", c.detail);
        // The reports' CPU sets are checked too (they cover ticks a sample missed).
        let mut rec = catalog("cpuset_apply");
        rec.reports[4].cpus_used = cpu_mask([1, 2]);
        let c = check(&judge_default(&rec), "cpuset_isolation").clone();
        assert!(
            c.detail.contains("worker 4 in cg_1 ran on cpu 1 during the run, outside every cpuset it had (2-3)"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn fake_record_isolation_follows_steps_with_a_grace() {
        let mut rec = catalog("cpuset_swap");
        // Right after the swap (2.0 s + 100 ms) either side's CPUs count; a second later only the new.
        let swap = T0 + 2000 * MS;
        let set = |rec: &mut RunRecord, t: u64, cpu: u32| {
            let tick = rec.ticks.iter_mut().find(|x| x.t_ns == t).unwrap();
            let w = tick.workers.iter_mut().find(|w| w.id == 0).unwrap();
            (w.last_cpu, w.last_progress_ns) = (cpu, t - MS);
        };
        set(&mut rec, swap + 100 * MS, 3);
        set(&mut rec, swap - 100 * MS, 0);
        let c = check(&judge_default(&rec), "cpuset_isolation").clone();
        assert!(c.passed, "{}", c.detail);
        set(&mut rec, swap + 1000 * MS, 0);
        let c = check(&judge_default(&rec), "cpuset_isolation").clone();
        assert!(
            !c.passed && c.detail.contains("cg_0: worker 0 ran on cpu 0 outside its cpuset 2-3 at 3.00 s"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn fake_record_isolation_is_skipped_when_it_cannot_apply() {
        let rec = catalog("basic_spin");
        let c = check(&judge_default(&rec), "cpuset_isolation").clone();
        assert!(c.skipped && c.detail.contains("no cpuset restricts any worker"));
        let mut rec = catalog("cpuset_apply");
        rec.events[0].kind = ScenarioEventKind::Started { workers: 8, cgroups: 2, cgroups_applied: false };
        let c = check(&judge_default(&rec), "cpuset_isolation").clone();
        assert!(c.skipped && c.detail.contains("cgroups were not applied"), "{}", c.detail);
    }

    #[test]
    fn fake_record_affinity_violation_fails() {
        let mut rec = catalog("affinity_pinned");
        assert!(check(&judge_default(&rec), "affinity").passed);
        let tick = &mut rec.ticks[5];
        let w = tick.workers.iter_mut().find(|w| w.id == 0).unwrap();
        w.last_cpu = 2;
        let c = check(&judge_default(&rec), "affinity").clone();
        assert!(
            !c.passed && c.detail.contains("pinned: worker 0 ran on cpu 2 outside its affinity mask 0"),
            "{}",
            c.detail
        );
    }

    /// Sets worker `id`'s CPU time in every tick to `f(ms since the release)` and in its report
    /// to `f(run time)`.
    fn cpu_curve(rec: &mut RunRecord, id: u32, f: impl Fn(u64) -> u64) {
        for t in &mut rec.ticks {
            let ms = (t.t_ns - T0) / MS;
            t.workers.iter_mut().filter(|w| w.id == id).for_each(|w| w.cpu_time_ns = f(ms) * MS);
        }
        let end = u64::from(rec.meta.plan.duration_ms);
        rec.reports.iter_mut().filter(|r| r.id == id).for_each(|r| r.cpu_time_ns = f(end) * MS);
    }

    #[test]
    fn fake_record_uneven_cpu_time_fails_fairness_with_the_spread() {
        let mut rec = catalog("basic_spin");
        cpu_curve(&mut rec, 2, |ms| ms * 3 / 10);
        let v = judge_default(&rec);
        let c = check(&v, "fairness");
        assert!(!c.passed, "{}", c.detail);
        assert!(
            c.detail.contains(
                "cg_0 (4 cpu_spin workers): cpu time spread 44.4% > 15% over the whole run (worker 2: 1.20 s"
            ),
            "{}",
            c.detail
        );
        // An impossibly tight limit fails a record as even as real runs get (1 ms in 2 s).
        let rec = catalog("basic_spin");
        let tight = Overrides { max_spread_pct: Some(0.001), ..Default::default() };
        let mut rec2 = rec.clone();
        rec2.reports[1].cpu_time_ns += MS;
        let c = check(&judge(&rec2, &Thresholds::for_record(&rec, &tight)), "fairness").clone();
        assert!(!c.passed && c.detail.contains("> 0.001%"), "{}", c.detail);
        // Units when asked, and a skip where the scenario says shares are not equal.
        let units = Overrides { fairness_metric: Some(Metric::Units), ..Default::default() };
        assert!(check(&judge(&rec, &Thresholds::for_record(&rec, &units)), "fairness").detail.contains("limit 15%"));
        assert!(check(&judge_default(&catalog("cpuset_overlap")), "fairness").skipped);
    }

    #[test]
    fn fake_record_fairness_warm_up_is_opt_in() {
        // Worker 3 gets no CPU for the first second (balancing), then its full share.
        let mut rec = catalog("basic_spin");
        cpu_curve(&mut rec, 3, |ms| ms.saturating_sub(1000) / 2);
        let c = check(&judge_default(&rec), "fairness").clone();
        assert!(!c.passed && c.detail.contains("spread 26.7% > 15% over the whole run"), "{}", c.detail);
        let warm = Overrides { fairness_warmup_pct: Some(25.0), ..Default::default() };
        let c = check(&judge(&rec, &Thresholds::for_record(&rec, &warm)), "fairness").clone();
        assert!(c.passed, "after the first second the shares are even: {}", c.detail);
        // Without samples there is no window: the reports' whole-run totals.
        rec.ticks.clear();
        let c = check(&judge(&rec, &Thresholds::for_record(&rec, &warm)), "fairness").clone();
        assert!(!c.passed && c.detail.contains("over the whole run"), "{}", c.detail);
    }

    #[test]
    fn fake_record_cpu_ratio_is_measured() {
        // One spinner per CPU in each cgroup: hi = workers 0-3, lo = workers 4-7.
        let mut rec = catalog("cgroup_weights_2to1");
        let set = |rec: &mut RunRecord, ids: std::ops::Range<u32>, f: fn(u64) -> u64| {
            ids.for_each(|id| cpu_curve(rec, id, f));
        };
        assert!(check(&judge_default(&rec), "cpu_ratio").passed);
        set(&mut rec, 0..8, |ms| ms / 2);
        let c = check(&judge_default(&rec), "cpu_ratio").clone();
        assert!(!c.passed, "equal CPU time is not 2:1: {}", c.detail);
        assert!(c.detail.contains("cpu time hi:lo = 1.00 (8.00 s / 8.00 s), expected 2 +- 25%"), "{}", c.detail);
        set(&mut rec, 0..4, |ms| ms * 13 / 20);
        set(&mut rec, 4..8, |ms| ms * 7 / 20);
        let v = judge_default(&rec);
        assert!(check(&v, "cpu_ratio").passed, "{}", check(&v, "cpu_ratio").detail);
        assert!((v.numbers.cpu_ratio.unwrap() - 1.857).abs() < 0.01);
        set(&mut rec, 4..8, |_| 0);
        assert!(check(&judge_default(&rec), "cpu_ratio").detail.contains("lo got no CPU time"));
        assert!(check(&judge_default(&catalog("basic_spin")), "cpu_ratio").skipped);
    }

    #[test]
    fn fake_record_stalled_sampling_intervals_are_left_out() {
        // The guest stalls for 1.5 s after the tick at 2.0 s (the host did not run the VM); the
        // stall is charged whole to worker 2, which happened to be current. Not a scheduler fault.
        let mut rec = catalog("basic_spin");
        let stall = 1500 * MS;
        for t in rec.ticks.iter_mut().filter(|t| t.t_ns > T0 + 2000 * MS) {
            t.t_ns += stall;
            for w in &mut t.workers {
                w.last_progress_ns += stall;
                w.cpu_time_ns += if w.id == 2 { stall } else { 0 };
            }
        }
        rec.reports[2].cpu_time_ns += stall;
        for e in rec.events.iter_mut().filter(|e| e.kind == ScenarioEventKind::Finished) {
            e.t_ns += stall;
        }
        let warm = Overrides { fairness_warmup_pct: Some(25.0), ..Default::default() };
        let c = check(&judge(&rec, &Thresholds::for_record(&rec, &warm)), "fairness").clone();
        assert!(c.passed && c.detail.contains("largest spread 0.0%"), "{}", c.detail);
        // The window says what was left out when it matters.
        let tight = Overrides { max_spread_pct: Some(0.001), fairness_warmup_pct: Some(25.0), ..Default::default() };
        cpu_curve(&mut rec, 1, |ms| ms / 3);
        let c = check(&judge(&rec, &Thresholds::for_record(&rec, &tight)), "fairness").clone();
        assert!(c.detail.contains("without 1 stalled sampling interval(s)"), "{}", c.detail);
    }

    fn with_latency(rec: &mut RunRecord, id: usize, us: u64, n: u64) {
        let mut h = vec![0u64; hist::BUCKETS];
        h[hist::bucket(us * 1000)] = n;
        rec.reports[id].latency = h.into_iter().collect();
    }

    #[test]
    fn fake_record_slow_wakeups_fail_the_p99_limit() {
        let mut rec = catalog("latency_timer_under_load");
        with_latency(&mut rec, 0, 100, 1000);
        with_latency(&mut rec, 1, 90_000, 1000);
        let c = check(&judge_default(&rec), "wake_latency").clone();
        assert!(!c.passed && c.detail.contains("worker 1 in timers p99 wake-up latency"), "{}", c.detail);
        assert!(c.detail.contains("> 50000 us"), "{}", c.detail);
        with_latency(&mut rec, 1, 100, 1000);
        let v = judge_default(&rec);
        assert!(check(&v, "wake_latency").passed);
        assert!(v.numbers.p99_wake_us.unwrap() < 120.0);
        // Without a limit the numbers are reported, the check skipped.
        let mut rec = catalog("basic_spin");
        with_latency(&mut rec, 0, 100, 10);
        assert!(check(&judge_default(&rec), "wake_latency").skipped, "cpu_spin measures no wake-ups");
    }

    #[test]
    fn fake_record_throughput_floor() {
        let rec = catalog("basic_spin");
        assert!(check(&judge_default(&rec), "throughput").skipped);
        let floor = |f: f64| Overrides { min_units_per_sec: Some(f), ..Default::default() };
        assert!(check(&judge(&rec, &Thresholds::for_record(&rec, &floor(100.0))), "throughput").passed);
        let c = check(&judge(&rec, &Thresholds::for_record(&rec, &floor(500.0))), "throughput").clone();
        assert!(!c.passed && c.detail.contains("worker 0 in cg_0 did 250 units/s < 500"), "{}", c.detail);
    }

    #[test]
    fn fake_record_scheduler_attachment() {
        let mut rec = catalog("basic_spin");
        let c = check(&judge_default(&rec), "scheduler").clone();
        assert!(c.skipped && c.detail.contains("not applicable: EEVDF"));
        rec.ticks[3].system.as_mut().unwrap().scx = ScxState::Enabled;
        let c = check(&judge_default(&rec), "scheduler").clone();
        assert!(
            !c.passed && c.detail.contains("sched_ext reported Enabled at 0.40 s in a run meant for EEVDF"),
            "{}",
            c.detail
        );
        // sched_ext: attached, enabled at every tick with one enable sequence, stopped at the end.
        let mut rec = catalog("basic_spin");
        rec.meta.scheduler = SchedulerInfo { name: "scx_qmap".into(), kind: SchedulerKind::SchedExt, args: vec![] };
        for t in &mut rec.ticks {
            let s = t.system.as_mut().unwrap();
            (s.scx, s.scx_enable_seq) = (ScxState::Enabled, Some(1));
        }
        let ev =
            |t_ms: u64, kind, text: &str| crate::record::SchedEvent { t_ns: T0 + t_ms * MS, kind, text: text.into() };
        let c = check(&judge_default(&rec), "scheduler").clone();
        assert!(!c.passed && c.detail.contains("scx_qmap was never seen attached"), "{}", c.detail);
        rec.sched_events.push(ev(0, SchedEventKind::Attached, "qmap (enable_seq Some(1), after 900 ms)"));
        let c = check(&judge_default(&rec), "scheduler").clone();
        assert!(!c.passed && c.detail.contains("not seen stopping"), "{}", c.detail);
        rec.sched_events.push(ev(9000, SchedEventKind::Stopped, "stopped in 40 ms; sched_ext disabled, back on EEVDF"));
        let c = check(&judge_default(&rec), "scheduler").clone();
        assert!(
            c.passed && c.detail.contains("attached as qmap") && c.detail.contains("back on EEVDF"),
            "{}",
            c.detail
        );
        rec.ticks[20].system.as_mut().unwrap().scx_enable_seq = Some(2);
        let c = check(&judge_default(&rec), "scheduler").clone();
        assert!(c.detail.contains("enable_seq changed to 2 at 2.10 s: scx_qmap was reloaded"), "{}", c.detail);
        // A kernel error: quoted, with the kernel log, the scheduler's output and the console.
        rec.ticks[10].system.as_mut().unwrap().scx = ScxState::Disabled;
        let why = "scx_qmap exited (exit status 1); kernel: BPF scheduler \"qmap\" disabled (runtime error)";
        rec.sched_events.push(ev(1100, SchedEventKind::Error, why));
        rec.sched_events.push(ev(1100, SchedEventKind::KernelLog, "sched_ext: qmap: scx_bpf_error (test)"));
        for i in 0..20 {
            rec.sched_events.push(ev(1100, SchedEventKind::Output, &format!("out {i}")));
        }
        rec.console_tail = "line a\nline b".into();
        let c = check(&judge_default(&rec), "scheduler").clone();
        let d = &c.detail;
        assert!(
            !c.passed && d.contains("scx_qmap was disabled by the kernel (error) at 1.10 s: scx_qmap exited"),
            "{d}"
        );
        assert!(d.contains("sched_ext state was Disabled at 1.10 s (scx_qmap not attached)"), "{d}");
        assert!(d.contains("kernel log (1 of 1 lines):\n      sched_ext: qmap: scx_bpf_error (test)"), "{d}");
        assert!(
            d.contains("scheduler output, last (12 of 20 lines)") && d.contains("out 19") && !d.contains("out 7\n"),
            "{d}"
        );
        assert!(d.contains("console, last (2 of 2 lines)"), "{d}");
    }

    #[test]
    fn fake_record_weight_ratio_skipped_when_the_kernel_says_the_scheduler_ignores_weights() {
        let mut rec = catalog("cgroup_weights_2to1");
        let before = check(&judge_default(&rec), "cpu_ratio").clone();
        assert!(!before.skipped, "{}", before.detail);
        rec.meta.scheduler = SchedulerInfo { name: "scx_simple".into(), kind: SchedulerKind::SchedExt, args: vec![] };
        rec.sched_events.push(crate::record::SchedEvent {
            t_ns: T0,
            kind: SchedEventKind::KernelLog,
            text: "sched_ext: \"simple\" does not implement cgroup cpu.weight".into(),
        });
        let c = check(&judge_default(&rec), "cpu_ratio").clone();
        assert!(c.skipped && c.detail.contains("the kernel says \"simple\" does not implement cgroup cpu.weight"));
        // The same line under EEVDF (impossible, but) changes nothing.
        rec.meta.scheduler = SchedulerInfo::eevdf();
        assert!(!check(&judge_default(&rec), "cpu_ratio").skipped);
    }

    #[test]
    fn thresholds_resolve_default_then_scenario_then_command_line() {
        let expect =
            Expect { max_gap_ms: Some(3000), fairness: Some(false), p99_wake_us: Some(7), ..Default::default() };
        let t = Thresholds::resolve(&expect, &Overrides::default(), false);
        assert_eq!((t.max_gap_ms, t.fairness, t.p99_wake_us, t.max_spread_pct), (3000, false, Some(7), 15.0));
        let o = Overrides { max_gap_ms: Some(10), p99_wake_us: Some(9), ..Default::default() };
        let t = Thresholds::resolve(&expect, &o, false);
        assert_eq!((t.max_gap_ms, t.p99_wake_us), (10, Some(9)));
        assert_eq!(Thresholds::resolve(&Expect::default(), &Overrides::default(), false), Thresholds::default());
        // Emulated runs: slack on the spread and p99 limits of defaults and scenario, not the command line.
        let t = Thresholds::resolve(&expect, &Overrides::default(), true);
        assert_eq!((t.max_spread_pct, t.p99_wake_us, t.max_gap_ms, t.emulation_slack), (30.0, Some(14), 6000, 2.0));
        let o =
            Overrides { max_spread_pct: Some(0.001), p99_wake_us: Some(9), max_gap_ms: Some(5), ..Default::default() };
        let t = Thresholds::resolve(&expect, &o, true);
        assert_eq!((t.max_spread_pct, t.p99_wake_us, t.max_gap_ms), (0.001, Some(9), 5));
        let names: Vec<&str> = Thresholds::default().lines().iter().map(|l| l.0).collect();
        for (doc, _, _) in THRESHOLD_DOCS {
            assert!(names.contains(doc), "{doc} is documented and printed");
        }
    }

    #[test]
    fn fake_record_long_failure_lists_are_capped() {
        let mut rec = catalog("stress_oversubscribe_4x");
        for r in &mut rec.reports {
            r.max_gap_ns = 9000 * MS;
        }
        let c = check(&judge_default(&rec), "max_gap").clone();
        assert!(c.detail.ends_with(&format!("and {} more", 16 - MAX_LISTED)), "{}", c.detail);
    }
}
