//! io_sync: `pwrite` of a block to a file in /tmp, `fsync`, a short sleep; again. On tmpfs the
//! fsync is cheap, so this is a syscall-heavy task that blocks briefly and often. Latency:
//! the write plus fsync.

use std::ffi::CString;

use super::Ctx;
use crate::sys;

pub fn run(ctx: &mut Ctx, block_kb: u32, sleep_us: u32) {
    let path = format!("/tmp/ktstr-io-{}", std::process::id());
    let fd = open_unlinked(&path).unwrap_or_else(|e| ctx.fail(&format!("io_sync: open {path}: {e}")));
    let block = vec![0x5au8; block_kb as usize * 1024];
    loop {
        let start = sys::monotonic_ns();
        // SAFETY: the pointer and length come from `block`; `fd` is ours.
        let n = unsafe { libc::pwrite(fd, block.as_ptr().cast(), block.len(), 0) };
        // SAFETY: plain syscall on our fd.
        if n < 0 || unsafe { libc::fsync(fd) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                ctx.fail(&format!("io_sync: write+fsync {path} ({block_kb} KiB): {e}"));
            }
        } else {
            ctx.latency(sys::monotonic_ns() - start);
        }
        if sleep_us > 0 && sys::sleep_until(sys::monotonic_ns() + u64::from(sleep_us) * 1000).is_none() && ctx.done() {
            return;
        }
        if !ctx.unit() {
            return;
        }
    }
}

/// Opens a fresh file and unlinks it at once: nothing to clean up, even after SIGKILL.
fn open_unlinked(path: &str) -> std::io::Result<libc::c_int> {
    let c = CString::new(path)?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    unsafe { libc::unlink(c.as_ptr()) };
    Ok(fd)
}
