//! bursty: a duty cycle of `burst_ms` spinning and `sleep_ms` asleep. Units come from the
//! bursts; the latency is how late each sleep ends (what a waking task waits for a CPU).

use super::{Ctx, spin};
use crate::sys;

const CHUNK: u32 = 4096;

pub fn run(ctx: &mut Ctx, burst_ms: u32, sleep_ms: u32) {
    loop {
        let burst_end = sys::monotonic_ns() + u64::from(burst_ms) * 1_000_000;
        while sys::monotonic_ns() < burst_end {
            spin(CHUNK);
            if !ctx.unit() {
                return;
            }
        }
        if sleep_ms == 0 {
            continue;
        }
        let deadline = sys::monotonic_ns() + u64::from(sleep_ms) * 1_000_000;
        match sys::sleep_until(deadline) {
            Some(late) => ctx.latency(late),
            None if ctx.done() => return,
            None => {}
        }
    }
}
