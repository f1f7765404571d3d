//! nice_sweep: spins while walking its nice value up and down -20..19, so its weight keeps
//! changing under the scheduler. Values it may not take (no CAP_SYS_NICE) are skipped.

use super::{Ctx, SPIN_UNIT, spin};

const UNITS_PER_STEP: u64 = 16;

pub fn run(ctx: &mut Ctx) {
    // -20..=19 then back down: a triangle wave.
    let sweep: Vec<i32> = (-20..=19).chain((-19..=18).rev()).collect();
    let mut n = 0u64;
    for &nice in sweep.iter().cycle() {
        // SAFETY: plain syscall on this process.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
            continue;
        }
        loop {
            spin(SPIN_UNIT);
            n += 1;
            if !ctx.unit() {
                return;
            }
            if n.is_multiple_of(UNITS_PER_STEP) {
                break;
            }
        }
    }
}
