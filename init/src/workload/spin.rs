//! cpu_spin: pure CPU work. Its unit rate is the CPU share the scheduler gives the worker.

use super::{Ctx, SPIN_UNIT};
use crate::sys;

pub fn run(ctx: &mut Ctx) {
    loop {
        spin(SPIN_UNIT);
        if !ctx.unit() {
            return;
        }
    }
}

/// `iters` steps of a dependent xorshift chain: about one ns each, not vectorisable, and the
/// result is kept so the loop is not optimised away.
#[inline(never)]
pub fn spin(iters: u32) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

/// Spins until `ns` of CLOCK_MONOTONIC have passed.
pub fn spin_for(ns: u64) {
    let end = sys::monotonic_ns() + ns;
    while sys::monotonic_ns() < end {
        spin(256);
    }
}
