//! The limits a verdict applies: defaults, what each means, and how a scenario's `[expect]`
//! and the caller's overrides combine.

use serde::{Deserialize, Serialize};

use crate::record::RunRecord;
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
    ("topology", "the guest kernel sees the nodes, packages, LLCs, cores and SMT siblings the topology spec describes"),
];

/// What the spread of the fairness check is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// Thresholds given by the caller (the command line); each wins over the scenario's `[expect]`
/// and the default. Values are bounded by [`MAX_LIMIT_MS`] and friends where they are parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub max_gap_ms: Option<u64>,
    pub max_spread_pct: Option<f64>,
    pub fairness_metric: Option<Metric>,
    pub fairness_warmup_pct: Option<f64>,
    pub p99_wake_us: Option<u64>,
    pub min_units_per_sec: Option<f64>,
    pub isolation_grace_ms: Option<u64>,
}

/// Largest time limit in ms a caller or scenario may give (a day): with it, every limit fits in
/// nanoseconds in a u64 with room to spare, so no check overflows converting it.
pub const MAX_LIMIT_MS: u64 = 86_400_000;
/// Largest p99 wake-up limit in us (a day).
pub const MAX_LIMIT_US: u64 = MAX_LIMIT_MS * 1000;

/// `ms` in nanoseconds, saturating (limits are bounded, but a record may carry anything).
pub fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// `v * slack`, bounded to `max` (slack is >= 1 and finite; a NaN or huge product saturates).
fn scaled(v: u64, slack: f64, max: u64) -> u64 {
    let s = v as f64 * slack;
    if s.is_finite() && s < max as f64 { s as u64 } else { max }
}

impl Thresholds {
    /// Defaults, then the scenario's expectations, then the command line. For an `emulated`
    /// run, gap, spread and p99 limits that do not come from the command line get
    /// [`EMULATION_SLACK`].
    pub fn resolve(expect: &Expect, o: &Overrides, emulated: bool) -> Thresholds {
        let d = Thresholds::default();
        let slack = if emulated { EMULATION_SLACK } else { 1.0 };
        // At most f64::MAX: an infinite limit is written as `null` in verdict.json, which does
        // not read back (`[expect]` may give any finite value).
        let spread =
            o.max_spread_pct.unwrap_or((expect.max_spread_pct.unwrap_or(d.max_spread_pct) * slack).min(f64::MAX));
        let p99 = o.p99_wake_us.or(expect.p99_wake_us.map(|us| scaled(us, slack, MAX_LIMIT_US)));
        let gap = expect.max_gap_ms.unwrap_or(d.max_gap_ms);
        Thresholds {
            max_gap_ms: o.max_gap_ms.unwrap_or_else(|| scaled(gap, slack, MAX_LIMIT_MS)),
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
