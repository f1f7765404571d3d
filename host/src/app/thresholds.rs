//! The verdict's thresholds as command-line options. The judge itself knows nothing of clap:
//! these parse and bound the values, then become a [`verdict::Overrides`].

use crate::verdict::{self, MAX_LIMIT_MS, MAX_LIMIT_US, Metric, Overrides};

/// Thresholds from the command line; each wins over the scenario's `[expect]` and the default.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct ThresholdArgs {
    /// Longest time a worker may go without progress, ms [default: 2000]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT_MS))]
    pub max_gap_ms: Option<u64>,
    /// Largest CPU-time spread among like workers of a cgroup, % [default: 15]
    #[arg(long, value_name = "PCT", value_parser = positive)]
    pub max_spread_pct: Option<f64>,
    /// What the fairness spread is computed on [default: cpu-time]
    #[arg(long, value_enum, value_name = "METRIC")]
    pub fairness_metric: Option<MetricArg>,
    /// Start of the run left out of fairness, % of the run time [default: 0 = whole run]
    #[arg(long, value_name = "PCT", value_parser = percent)]
    pub fairness_warmup_pct: Option<f64>,
    /// Fail when a worker's p99 wake-up latency is above this, us [default: off]
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT_US))]
    pub p99_wake_us: Option<u64>,
    /// Fail when a worker does fewer work units per second [default: off]
    #[arg(long, value_name = "N", value_parser = positive)]
    pub min_units_per_sec: Option<f64>,
    /// Slack around cpuset/affinity changes for the isolation checks, ms [default: 250]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=MAX_LIMIT_MS))]
    pub isolation_grace_ms: Option<u64>,
}

/// [`Metric`] as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricArg {
    CpuTime,
    Units,
}

impl From<&ThresholdArgs> for Overrides {
    fn from(a: &ThresholdArgs) -> Overrides {
        Overrides {
            max_gap_ms: a.max_gap_ms,
            max_spread_pct: a.max_spread_pct,
            fairness_metric: a.fairness_metric.map(|m| match m {
                MetricArg::CpuTime => Metric::CpuTime,
                MetricArg::Units => Metric::Units,
            }),
            fairness_warmup_pct: a.fairness_warmup_pct,
            p99_wake_us: a.p99_wake_us,
            min_units_per_sec: a.min_units_per_sec,
            isolation_grace_ms: a.isolation_grace_ms,
        }
    }
}

impl ThresholdArgs {
    pub fn overrides(&self) -> verdict::Overrides {
        self.into()
    }
}

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..100.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a percentage in 0..100")),
    }
}

/// A finite number above 0 and at most a million (a spread in % or units per second).
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e6 => Ok(v),
        _ => Err(format!("{s:?} is not a number above 0 (at most 1000000)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        th: ThresholdArgs,
    }

    #[test]
    fn huge_limits_are_refused_at_parse_time() {
        for args in [
            ["t", "--max-gap-ms", "18446744073709551615"],
            ["t", "--isolation-grace-ms", "18446744073709"],
            ["t", "--p99-wake-us", "999999999999999999"],
            ["t", "--max-spread-pct", "inf"],
            ["t", "--max-gap-ms", "0"],
        ] {
            assert!(T::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
        let t = T::try_parse_from(["t", "--max-gap-ms", "500", "--fairness-metric", "units"]).unwrap();
        let o = t.th.overrides();
        assert_eq!((o.max_gap_ms, o.fairness_metric), (Some(500), Some(Metric::Units)));
    }
}
