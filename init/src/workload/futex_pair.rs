//! futex_ping_pong: two workers take turns through a futex word in the group's slot. Latency:
//! from the partner handing over the turn to this side running.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::Duration;

use super::{Ctx, spin};
use crate::shm::{futex_wait, futex_wake};
use crate::sys;

/// Waits are bounded so that a stop is seen even if its wake-up signal is missed.
const WAIT: Duration = Duration::from_millis(100);

pub fn run(ctx: &mut Ctx, spin_iters: u32) {
    let group = ctx.group;
    let turn = &group.sync.words[0];
    let mut first = ctx.role == 0;
    loop {
        loop {
            let t = turn.load(Acquire);
            if t == ctx.role {
                break;
            }
            if ctx.done() {
                return;
            }
            futex_wait(turn, t, Some(WAIT));
        }
        if !std::mem::take(&mut first) {
            ctx.latency(sys::boottime_ns().saturating_sub(group.sync.stamp_ns.load(Relaxed)));
            if !ctx.unit() {
                return;
            }
        }
        spin(spin_iters);
        group.sync.stamp_ns.store(sys::boottime_ns(), Relaxed);
        turn.store(1 - ctx.role, Release);
        futex_wake(turn, 1);
    }
}
