//! Scenarios as data: cgroups with cpusets and weights, workers with a work type and scheduling
//! attributes, and steps that change all of that over time.
//!
//! The guest takes everything explicit: CPU lists are lists of CPU numbers (the host resolves
//! "per LLC", "per node" or fractions against the topology first). A scenario is carried in
//! [`crate::plan::RunPlan::scenario`]; the same types are meant to be loaded from TOML on the
//! host, hence the snake_case names.
//!
//! Numbering, which wire messages refer to: cgroups by their index in [`Scenario::cgroup_defs`]
//! (the initial cgroups, then every [`Op::AddCgroup`] in step order), workers by their index in
//! [`Scenario::workers`] (the same order, `count` workers per [`WorkerSpec`]).
//!
//! Compatibility: postcard is positional. Changing these types bumps
//! [`crate::plan::PLAN_VERSION`]; new enum variants and trailing fields are cheap, reordering
//! is not. `#[serde(default)]` marks what a human-written file may leave out; postcard always
//! carries every field.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::wire::MAX_CPUS;

/// Telemetry period when a scenario does not say.
pub const DEFAULT_SAMPLE_PERIOD_MS: u32 = 100;
/// Shortest sampling period (other than 0 = off).
pub const MIN_SAMPLE_PERIOD_MS: u32 = 10;
/// Most workers over a whole scenario (added ones included).
pub const MAX_WORKERS: usize = 1024;
/// Most cgroup definitions over a whole scenario (added ones included).
pub const MAX_CGROUPS: usize = 256;
/// Longest cgroup path.
pub const MAX_CGROUP_NAME: usize = 128;
/// Most waiters per waker of [`WorkType::FutexFanOut`].
pub const MAX_FAN_OUT: u32 = 64;
/// Largest [`WorkType::CachePressure`] buffer.
pub const MAX_CACHE_KB: u32 = 1 << 20;
/// Largest [`WorkType::IoSync`] write.
pub const MAX_IO_BLOCK_KB: u32 = 1024;
/// Largest `cpu.weight` (the kernel's range is 1..=10000).
pub const MAX_WEIGHT: u32 = 10_000;
/// Longest run time, step hold and sequence phase, ms (24 h): with every bound below, the
/// times, counts and deadlines derived from a valid scenario fit their types with room.
pub const MAX_DURATION_MS: u32 = 86_400_000;
/// Longest sampling period, ms.
pub const MAX_SAMPLE_PERIOD_MS: u32 = 60_000;
/// Most steps, and most operations over all steps.
pub const MAX_STEPS: usize = 1024;
pub const MAX_OPS: usize = 4096;
/// Most phases of a [`WorkType::Sequence`].
pub const MAX_PHASES: usize = 64;
/// Longest sleep of [`WorkType::Mixed`] and [`WorkType::IoSync`], µs (10 s).
pub const MAX_SLEEP_US: u32 = 10_000_000;
/// Longest burst and sleep of [`WorkType::Bursty`], ms.
pub const MAX_BURST_MS: u32 = 10_000;
/// Most spin iterations per turn (about a second of spinning).
pub const MAX_SPIN_ITERS: u32 = 1_000_000_000;
/// Longest [`WorkType::PeriodicTimer`] period, µs (10 s).
pub const MAX_PERIOD_US: u32 = 10_000_000;

/// Everything one scenario run does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    /// Created, configured and populated before the run starts, in order (parents first).
    pub cgroups: Vec<CgroupSpec>,
    /// Applied in order from the start: step `k` begins when the holds of steps `0..k` are over.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Run time from releasing the workers to stopping them, ms; > 0, and at least the sum of
    /// the steps' holds.
    pub duration_ms: u32,
    /// Telemetry period, ms ([`DEFAULT_SAMPLE_PERIOD_MS`] is the usual); 0 = no periodic
    /// samples (the final reports are still sent).
    #[serde(default = "default_sample_period")]
    pub sample_period_ms: u32,
}

fn default_sample_period() -> u32 {
    DEFAULT_SAMPLE_PERIOD_MS
}

/// A cgroup and the workers that start in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// Path below the run's cgroup root, `/`-separated: `cg_0`, `cg_0/inner`. A nested
    /// cgroup's parent must be defined (and alive) first.
    pub name: String,
    /// `cpuset.cpus`; `None` leaves it unset (the parent's CPUs).
    pub cpuset: Option<CpuList>,
    /// `cpu.weight` (1..=10000); `None` leaves the default (100).
    pub weight: Option<u32>,
    /// cgroup v2 keeps processes in leaves only: a cgroup with workers cannot have children.
    #[serde(default)]
    pub workers: Vec<WorkerSpec>,
}

/// `count` identical workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// > 0, and a multiple of the work type's [group size](WorkType::group_size).
    pub count: u32,
    pub work: WorkType,
    #[serde(default)]
    pub policy: SchedPolicy,
    /// -20..=19; applies to the normal and batch policies.
    #[serde(default)]
    pub nice: i32,
    /// `sched_setaffinity` mask; `None` = every CPU (the cpuset still applies).
    pub affinity: Option<CpuList>,
}

/// A list of CPU numbers (each below [`MAX_CPUS`]). Parses from and prints as the kernel's
/// list syntax (`0-3,6`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CpuList(pub Vec<u32>);

/// Linux scheduling policy of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedPolicy {
    /// SCHED_OTHER (EEVDF / sched_ext).
    #[default]
    Normal,
    /// SCHED_BATCH.
    Batch,
    /// SCHED_IDLE.
    Idle,
    /// SCHED_FIFO at a priority of 1..=99.
    Fifo(u8),
    /// SCHED_RR at a priority of 1..=99.
    RoundRobin(u8),
}

/// What a worker does. Every type counts work units; the `latency` histogram of its report
/// holds what the type measures, where it measures something. "Spin" is a busy loop of
/// integer mixing, about 1 ns per iteration on a current x86 core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkType {
    /// Unit: 16384 spin iterations. Measures CPU share (throughput).
    CpuSpin,
    /// Unit: `sched_yield()` after 64 spin iterations. Measures the yield / context-switch path.
    YieldHeavy,
    /// Unit: a spin chunk and a `sched_yield()`; every 8th unit also sleeps `sleep_us`.
    /// Latency: oversleep of those sleeps (wake-up minus requested end).
    Mixed { sleep_us: u32 },
    /// Spins for `burst_ms` (unit: a spin chunk), sleeps `sleep_ms`, again. Latency: oversleep.
    Bursty { burst_ms: u32, sleep_ms: u32 },
    /// Pairs passing a message back and forth over two pipes, `spin_iters` of work per turn.
    /// Unit: a message received. Latency: from the partner's write to this side's wake-up.
    PipePingPong { spin_iters: u32 },
    /// As [`Self::PipePingPong`], through a shared futex word.
    FutexPingPong { spin_iters: u32 },
    /// Groups of one waker and `fan_out` waiters: the waker spins `spin_iters`, then wakes
    /// all and waits until each has run. Unit: a broadcast (waker), a wake-up (waiter).
    /// Latency (waiters): from the broadcast to running.
    FutexFanOut { fan_out: u32, spin_iters: u32 },
    /// Chases pointers through a random cycle of 64-byte lines in a `size_kb` buffer
    /// (0 = twice the L2 of CPU 0). Unit: 1024 lines visited. Measures memory-bound throughput.
    CachePressure { size_kb: u32 },
    /// Unit: `fork()`, the child `_exit`s, the parent reaps it. Measures fork/exit/wake-up-new.
    ForkExit,
    /// Unit: `sched_setaffinity` to the next single CPU of those allowed at start, then
    /// `spin_iters`. Measures the migration path.
    AffinityChurn { spin_iters: u32 },
    /// Unit: a spin chunk; every 16 units the worker moves to the next nice value of a
    /// -20..19 sweep (values it lacks the privilege for are skipped).
    NiceSweep,
    /// Runs each phase for its duration, in a loop. Phases are single-worker types (not
    /// pairs, fan-outs or sequences). Units and latencies add up over the phases.
    Sequence { phases: Vec<Phase> },
    /// Sleeps to absolute deadlines every `period_us` (as cyclictest), spins `spin_us` after
    /// each wake-up. Unit: a period. Latency: wake-up minus deadline.
    PeriodicTimer { period_us: u32, spin_us: u32 },
    /// Unit: `pwrite` of `block_kb` to a file in /tmp and `fsync`, then a `sleep_us` sleep.
    /// Latency: the write plus fsync.
    IoSync { block_kb: u32, sleep_us: u32 },
}

/// One phase of a [`WorkType::Sequence`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    pub work: WorkType,
    /// > 0.
    pub duration_ms: u32,
}

/// Operations applied together, then held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    #[serde(default)]
    pub ops: Vec<Op>,
    /// Time from applying the ops to the next step (or the end), ms.
    pub hold_ms: u32,
}

/// A change to the running scenario. Cgroups are named by [`CgroupSpec::name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Creates a cgroup (its parent must be alive) and starts its workers.
    AddCgroup(CgroupSpec),
    /// Kills the cgroup's workers and removes it; it must have no live children.
    RemoveCgroup { cgroup: String },
    /// Writes `cpuset.cpus`; `None` clears it (back to the parent's CPUs).
    SetCpuset { cgroup: String, cpus: Option<CpuList> },
    /// Writes `cpu.weight`.
    SetWeight { cgroup: String, weight: u32 },
    /// `sched_setaffinity` of every worker of the cgroup; `None` = all CPUs.
    SetAffinity { cgroup: String, cpus: Option<CpuList> },
    /// Moves every worker of `from` into `to` (a leaf).
    MoveTasks { from: String, to: String },
    /// SIGSTOP to every worker of the cgroup: they stop making progress (a starvation probe).
    PauseWorkers { cgroup: String },
    /// SIGCONT to every worker of the cgroup.
    ResumeWorkers { cgroup: String },
}

/// One worker as numbered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo<'a> {
    /// Worker id.
    pub id: u32,
    /// Index of the cgroup it starts in ([`Scenario::cgroup_defs`] order).
    pub cgroup: u16,
    pub spec: &'a WorkerSpec,
    /// Its index among the `count` workers of `spec`; groups of
    /// [`WorkType::group_size`] consecutive workers work together.
    pub index: u32,
}

impl Scenario {
    /// A scenario of the given cgroups running for `duration_ms`, default sampling, no steps.
    pub fn new(cgroups: Vec<CgroupSpec>, duration_ms: u32) -> Self {
        Scenario { cgroups, steps: Vec::new(), duration_ms, sample_period_ms: DEFAULT_SAMPLE_PERIOD_MS }
    }

    /// Every cgroup definition in wire order: the initial ones, then each `AddCgroup`.
    pub fn cgroup_defs(&self) -> impl Iterator<Item = &CgroupSpec> {
        let added = self.steps.iter().flat_map(|s| &s.ops).filter_map(|op| match op {
            Op::AddCgroup(cg) => Some(cg),
            _ => None,
        });
        self.cgroups.iter().chain(added)
    }

    /// Every worker in wire (id) order.
    pub fn workers(&self) -> impl Iterator<Item = WorkerInfo<'_>> {
        let specs = self.cgroup_defs().enumerate().flat_map(|(cg, def)| def.workers.iter().map(move |w| (cg, w)));
        let each = specs.flat_map(|(cg, spec)| (0..spec.count).map(move |index| (cg, spec, index)));
        each.enumerate().map(|(id, (cg, spec, index))| WorkerInfo { id: id as u32, cgroup: cg as u16, spec, index })
    }

    /// Start time of each step, ms from the release of the workers.
    pub fn step_starts_ms(&self) -> impl Iterator<Item = u64> + '_ {
        self.steps.iter().scan(0u64, |t, s| {
            let start = *t;
            *t += u64::from(s.hold_ms);
            Some(start)
        })
    }

    /// Checks everything the guest relies on; the error names the place and the problem.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.validate_sizes().map_err(|problem| ScenarioError { at: "scenario".into(), problem })?;
        let mut live = Live::default();
        for (i, cg) in self.cgroups.iter().enumerate() {
            live.add(cg).map_err(|p| ScenarioError { at: format!("cgroups[{i}] ({})", cg.name), problem: p })?;
        }
        for (s, step) in self.steps.iter().enumerate() {
            for (o, op) in step.ops.iter().enumerate() {
                let at = || format!("steps[{s}].ops[{o}] ({})", op.describe());
                live.apply(op).map_err(|problem| ScenarioError { at: at(), problem })?;
            }
        }
        // From the specs, not by counting workers one by one: a count may be 4 billion.
        let workers = self.cgroup_defs().flat_map(|d| &d.workers).fold(0u64, |n, w| n.saturating_add(w.count.into()));
        if workers > MAX_WORKERS as u64 {
            let n = usize::try_from(workers).unwrap_or(usize::MAX);
            return Err(ScenarioError { at: "scenario".into(), problem: Problem::TooManyWorkers { n } });
        }
        Ok(())
    }

    /// Times and sizes, before anything is iterated per cgroup or worker.
    fn validate_sizes(&self) -> Result<(), Problem> {
        if self.duration_ms == 0 {
            return Err(Problem::ZeroDuration);
        }
        at_most("duration_ms", self.duration_ms.into(), MAX_DURATION_MS.into()).map_err(Problem::Bound)?;
        if self.sample_period_ms != 0 && self.sample_period_ms < MIN_SAMPLE_PERIOD_MS {
            return Err(Problem::SamplePeriod { ms: self.sample_period_ms });
        }
        at_most("sample_period_ms", self.sample_period_ms.into(), MAX_SAMPLE_PERIOD_MS.into())
            .map_err(Problem::Bound)?;
        let ops: usize = self.steps.iter().map(|s| s.ops.len()).fold(0, usize::saturating_add);
        let adds = self.steps.iter().flat_map(|s| &s.ops).filter(|op| matches!(op, Op::AddCgroup(_))).count();
        for (n, what, max) in [
            (self.steps.len(), "steps", MAX_STEPS),
            (ops, "operations", MAX_OPS),
            (self.cgroups.len().saturating_add(adds), "cgroups", MAX_CGROUPS),
        ] {
            if n > max {
                return Err(Problem::TooMany { what, n, max });
            }
        }
        // At most MAX_STEPS holds of u32: the sum cannot overflow.
        let holds: u64 = self.steps.iter().map(|s| u64::from(s.hold_ms)).sum();
        if holds > u64::from(self.duration_ms) {
            return Err(Problem::StepsTooLong { holds_ms: holds, duration_ms: self.duration_ms });
        }
        Ok(())
    }
}

/// `what value is above max`, for the numeric bounds.
fn at_most(what: &str, value: u64, max: u64) -> Result<(), String> {
    if value > max { Err(format!("{what} {value} is above {max}")) } else { Ok(()) }
}

/// Cgroups alive at one point of a scenario, for validation.
#[derive(Default)]
struct Live {
    /// name -> (has workers, live children)
    cgroups: BTreeMap<String, (bool, u32)>,
}

impl Live {
    fn add(&mut self, cg: &CgroupSpec) -> Result<(), Problem> {
        check_name(&cg.name)?;
        if self.cgroups.contains_key(&cg.name) {
            return Err(Problem::DuplicateCgroup { name: cg.name.clone() });
        }
        if let Some((parent, _)) = cg.name.rsplit_once('/') {
            match self.cgroups.get_mut(parent) {
                None => return Err(Problem::UnknownParent { parent: parent.into(), live: self.names() }),
                Some((true, _)) => return Err(Problem::WorkersInParent { parent: parent.into() }),
                Some((false, children)) => *children += 1,
            }
        }
        cg.validate()?;
        self.cgroups.insert(cg.name.clone(), (!cg.workers.is_empty(), 0));
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), Problem> {
        match op {
            Op::AddCgroup(cg) => self.add(cg),
            Op::RemoveCgroup { cgroup } => self.remove(cgroup),
            Op::SetCpuset { cgroup, cpus } => {
                self.get(cgroup)?;
                cpus.as_ref().map_or(Ok(()), |c| c.validate("cpus"))
            }
            Op::SetWeight { cgroup, weight } => self.get(cgroup).and_then(|_| check_weight(*weight)),
            Op::SetAffinity { cgroup, cpus } => {
                self.get(cgroup)?;
                cpus.as_ref().map_or(Ok(()), |c| c.validate("cpus"))
            }
            Op::MoveTasks { from, to } => self.move_tasks(from, to),
            Op::PauseWorkers { cgroup } | Op::ResumeWorkers { cgroup } => self.get(cgroup).map(drop),
        }
    }

    fn get(&self, name: &str) -> Result<(bool, u32), Problem> {
        self.cgroups.get(name).copied().ok_or_else(|| Problem::UnknownCgroup { name: name.into(), live: self.names() })
    }

    fn remove(&mut self, name: &str) -> Result<(), Problem> {
        if self.get(name)?.1 > 0 {
            return Err(Problem::RemoveParent { name: name.into() });
        }
        self.cgroups.remove(name);
        if let Some((parent, _)) = name.rsplit_once('/')
            && let Some((_, children)) = self.cgroups.get_mut(parent)
        {
            *children -= 1;
        }
        Ok(())
    }

    fn move_tasks(&mut self, from: &str, to: &str) -> Result<(), Problem> {
        let (from_workers, _) = self.get(from)?;
        let (_, to_children) = self.get(to)?;
        if from == to {
            return Err(Problem::MoveToSelf { name: from.into() });
        }
        if to_children > 0 {
            return Err(Problem::WorkersInParent { parent: to.into() });
        }
        if from_workers {
            self.cgroups.entry(from.into()).and_modify(|c| c.0 = false);
            self.cgroups.entry(to.into()).and_modify(|c| c.0 = true);
        }
        Ok(())
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.cgroups.keys().map(String::as_str).collect();
        if names.is_empty() { "none".into() } else { names.join(", ") }
    }
}

fn check_name(name: &str) -> Result<(), Problem> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_CGROUP_NAME {
        Some("is longer than 128 bytes")
    } else if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        Some("has an empty, `.` or `..` component (write `a/b`, no leading or trailing `/`)")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b)) {
        Some("may only contain ASCII letters, digits, `_`, `-`, `.` and `/`")
    } else if name.split('/').any(|c| c.starts_with("cgroup.") || c.starts_with("cpuset.") || c.starts_with("cpu.")) {
        Some("has a component that looks like a cgroup control file")
    } else {
        None
    };
    why.map_or(Ok(()), |why| Err(Problem::BadName { name: name.into(), why }))
}

fn check_weight(weight: u32) -> Result<(), Problem> {
    if (1..=MAX_WEIGHT).contains(&weight) { Ok(()) } else { Err(Problem::Weight { weight }) }
}

impl CgroupSpec {
    /// A cgroup with no cpuset, default weight and no workers.
    pub fn new(name: impl Into<String>) -> Self {
        CgroupSpec { name: name.into(), cpuset: None, weight: None, workers: Vec::new() }
    }

    /// Adds `count` workers of `work` with default policy, nice and affinity.
    pub fn with_workers(mut self, count: u32, work: WorkType) -> Self {
        self.workers.push(WorkerSpec::new(count, work));
        self
    }

    fn validate(&self) -> Result<(), Problem> {
        if let Some(cpus) = &self.cpuset {
            cpus.validate("cpuset")?;
        }
        if let Some(w) = self.weight {
            check_weight(w)?;
        }
        for (i, w) in self.workers.iter().enumerate() {
            w.validate().map_err(|why| Problem::Worker { index: i, why })?;
        }
        Ok(())
    }
}

impl WorkerSpec {
    pub fn new(count: u32, work: WorkType) -> Self {
        WorkerSpec { count, work, policy: SchedPolicy::Normal, nice: 0, affinity: None }
    }

    /// Checks one spec on its own (the scenario's totals are checked by [`Scenario::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 {
            return Err("count is 0; a worker spec needs at least one worker".into());
        }
        let group = self.work.group_size();
        if !self.count.is_multiple_of(group) {
            let name = self.work.name();
            return Err(format!("count {} is not a multiple of {group}, the group size of {name}", self.count));
        }
        if !(-20..=19).contains(&self.nice) {
            return Err(format!("nice {} is outside -20..=19", self.nice));
        }
        if let SchedPolicy::Fifo(p) | SchedPolicy::RoundRobin(p) = self.policy
            && !(1..=99).contains(&p)
        {
            return Err(format!("real-time priority {p} is outside 1..=99"));
        }
        if let Some(cpus) = &self.affinity {
            cpus.validate("affinity").map_err(|p| p.to_string())?;
        }
        self.work.validate(true)
    }
}

impl WorkType {
    /// Workers that work together: 2 for ping-pong pairs, `1 + fan_out` for fan-outs, else 1.
    pub fn group_size(&self) -> u32 {
        match self {
            WorkType::PipePingPong { .. } | WorkType::FutexPingPong { .. } => 2,
            WorkType::FutexFanOut { fan_out, .. } => fan_out.saturating_add(1),
            _ => 1,
        }
    }

    /// The snake_case name, as in TOML.
    pub fn name(&self) -> &'static str {
        match self {
            WorkType::CpuSpin => "cpu_spin",
            WorkType::YieldHeavy => "yield_heavy",
            WorkType::Mixed { .. } => "mixed",
            WorkType::Bursty { .. } => "bursty",
            WorkType::PipePingPong { .. } => "pipe_ping_pong",
            WorkType::FutexPingPong { .. } => "futex_ping_pong",
            WorkType::FutexFanOut { .. } => "futex_fan_out",
            WorkType::CachePressure { .. } => "cache_pressure",
            WorkType::ForkExit => "fork_exit",
            WorkType::AffinityChurn { .. } => "affinity_churn",
            WorkType::NiceSweep => "nice_sweep",
            WorkType::Sequence { .. } => "sequence",
            WorkType::PeriodicTimer { .. } => "periodic_timer",
            WorkType::IoSync { .. } => "io_sync",
        }
    }

    /// Each work type with its usual parameters.
    pub fn catalog() -> Vec<WorkType> {
        let phases = alloc::vec![
            Phase { work: WorkType::CpuSpin, duration_ms: 50 },
            Phase { work: WorkType::PeriodicTimer { period_us: 1000, spin_us: 0 }, duration_ms: 50 },
        ];
        alloc::vec![
            WorkType::CpuSpin,
            WorkType::YieldHeavy,
            WorkType::Mixed { sleep_us: 100 },
            WorkType::Bursty { burst_ms: 20, sleep_ms: 20 },
            WorkType::PipePingPong { spin_iters: 1000 },
            WorkType::FutexPingPong { spin_iters: 1000 },
            WorkType::FutexFanOut { fan_out: 4, spin_iters: 1000 },
            WorkType::CachePressure { size_kb: 0 },
            WorkType::ForkExit,
            WorkType::AffinityChurn { spin_iters: 1000 },
            WorkType::NiceSweep,
            WorkType::Sequence { phases },
            WorkType::PeriodicTimer { period_us: 1000, spin_us: 0 },
            WorkType::IoSync { block_kb: 64, sleep_us: 100 },
        ]
    }

    /// The largest value of each numeric parameter: (name, value, bound).
    fn limits(&self) -> Vec<(&'static str, u32, u32)> {
        match *self {
            WorkType::Mixed { sleep_us } | WorkType::IoSync { sleep_us, .. } => {
                alloc::vec![("sleep_us", sleep_us, MAX_SLEEP_US)]
            }
            WorkType::Bursty { burst_ms, sleep_ms } => {
                alloc::vec![("burst_ms", burst_ms, MAX_BURST_MS), ("sleep_ms", sleep_ms, MAX_BURST_MS)]
            }
            WorkType::PipePingPong { spin_iters }
            | WorkType::FutexPingPong { spin_iters }
            | WorkType::FutexFanOut { spin_iters, .. }
            | WorkType::AffinityChurn { spin_iters } => alloc::vec![("spin_iters", spin_iters, MAX_SPIN_ITERS)],
            WorkType::PeriodicTimer { period_us, .. } => alloc::vec![("period_us", period_us, MAX_PERIOD_US)],
            _ => Vec::new(),
        }
    }

    /// `top`: a worker's own work type (not a phase of a sequence).
    fn validate(&self, top: bool) -> Result<(), String> {
        let bad = |why: &str| Err(format!("{}: {why}", self.name()));
        for (what, value, max) in self.limits() {
            at_most(what, value.into(), max.into()).map_err(|why| format!("{}: {why}", self.name()))?;
        }
        match self {
            WorkType::FutexFanOut { fan_out, .. } if !(1..=MAX_FAN_OUT).contains(fan_out) => {
                bad("fan_out must be 1..=64")
            }
            WorkType::Bursty { burst_ms: 0, .. } => bad("burst_ms must be > 0"),
            WorkType::CachePressure { size_kb } if *size_kb > MAX_CACHE_KB => bad("size_kb must be <= 1048576"),
            WorkType::PeriodicTimer { period_us: 0, .. } => bad("period_us must be > 0"),
            WorkType::PeriodicTimer { period_us, spin_us } if spin_us >= period_us => {
                bad("spin_us must be shorter than period_us")
            }
            WorkType::IoSync { block_kb, .. } if !(1..=MAX_IO_BLOCK_KB).contains(block_kb) => {
                bad("block_kb must be 1..=1024")
            }
            WorkType::Sequence { .. } if !top => bad("a sequence cannot be a phase of a sequence"),
            WorkType::Sequence { phases } => Self::validate_phases(phases),
            w if !top && w.group_size() > 1 => bad("works in groups, so it cannot be a phase of a sequence"),
            _ => Ok(()),
        }
    }

    fn validate_phases(phases: &[Phase]) -> Result<(), String> {
        if phases.is_empty() {
            return Err("sequence: phases is empty".into());
        }
        if phases.len() > MAX_PHASES {
            return Err(format!("sequence: {} phases, more than {MAX_PHASES}", phases.len()));
        }
        for (i, p) in phases.iter().enumerate() {
            if p.duration_ms == 0 {
                return Err(format!("sequence: phases[{i}].duration_ms is 0"));
            }
            at_most("duration_ms", p.duration_ms.into(), MAX_DURATION_MS.into())
                .map_err(|why| format!("sequence: phases[{i}].{why}"))?;
            p.work.validate(false).map_err(|why| format!("sequence: phases[{i}]: {why}"))?;
        }
        Ok(())
    }
}

impl Op {
    /// Its snake_case name and the cgroup(s) it names, for messages.
    pub fn describe(&self) -> String {
        match self {
            Op::AddCgroup(cg) => format!("add_cgroup {}", cg.name),
            Op::RemoveCgroup { cgroup } => format!("remove_cgroup {cgroup}"),
            Op::SetCpuset { cgroup, .. } => format!("set_cpuset {cgroup}"),
            Op::SetWeight { cgroup, .. } => format!("set_weight {cgroup}"),
            Op::SetAffinity { cgroup, .. } => format!("set_affinity {cgroup}"),
            Op::MoveTasks { from, to } => format!("move_tasks {from} -> {to}"),
            Op::PauseWorkers { cgroup } => format!("pause_workers {cgroup}"),
            Op::ResumeWorkers { cgroup } => format!("resume_workers {cgroup}"),
        }
    }
}

impl CpuList {
    pub fn new(cpus: impl IntoIterator<Item = u32>) -> Self {
        CpuList(cpus.into_iter().collect())
    }

    /// Sorted, without duplicates.
    pub fn normalized(&self) -> Vec<u32> {
        let mut v = self.0.clone();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn validate(&self, what: &'static str) -> Result<(), Problem> {
        if self.0.is_empty() {
            return Err(Problem::EmptyCpuList { what });
        }
        match self.0.iter().find(|&&c| c as usize >= MAX_CPUS) {
            Some(&cpu) => Err(Problem::CpuOutOfRange { what, cpu }),
            None => Ok(()),
        }
    }
}

/// The kernel's list syntax: `0-3,6`.
impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus = self.normalized();
        let mut i = 0;
        while i < cpus.len() {
            let mut j = i;
            while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
                j += 1;
            }
            let sep = if i == 0 { "" } else { "," };
            if j == i {
                write!(f, "{sep}{}", cpus[i])?
            } else {
                write!(f, "{sep}{}-{}", cpus[i], cpus[j])?
            }
            i = j + 1;
        }
        Ok(())
    }
}

impl FromStr for CpuList {
    type Err = String;

    /// Parses `0-3,6` (whitespace around items allowed); an empty string is an empty list.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut cpus = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let num = |t: &str| t.trim().parse::<u32>().map_err(|_| format!("bad CPU list item {item:?}"));
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(item)?, num(item)?),
            };
            if lo > hi || hi as usize >= MAX_CPUS {
                return Err(format!("bad CPU range {item:?} (CPUs are 0..{MAX_CPUS})"));
            }
            cpus.extend(lo..=hi);
        }
        Ok(CpuList(cpus))
    }
}

/// A scenario that cannot run: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// `scenario`, `cgroups[2] (cg_1)` or `steps[1].ops[0] (remove_cgroup cg_9)`.
    pub at: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    ZeroDuration,
    SamplePeriod {
        ms: u32,
    },
    StepsTooLong {
        holds_ms: u64,
        duration_ms: u32,
    },
    BadName {
        name: String,
        why: &'static str,
    },
    DuplicateCgroup {
        name: String,
    },
    UnknownParent {
        parent: String,
        live: String,
    },
    UnknownCgroup {
        name: String,
        live: String,
    },
    WorkersInParent {
        parent: String,
    },
    RemoveParent {
        name: String,
    },
    MoveToSelf {
        name: String,
    },
    Weight {
        weight: u32,
    },
    EmptyCpuList {
        what: &'static str,
    },
    CpuOutOfRange {
        what: &'static str,
        cpu: u32,
    },
    Worker {
        index: usize,
        why: String,
    },
    TooManyWorkers {
        n: usize,
    },
    /// More steps, operations or cgroups than their limit.
    TooMany {
        what: &'static str,
        n: usize,
        max: usize,
    },
    /// A number above its bound (the text names it).
    Bound(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ZeroDuration => write!(f, "duration_ms is 0; give the run time in ms"),
            Problem::SamplePeriod { ms } => {
                write!(f, "sample_period_ms {ms} is below {MIN_SAMPLE_PERIOD_MS}; use 0 to turn sampling off")
            }
            Problem::StepsTooLong { holds_ms, duration_ms } => {
                write!(f, "the steps hold {holds_ms} ms in all, more than duration_ms {duration_ms}")
            }
            Problem::BadName { name, why } => write!(f, "cgroup name {name:?} {why}"),
            Problem::DuplicateCgroup { name } => write!(f, "cgroup {name:?} already exists at this point"),
            Problem::UnknownParent { parent, live } => {
                write!(f, "parent cgroup {parent:?} does not exist at this point (alive: {live}); define it first")
            }
            Problem::UnknownCgroup { name, live } => {
                write!(f, "unknown cgroup {name:?} (alive at this point: {live})")
            }
            Problem::WorkersInParent { parent } => write!(
                f,
                "cgroup {parent:?} would hold workers and child cgroups; cgroup v2 keeps processes in leaves only"
            ),
            Problem::RemoveParent { name } => write!(f, "cgroup {name:?} still has child cgroups; remove them first"),
            Problem::MoveToSelf { name } => write!(f, "moves the workers of {name:?} into itself"),
            Problem::Weight { weight } => write!(f, "weight {weight} is outside 1..={MAX_WEIGHT}"),
            Problem::EmptyCpuList { what } => write!(f, "{what} is an empty CPU list; leave it out instead"),
            Problem::CpuOutOfRange { what, cpu } => write!(f, "{what} names CPU {cpu}, beyond {}", MAX_CPUS - 1),
            Problem::Worker { index, why } => write!(f, "workers[{index}]: {why}"),
            Problem::TooManyWorkers { n } => write!(f, "{n} workers in all, more than {MAX_WORKERS}"),
            Problem::TooMany { what, n, max } => write!(f, "{n} {what} in all, more than {max}"),
            Problem::Bound(why) => f.write_str(why),
        }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.problem)
    }
}

impl core::error::Error for ScenarioError {}

/// Postcard bytes of a work type: how the init hands one to a worker process.
pub fn work_to_bytes(work: &WorkType) -> Vec<u8> {
    // Cannot fail: serializing into a growable vector of plain data.
    postcard::to_allocvec(work).unwrap_or_default()
}

/// The inverse of [`work_to_bytes`]; `None` for bytes that are not exactly one work type.
pub fn work_from_bytes(bytes: &[u8]) -> Option<WorkType> {
    match postcard::take_from_bytes(bytes) {
        Ok((work, [])) => Some(work),
        _ => None,
    }
}
