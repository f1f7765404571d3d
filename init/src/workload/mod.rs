//! The work types a worker process runs (one file each) and the per-unit bookkeeping they
//! share: every type calls [`Ctx::unit`] after each work unit, which publishes progress, CPU
//! and gaps in the worker's shared-memory slot and says when to stop.

mod affinity;
mod bursty;
mod cache;
mod fan_out;
mod fork;
mod futex_pair;
mod io_sync;
mod mixed;
mod nice;
mod pipe;
mod sequence;
mod spin;
mod timer;
mod yield_heavy;

use std::sync::atomic::Ordering::Relaxed;

use ktstr_shared::hist;
use ktstr_shared::scenario::WorkType;
use ktstr_shared::wire::CPU_MASK_WORDS;

use crate::shm::Slot;
use crate::sys;

pub use spin::spin;

/// Spin iterations of one unit of the spinning types (about 16 us on a current core): long
/// enough that the clock read and stores of [`Ctx::unit`] cost well under 1 %.
pub const SPIN_UNIT: u32 = 16 * 1024;

/// Runs `work` until the worker is asked to stop (or, in a sequence, its phase ends).
pub fn run(work: &WorkType, ctx: &mut Ctx) {
    match work {
        WorkType::CpuSpin => spin::run(ctx),
        WorkType::YieldHeavy => yield_heavy::run(ctx),
        WorkType::Mixed { sleep_us } => mixed::run(ctx, *sleep_us),
        WorkType::Bursty { burst_ms, sleep_ms } => bursty::run(ctx, *burst_ms, *sleep_ms),
        WorkType::PipePingPong { spin_iters } => pipe::run(ctx, *spin_iters),
        WorkType::FutexPingPong { spin_iters } => futex_pair::run(ctx, *spin_iters),
        WorkType::FutexFanOut { fan_out, spin_iters } => fan_out::run(ctx, *fan_out, *spin_iters),
        WorkType::CachePressure { size_kb } => cache::run(ctx, *size_kb),
        WorkType::ForkExit => fork::run(ctx),
        WorkType::AffinityChurn { spin_iters } => affinity::run(ctx, *spin_iters),
        WorkType::NiceSweep => nice::run(ctx),
        WorkType::Sequence { phases } => sequence::run(ctx, phases),
        WorkType::PeriodicTimer { period_us, spin_us } => timer::run(ctx, *period_us, *spin_us),
        WorkType::IoSync { block_kb, sleep_us } => io_sync::run(ctx, *block_kb, *sleep_us),
    }
}

/// A worker's view of its slot, its group and its progress.
pub struct Ctx<'a> {
    slot: &'a Slot,
    /// The slot of the group's first worker, whose sync words the group shares.
    pub group: &'a Slot,
    /// Index in the group (0 = the pair's opener, the fan-out's waker).
    pub role: u32,
    units: u64,
    last_ns: u64,
    cpu: u32,
    max_gap_ns: u64,
    used: [u64; CPU_MASK_WORDS],
    /// End of the current sequence phase (CLOCK_BOOTTIME), `u64::MAX` outside a sequence.
    phase_end_ns: u64,
}

impl<'a> Ctx<'a> {
    /// Starts the clock: the release counts as the first progress.
    pub fn new(slot: &'a Slot, group: &'a Slot, role: u32) -> Self {
        let now = sys::boottime_ns();
        let p = &slot.progress;
        p.released_ns.store(now, Relaxed);
        p.last_ns.store(now, Relaxed);
        let cpu = sys::current_cpu();
        p.cpu.store(cpu, Relaxed);
        Ctx {
            slot,
            group,
            role,
            units: 0,
            last_ns: now,
            cpu,
            max_gap_ns: 0,
            used: [0; CPU_MASK_WORDS],
            phase_end_ns: u64::MAX,
        }
    }

    /// Records one finished work unit; false when the worker should stop (asked to, or the
    /// current phase is over).
    #[inline]
    pub fn unit(&mut self) -> bool {
        let now = sys::boottime_ns();
        let cpu = sys::current_cpu();
        let p = &self.slot.progress;
        let gap = now.saturating_sub(self.last_ns);
        if gap > self.max_gap_ns {
            self.max_gap_ns = gap;
            p.max_gap_ns.store(gap, Relaxed);
            p.max_gap_at_ns.store(self.last_ns, Relaxed);
            p.max_gap_cpu.store(self.cpu, Relaxed);
        }
        if cpu != self.cpu {
            p.migrations.store(p.migrations.load(Relaxed) + 1, Relaxed);
            p.cpu.store(cpu, Relaxed);
            self.cpu = cpu;
        }
        self.mark_used(cpu);
        self.units += 1;
        self.last_ns = now;
        p.last_ns.store(now, Relaxed);
        p.units.store(self.units, Relaxed);
        !self.stop_requested() && now < self.phase_end_ns
    }

    fn mark_used(&mut self, cpu: u32) {
        let (word, bit) = (cpu as usize / 64, 1u64 << (cpu % 64));
        if let Some(w) = self.used.get_mut(word)
            && *w & bit == 0
        {
            *w |= bit;
            self.slot.progress.cpus_used[word].store(*w, Relaxed);
        }
    }

    /// For loops that block between units: stop now?
    pub fn done(&self) -> bool {
        self.stop_requested() || sys::boottime_ns() >= self.phase_end_ns
    }

    fn stop_requested(&self) -> bool {
        self.slot.control.stop.load(Relaxed) != 0
    }

    /// Adds one latency measurement to the histogram.
    pub fn latency(&self, ns: u64) {
        let cell = &self.slot.hist[hist::bucket(ns)];
        cell.store(cell.load(Relaxed) + 1, Relaxed);
    }

    /// Runs `work` until `end_ns` (CLOCK_BOOTTIME) or a stop; true if stopped.
    fn phase(&mut self, work: &WorkType, end_ns: u64) -> bool {
        self.phase_end_ns = end_ns;
        run(work, self);
        self.phase_end_ns = u64::MAX;
        self.stop_requested()
    }

    /// Records why the worker cannot go on and exits with status 1.
    pub fn fail(&self, msg: &str) -> ! {
        self.slot.set_error(msg);
        std::process::exit(1)
    }
}
