//! mixed: spin, yield, and every 8th unit a short sleep whose oversleep is the latency.

use super::{Ctx, spin};
use crate::sys;

const SPIN: u32 = 4096;
const SLEEP_EVERY: u64 = 8;

pub fn run(ctx: &mut Ctx, sleep_us: u32) {
    let mut n = 0u64;
    loop {
        spin(SPIN);
        // SAFETY: no arguments.
        unsafe { libc::sched_yield() };
        n += 1;
        if sleep_us > 0 && n.is_multiple_of(SLEEP_EVERY) {
            let deadline = sys::monotonic_ns() + u64::from(sleep_us) * 1000;
            match sys::sleep_until(deadline) {
                Some(late) => ctx.latency(late),
                None if ctx.done() => return,
                None => {}
            }
        }
        if !ctx.unit() {
            return;
        }
    }
}
