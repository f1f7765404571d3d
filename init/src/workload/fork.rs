//! fork_exit: fork a child that exits at once, reap it. Exercises fork, exit and the
//! wake-up of a new task; the unit rate is forks per second.

use super::Ctx;

pub fn run(ctx: &mut Ctx) {
    loop {
        // SAFETY: this worker is single-threaded; the child only calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: async-signal-safe, in the child.
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            ctx.fail(&format!("fork_exit: fork: {}", std::io::Error::last_os_error()));
        }
        if !reap(pid, ctx) || !ctx.unit() {
            return;
        }
    }
}

/// Waits for the child; false when interrupted by a stop (the child is reaped anyway by
/// whoever inherits it).
fn reap(pid: libc::pid_t, ctx: &Ctx) -> bool {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return true;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            ctx.fail(&format!("fork_exit: waitpid: {e}"));
        }
        if ctx.done() {
            return false;
        }
    }
}
