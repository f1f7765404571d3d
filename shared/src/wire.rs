//! The guest <-> host protocol.
//!
//! One frame on the wire is `COBS(postcard(msg) ++ crc32_le(postcard(msg))) ++ 0x00`.
//! Every message type has a fixed upper size (heapless strings and vecs), so a frame is at most
//! [`MAX_FRAME`] bytes and the decoder never allocates. The decoder treats its input as untrusted:
//! garbage, truncation, bit flips and overlong runs are dropped and counted, never a panic, and
//! decoding resumes at the next `0x00` delimiter.
//!
//! Compatibility: postcard encodes an enum variant by its index and a struct by field order.
//! New message variants and new struct fields go at the END, and bumping [`PROTOCOL_VERSION`]
//! is required for anything else. `GuestMsg::Hello` stays variant 0 with `version` first, so a
//! host can always read the guest's version even when the rest no longer decodes.
//!
//! All guest timestamps (`*_ns`) are `CLOCK_BOOTTIME` nanoseconds in the guest.

use core::fmt;
use core::marker::PhantomData;

use crc::{CRC_32_ISO_HDLC, Crc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bumped on any change that is not an append of a variant or trailing field.
/// v2: scenario telemetry (`Sample`, `WorkerReport` reshaped; `Scenario` events added).
/// v3: scheduler lifecycle (`SchedEventKind` meanings, `Outcome::SchedulerFailed`).
/// v4: command output is streamed whole; `StreamStats` says what an output limit dropped from
/// the head of a stream (the tail is kept) and what was left unread.
pub const PROTOCOL_VERSION: u16 = 4;
/// Largest frame on the wire, delimiter included.
pub const MAX_FRAME: usize = 4096;
/// Largest postcard encoding of one message.
pub const MAX_PAYLOAD: usize = 4000;
/// Bytes of the CRC32 trailer (little endian) after the postcard bytes.
pub const CRC_LEN: usize = 4;
/// Largest text field (UTF-8 bytes) in a message.
pub const MAX_TEXT: usize = 1024;
/// Largest piece of command output in one [`GuestMsg::ExecOutput`].
pub const MAX_CHUNK: usize = 1024;
/// Most CPUs a guest may have: CPU numbers on the wire are below it.
pub const MAX_CPUS: usize = 512;
/// Longest kernel release string (`utsname.release` holds 64 bytes plus NUL).
pub const MAX_RELEASE: usize = 64;
/// Most workers in one [`Sample`] frame; a tick with more is split into several frames.
pub const SAMPLE_WORKERS: usize = 16;
/// Most CPUs in one [`Sample`] frame; a tick with more is split into several frames.
pub const SAMPLE_CPUS: usize = 16;
/// 64-bit words of a [`CpuMask`].
pub const CPU_MASK_WORDS: usize = MAX_CPUS / 64;

// The largest payload must still fit one frame after COBS overhead and the delimiter.
const _: () = assert!(cobs::max_encoding_length(MAX_PAYLOAD + CRC_LEN) < MAX_FRAME);

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Bounded UTF-8 text; build one with [`text`].
pub type Text = heapless::String<MAX_TEXT>;
/// Bounded command output bytes; build one with [`chunk`].
pub type Chunk = heapless::Vec<u8, MAX_CHUNK>;
/// A set of CPUs: bit `c % 64` of word `c / 64` is CPU `c`; trailing zero words are omitted.
pub type CpuMask = heapless::Vec<u64, CPU_MASK_WORDS>;
/// Counts per bucket of [`crate::hist`]; empty where nothing was measured.
pub type Histogram = heapless::Vec<u64, { crate::hist::BUCKETS }>;

/// Guest -> host. New variants go at the end (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant, reason = "inline bounded sizes are the point: decoding never allocates")]
pub enum GuestMsg {
    /// First message of every run.
    Hello(Hello),
    /// A line from the init itself.
    Log { t_ns: u64, level: LogLevel, text: Text },
    /// Periodic scenario telemetry (one tick may span several frames).
    Sample(Sample),
    /// One worker's totals at the end of a scenario run.
    WorkerReport(WorkerReport),
    /// Something the scheduler did (started, attached, exited, ...).
    SchedulerEvent { t_ns: u64, kind: SchedEventKind, text: Text },
    /// A piece of the exec'd command's output, in order per stream (see [`output_chunks`]).
    /// Without an output limit it is sent as the command writes it; with one, the kept tail
    /// is sent once the command has ended.
    ExecOutput { stream: Stream, data: Chunk },
    /// How the plan ended; sent once, before [`GuestMsg::Bye`].
    Result(RunResult),
    /// The init failed (Rust panic, missing or bad plan, watchdog). Terminal.
    Panic { text: Text },
    /// Last message; the guest powers off next.
    Bye { exit_code: i32 },
    /// Answer to [`HostMsg::Ping`].
    Pong { seq: u32 },
    /// A milestone of a scenario run (start, steps, early worker exits, end).
    Scenario(ScenarioEvent),
    /// The guest kernel's view of one CPU's place (one message per online CPU, after Hello).
    Topology(CpuTopo),
}

/// Sched domain levels reported per CPU (SMT, CLS, MC, PKG, NUMA...).
pub const MAX_DOMAINS: usize = 8;
pub type DomainName = heapless::String<16>;
pub type Domains = heapless::Vec<DomainName, MAX_DOMAINS>;

/// What the guest kernel says about one CPU (sysfs and the sched debugfs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopo {
    pub cpu: u32,
    /// NUMA node, or [`CpuTopo::UNKNOWN`] (kernel without NUMA).
    pub node: u32,
    /// topology/physical_package_id.
    pub package: u32,
    /// topology/die_id.
    pub die: u32,
    /// topology/core_id.
    pub core: u32,
    /// shared_cpu_list of the highest cache index (the LLC); empty when the kernel has none.
    pub llc: CpuMask,
    /// topology/thread_siblings_list.
    pub siblings: CpuMask,
    /// Sched domain names from the lowest level up (empty without debugfs).
    pub domains: Domains,
}

impl CpuTopo {
    pub const UNKNOWN: u32 = u32::MAX;
}

/// Host -> guest. New variants go at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Lets a plan with `wait_for_start` begin.
    Start,
    /// Stop the plan now: the exec'd command is killed and the run ends as [`Outcome::Stopped`].
    Stop,
    /// Liveness check; the guest answers [`GuestMsg::Pong`] with the same `seq`.
    Ping { seq: u32 },
}

/// Identity and boot-phase times of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender. Must stay the first field.
    pub version: u16,
    pub kernel_release: heapless::String<MAX_RELEASE>,
    pub nr_cpus: u32,
    /// True when the init runs as a normal process on the host (`--host-mode`), not as PID 1.
    pub host_mode: bool,
    /// When the init's `main` started: the kernel's share of boot time.
    pub init_start_ns: u64,
    /// When the init finished its mounts (equal to `init_start_ns` in host mode).
    pub mounts_done_ns: u64,
    /// When this message was built.
    pub hello_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// One sampling tick of a scenario run, or a part of one.
///
/// A tick describes every live worker and every CPU. One frame holds at most [`SAMPLE_WORKERS`]
/// workers and [`SAMPLE_CPUS`] CPUs, so a tick with W workers and C CPUs takes
/// `max(1, ceil(W / SAMPLE_WORKERS), ceil(C / SAMPLE_CPUS))` frames, numbered by `part`. Per-CPU
/// counters are deltas since the previous tick (the first tick: since the run started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Tick number from 0; every part of one tick has the same `seq` and `t_ns`.
    pub seq: u32,
    pub t_ns: u64,
    pub part: u16,
    pub parts: u16,
    pub workers: heapless::Vec<WorkerSample, SAMPLE_WORKERS>,
    pub cpus: heapless::Vec<CpuSample, SAMPLE_CPUS>,
    /// System-wide state; in part 0 only.
    pub system: Option<SystemSample>,
}

/// One worker at one tick. Counters are totals since the worker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSample {
    /// Worker id: its index in `Scenario::workers()` order.
    pub id: u32,
    /// The cgroup it is in now: an index in `Scenario::cgroup_defs()` order.
    pub cgroup: u16,
    /// Work units done (what a unit is depends on the work type).
    pub units: u64,
    /// `/proc/<pid>/schedstat`: time on CPU, time runnable but waiting, timeslices run.
    pub cpu_time_ns: u64,
    pub run_delay_ns: u64,
    pub timeslices: u64,
    /// Context switches (`/proc/<pid>/sched` or `/proc/<pid>/status`). These and `migrations`
    /// come from a costly read the init may skip on some ticks to keep its overhead within
    /// 1 % of the period (then they repeat the last values read, at least once a second).
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// `se.nr_migrations` of `/proc/<pid>/sched`; `None` where the kernel has no such file.
    pub migrations: Option<u64>,
    /// The CPU of the worker's last work unit.
    pub last_cpu: u32,
    /// When it last completed a work unit (its release time before the first one). The host
    /// sees a stall in progress as `t_ns - last_progress_ns`.
    pub last_progress_ns: u64,
    /// Longest time between two consecutive work units so far (release counts as one), when
    /// that gap began, and the CPU the worker was on when it began.
    pub max_gap_ns: u64,
    pub max_gap_at_ns: u64,
    pub max_gap_cpu: u32,
}

/// One CPU at one tick: `/proc/schedstat` deltas since the previous tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSample {
    pub cpu: u32,
    /// Tasks on the run queue now (`/sys/kernel/debug/sched/debug`); `None` where unreadable,
    /// and on ticks the init skips to keep that costly read within 1 % of the period.
    pub nr_running: Option<u32>,
    /// Calls of `schedule()`, and those that left the CPU idle. This and the wake-up counts
    /// need `kernel.sched_schedstats` (the init turns it on in a guest; 0 otherwise).
    pub sched_count: u64,
    pub sched_goidle: u64,
    /// Wake-ups done on this CPU, and those of tasks that last ran here.
    pub ttwu_count: u64,
    pub ttwu_local: u64,
    /// Time tasks ran here, time they waited runnable here, timeslices run here.
    pub run_ns: u64,
    pub run_delay_ns: u64,
    pub timeslices: u64,
}

/// System-wide state at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemSample {
    /// `/sys/kernel/sched_ext/state`.
    pub scx: ScxState,
    /// `/sys/kernel/sched_ext/enable_seq`: it grows each time a BPF scheduler is loaded.
    pub scx_enable_seq: Option<u64>,
    /// `procs_running` of `/proc/stat`: runnable tasks on all CPUs.
    pub procs_running: Option<u32>,
    /// CPU time the init spent reading this tick: the sampler's own cost.
    pub cost_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScxState {
    /// No `/sys/kernel/sched_ext` (kernel without sched_ext).
    Unsupported,
    Disabled,
    Enabling,
    Enabled,
    Disabling,
    /// A state this init does not know.
    Other,
}

/// One worker's totals, sent for every worker after the run (also those that ended early).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub id: u32,
    /// The cgroup it was in at the end (index as in [`WorkerSample::cgroup`]).
    pub cgroup: u16,
    pub work_units: u64,
    pub cpu_time_ns: u64,
    /// From release to the final reading.
    pub wall_ns: u64,
    pub run_delay_ns: u64,
    pub timeslices: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// Migrations counted by the kernel (`None` without `/proc/<pid>/sched`).
    pub migrations: Option<u64>,
    /// CPU changes the worker itself saw between consecutive work units.
    pub observed_migrations: u64,
    /// Every CPU a work unit completed on.
    pub cpus_used: CpuMask,
    /// As in [`WorkerSample`], including a gap still open at the end.
    pub max_gap_ns: u64,
    pub max_gap_at_ns: u64,
    pub max_gap_cpu: u32,
    /// Latencies the work type measures (see `WorkType`), in [`crate::hist`] buckets.
    pub latency: Histogram,
    pub end: WorkerEnd,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerEnd {
    /// Ran to the end of the run and exited when asked.
    Stopped,
    /// Ran to the end but did not exit within the grace period: killed.
    Killed,
    /// Killed when a step removed its cgroup.
    Removed,
    /// Exited on its own before the end (a worker error is logged).
    Exited { code: i32 },
    /// Killed by a signal before the end.
    Signaled { signal: i32 },
}

/// A milestone of a scenario run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioEvent {
    pub t_ns: u64,
    pub kind: ScenarioEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScenarioEventKind {
    /// The workers were released: time 0 of the run.
    Started {
        workers: u32,
        cgroups: u16,
        /// False when cgroup operations are skipped (host mode without a cgroup root): cpusets
        /// and weights were not applied.
        cgroups_applied: bool,
    },
    /// Step `index` was applied; `failed_ops` of its operations failed (each logged).
    Step { index: u16, failed_ops: u16 },
    /// Worker `id` ended before the run did; its report says how.
    WorkerExited { id: u32 },
    /// The run time is over (or the run was cut short): the workers are being stopped.
    Finished,
}

/// What a [`GuestMsg::SchedulerEvent`] reports; its text says the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedEventKind {
    /// The scheduler process was spawned (text: its command line).
    Started,
    /// sched_ext is enabled with this scheduler (text: the ops name from root/ops).
    Attached,
    /// sched_ext went back to disabled while the scheduler was meant to run (text: why).
    Detached,
    /// The scheduler process ended by itself (text: exit status or signal).
    Exited,
    /// The kernel disabled the scheduler with an error (text: the kernel's reason).
    Error,
    /// The sched_ext watchdog caught a runnable task stall (text: the kernel's reason).
    Stall,
    Other,
    /// The init stopped the scheduler at the end of the run and the kernel is back on
    /// EEVDF (text: how long that took).
    Stopped,
    /// One of the last lines of the scheduler's own output (sent when it stops or fails).
    Output,
    /// A kernel log line about sched_ext, from /dev/kmsg.
    KernelLog,
    /// A line of the kernel's sched_ext debug dump (the `sched_ext_dump` tracepoint).
    Dump,
}

impl SchedEventKind {
    /// A failure of the scheduler under test (ends a run early).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Detached | Self::Exited | Self::Error | Self::Stall)
    }

    /// Context lines that accompany a stop or a failure.
    pub fn is_context(self) -> bool {
        matches!(self, Self::Output | Self::KernelLog | Self::Dump)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a run ended and what happened to the command's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    pub outcome: Outcome,
    /// From spawning the command to its end (0 without a command).
    pub wall_ns: u64,
    pub stdout: StreamStats,
    pub stderr: StreamStats,
}

/// Bytes of one output stream: `sent` as [`GuestMsg::ExecOutput`], `dropped` from its head by
/// the plan's output limit, and `unread`: at least this many were still in the pipe when the
/// init stopped reading (the run's time was up). Nothing else is lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    pub sent: u64,
    pub dropped: u64,
    pub unread: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant, reason = "inline bounded sizes are the point: decoding never allocates")]
pub enum Outcome {
    /// The plan had no command to run and finished.
    Completed,
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// The deadline passed; the command's process group was killed.
    TimedOut,
    /// The host sent [`HostMsg::Stop`]; the command's process group was killed.
    Stopped,
    /// The command could not be started (missing binary, bad cwd, ...).
    FailedToStart {
        reason: Text,
    },
    /// The scheduler under test did not attach, exited, or was disabled by the kernel; the
    /// run was cut short. The scheduler events say more.
    SchedulerFailed {
        reason: Text,
    },
}

/// Exit code for [`Outcome::TimedOut`], as `timeout(1)`.
pub const EXIT_TIMED_OUT: i32 = 124;
/// Exit code for [`Outcome::FailedToStart`], as a shell's "command not found".
pub const EXIT_FAILED_TO_START: i32 = 127;
/// Exit code for [`Outcome::Stopped`], as an interrupted command (128 + SIGINT).
pub const EXIT_STOPPED: i32 = 130;
/// Exit code for [`Outcome::SchedulerFailed`]: a failed run, like a failed verdict.
pub const EXIT_SCHEDULER_FAILED: i32 = 1;
/// Exit code when the init itself fails ([`GuestMsg::Panic`]), as a Rust panic.
pub const EXIT_INIT_FAILED: i32 = 101;

impl Outcome {
    /// The process exit code both sides report for this outcome (shell conventions).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Completed => 0,
            Outcome::Exited { code } => *code,
            // Saturating: the signal number comes from the guest.
            Outcome::Signaled { signal } => 128i32.saturating_add(*signal),
            Outcome::TimedOut => EXIT_TIMED_OUT,
            Outcome::Stopped => EXIT_STOPPED,
            Outcome::FailedToStart { .. } => EXIT_FAILED_TO_START,
            Outcome::SchedulerFailed { .. } => EXIT_SCHEDULER_FAILED,
        }
    }
}

/// `s` cut to at most `N` bytes at a char boundary.
pub fn text<const N: usize>(s: &str) -> heapless::String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = heapless::String::new();
    // Cannot fail: `end <= N`.
    let _ = out.push_str(&s[..end]);
    out
}

/// `data` as [`GuestMsg::ExecOutput`] messages of at most [`MAX_CHUNK`] bytes, in order.
pub fn output_chunks(stream: Stream, data: &[u8]) -> impl Iterator<Item = GuestMsg> + '_ {
    data.chunks(MAX_CHUNK).map(move |piece| GuestMsg::ExecOutput { stream, data: chunk(piece) })
}

/// `bytes` cut to at most `N` bytes.
pub fn chunk<const N: usize>(bytes: &[u8]) -> heapless::Vec<u8, N> {
    let mut out = heapless::Vec::new();
    // Cannot fail: the slice is cut to the capacity.
    let _ = out.extend_from_slice(&bytes[..bytes.len().min(N)]);
    out
}

/// The mask of the given CPUs; CPUs at or above [`MAX_CPUS`] are left out.
pub fn cpu_mask(cpus: impl IntoIterator<Item = u32>) -> CpuMask {
    let mut words = [0u64; CPU_MASK_WORDS];
    for cpu in cpus.into_iter().filter(|&c| (c as usize) < MAX_CPUS) {
        words[cpu as usize / 64] |= 1 << (cpu % 64);
    }
    let used = words.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
    // Cannot fail: `used <= CPU_MASK_WORDS`.
    CpuMask::from_slice(&words[..used]).unwrap_or_default()
}

/// The CPUs of a mask, ascending.
pub fn mask_cpus(mask: &[u64]) -> impl Iterator<Item = u32> + '_ {
    mask.iter()
        .enumerate()
        .flat_map(|(i, &w)| (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| i as u32 * 64 + b))
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The postcard encoding exceeds [`MAX_PAYLOAD`].
    TooLarge,
    /// The output buffer cannot hold the frame; [`MAX_FRAME`] bytes always suffice.
    BufferTooSmall,
    /// serde refused the value.
    Serialize,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLarge => write!(f, "message encodes to more than {MAX_PAYLOAD} bytes"),
            WireError::BufferTooSmall => {
                write!(f, "frame buffer too small (use at least {MAX_FRAME} bytes)")
            }
            WireError::Serialize => write!(f, "message could not be serialized"),
        }
    }
}

impl core::error::Error for WireError {}

/// Encodes `msg` as one delimited frame into `buf` and returns the frame.
pub fn encode<'b, M: Serialize>(msg: &M, buf: &'b mut [u8]) -> Result<&'b [u8], WireError> {
    let mut raw = [0u8; MAX_PAYLOAD + CRC_LEN];
    let n = match postcard::to_slice(msg, &mut raw[..MAX_PAYLOAD]) {
        Ok(used) => used.len(),
        Err(postcard::Error::SerializeBufferFull) => return Err(WireError::TooLarge),
        Err(_) => return Err(WireError::Serialize),
    };
    let crc = CRC32.checksum(&raw[..n]);
    raw[n..n + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let len = cobs::try_encode(&raw[..n + CRC_LEN], buf).map_err(|_| WireError::BufferTooSmall)?;
    *buf.get_mut(len).ok_or(WireError::BufferTooSmall)? = 0;
    Ok(&buf[..=len])
}

/// [`encode`] into a new vector.
pub fn encode_to_vec<M: Serialize>(msg: &M) -> Result<alloc::vec::Vec<u8>, WireError> {
    let mut buf = [0u8; MAX_FRAME];
    encode(msg, &mut buf).map(<[u8]>::to_vec)
}

/// Why one frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// More than `MAX_FRAME - 1` bytes without a delimiter; the run is dropped up to the next one.
    Oversize,
    /// Not valid COBS.
    BadCobs,
    /// Too short for a CRC, or the CRC does not match.
    BadCrc,
    /// CRC fine but not a message of this type (other version, or trailing bytes).
    BadPostcard,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::Oversize => "frame longer than MAX_FRAME",
            FrameError::BadCobs => "invalid COBS encoding",
            FrameError::BadCrc => "CRC mismatch or frame too short",
            FrameError::BadPostcard => "payload is not a valid message",
        })
    }
}

impl core::error::Error for FrameError {}

/// What a [`FrameDecoder`] has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Messages decoded.
    pub frames: u64,
    /// Bytes of rejected frames and overlong runs (delimiters not counted).
    pub dropped_bytes: u64,
    pub bad_crc: u64,
    pub bad_cobs: u64,
    pub bad_postcard: u64,
    pub oversize: u64,
}

impl DecodeStats {
    /// Frames rejected for any reason.
    pub fn rejected(&self) -> u64 {
        self.bad_crc + self.bad_cobs + self.bad_postcard + self.oversize
    }
}

/// Longest encoded frame without its delimiter.
const MAX_ENCODED: usize = MAX_FRAME - 1;

/// Incremental decoder for a byte stream of frames carrying `M`.
///
/// Feed it bytes split anywhere; it buffers at most one frame ([`MAX_FRAME`] bytes).
pub struct FrameDecoder<M> {
    buf: heapless::Vec<u8, MAX_ENCODED>,
    /// Inside an overlong run: drop bytes until the next delimiter.
    overflow: bool,
    stats: DecodeStats,
    _msg: PhantomData<fn() -> M>,
}

impl<M: DeserializeOwned> Default for FrameDecoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: DeserializeOwned> FrameDecoder<M> {
    pub const fn new() -> Self {
        FrameDecoder {
            buf: heapless::Vec::new(),
            overflow: false,
            stats: DecodeStats { frames: 0, dropped_bytes: 0, bad_crc: 0, bad_cobs: 0, bad_postcard: 0, oversize: 0 },
            _msg: PhantomData,
        }
    }

    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Bytes of an unfinished frame held back until its delimiter arrives.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds one byte; returns a result when it completes a frame (or starts an overlong run).
    pub fn feed(&mut self, byte: u8) -> Option<Result<M, FrameError>> {
        if byte == 0 { self.finish_frame() } else { self.absorb(&[byte]).map(Err) }
    }

    /// Feeds `bytes` and hands every decoded message to `on_msg`; rejected frames are counted.
    pub fn push(&mut self, bytes: &[u8], mut on_msg: impl FnMut(M)) {
        self.push_results(bytes, |r| {
            if let Ok(msg) = r {
                on_msg(msg);
            }
        });
    }

    /// Like [`Self::push`], but also reports each rejected frame.
    pub fn push_results(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Result<M, FrameError>)) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == 0) {
            if let Some(err) = self.absorb(&rest[..end]) {
                on_frame(Err(err));
            }
            if let Some(r) = self.finish_frame() {
                on_frame(r);
            }
            rest = &rest[end + 1..];
        }
        if let Some(err) = self.absorb(rest) {
            on_frame(Err(err));
        }
    }

    /// Buffers non-delimiter bytes; reports `Oversize` once when a run outgrows a frame.
    fn absorb(&mut self, bytes: &[u8]) -> Option<FrameError> {
        if self.overflow {
            self.stats.dropped_bytes += bytes.len() as u64;
            return None;
        }
        if self.buf.extend_from_slice(bytes).is_ok() {
            return None;
        }
        self.stats.dropped_bytes += (self.buf.len() + bytes.len()) as u64;
        self.stats.oversize += 1;
        self.buf.clear();
        self.overflow = true;
        Some(FrameError::Oversize)
    }

    /// Handles a delimiter: decodes the buffered frame, if any.
    fn finish_frame(&mut self) -> Option<Result<M, FrameError>> {
        if core::mem::take(&mut self.overflow) {
            return None; // already reported when the run overflowed
        }
        if self.buf.is_empty() {
            return None; // back-to-back delimiters are padding
        }
        let len = self.buf.len();
        let result = decode_frame(&mut self.buf);
        self.buf.clear();
        match &result {
            Ok(_) => self.stats.frames += 1,
            Err(e) => {
                self.stats.dropped_bytes += len as u64;
                match e {
                    FrameError::BadCobs => self.stats.bad_cobs += 1,
                    FrameError::BadCrc => self.stats.bad_crc += 1,
                    FrameError::BadPostcard => self.stats.bad_postcard += 1,
                    FrameError::Oversize => self.stats.oversize += 1,
                }
            }
        }
        Some(result)
    }
}

/// Decodes one COBS frame (without delimiter) in place.
fn decode_frame<M: DeserializeOwned>(frame: &mut [u8]) -> Result<M, FrameError> {
    let n = cobs::decode_in_place(frame).map_err(|_| FrameError::BadCobs)?;
    let raw = frame.get(..n).ok_or(FrameError::BadCobs)?;
    if raw.len() <= CRC_LEN {
        return Err(FrameError::BadCrc);
    }
    let (payload, crc) = raw.split_at(raw.len() - CRC_LEN);
    let mut crc_le = [0u8; CRC_LEN];
    crc_le.copy_from_slice(crc);
    if CRC32.checksum(payload) != u32::from_le_bytes(crc_le) {
        return Err(FrameError::BadCrc);
    }
    match postcard::take_from_bytes::<M>(payload) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(FrameError::BadPostcard),
    }
}

#[cfg(test)]
mod topology_msg_tests {
    use super::*;

    #[test]
    fn the_largest_topology_message_fits_one_frame() {
        let all = cpu_mask(0..MAX_CPUS as u32);
        let mut domains = heapless::Vec::new();
        for _ in 0..MAX_DOMAINS {
            domains.push(DomainName::try_from("NUMA-LEVEL-XXXXX").unwrap()).unwrap();
        }
        let m = GuestMsg::Topology(CpuTopo {
            cpu: u32::MAX,
            node: CpuTopo::UNKNOWN,
            package: u32::MAX,
            die: u32::MAX,
            core: u32::MAX,
            llc: all.clone(),
            siblings: all,
            domains,
        });
        let frame = encode_to_vec(&m).expect("fits");
        let mut dec: FrameDecoder<GuestMsg> = FrameDecoder::new();
        let mut got = None;
        dec.push(&frame, |d| got = Some(d));
        assert_eq!(got, Some(m));
    }
}
