//! sequence: runs each phase's work type for the phase's duration, round and round.

use ktstr_shared::scenario::Phase;

use super::Ctx;
use crate::sys;

pub fn run(ctx: &mut Ctx, phases: &[Phase]) {
    loop {
        for phase in phases {
            let end = sys::boottime_ns() + u64::from(phase.duration_ms) * 1_000_000;
            if ctx.phase(&phase.work, end) {
                return;
            }
        }
    }
}
