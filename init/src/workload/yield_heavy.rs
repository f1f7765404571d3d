//! yield_heavy: a little work, then `sched_yield()`. The unit rate is the yield path's.

use super::{Ctx, spin};

pub fn run(ctx: &mut Ctx) {
    loop {
        spin(64);
        // SAFETY: no arguments.
        unsafe { libc::sched_yield() };
        if !ctx.unit() {
            return;
        }
    }
}
