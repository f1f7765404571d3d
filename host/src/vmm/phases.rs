//! Boot phase timestamps, measured from the start of this process (the "process start"
//! is what a user waits through, so that is the origin, not the moment the VM was asked for),
//! and the time spent in host-kernel calls whose cost is a property of the host's KVM.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Set by a launcher (e.g. `bench/vmm_setup.sh`: `KTSTR_EXEC_EPOCH=$EPOCHREALTIME`) to the
/// wall-clock time, in seconds since the epoch with a fraction, at which it started this
/// process: a microsecond origin instead of /proc's clock ticks (10 ms at USER_HZ=100, which
/// would blur a setup time of a few milliseconds). Ignored unless it lies in the last minute.
pub const EXEC_EPOCH_ENV: &str = "KTSTR_EXEC_EPOCH";

/// The instant this process started: [`EXEC_EPOCH_ENV`] when set, else /proc/self/stat
/// (clock-tick resolution); the first call's instant if neither can be read.
pub fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(|| {
        let now = Instant::now();
        let exec_age = std::env::var(EXEC_EPOCH_ENV).ok().and_then(|v| age_of_epoch(&v, SystemTime::now()));
        exec_age.or_else(age).and_then(|age| now.checked_sub(age)).unwrap_or(now)
    })
}

/// How long ago the wall-clock time `epoch` ("1732612345.123456") was, if within a minute.
fn age_of_epoch(epoch: &str, now: SystemTime) -> Option<Duration> {
    let secs: f64 = epoch.trim().parse().ok()?;
    let then = UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)?;
    now.duration_since(then).ok().filter(|age| *age < Duration::from_secs(60))
}

fn age() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; starttime is field 22 overall.
    let rest = stat.rsplit_once(')')?.1;
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let started = Duration::from_secs_f64(ticks as f64 / hz as f64);
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let boot_now = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    boot_now.checked_sub(started)
}

/// Instants marked before the VM is built (`cli_parsed`, `kernel_resolved`, then by the runner
/// `run_start`, `initramfs_ready`), handed down as a value with the request, so the VM's
/// timeline covers the whole path from process start. Bounded: marks beyond a few dozen are
/// dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks(Vec<(&'static str, Instant)>);

impl Marks {
    const MAX: usize = 32;

    /// Marks `name` now.
    pub fn mark(&mut self, name: &'static str) {
        if self.0.len() < Self::MAX {
            self.0.push((name, Instant::now()));
        }
    }

    /// A copy with `name` marked now.
    pub fn with(&self, name: &'static str) -> Marks {
        let mut m = self.clone();
        m.mark(name);
        m
    }
}

/// Named instants, reported as offsets from `process_start()`, and named host-kernel calls
/// with how long each took.
#[derive(Debug)]
pub struct Timeline {
    origin: Instant,
    phases: Vec<(&'static str, Duration)>,
    host_calls: Vec<(&'static str, Duration)>,
    host_wait: Duration,
}

impl Timeline {
    /// A timeline that starts with the marks made before the VM was built.
    pub fn with_marks(early: &Marks) -> Self {
        let origin = process_start();
        let phases = early.0.iter().map(|(n, at)| (*n, at.saturating_duration_since(origin))).collect();
        Self { origin, phases, host_calls: Vec::new(), host_wait: Duration::ZERO }
    }

    /// A timeline without the early marks: for a helper thread whose marks are adopted.
    pub fn detached() -> Self {
        Self { origin: process_start(), phases: Vec::new(), host_calls: Vec::new(), host_wait: Duration::ZERO }
    }

    /// Runs `f`, a call into the host kernel (e.g. KVM_CREATE_IRQCHIP), and records its duration
    /// under `name`.
    pub fn host_call<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.host_calls.push((name, start.elapsed()));
        out
    }

    /// The host-kernel calls timed by [`Timeline::host_call`], in call order.
    pub fn host_calls(&self) -> &[(&'static str, Duration)] {
        &self.host_calls
    }

    /// Takes over the phases another thread marked.
    pub fn adopt_phases(&mut self, other: Timeline) {
        self.phases.extend(other.phases);
        self.host_calls.extend(other.host_calls);
    }

    /// The host kernel's share of the critical path (see `VmOutcome::host_wait`).
    pub fn set_host_wait(&mut self, wait: Duration) {
        self.host_wait = wait;
    }

    /// The host kernel's share of the critical path.
    pub fn host_wait(&self) -> Duration {
        self.host_wait
    }

    pub fn mark(&mut self, name: &'static str) {
        self.mark_at(name, Instant::now());
    }

    pub fn mark_at(&mut self, name: &'static str, at: Instant) {
        self.phases.push((name, self.since_origin(at)));
    }

    pub fn since_origin(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }

    /// Phases in time order (events seen by other threads are added after the fact).
    pub fn into_sorted(mut self) -> Vec<(&'static str, Duration)> {
        self.phases.sort_by_key(|(_, t)| *t);
        self.phases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_start_is_in_the_past_and_stable() {
        let a = process_start();
        assert!(a <= Instant::now());
        assert_eq!(a, process_start());
        // A test binary does not run for a day.
        assert!(a.elapsed() < Duration::from_secs(86_400));
    }

    #[test]
    fn early_marks_start_the_timeline_they_are_given() {
        let marks = Marks::default().with("early_test_mark");
        let t = Timeline::with_marks(&marks);
        assert!(t.into_sorted().iter().any(|(n, _)| *n == "early_test_mark"));
        assert!(Timeline::detached().into_sorted().is_empty());
    }

    #[test]
    fn exec_epoch_is_used_only_when_recent() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(age_of_epoch("1799999999.75", now), Some(Duration::from_millis(250)));
        assert_eq!(age_of_epoch(" 1800000000.000000\n", now), Some(Duration::ZERO));
        assert_eq!(age_of_epoch("1799999000.0", now), None, "older than a minute");
        assert_eq!(age_of_epoch("1800000001.0", now), None, "in the future");
        assert_eq!(age_of_epoch("1799999999,5", now), None, "not a number");
    }

    #[test]
    fn host_calls_are_timed_in_order() {
        let mut t = Timeline::detached();
        assert_eq!(t.host_call("a", || 7), 7);
        t.host_call("b", || ());
        let calls = t.host_calls();
        assert_eq!(calls.iter().map(|c| c.0).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn phases_are_sorted_and_relative() {
        let mut t = Timeline::detached();
        let early = Instant::now();
        t.mark("later");
        t.mark_at("earlier", early);
        let phases = t.into_sorted();
        assert_eq!(phases[0].0, "earlier");
        assert!(phases[0].1 <= phases[1].1);
    }
}
