//! Scenarios on the host: TOML files and the built-in catalog, resolved against the run's
//! topology into the guest's [`Scenario`] (explicit CPU lists), with durations scaled and the
//! scenario's expectations for the verdict.
//!
//! - [`file`]: the file format and its resolution (errors as `file:line:col`).
//! - [`cpuset`]: CPU selections (per LLC, per node, disjoint and overlapping fractions).
//! - [`catalog`]: the built-in scenarios, TOML files embedded in the binary.
//! - [`timeline`]: where each worker may run at each point of a scenario, for the verdict.

pub mod catalog;

pub mod cpuset;
mod file;
pub mod timeline;

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ktstr_shared::plan::RunPlan;
use ktstr_shared::scenario::{Op, Scenario};
use ktstr_shared::topology::Topology;
use serde::{Deserialize, Serialize};

/// Byte range in a scenario file.
pub type Span = Range<usize>;

/// Largest `--duration-scale`.
pub const MAX_SCALE: f64 = 100.0;
/// Largest `max_spread_pct`, `cpu_ratio.ratio` and `min_units_per_sec` an `[expect]` may give.
pub const MAX_SPREAD_PCT: f64 = 1000.0;
pub const MAX_RATIO: f64 = 1e6;
pub const MAX_UNITS_PER_SEC: f64 = 1e12;
/// Largest `max_gap_ms` (the longest run) and `p99_wake_us` (a minute).
pub const MAX_GAP_MS: u64 = ktstr_shared::scenario::MAX_DURATION_MS as u64;
pub const MAX_P99_WAKE_US: u64 = 60_000_000;

/// What a scenario declares about its own outcome, beyond the default thresholds
/// (`[expect]` in the file). Command-line thresholds override these.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// CPU time of one cgroup (with its subtree) over another's, e.g. for a 2:1 `cpu.weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ratio: Option<CpuRatio>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_spread_pct: Option<f64>,
    /// `false`: equal shares are not expected (e.g. overlapping cpusets); fairness is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_wake_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_units_per_sec: Option<f64>,
}

/// `cpu_ratio = { cgroups = ["hi", "lo"], ratio = 2.0, tolerance = 0.25 }`: the CPU time of
/// `hi` over `lo` is within `ratio * (1 +- tolerance)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuRatio {
    pub cgroups: [String; 2],
    pub ratio: f64,
    pub tolerance: f64,
}

/// Where a scenario came from and what it is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioInfo {
    pub name: String,
    pub category: String,
    /// What it proves.
    pub description: String,
    /// `catalog` or the file's path.
    pub source: String,
    /// Factor applied to the run time and step holds.
    pub duration_scale: f64,
}

/// A scenario ready to run on one topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub info: ScenarioInfo,
    pub scenario: Scenario,
    pub expect: Expect,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{origin}:{line}:{col}: {msg}")]
    At { origin: String, line: usize, col: usize, msg: String },
    #[error("cannot read scenario file {path}: {err}")]
    Read { path: PathBuf, err: io::Error },
    #[error("unknown scenario {name:?}: not a catalog name or category (see `ktstr-host list`) nor a file{hint}")]
    Unknown { name: String, hint: String },
    #[error("--duration-scale {scale}: give a factor above 0 and at most {MAX_SCALE}")]
    Scale { scale: f64 },
}

/// `NAME` (catalog), a category, `all`, or a path to a TOML file.
pub fn load(spec: &str, topo: &Topology, scale: f64) -> Result<Vec<Resolved>, LoadError> {
    if !(scale > 0.0 && scale <= MAX_SCALE) {
        return Err(LoadError::Scale { scale });
    }
    if let Some(text) = catalog::get(spec) {
        return Ok(vec![from_toml(text, &catalog::origin(spec), "catalog", topo, scale)?]);
    }
    let in_category: Vec<&str> = catalog::names().filter(|n| spec == "all" || catalog::category(n) == spec).collect();
    if !in_category.is_empty() {
        return in_category.into_iter().map(|n| load_catalog(n, topo, scale)).collect();
    }
    let path = Path::new(spec);
    if path.exists() || spec.ends_with(".toml") {
        let text = std::fs::read_to_string(path).map_err(|err| LoadError::Read { path: path.into(), err })?;
        return Ok(vec![from_toml(&text, spec, spec, topo, scale)?]);
    }
    let close: Vec<&str> = catalog::names().filter(|n| n.contains(spec) || spec.contains(n)).collect();
    let hint = if close.is_empty() { String::new() } else { format!("; did you mean {}?", close.join(", ")) };
    Err(LoadError::Unknown { name: spec.into(), hint })
}

fn load_catalog(name: &str, topo: &Topology, scale: f64) -> Result<Resolved, LoadError> {
    let text = catalog::get(name).ok_or_else(|| LoadError::Unknown { name: name.into(), hint: String::new() })?;
    from_toml(text, &catalog::origin(name), "catalog", topo, scale)
}

/// Parses, resolves against `topo`, scales and validates one scenario file. `origin` names
/// the file in errors.
pub fn from_toml(text: &str, origin: &str, source: &str, topo: &Topology, scale: f64) -> Result<Resolved, LoadError> {
    let err_at = |span: Option<Span>, msg: String| {
        let (line, col) = line_col(text, span.map_or(0, |s| s.start));
        LoadError::At { origin: origin.into(), line, col, msg }
    };
    let f: file::File = toml::from_str(text).map_err(|e| err_at(e.span(), e.message().trim().to_string()))?;
    let mut scenario = file::to_scenario(&f, topo).map_err(|l| err_at(Some(l.span), l.msg))?;
    scenario.validate().map_err(|e| err_at(file::span_of(&f, &e.at), e.to_string()))?;
    let expect = f.expect.as_ref().map(|e| e.as_ref().clone()).unwrap_or_default();
    expect.check(&scenario).map_err(|msg| err_at(f.expect.as_ref().map(|e| e.span()), msg))?;
    scale_durations(&mut scenario, scale);
    scenario.validate().map_err(|e| err_at(None, format!("with --duration-scale {scale}: {e}")))?;
    let name = f.name.clone().unwrap_or_else(|| file_stem(origin));
    let info = ScenarioInfo {
        name,
        category: f.category.clone().unwrap_or_else(|| "custom".into()),
        description: f.description.trim().to_string(),
        source: source.into(),
        duration_scale: scale,
    };
    Ok(Resolved { info, scenario, expect })
}

fn file_stem(origin: &str) -> String {
    Path::new(origin).file_stem().map_or_else(|| origin.to_string(), |s| s.to_string_lossy().into_owned())
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Expect {
    /// Checks the expectations against the scenario and their bounds (the verdict's
    /// arithmetic relies on them); the error names the field.
    pub fn check(&self, scn: &Scenario) -> Result<(), String> {
        if let Some(r) = &self.cpu_ratio {
            for name in &r.cgroups {
                if !scn.cgroup_defs().any(|d| &d.name == name) {
                    return Err(format!("expect.cpu_ratio names cgroup {name:?}, which the scenario does not define"));
                }
            }
            in_range(Some(r.ratio), "cpu_ratio.ratio", MAX_RATIO)?;
            if !(r.tolerance > 0.0 && r.tolerance <= 1.0) {
                return Err(format!(
                    "expect.cpu_ratio.tolerance {} must be in (0, 1] (a fraction of ratio)",
                    r.tolerance
                ));
            }
        }
        in_range(self.max_spread_pct, "max_spread_pct", MAX_SPREAD_PCT)?;
        in_range(self.min_units_per_sec, "min_units_per_sec", MAX_UNITS_PER_SEC)?;
        for (v, what, max) in
            [(self.max_gap_ms, "max_gap_ms", MAX_GAP_MS), (self.p99_wake_us, "p99_wake_us", MAX_P99_WAKE_US)]
        {
            if let Some(v) = v.filter(|v| *v > max) {
                return Err(format!("expect.{what} {v} is above {max}"));
            }
        }
        Ok(())
    }
}

/// `v`, when given, is a number above 0 and at most `max`.
fn in_range(v: Option<f64>, what: &str, max: f64) -> Result<(), String> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0 && x <= max) => {
            Err(format!("expect.{what} {x} must be a number above 0 and at most {max}"))
        }
        _ => Ok(()),
    }
}

/// Scales the run time and step holds by `scale` (holds round down, the run time up, so the
/// steps still fit).
pub fn scale_durations(scn: &mut Scenario, scale: f64) {
    if scale == 1.0 {
        return;
    }
    let by = |ms: u32, round: fn(f64) -> f64| round(f64::from(ms) * scale).clamp(1.0, f64::from(u32::MAX)) as u32;
    for s in &mut scn.steps {
        s.hold_ms = if s.hold_ms == 0 { 0 } else { by(s.hold_ms, f64::floor) };
    }
    let holds: u64 = scn.steps.iter().map(|s| u64::from(s.hold_ms)).sum();
    scn.duration_ms = by(scn.duration_ms, f64::ceil).max(holds.min(u64::from(u32::MAX)) as u32);
}

/// Init time before the workers run: mounts, cgroups, sampler.
pub const SETUP_BASE_MS: u64 = 3_000;
/// Spawning and placing one worker: ~30 ms under QEMU TCG, with headroom for a loaded host.
pub const SETUP_PER_WORKER_MS: u64 = 100;
/// Stopping: the init's stop grace (500 ms) and SIGKILL wait (2 s), cgroup removal, reports.
pub const STOP_MS: u64 = 5_000;
/// The init waits up to this for the workers of a removed cgroup to die.
pub const REMOVE_WAIT_MS: u64 = 2_000;

/// `RunPlan::deadline_ms` for a scenario: setup + run time + stop, with headroom. The VM's
/// hard timeout is derived from it (see `runner`).
pub fn deadline_ms(scn: &Scenario) -> u32 {
    let workers = scn.workers().count() as u64;
    let removes = scn.steps.iter().flat_map(|s| &s.ops).filter(|op| matches!(op, Op::RemoveCgroup { .. })).count();
    let ms = SETUP_BASE_MS
        + SETUP_PER_WORKER_MS * workers
        + u64::from(scn.duration_ms)
        + REMOVE_WAIT_MS * removes as u64
        + STOP_MS;
    ms.min(u64::from(u32::MAX)) as u32
}

/// The run plan of one resolved scenario.
pub fn plan(r: &Resolved, console_quiet: bool) -> RunPlan {
    let mut plan = RunPlan::new(deadline_ms(&r.scenario));
    plan.console_quiet = console_quiet;
    plan.scenario = Some(r.scenario.clone());
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "1n2l2c1t";

    fn topo() -> Topology {
        T.parse().unwrap()
    }

    fn load_text(text: &str) -> Result<Resolved, LoadError> {
        from_toml(text, "test.toml", "test.toml", &topo(), 1.0)
    }

    const FULL: &str = r#"
name = "example"
category = "cgroup"
description = "shows every feature of the format"
duration_ms = 3000

[[cgroups]]
name = "hi"
cpuset = { llc = 1 }
weight = 200
workers = [{ count = { per_cpu = 1 }, work = "cpu_spin" }]

[[cgroups]]
name = "lo"
cpuset = "2-3"
workers = [
  { count = 2, work = { pipe_ping_pong = { spin_iters = 100 } }, policy = "batch", nice = 5, affinity = { per_llc = 1 } },
]

[[steps]]
hold_ms = 1000
ops = [{ set_cpuset = { cgroup = "hi", cpus = { part = 0, of = 2 } } }]

[[steps]]
hold_ms = 1000
[[steps.ops]]
set_cpuset = { cgroup = "hi" }
[[steps.ops]]
add_cgroup = { name = "late", workers = [{ count = 1, work = { periodic_timer = { period_us = 1000, spin_us = 0 } } }] }

[expect]
cpu_ratio = { cgroups = ["hi", "lo"], ratio = 2.0, tolerance = 0.25 }
max_gap_ms = 3000
"#;

    #[test]
    fn a_full_file_resolves_to_explicit_cpus() {
        let r = load_text(FULL).unwrap();
        assert_eq!(r.info.name, "example");
        assert_eq!(r.info.category, "cgroup");
        let s = &r.scenario;
        assert_eq!(s.cgroups[0].cpuset.as_ref().unwrap().0, [2, 3]);
        assert_eq!(s.cgroups[0].workers[0].count, 2, "one per CPU of LLC 1");
        assert_eq!(s.cgroups[1].workers[0].affinity.as_ref().unwrap().0, [0, 2]);
        assert_eq!(s.cgroups[1].workers[0].nice, 5);
        match &s.steps[0].ops[0] {
            Op::SetCpuset { cpus: Some(c), .. } => assert_eq!(c.0, [0, 1]),
            op => panic!("{op:?}"),
        }
        assert!(matches!(&s.steps[1].ops[0], Op::SetCpuset { cpus: None, .. }));
        assert_eq!(s.cgroup_defs().count(), 3);
        assert_eq!(r.expect.cpu_ratio.as_ref().unwrap().ratio, 2.0);
        assert_eq!(r.expect.max_gap_ms, Some(3000));
        assert_eq!(s.sample_period_ms, 100);
    }

    fn err(text: &str) -> String {
        load_text(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_point_at_file_line_col() {
        let syntax = err("duration_ms = 10\n[[cgroups]]\nname = \"a\"\nweigth = 3\n");
        assert!(syntax.starts_with("test.toml:4:1: unknown field `weigth`"), "{syntax}");
        let cpus = err("duration_ms = 10\n[[cgroups]]\nname = \"a\"\ncpuset = { llc = 7 }\n");
        assert!(cpus.starts_with("test.toml:4:10: LLC 7 is not in topology 1n2l2c1t"), "{cpus}");
        let semantic = err("duration_ms = 10\n[[cgroups]]\nname = \"a\"\nweight = 0\n");
        assert!(semantic.starts_with("test.toml:2:1: cgroups[0] (a): weight 0 is outside"), "{semantic}");
        let op = err("duration_ms = 10\n[[steps]]\nhold_ms = 1\nops = [{ remove_cgroup = { cgroup = \"x\" } }]\n");
        assert!(op.starts_with("test.toml:4:8: steps[0].ops[0] (remove_cgroup x): unknown cgroup"), "{op}");
        let work = err("duration_ms = 10\n[[cgroups]]\nname = \"a\"\nworkers = [{ count = 1, work = \"spin\" }]\n");
        assert!(work.starts_with("test.toml:4:") && work.contains("unknown variant `spin`"), "{work}");
        let expect =
            err("duration_ms = 10\n[expect]\ncpu_ratio = { cgroups = [\"a\", \"b\"], ratio = 2.0, tolerance = 0.1 }\n");
        assert!(expect.starts_with("test.toml:2:1: expect.cpu_ratio names cgroup \"a\""), "{expect}");
    }

    #[test]
    fn durations_scale_and_steps_still_fit() {
        let r = from_toml(FULL, "x.toml", "x.toml", &topo(), 0.333).unwrap();
        assert_eq!(r.scenario.steps.iter().map(|s| s.hold_ms).collect::<Vec<_>>(), [333, 333]);
        assert_eq!(r.scenario.duration_ms, 999);
        r.scenario.validate().unwrap();
        assert_eq!(r.info.duration_scale, 0.333);
        for bad in [0.0, -1.0, f64::NAN, 1000.0] {
            assert!(matches!(load("basic_spin", &topo(), bad), Err(LoadError::Scale { .. })));
        }
    }

    #[test]
    fn deadline_covers_setup_run_and_stop() {
        let r = load_text(FULL).unwrap();
        let workers = r.scenario.workers().count() as u64;
        assert_eq!(workers, 5);
        let expected = SETUP_BASE_MS + workers * SETUP_PER_WORKER_MS + 3000 + STOP_MS;
        assert_eq!(u64::from(deadline_ms(&r.scenario)), expected);
        let p = plan(&r, true);
        assert!(p.console_quiet && p.scenario.is_some());
        p.validate().unwrap();
    }

    #[test]
    fn names_categories_files_and_unknowns() {
        let t = topo();
        assert_eq!(load("basic_spin", &t, 1.0).unwrap().len(), 1);
        let cpuset = load("cpuset", &t, 1.0).unwrap();
        assert!(cpuset.len() >= 4 && cpuset.iter().all(|r| r.info.category == "cpuset"));
        assert_eq!(load("all", &t, 1.0).unwrap().len(), catalog::names().count());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, "duration_ms = 100\n").unwrap();
        let mine = load(path.to_str().unwrap(), &t, 1.0).unwrap();
        assert_eq!(mine[0].info.name, "mine");
        let unknown = load("basic_spn", &t, 1.0).unwrap_err().to_string();
        assert!(unknown.contains("unknown scenario \"basic_spn\""), "{unknown}");
        let missing = load("/no/such.toml", &t, 1.0).unwrap_err().to_string();
        assert!(missing.contains("cannot read scenario file /no/such.toml"), "{missing}");
    }

    /// Numbers beyond the limits are refused where they are written, at once: a huge count is
    /// not counted worker by worker first, and nothing out of range reaches the arithmetic of
    /// the deadline, the timeline or the verdict.
    #[test]
    fn out_of_bounds_numbers_are_refused_at_their_place() {
        let cg = |worker: &str| format!("duration_ms = 10\n[[cgroups]]\nname = \"a\"\nworkers = [{worker}]\n");
        let count = err(&cg("{ count = 4000000000, work = \"cpu_spin\" }"));
        assert!(count.starts_with("test.toml:4:22:") && count.contains("1024"), "{count}");
        let per_cpu = err(&cg("{ count = { per_cpu = 4000000000 }, work = \"cpu_spin\" }"));
        assert!(per_cpu.starts_with("test.toml:4:") && per_cpu.contains("1024"), "{per_cpu}");
        for (work, field) in [
            ("{ mixed = { sleep_us = 4000000000 } }", "sleep_us"),
            ("{ bursty = { burst_ms = 4000000000, sleep_ms = 1 } }", "burst_ms"),
            ("{ bursty = { burst_ms = 1, sleep_ms = 4000000000 } }", "sleep_ms"),
            ("{ affinity_churn = { spin_iters = 4000000000 } }", "spin_iters"),
            ("{ periodic_timer = { period_us = 4000000000, spin_us = 0 } }", "period_us"),
            ("{ io_sync = { block_kb = 1, sleep_us = 4000000000 } }", "sleep_us"),
            ("{ sequence = { phases = [{ work = \"cpu_spin\", duration_ms = 4000000000 }] } }", "duration_ms"),
        ] {
            let e = err(&cg(&format!("{{ count = 1, work = {work} }}")));
            assert!(e.starts_with("test.toml:4:") && e.contains(field), "{work}: {e}");
        }
        let top = |text: &str, at: &str, field: &str| {
            let e = err(text);
            assert!(e.starts_with(at) && e.contains(field), "{text}: {e}");
        };
        top("duration_ms = 4000000000\n", "test.toml:1:15:", "duration_ms");
        top("duration_ms = 10\nsample_period_ms = 4000000000\n", "test.toml:2:20:", "sample_period_ms");
        top("duration_ms = 4000000\n[[steps]]\nhold_ms = 4000000000\n", "test.toml:3:11:", "hold_ms");
        top("duration_ms = 10\n[expect]\nmax_gap_ms = 9000000000000000000\n", "test.toml:2:1:", "max_gap_ms");
        top("duration_ms = 10\n[expect]\np99_wake_us = 9000000000000000000\n", "test.toml:2:1:", "p99_wake_us");
        top("duration_ms = 10\n[expect]\nmax_spread_pct = 1e300\n", "test.toml:2:1:", "max_spread_pct");
    }
}
