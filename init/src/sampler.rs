//! Periodic telemetry: per-worker progress (shared memory) and counters (/proc/<pid>), per-CPU
//! schedstat deltas and run-queue lengths, system state; sent as bounded [`Sample`] frames.
//!
//! Two reads are costly on a big guest (in a TCG guest, milliseconds): the sched debug file
//! (per-CPU run-queue lengths; it lists every task for every CPU) and each worker's
//! `/proc/<pid>/sched` (switches, migrations; dozens of formatted lines). Each has a
//! [`Budget`]: it is read on fewer ticks (down to one in [`MAX_EVERY`]) when it would cost
//! more than [`BUDGET_PERCENT`] of the period. On the other ticks `nr_running` is `None` and
//! switches and migrations repeat their last values (they are totals).

use ktstr_shared::wire::{CpuSample, SAMPLE_CPUS, SAMPLE_WORKERS, Sample, ScxState, SystemSample, WorkerSample};

use crate::procfs::{self, CpuCounters, StatFile};
use crate::sys;
use crate::workers::{Pool, Snapshot};

/// Share of the sampling period each costly read may take, in percent.
pub const BUDGET_PERCENT: u64 = 1;
/// A costly read happens at least every this many ticks.
pub const MAX_EVERY: u64 = 10;

/// On which ticks a costly read happens.
#[derive(Debug, Clone, Copy)]
struct Budget {
    every: u32,
    /// Estimated CPU cost of one read, ns (0 before the first).
    cost_ns: u64,
}

impl Budget {
    const fn new() -> Budget {
        Budget { every: 1, cost_ns: 0 }
    }

    fn due(&self, seq: u32) -> bool {
        seq.is_multiple_of(self.every)
    }

    /// Takes the cost of a read into account. A read slowed by interference (in a VM: its
    /// vCPU descheduled) may at most double the estimate; a cheaper one lowers it at once.
    fn record(&mut self, cost_ns: u64, period_ns: u64) {
        self.cost_ns = if self.cost_ns == 0 { cost_ns } else { cost_ns.min(self.cost_ns * 2) };
        self.every = every(self.cost_ns, period_ns);
    }
}

/// Every how many ticks a read costing `cost_ns` stays within the budget.
fn every(cost_ns: u64, period_ns: u64) -> u32 {
    let budget = (period_ns * BUDGET_PERCENT / 100).max(1);
    cost_ns.div_ceil(budget).clamp(1, MAX_EVERY) as u32
}

/// The system-wide files, opened once.
pub struct Sampler {
    schedstat: Option<StatFile>,
    debug: Option<StatFile>,
    stat: Option<StatFile>,
    scx_state: Option<StatFile>,
    scx_seq: Option<StatFile>,
    /// Counters at the previous tick (the run's start for the first).
    prev: Vec<CpuCounters>,
    buf: Vec<u8>,
    seq: u32,
    period_ns: u64,
    debug_budget: Budget,
    details_budget: Budget,
}

impl Sampler {
    /// Opens what exists and takes the per-CPU baseline.
    pub fn new(period_ms: u32) -> Sampler {
        let mut s = Sampler {
            schedstat: StatFile::open("/proc/schedstat"),
            debug: StatFile::open("/sys/kernel/debug/sched/debug"),
            stat: StatFile::open("/proc/stat"),
            scx_state: StatFile::open("/sys/kernel/sched_ext/state"),
            scx_seq: StatFile::open("/sys/kernel/sched_ext/enable_seq"),
            prev: Vec::new(),
            buf: Vec::with_capacity(64 * 1024),
            seq: 0,
            period_ns: u64::from(period_ms) * 1_000_000,
            debug_budget: Budget::new(),
            details_budget: Budget::new(),
        };
        s.prev = s.cpu_counters();
        s
    }

    /// What this kernel lets us sample, for a log line at the start.
    pub fn describe(&self) -> String {
        let have = |f: &Option<StatFile>| if f.is_some() { "yes" } else { "no" };
        format!(
            "sampling sources: /proc/schedstat {}, sched debug nr_running {}, sched_ext state {}",
            have(&self.schedstat),
            have(&self.debug),
            have(&self.scx_state)
        )
    }

    fn cpu_counters(&mut self) -> Vec<CpuCounters> {
        let Some(f) = &self.schedstat else { return Vec::new() };
        f.read(&mut self.buf).map(procfs::parse_cpu_schedstat).unwrap_or_default()
    }

    /// One tick: reads everything and returns the frames to send.
    pub fn tick(&mut self, pool: &mut Pool) -> Vec<Sample> {
        let started = sys::thread_cpu_ns();
        let live: Vec<usize> = (0..pool.workers.len()).filter(|&i| pool.workers[i].alive()).collect();
        let snaps = self.read_workers(pool, &live);
        let t_ns = snaps.first().map_or_else(sys::boottime_ns, |s| s.t_ns);
        let ws = &pool.workers;
        let workers: Vec<WorkerSample> =
            live.iter().zip(&snaps).map(|(&i, s)| worker_sample(s, ws[i].id, ws[i].cgroup)).collect();
        let cpus = self.cpu_samples();
        let mut system = self.system();
        system.cost_ns = sys::thread_cpu_ns().saturating_sub(started);
        let frames = split(self.seq, t_ns, &workers, &cpus, system);
        self.seq += 1;
        frames
    }

    fn read_workers(&mut self, pool: &mut Pool, live: &[usize]) -> Vec<Snapshot> {
        if !self.details_budget.due(self.seq) {
            return pool.read(live, false);
        }
        let started = sys::thread_cpu_ns();
        let snaps = pool.read(live, true);
        // Charged whole to the details: the schedstat reads are a small part of it.
        self.details_budget.record(sys::thread_cpu_ns().saturating_sub(started), self.period_ns);
        snaps
    }

    fn cpu_samples(&mut self) -> Vec<CpuSample> {
        let now = self.cpu_counters();
        let nr_running = self.nr_running();
        let samples = now
            .iter()
            .map(|c| {
                let prev = self.prev.iter().find(|p| p.cpu == c.cpu).copied().unwrap_or_default();
                let nr = nr_running.iter().find(|(cpu, _)| *cpu == c.cpu).map(|&(_, n)| n);
                delta(c, &prev, nr)
            })
            .collect();
        self.prev = now;
        samples
    }

    /// Run-queue lengths on the ticks the debug file's cost allows; adapts the rate to it.
    fn nr_running(&mut self) -> Vec<(u32, u32)> {
        let Some(f) = &self.debug else { return Vec::new() };
        if !self.debug_budget.due(self.seq) {
            return Vec::new();
        }
        let started = sys::thread_cpu_ns();
        let out = f.read(&mut self.buf).map(procfs::parse_debug_nr_running).unwrap_or_default();
        self.debug_budget.record(sys::thread_cpu_ns().saturating_sub(started), self.period_ns);
        out
    }

    fn system(&mut self) -> SystemSample {
        let buf = &mut self.buf;
        let scx = match &self.scx_state {
            Some(f) => f.read(buf).map_or(ScxState::Other, procfs::parse_scx_state),
            None => ScxState::Unsupported,
        };
        let scx_enable_seq = self.scx_seq.as_ref().and_then(|f| f.read(buf)?.trim().parse().ok());
        let procs_running = self.stat.as_ref().and_then(|f| procfs::parse_procs_running(f.read(buf)?));
        SystemSample { scx, scx_enable_seq, procs_running, cost_ns: 0 }
    }
}

fn delta(now: &CpuCounters, prev: &CpuCounters, nr_running: Option<u32>) -> CpuSample {
    CpuSample {
        cpu: now.cpu,
        nr_running,
        sched_count: now.sched_count.wrapping_sub(prev.sched_count),
        sched_goidle: now.sched_goidle.wrapping_sub(prev.sched_goidle),
        ttwu_count: now.ttwu_count.wrapping_sub(prev.ttwu_count),
        ttwu_local: now.ttwu_local.wrapping_sub(prev.ttwu_local),
        run_ns: now.run_ns.wrapping_sub(prev.run_ns),
        run_delay_ns: now.run_delay_ns.wrapping_sub(prev.run_delay_ns),
        timeslices: now.timeslices.wrapping_sub(prev.timeslices),
    }
}

/// The wire view of a worker reading.
pub fn worker_sample(s: &Snapshot, id: u32, cgroup: u16) -> WorkerSample {
    let task = s.task.unwrap_or_default();
    WorkerSample {
        id,
        cgroup,
        units: s.units,
        cpu_time_ns: task.cpu_time_ns,
        run_delay_ns: task.run_delay_ns,
        timeslices: task.timeslices,
        voluntary_switches: task.voluntary,
        involuntary_switches: task.involuntary,
        migrations: task.migrations,
        last_cpu: s.cpu,
        last_progress_ns: s.last_ns,
        max_gap_ns: s.max_gap_ns,
        max_gap_at_ns: s.max_gap_at_ns,
        max_gap_cpu: s.max_gap_cpu,
    }
}

/// One tick as frames of at most [`SAMPLE_WORKERS`] workers and [`SAMPLE_CPUS`] CPUs; the
/// system state goes in part 0.
pub fn split(seq: u32, t_ns: u64, workers: &[WorkerSample], cpus: &[CpuSample], system: SystemSample) -> Vec<Sample> {
    let parts = workers.len().div_ceil(SAMPLE_WORKERS).max(cpus.len().div_ceil(SAMPLE_CPUS)).max(1);
    (0..parts)
        .map(|p| Sample {
            seq,
            t_ns,
            part: p as u16,
            parts: parts as u16,
            workers: workers.iter().skip(p * SAMPLE_WORKERS).take(SAMPLE_WORKERS).copied().collect(),
            cpus: cpus.iter().skip(p * SAMPLE_CPUS).take(SAMPLE_CPUS).copied().collect(),
            system: (p == 0).then_some(system),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_split_into_bounded_frames() {
        let workers: Vec<WorkerSample> = (0..40).map(|id| WorkerSample { id, ..Default::default() }).collect();
        let cpus: Vec<CpuSample> = (0..20).map(|cpu| CpuSample { cpu, ..Default::default() }).collect();
        let system = SystemSample { scx: ScxState::Unsupported, scx_enable_seq: None, procs_running: None, cost_ns: 1 };
        let frames = split(3, 9, &workers, &cpus, system);
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|f| f.parts == 3 && f.seq == 3 && f.t_ns == 9));
        assert_eq!(frames.iter().map(|f| f.workers.len()).collect::<Vec<_>>(), [16, 16, 8]);
        assert_eq!(frames.iter().map(|f| f.cpus.len()).collect::<Vec<_>>(), [16, 4, 0]);
        assert_eq!(frames[2].workers[7].id, 39);
        assert!(frames[0].system.is_some() && frames[1].system.is_none());
        assert_eq!(split(0, 0, &[], &[], system).len(), 1);
    }

    #[test]
    fn costly_reads_keep_to_their_budget() {
        let period = 100_000_000;
        assert_eq!(every(200_000, period), 1);
        assert_eq!(every(1_000_000, period), 1);
        assert_eq!(every(1_300_000, period), 2);
        assert_eq!(every(5_000_000, period), 5);
        assert_eq!(every(30_000_000, period), 10);
        let mut b = Budget::new();
        b.record(3_000_000, period);
        assert!(b.due(0) && !b.due(1) && b.due(3));
        // A spike at most doubles the estimate; a cheap read brings it down at once.
        b.record(50_000_000, period);
        assert_eq!((b.cost_ns, b.every), (6_000_000, 6));
        b.record(500_000, period);
        assert_eq!(b.every, 1);
    }
}
