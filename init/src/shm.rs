//! The memory the init shares with its worker processes: one [`Slot`] per worker in a memfd
//! mapped by both. Workers publish progress with plain atomic stores, so the sampler reads it
//! without a system call per work unit; group workers synchronise through futex words in it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ktstr_shared::hist;
use ktstr_shared::wire::CPU_MASK_WORDS;

/// Longest worker error message kept.
pub const ERROR_LEN: usize = 240;

/// Parent -> worker.
#[repr(C, align(64))]
pub struct Control {
    /// Futex: 0 until the worker is placed (cgroup, policy, affinity), then 1.
    pub go: AtomicU32,
    /// Non-zero: finish the current unit and exit.
    pub stop: AtomicU32,
}

/// Worker -> parent, updated at every work unit.
#[repr(C, align(64))]
pub struct Progress {
    pub units: AtomicU64,
    /// CLOCK_BOOTTIME of the last unit (of the release before the first).
    pub last_ns: AtomicU64,
    pub released_ns: AtomicU64,
    pub cpu: AtomicU32,
    pub max_gap_cpu: AtomicU32,
    pub max_gap_ns: AtomicU64,
    pub max_gap_at_ns: AtomicU64,
    /// CPU changes between consecutive units.
    pub migrations: AtomicU64,
    pub cpus_used: [AtomicU64; CPU_MASK_WORDS],
}

/// Words a group of workers (pair, fan-out) shares; the group uses its first worker's slot.
#[repr(C, align(64))]
pub struct Sync {
    pub words: [AtomicU32; 4],
    pub stamp_ns: AtomicU64,
}

/// Why a worker gave up, written once before it exits.
#[repr(C, align(64))]
pub struct ErrorText {
    pub len: AtomicU32,
    pub bytes: [AtomicU8; ERROR_LEN],
}

#[repr(C)]
pub struct Slot {
    pub control: Control,
    pub progress: Progress,
    pub sync: Sync,
    pub error: ErrorText,
    /// Latency histogram ([`hist`] buckets), written by the worker only.
    pub hist: [AtomicU64; hist::BUCKETS],
}

/// A mapping of `len` slots.
pub struct Shm {
    fd: OwnedFd,
    base: NonNull<Slot>,
    len: usize,
}

// SAFETY: the mapping holds only atomics; `Shm` owns it until drop.
unsafe impl Send for Shm {}
// SAFETY: as above; shared access goes through atomics.
unsafe impl std::marker::Sync for Shm {}

impl Shm {
    /// A new zeroed memfd of `len` slots, mapped (close-on-exec: workers get it as an
    /// explicitly passed fd).
    pub fn create(len: usize) -> io::Result<Shm> {
        // SAFETY: a constant NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"ktstr-workers".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let bytes = (len.max(1) * size_of::<Slot>()) as libc::off_t;
        // SAFETY: plain syscall on our fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), bytes) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd, len.max(1))
    }

    /// Maps an inherited memfd (the worker side); its size gives the slot count.
    pub fn attach(fd: OwnedFd) -> io::Result<Shm> {
        // SAFETY: `st` is a valid out pointer; all-zero is a valid `stat`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let len = st.st_size as usize / size_of::<Slot>();
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared memory holds no slot"));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Shm> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a new shared mapping of our own fd; the kernel picks the address.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len * size_of::<Slot>(), prot, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Page-aligned, so every slot is aligned (the slot size is a multiple of its alignment).
        let base = NonNull::new(p.cast::<Slot>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Shm { fd, base, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Slot `i`; panics when out of range (an init bug, not input).
    pub fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.len, "slot {i} of {}", self.len);
        // SAFETY: in range of the live mapping; zeroed memory is a valid `Slot` (all atomics).
        unsafe { &*self.base.as_ptr().add(i) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len * size_of::<Slot>()) };
    }
}

impl Slot {
    /// Records why the worker gives up (cut to [`ERROR_LEN`] bytes).
    pub fn set_error(&self, msg: &str) {
        let bytes = &msg.as_bytes()[..msg.len().min(ERROR_LEN)];
        for (cell, &b) in self.error.bytes.iter().zip(bytes) {
            cell.store(b, Relaxed);
        }
        self.error.len.store(bytes.len() as u32, std::sync::atomic::Ordering::Release);
    }

    pub fn error(&self) -> Option<String> {
        let len = (self.error.len.load(std::sync::atomic::Ordering::Acquire) as usize).min(ERROR_LEN);
        let bytes: Vec<u8> = self.error.bytes[..len].iter().map(|b| b.load(Relaxed)).collect();
        (len > 0).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    pub fn histogram(&self) -> Vec<u64> {
        self.hist.iter().map(|c| c.load(Relaxed)).collect()
    }
}

/// Waits while `*word == val`, at most `timeout`; spurious and signal wake-ups return early.
pub fn futex_wait(word: &AtomicU32, val: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live aligned u32 (shared: no FUTEX_PRIVATE_FLAG); `tsp` is null or
    // points at `ts`, alive for the call.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, val, tsp) };
}

/// Wakes up to `n` waiters of `word`.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a live aligned u32.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n) };
}
