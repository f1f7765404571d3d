//! Boot phase timestamps, measured from the start of this process (the "process start"
//! is what a user waits through, so that is the origin, not the moment the VM was asked for).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The instant this process started, from /proc/self/stat (clock-tick resolution); the first
/// call's instant if that cannot be read.
pub fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(|| {
        let now = Instant::now();
        age().and_then(|age| now.checked_sub(age)).unwrap_or(now)
    })
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

/// Named instants, reported as offsets from `process_start()`.
#[derive(Debug)]
pub struct Timeline {
    origin: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self { origin: process_start(), phases: Vec::new() }
    }
}

impl Timeline {
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
    fn phases_are_sorted_and_relative() {
        let mut t = Timeline::default();
        let early = Instant::now();
        t.mark("later");
        t.mark_at("earlier", early);
        let phases = t.into_sorted();
        assert_eq!(phases[0].0, "earlier");
        assert!(phases[0].1 <= phases[1].1);
    }
}
