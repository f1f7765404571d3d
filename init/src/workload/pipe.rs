//! pipe_ping_pong: two workers pass an 8-byte timestamp back and forth over two pipes (the
//! init hands each its read end as fd 4 and its write end as fd 5). Latency: from the
//! partner's write to this side's return from `read` (pipe wake-up plus run delay).

use super::{Ctx, spin};
use crate::sys;

pub const READ_FD: i32 = 4;
pub const WRITE_FD: i32 = 5;

pub fn run(ctx: &mut Ctx, spin_iters: u32) {
    if ctx.role == 0 && !send(ctx) {
        return;
    }
    loop {
        let Some(stamp) = receive(ctx) else { return };
        ctx.latency(sys::boottime_ns().saturating_sub(stamp));
        spin(spin_iters);
        if !ctx.unit() || !send(ctx) {
            return;
        }
    }
}

fn send(ctx: &Ctx) -> bool {
    let stamp = sys::boottime_ns().to_ne_bytes();
    match sys::write_all(WRITE_FD, &stamp) {
        Ok(()) => true,
        // The partner is gone (it stopped first): stop too.
        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => false,
        Err(e) => ctx.fail(&format!("pipe_ping_pong: write to the partner: {e}")),
    }
}

/// The partner's timestamp; `None` when the worker should stop or the partner is gone.
fn receive(ctx: &Ctx) -> Option<u64> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the pointer and length stay within `buf`.
        let n = unsafe { libc::read(READ_FD, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            0 => return None,
            n if n > 0 => got += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    ctx.fail(&format!("pipe_ping_pong: read from the partner: {e}"));
                }
                if ctx.done() {
                    return None;
                }
            }
        }
    }
    Some(u64::from_ne_bytes(buf))
}
