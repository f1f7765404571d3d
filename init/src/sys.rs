//! Thin wrappers over the few system calls the init needs.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::time::Duration;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// `CLOCK_BOOTTIME` in ns: time since the kernel started, the clock of every wire timestamp.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length come from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        match n {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n if n > 0 => bytes = &bytes[n as usize..],
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// `read(2)`, retried on EINTR.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length come from a live mutable slice.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Empties a non-blocking fd (eventfd, signalfd).
pub fn drain(fd: RawFd) {
    let mut buf = [0u8; 256];
    while matches!(read(fd, &mut buf), Ok(n) if n > 0) {}
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| uname_release())
}

fn uname_release() -> String {
    // SAFETY: `utsname` is plain bytes; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid out pointer.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = uts.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn nr_cpus() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).unwrap_or(0)
}

fn sigchld_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set before sigaddset and assume_init read it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGCHLD);
        set.assume_init()
    }
}

/// Blocks SIGCHLD in this thread and every thread spawned after, so child exits reach only the
/// signalfd of [`sigchld_fd`]. Commands start with an empty mask (std resets it in the child).
pub fn block_sigchld() -> io::Result<()> {
    let set = sigchld_set();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut()) };
    if ret != 0 { Err(io::Error::from_raw_os_error(ret)) } else { Ok(()) }
}

/// A non-blocking signalfd that becomes readable when a child (or an orphan, as PID 1) exits.
pub fn sigchld_fd() -> io::Result<OwnedFd> {
    let set = sigchld_set();
    // SAFETY: `set` is initialised; the returned fd is owned below.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn eventfd_signal(fd: RawFd) {
    // A full counter still leaves the fd readable, so a failed write needs no handling.
    let _ = write_all(fd, &1u64.to_ne_bytes());
}

pub fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

/// `poll(2)` for at most `timeout` (rounded up to whole ms so it never spins); EINTR is a wake-up.
pub fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: the pointer and length come from a live mutable slice.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    match cvt(ret) {
        Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
        _ => Ok(()),
    }
}

/// SIGKILL to a whole process group; a group that is already gone is fine.
pub fn kill_group(pgid: libc::pid_t) {
    if pgid > 1 {
        // SAFETY: plain syscall.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// The one child whose wait status is kept for its owner whoever reaps it (the scheduler
/// under test: the scenario and exec loops reap every child with `waitpid(-1)`).
static WATCHED_PID: AtomicI32 = AtomicI32::new(0);
/// Its wait status once reaped; [`NOT_REAPED`] until then.
static WATCHED_STATUS: AtomicI64 = AtomicI64::new(NOT_REAPED);
const NOT_REAPED: i64 = i64::MIN;

/// Keeps `pid`'s wait status for [`watched_status`] (replaces any earlier watch).
pub fn watch_child(pid: libc::pid_t) {
    WATCHED_STATUS.store(NOT_REAPED, Ordering::SeqCst);
    WATCHED_PID.store(pid, Ordering::SeqCst);
}

/// The watched child's wait status, reaping it here if nobody has yet.
pub fn watched_status() -> Option<libc::c_int> {
    let pid = WATCHED_PID.load(Ordering::SeqCst);
    if pid > 0 {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            WATCHED_STATUS.store(status.into(), Ordering::SeqCst);
        }
    }
    let status = WATCHED_STATUS.load(Ordering::SeqCst);
    (status != NOT_REAPED).then_some(status as libc::c_int)
}

/// Reaps one exited child without blocking: `(pid, wait status)`.
pub fn reap_one() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid > 0 && pid == WATCHED_PID.load(Ordering::SeqCst) {
        WATCHED_STATUS.store(status.into(), Ordering::SeqCst);
    }
    (pid > 0).then_some((pid, status))
}

/// "exit status N" or "killed by signal N" for a wait status.
pub fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let core = if libc::WCOREDUMP(status) { ", core dumped" } else { "" };
        format!("killed by signal {sig} ({}{core})", signal_name(sig))
    } else {
        format!("wait status {status:#x}")
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

pub fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))
}

/// `CLOCK_MONOTONIC` in ns: the clock of sleeps and deadlines.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps to an absolute `CLOCK_MONOTONIC` time. `Some(ns late)` when it woke for the
/// deadline, `None` when a signal interrupted it first.
pub fn sleep_until(deadline_ns: u64) -> Option<u64> {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is valid; a null remainder is allowed with TIMER_ABSTIME.
    let ret = unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, ptr::null_mut()) };
    (ret == 0).then(|| monotonic_ns().saturating_sub(deadline_ns))
}

/// The CPU this thread runs on (from rseq or the vDSO: no system call on current kernels).
pub fn current_cpu() -> u32 {
    // SAFETY: no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).unwrap_or(0)
}

/// CPUs of the affinity mask of `pid` (0 = this thread).
pub fn get_affinity(pid: libc::pid_t) -> io::Result<Vec<u32>> {
    // SAFETY: all-zero is an empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out pointer of the given size.
    cvt(unsafe { libc::sched_getaffinity(pid, size_of::<libc::cpu_set_t>(), &mut set) })?;
    let max = (size_of::<libc::cpu_set_t>() * 8) as u32;
    // SAFETY: CPU_ISSET reads the set within its size.
    Ok((0..max).filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &set) }).collect())
}

/// Sets the affinity mask of `pid` (0 = this thread) to `cpus`.
pub fn set_affinity(pid: libc::pid_t, cpus: &[u32]) -> io::Result<()> {
    // SAFETY: all-zero is an empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = size_of::<libc::cpu_set_t>() * 8;
    for &c in cpus {
        if c as usize >= max {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("CPU {c} is beyond {}", max - 1)));
        }
        // SAFETY: `c` is within the set (checked above).
        unsafe { libc::CPU_SET(c as usize, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the given size.
    cvt(unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) }).map(drop)
}

/// Number of possible CPUs (all CPU numbers are below it).
pub fn possible_cpus() -> u32 {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let last = list.trim().rsplit(['-', ',']).next().and_then(|n| n.parse::<u32>().ok());
    last.map_or_else(nr_cpus, |n| n + 1).max(1)
}

/// `sched_setscheduler(pid, policy, priority)`.
pub fn set_scheduler(pid: libc::pid_t, policy: libc::c_int, priority: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `param` is a valid sched_param.
    cvt(unsafe { libc::sched_setscheduler(pid, policy, &param) }).map(drop)
}

/// `setpriority(PRIO_PROCESS, pid, nice)`.
pub fn set_nice(pid: libc::pid_t, nice: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) }).map(drop)
}

/// Sends `sig` to `pid`; a process already gone is fine.
pub fn signal(pid: libc::pid_t, sig: libc::c_int) {
    if pid > 1 {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, sig) };
    }
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// CPU time this thread has used, ns: what a piece of the init's own work costs.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
