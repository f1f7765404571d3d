//! The scenario file format (TOML) and its resolution into the guest's [`Scenario`].
//!
//! The file mirrors [`ktstr_shared::scenario`] (same field and variant names) with host-only
//! conveniences: CPU sets as selections ([`CpuSpec`]), worker counts per CPU, a name, a
//! description of what the scenario proves, and `[expect]`ations for the verdict. Values whose
//! resolution can fail keep their byte span, so errors point at `file:line:col`; numbers out of
//! their bounds (see the `MAX_*` of [`ktstr_shared::scenario`]) are refused there, at once.

use std::fmt;

use ktstr_shared::scenario::{
    CgroupSpec, CpuList, MAX_DURATION_MS, MAX_SAMPLE_PERIOD_MS, MAX_WORKERS, Op, Scenario, SchedPolicy, Step, WorkType,
    WorkerSpec,
};
use ktstr_shared::topology::Topology;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::cpuset::CpuSpec;
use super::{Expect, Span};

/// A whole scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Defaults to the file name without `.toml`.
    pub name: Option<String>,
    pub category: Option<String>,
    /// What the scenario proves; shown by `ktstr-host list`.
    #[serde(default)]
    pub description: String,
    pub duration_ms: Spanned<u32>,
    pub sample_period_ms: Option<Spanned<u32>>,
    #[serde(default)]
    pub cgroups: Vec<Spanned<FileCgroup>>,
    #[serde(default)]
    pub steps: Vec<FileStep>,
    pub expect: Option<Spanned<Expect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCgroup {
    pub name: String,
    pub cpuset: Option<Spanned<CpuSpec>>,
    pub weight: Option<u32>,
    #[serde(default)]
    pub workers: Vec<Spanned<FileWorker>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWorker {
    pub count: Spanned<Count>,
    pub work: WorkType,
    #[serde(default)]
    pub policy: SchedPolicy,
    #[serde(default)]
    pub nice: i32,
    pub affinity: Option<Spanned<CpuSpec>>,
}

/// `count = 4` or `count = { per_cpu = 2 }` (times the CPUs the worker may use at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Fixed(u32),
    PerCpu(u32),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStep {
    #[serde(default)]
    pub ops: Vec<Spanned<FileOp>>,
    pub hold_ms: Spanned<u32>,
}

/// [`Op`] with CPU selections.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FileOp {
    AddCgroup(FileCgroup),
    RemoveCgroup { cgroup: String },
    SetCpuset { cgroup: String, cpus: Option<Spanned<CpuSpec>> },
    SetWeight { cgroup: String, weight: u32 },
    SetAffinity { cgroup: String, cpus: Option<Spanned<CpuSpec>> },
    MoveTasks { from: String, to: String },
    PauseWorkers { cgroup: String },
    ResumeWorkers { cgroup: String },
}

/// A resolution problem and where in the file it is.
#[derive(Debug)]
pub struct Located {
    pub span: Span,
    pub msg: String,
}

fn at<T>(s: &Spanned<T>, msg: impl fmt::Display) -> Located {
    Located { span: s.span(), msg: msg.to_string() }
}

/// `value` of `what` at `s` is at most `max`.
fn at_most(s: &Spanned<u32>, what: &str, max: u32) -> Result<u32, Located> {
    match *s.as_ref() {
        v if v > max => Err(at(s, format!("{what} {v} is above {max}"))),
        v => Ok(v),
    }
}

/// Resolves CPU selections and per-CPU counts against `topo`.
pub fn to_scenario(f: &File, topo: &Topology) -> Result<Scenario, Located> {
    let duration_ms = at_most(&f.duration_ms, "duration_ms", MAX_DURATION_MS)?;
    let sample_period_ms = match &f.sample_period_ms {
        Some(p) => at_most(p, "sample_period_ms", MAX_SAMPLE_PERIOD_MS)?,
        None => ktstr_shared::scenario::DEFAULT_SAMPLE_PERIOD_MS,
    };
    let mut r = Resolver { topo, declared: Vec::new() };
    let cgroups = f.cgroups.iter().map(|cg| r.cgroup(cg.as_ref())).collect::<Result<_, _>>()?;
    let steps = f.steps.iter().map(|s| r.step(s)).collect::<Result<_, _>>()?;
    Ok(Scenario { cgroups, steps, duration_ms, sample_period_ms })
}

struct Resolver<'a> {
    topo: &'a Topology,
    /// Cgroup name -> its CPUs as declared (own cpuset, else the parent's), for per-CPU counts.
    declared: Vec<(String, Vec<u32>)>,
}

impl Resolver<'_> {
    fn cpus(&self, spec: &Spanned<CpuSpec>) -> Result<CpuList, Located> {
        spec.as_ref().resolve(self.topo).map_err(|e| at(spec, e))
    }

    fn opt_cpus(&self, spec: &Option<Spanned<CpuSpec>>) -> Result<Option<CpuList>, Located> {
        spec.as_ref().map(|s| self.cpus(s)).transpose()
    }

    fn cgroup(&mut self, cg: &FileCgroup) -> Result<CgroupSpec, Located> {
        let cpuset = self.opt_cpus(&cg.cpuset)?;
        let parent = cg.name.rsplit_once('/').map(|(p, _)| p);
        let inherited = parent.and_then(|p| self.declared.iter().rev().find(|(n, _)| n == p)).map(|(_, c)| c.clone());
        // As the kernel does: a cpuset outside the parent's falls back to the parent's.
        let own = match (&cpuset, inherited) {
            (Some(c), Some(p)) => Some(c.0.iter().copied().filter(|x| p.contains(x)).collect::<Vec<_>>())
                .filter(|v| !v.is_empty())
                .unwrap_or(p),
            (Some(c), None) => c.0.clone(),
            (None, Some(p)) => p,
            (None, None) => (0..self.topo.cpus()).collect(),
        };
        let workers = cg.workers.iter().map(|w| self.worker(w, &own)).collect::<Result<_, _>>()?;
        self.declared.push((cg.name.clone(), own));
        Ok(CgroupSpec { name: cg.name.clone(), cpuset, weight: cg.weight, workers })
    }

    fn worker(&self, sw: &Spanned<FileWorker>, cgroup_cpus: &[u32]) -> Result<WorkerSpec, Located> {
        let w = sw.as_ref();
        let affinity = self.opt_cpus(&w.affinity)?;
        let count = match *w.count.as_ref() {
            Count::Fixed(n) => n,
            Count::PerCpu(n) => {
                let usable = match &affinity {
                    Some(a) => a.0.iter().filter(|c| cgroup_cpus.contains(c)).count(),
                    None => cgroup_cpus.len(),
                };
                // Both factors are bounded (MAX_WORKERS, MAX_CPUS): no overflow.
                let n = u64::from(n) * usable.max(1) as u64;
                if n > MAX_WORKERS as u64 {
                    return Err(at(&w.count, format!("per_cpu count makes {n} workers, more than {MAX_WORKERS}")));
                }
                n as u32
            }
        };
        let spec = WorkerSpec { count, work: w.work.clone(), policy: w.policy, nice: w.nice, affinity };
        spec.validate().map_err(|why| at(sw, why))?;
        Ok(spec)
    }

    fn step(&mut self, s: &FileStep) -> Result<Step, Located> {
        let ops = s.ops.iter().map(|op| self.op(op)).collect::<Result<_, _>>()?;
        Ok(Step { ops, hold_ms: at_most(&s.hold_ms, "hold_ms", MAX_DURATION_MS)? })
    }

    fn op(&mut self, op: &Spanned<FileOp>) -> Result<Op, Located> {
        Ok(match op.as_ref() {
            FileOp::AddCgroup(cg) => Op::AddCgroup(self.cgroup(cg)?),
            FileOp::RemoveCgroup { cgroup } => Op::RemoveCgroup { cgroup: cgroup.clone() },
            FileOp::SetCpuset { cgroup, cpus } => Op::SetCpuset { cgroup: cgroup.clone(), cpus: self.opt_cpus(cpus)? },
            FileOp::SetWeight { cgroup, weight } => Op::SetWeight { cgroup: cgroup.clone(), weight: *weight },
            FileOp::SetAffinity { cgroup, cpus } => {
                Op::SetAffinity { cgroup: cgroup.clone(), cpus: self.opt_cpus(cpus)? }
            }
            FileOp::MoveTasks { from, to } => Op::MoveTasks { from: from.clone(), to: to.clone() },
            FileOp::PauseWorkers { cgroup } => Op::PauseWorkers { cgroup: cgroup.clone() },
            FileOp::ResumeWorkers { cgroup } => Op::ResumeWorkers { cgroup: cgroup.clone() },
        })
    }
}

/// The span of what a [`ktstr_shared::scenario::ScenarioError::at`] path names
/// (`cgroups[2] (cg_1)`, `steps[1].ops[0] (...)`), if it names something in the file.
pub fn span_of(f: &File, at: &str) -> Option<Span> {
    let index = |s: &str, prefix: &str| -> Option<usize> { s.strip_prefix(prefix)?.split(']').next()?.parse().ok() };
    if let Some(i) = index(at, "cgroups[") {
        return f.cgroups.get(i).map(Spanned::span);
    }
    let s = index(at, "steps[")?;
    let rest = at.split_once("].")?.1;
    let o = index(rest, "ops[")?;
    f.steps.get(s)?.ops.get(o).map(Spanned::span)
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PerCpu {
    per_cpu: u32,
}

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a worker count (4) or { per_cpu = N }")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
        let v = u64::try_from(v).map_err(|_| E::custom(format!("count {v} is negative")))?;
        bounded(v, "count").map(Count::Fixed)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        bounded(v, "count").map(Count::Fixed)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Count, A::Error> {
        let p = PerCpu::deserialize(de::value::MapAccessDeserializer::new(map))?;
        bounded(p.per_cpu.into(), "per_cpu").map(Count::PerCpu)
    }
}

/// A worker count of at most [`MAX_WORKERS`].
fn bounded<E: de::Error>(v: u64, what: &str) -> Result<u32, E> {
    match u32::try_from(v) {
        Ok(n) if n as usize <= MAX_WORKERS => Ok(n),
        _ => Err(E::custom(format!("{what} {v} is above {MAX_WORKERS}, the most workers a scenario may have"))),
    }
}
