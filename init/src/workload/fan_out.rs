//! futex_fan_out: one waker (role 0) and `fan_out` waiters. The waker spins, then bumps a
//! generation futex and wakes everyone, and waits until every waiter has run. Latency
//! (waiters): from the broadcast to running, the cost of waking many tasks at once.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::Duration;

use super::{Ctx, spin};
use crate::shm::{futex_wait, futex_wake};
use crate::sys;

const WAIT: Duration = Duration::from_millis(100);

pub fn run(ctx: &mut Ctx, fan_out: u32, spin_iters: u32) {
    if ctx.role == 0 { waker(ctx, fan_out, spin_iters) } else { waiter(ctx, fan_out) }
}

fn waker(ctx: &mut Ctx, fan_out: u32, spin_iters: u32) {
    let sync = &ctx.group.sync;
    let (generation, acks) = (&sync.words[0], &sync.words[1]);
    loop {
        spin(spin_iters);
        acks.store(0, Relaxed);
        sync.stamp_ns.store(sys::boottime_ns(), Relaxed);
        generation.fetch_add(1, Release);
        futex_wake(generation, i32::MAX);
        if !ctx.unit() {
            return;
        }
        loop {
            let a = acks.load(Acquire);
            if a >= fan_out {
                break;
            }
            if ctx.done() {
                return;
            }
            futex_wait(acks, a, Some(WAIT));
        }
    }
}

fn waiter(ctx: &mut Ctx, fan_out: u32) {
    let sync = &ctx.group.sync;
    let (generation, acks) = (&sync.words[0], &sync.words[1]);
    // The waker waits for every ack before the next broadcast: a waiter is never more than
    // one generation behind, and it starts at generation 0.
    let mut seen = 0;
    loop {
        let g = loop {
            let g = generation.load(Acquire);
            if g != seen {
                break g;
            }
            if ctx.done() {
                return;
            }
            futex_wait(generation, g, Some(WAIT));
        };
        seen = g;
        ctx.latency(sys::boottime_ns().saturating_sub(sync.stamp_ns.load(Relaxed)));
        if acks.fetch_add(1, Release) + 1 == fan_out {
            futex_wake(acks, 1);
        }
        if !ctx.unit() {
            return;
        }
    }
}
