//! periodic_timer: cyclictest's loop. Sleeps to absolute CLOCK_MONOTONIC deadlines
//! `period_us` apart and records how late each wake-up is; optionally spins `spin_us` after
//! each to add load. Deadlines missed entirely (overruns) are skipped, not queued up.

use super::Ctx;
use super::spin::spin_for;
use crate::sys;

pub fn run(ctx: &mut Ctx, period_us: u32, spin_us: u32) {
    let period = u64::from(period_us) * 1000;
    let mut deadline = sys::monotonic_ns() + period;
    loop {
        match sys::sleep_until(deadline) {
            Some(late) => ctx.latency(late),
            None if ctx.done() => return,
            None => continue,
        }
        if spin_us > 0 {
            spin_for(u64::from(spin_us) * 1000);
        }
        if !ctx.unit() {
            return;
        }
        deadline = next_deadline(deadline, period, sys::monotonic_ns());
    }
}

/// The first deadline after `now` on the grid `deadline + k * period`.
fn next_deadline(deadline: u64, period: u64, now: u64) -> u64 {
    let next = deadline + period;
    if next > now { next } else { next + ((now - next) / period + 1) * period }
}

#[cfg(test)]
mod tests {
    #[test]
    fn overruns_skip_to_the_next_future_deadline() {
        assert_eq!(super::next_deadline(1000, 100, 1050), 1100);
        assert_eq!(super::next_deadline(1000, 100, 1100), 1200);
        assert_eq!(super::next_deadline(1000, 100, 1375), 1400);
    }
}
