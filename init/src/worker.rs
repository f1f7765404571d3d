//! A worker process: the init re-executed as `ktstr-init --worker SLOT LEADER ROLE WORK` with
//! the shared memory as fd 3 (and, for pipe pairs, its pipe ends as fds 4 and 5). It waits
//! until the init has placed it (cgroup, policy, nice, affinity), runs its work type until
//! asked to stop, and exits. Everything it reports goes through its shared-memory slot.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Acquire;
use std::time::Duration;

use ktstr_shared::scenario::{WorkType, work_from_bytes};

use crate::shm::{Shm, Slot, futex_wait};
use crate::workload::{self, Ctx};

/// Where a worker finds the shared memory.
pub const SHM_FD: RawFd = 3;

/// What the init tells a worker on its command line.
#[derive(Debug, PartialEq)]
pub struct Args {
    pub slot: usize,
    /// Slot of the group's first worker (its own for single workers).
    pub leader: usize,
    pub role: u32,
    pub work: WorkType,
}

impl Args {
    /// The arguments after `--worker`.
    pub fn to_argv(&self) -> [String; 4] {
        let work = ktstr_shared::scenario::work_to_bytes(&self.work);
        let hex: String = work.iter().map(|b| format!("{b:02x}")).collect();
        [self.slot.to_string(), self.leader.to_string(), self.role.to_string(), hex]
    }

    pub fn parse(args: &[String]) -> Result<Args, String> {
        let [slot, leader, role, work] = args else {
            return Err(format!("--worker takes SLOT LEADER ROLE WORK, got {args:?}"));
        };
        let num = |s: &str| s.parse::<usize>().map_err(|_| format!("--worker: bad number {s:?}"));
        let bytes = unhex(work).ok_or("--worker: WORK is not hex")?;
        let work = work_from_bytes(&bytes).ok_or("--worker: WORK is not a postcard WorkType")?;
        Ok(Args { slot: num(slot)?, leader: num(leader)?, role: num(role)? as u32, work })
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The worker process; never returns.
pub fn main(args: &[String]) -> ! {
    let args = Args::parse(args).unwrap_or_else(|e| {
        eprintln!("ktstr-init: {e}");
        std::process::exit(2)
    });
    name_self(args.slot);
    // SAFETY: the init passes the memfd as this fd; nothing else owns it.
    let shm = Shm::attach(unsafe { OwnedFd::from_raw_fd(SHM_FD) }).unwrap_or_else(|e| {
        eprintln!("ktstr-init: worker {}: cannot map the shared memory: {e}", args.slot);
        std::process::exit(2)
    });
    if args.slot >= shm.len() || args.leader >= shm.len() {
        eprintln!("ktstr-init: worker slot {} or leader {} beyond {}", args.slot, args.leader, shm.len());
        std::process::exit(2);
    }
    install_wake_handler();
    let slot = shm.slot(args.slot);
    if wait_for_go(slot) {
        let mut ctx = Ctx::new(slot, shm.slot(args.leader), args.role);
        workload::run(&args.work, &mut ctx);
    }
    std::process::exit(0)
}

/// Blocks until released; false if told to stop first.
fn wait_for_go(slot: &Slot) -> bool {
    while slot.control.go.load(Acquire) == 0 {
        if slot.control.stop.load(Acquire) != 0 {
            return false;
        }
        futex_wait(&slot.control.go, 0, Some(Duration::from_millis(100)));
    }
    slot.control.stop.load(Acquire) == 0
}

/// `ktstr-w<slot>` in ps, /proc/<pid>/comm and scheduler dumps.
fn name_self(slot: usize) {
    let name = format!("ktstr-w{slot}\0");
    // SAFETY: a NUL-terminated name; the kernel copies at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

extern "C" fn on_wake(_: libc::c_int) {}

/// SIGUSR1 interrupts blocking calls (no SA_RESTART): the init's way to make a worker
/// blocked in a read, futex or sleep notice its stop flag.
fn install_wake_handler() {
    // SAFETY: all-zero is a valid sigaction; the handler is async-signal-safe (does nothing).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wake as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        for work in WorkType::catalog() {
            let args = Args { slot: 7, leader: 6, role: 1, work };
            let argv = args.to_argv();
            assert_eq!(Args::parse(&argv).unwrap(), args);
        }
        assert!(Args::parse(&["1".into()]).is_err());
        assert!(Args::parse(&["1".into(), "1".into(), "0".into(), "zz".into()]).unwrap_err().contains("hex"));
        assert!(Args::parse(&["1".into(), "1".into(), "0".into(), "ff".into()]).unwrap_err().contains("postcard"));
    }
}
