//! The sched_ext scheduler under test: start it, see it attach, watch it through the run,
//! stop it and see the kernel back on EEVDF; when it fails, explain why with the kernel's
//! own words (its log lines and debug dump) and the scheduler's last output lines.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ktstr_shared::plan::SchedPlan;
use ktstr_shared::wire::{GuestMsg, SchedEventKind, text};

use crate::control::Control;
use crate::sink::Sink;
use crate::sys;

const STATE: &str = "/sys/kernel/sched_ext/state";
const ENABLE_SEQ: &str = "/sys/kernel/sched_ext/enable_seq";
const OPS: &str = "/sys/kernel/sched_ext/root/ops";
/// Event counters of the attached scheduler (kernels >= 6.16; absent on older ones).
const EVENTS: &str = "/sys/kernel/sched_ext/root/events";
/// Global counters every sched_ext kernel has.
const COUNTERS: [&str; 2] = ["/sys/kernel/sched_ext/nr_rejected", "/sys/kernel/sched_ext/hotplug_seq"];
const DUMP_EVENT: &str = "/sys/kernel/tracing/events/sched_ext/sched_ext_dump/enable";
const TRACE: &str = "/sys/kernel/tracing/trace";
/// How often attach and detach are polled: sysfs reads are cheap.
const POLL: Duration = Duration::from_millis(10);
/// Output lines kept (the tail), and bytes per line.
const OUTPUT_LINES: usize = 40;
const LINE_BYTES: usize = 400;
/// Kernel log and dump lines sent with a failure.
const KERNEL_LINES: usize = 30;
const DUMP_LINES: usize = 60;
/// Bytes of the trace buffer read for the dump.
const TRACE_BYTES: u64 = 256 << 10;
/// After a failure is seen: time for the kernel to log it and the scheduler to exit and
/// print its own report, before it is killed.
const SETTLE: Duration = Duration::from_secs(2);

/// Why the scheduler is not (or no longer) doing its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The process ended (wait status).
    Exited(libc::c_int),
    /// sched_ext left `enabled` (the state read) while the process lives.
    Detached(String),
    /// Another scheduler instance: enable_seq moved.
    Reloaded { from: u64, to: u64 },
    /// No attach within the timeout.
    NoAttach,
}

/// The running scheduler process and what is known about it.
pub struct Scheduler {
    name: String,
    pid: libc::pid_t,
    output: Arc<Mutex<Tail>>,
    reader: Option<JoinHandle<()>>,
    kmsg: Option<File>,
    /// enable_seq before the start, then the attached scheduler's.
    seq: Option<u64>,
    attach_timeout: Duration,
    stop_timeout: Duration,
    /// Seen attached: an exit before that means it is not a working scheduler.
    attached: bool,
}

/// The last lines of the scheduler's stdout and stderr (one pipe, in order).
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
    bytes: u64,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        for &b in data {
            if b == b'\n' {
                self.end_line();
            } else if self.partial.len() < LINE_BYTES {
                self.partial.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.partial).trim_end().to_string();
        self.partial.clear();
        if self.lines.len() == OUTPUT_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    fn last(&mut self, n: usize) -> Vec<String> {
        if !self.partial.is_empty() {
            self.end_line();
        }
        self.lines.iter().skip(self.lines.len().saturating_sub(n)).cloned().collect()
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn enable_seq() -> Option<u64> {
    read_trimmed(ENABLE_SEQ)?.parse().ok()
}

fn event(sink: &Sink, kind: SchedEventKind, msg: &str) {
    sink.send(&GuestMsg::SchedulerEvent { t_ns: sys::boottime_ns(), kind, text: text(msg) });
}

impl Scheduler {
    /// Spawns the scheduler with its output captured; `Err` when the kernel cannot run one or
    /// the process cannot start.
    pub fn start(plan: &SchedPlan, sink: &Sink) -> Result<Scheduler, String> {
        match read_trimmed(STATE).as_deref() {
            None => return Err(format!("{STATE} is missing: this kernel has no sched_ext (CONFIG_SCHED_CLASS_EXT=y)")),
            Some("disabled") => {}
            Some(other) => return Err(format!("sched_ext is already {other:?} before {} started", plan.name)),
        }
        let kmsg = open_kmsg();
        // Best effort: without tracefs the failure report just has no dump.
        let _ = std::fs::write(DUMP_EVENT, "1");
        let seq = enable_seq();
        let (rx, tx) = sys::pipe().map_err(|e| format!("cannot create a pipe for {}: {e}", plan.name))?;
        let tx2 = tx.try_clone().map_err(|e| format!("cannot duplicate a pipe: {e}"))?;
        let mut cmd = crate::exec::isolated(&plan.argv, &plan.env);
        cmd.stdout(Stdio::from(tx)).stderr(Stdio::from(tx2));
        let child = cmd.spawn().map_err(|e| format!("cannot start the scheduler {}: {e}", plan.argv[0]))?;
        drop(cmd); // closes our copies of the write end: EOF comes when the scheduler exits
        let pid = child.id() as libc::pid_t;
        sys::watch_child(pid);
        let output = Arc::new(Mutex::new(Tail::default()));
        let reader = spawn_reader(rx, output.clone());
        event(sink, SchedEventKind::Started, &plan.argv.join(" "));
        Ok(Scheduler {
            name: plan.name.clone(),
            pid,
            output,
            reader,
            kmsg,
            seq,
            attach_timeout: Duration::from_millis(plan.attach_timeout_ms.into()),
            stop_timeout: Duration::from_millis(plan.stop_timeout_ms.into()),
            attached: false,
        })
    }

    /// Waits until sched_ext is enabled by a new instance (enable_seq moved past the one read
    /// before the start); the ops name is reported. `Err` when the process ends first, the
    /// timeout passes, or the host asks to stop.
    pub fn wait_attached(&mut self, sink: &Sink, control: &Control) -> Result<(), Failure> {
        let t0 = Instant::now();
        let until = t0 + self.attach_timeout;
        loop {
            let state = read_trimmed(STATE);
            let seq = enable_seq();
            if state.as_deref() == Some("enabled") && (self.seq.is_none() || seq > self.seq) {
                self.seq = seq;
                self.attached = true;
                let ops = read_trimmed(OPS).unwrap_or_default();
                let ms = t0.elapsed().as_millis();
                event(sink, SchedEventKind::Attached, &format!("{ops} (enable_seq {seq:?}, after {ms} ms)"));
                return Ok(());
            }
            if let Some(status) = sys::watched_status() {
                return Err(Failure::Exited(status));
            }
            if Instant::now() >= until || control.stop_requested() {
                return Err(Failure::NoAttach);
            }
            let _ = sys::poll(&mut [sys::pollfd(control.wake_fd())], POLL);
            control.clear_wake();
        }
    }

    /// During the run: `Some` once the scheduler is no longer attached and alive.
    pub fn check(&self) -> Option<Failure> {
        if let Some(status) = sys::watched_status() {
            return Some(Failure::Exited(status));
        }
        match read_trimmed(STATE) {
            Some(s) if s == "enabled" => {}
            other => return Some(Failure::Detached(other.unwrap_or_else(|| "unreadable".into()))),
        }
        match (self.seq, enable_seq()) {
            (Some(from), Some(to)) if from != to => Some(Failure::Reloaded { from, to }),
            _ => None,
        }
    }

    /// Ends a failed run: gives the kernel and the scheduler [`SETTLE`] time to say what
    /// happened, kills what is left, sends the failure event with its context lines, and
    /// returns the one-line reason for the run's outcome.
    pub fn fail(mut self, failure: Failure, sink: &Sink) -> String {
        let settle_until = Instant::now() + SETTLE;
        while sys::watched_status().is_none() && Instant::now() < settle_until {
            std::thread::sleep(POLL);
        }
        self.kill();
        event(sink, SchedEventKind::Other, &counters());
        let kernel = self.kernel_lines();
        let (kind, why) = explain(&self.name, &failure, &kernel, self.attached, self.attach_timeout);
        event(sink, kind, &why);
        for line in kernel.iter().take(KERNEL_LINES) {
            event(sink, SchedEventKind::KernelLog, line);
        }
        for line in dump_lines() {
            event(sink, SchedEventKind::Dump, &line);
        }
        self.send_output(sink, OUTPUT_LINES);
        why
    }

    /// Ends a good run: SIGINT, then waits for the process to exit and sched_ext to read
    /// `disabled` (SIGKILL at the stop timeout). `Err` with the reason if the kernel did not
    /// go back to EEVDF.
    pub fn stop(mut self, sink: &Sink) -> Result<(), String> {
        // root/ goes away on detach: read the counters while attached.
        event(sink, SchedEventKind::Other, &counters());
        let t0 = Instant::now();
        sys::signal(self.pid, libc::SIGINT);
        let back = loop {
            let exited = sys::watched_status().is_some();
            let state = read_trimmed(STATE);
            if exited && state.as_deref() == Some("disabled") {
                break Ok(());
            }
            if t0.elapsed() >= self.stop_timeout {
                break Err(state.unwrap_or_else(|| "unreadable".into()));
            }
            std::thread::sleep(POLL);
        };
        self.kill();
        let ms = t0.elapsed().as_millis();
        // What the kernel said meanwhile (enabled, capabilities it warned about, disabled).
        for line in self.kernel_lines().iter().take(KERNEL_LINES) {
            event(sink, SchedEventKind::KernelLog, line);
        }
        self.send_output(sink, 10);
        match back {
            Ok(()) => {
                event(sink, SchedEventKind::Stopped, &format!("stopped in {ms} ms; sched_ext disabled, back on EEVDF"));
                Ok(())
            }
            Err(state) => {
                let why = format!(
                    "sched_ext still {state:?} {ms} ms after {} was asked to stop: the kernel did not go back to EEVDF",
                    self.name
                );
                event(sink, SchedEventKind::Detached, &why);
                Err(why)
            }
        }
    }

    /// SIGKILLs the scheduler's group if it still runs, reaps it, and joins the reader.
    fn kill(&mut self) {
        if sys::watched_status().is_none() {
            sys::kill_group(self.pid);
            let until = Instant::now() + Duration::from_secs(2);
            while sys::watched_status().is_none() && Instant::now() < until {
                std::thread::sleep(POLL);
            }
        }
        // The output still in the pipe is read; a descendant that escaped the group and holds
        // the pipe open must not hang the init, so the wait is bounded.
        if let Some(h) = self.reader.take() {
            let until = Instant::now() + Duration::from_secs(1);
            while !h.is_finished() && Instant::now() < until {
                std::thread::sleep(POLL);
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }

    fn send_output(&self, sink: &Sink, n: usize) {
        let lines = self.output.lock().map(|mut t| t.last(n)).unwrap_or_default();
        for line in lines {
            event(sink, SchedEventKind::Output, &line);
        }
    }

    /// Kernel log lines since the start that are about sched_ext, and the stack trace lines
    /// that follow an error.
    fn kernel_lines(&mut self) -> Vec<String> {
        let Some(kmsg) = self.kmsg.as_mut() else { return Vec::new() };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        let mut in_trace = false;
        // One record per read; EAGAIN ends the backlog, EPIPE means records were overwritten.
        loop {
            match kmsg.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let msg = kmsg_text(&buf[..n]);
                    let about = msg.contains("sched_ext") || msg.contains("Sched_ext");
                    in_trace = about || (in_trace && msg.starts_with(' '));
                    if in_trace && out.len() < 4 * KERNEL_LINES {
                        out.push(msg);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

fn spawn_reader(rx: OwnedFd, output: Arc<Mutex<Tail>>) -> Option<JoinHandle<()>> {
    let spawned = std::thread::Builder::new().name("sched-output".into()).spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sys::read(rx.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut t) = output.lock() {
                t.push(&buf[..n]);
            }
        }
    });
    spawned.ok()
}

/// `sched_ext counters: nr_rejected=N hotplug_seq=N [EVENT=N ...]` from what this kernel has.
fn counters() -> String {
    let mut out = String::from("sched_ext counters:");
    for path in COUNTERS {
        if let (Some(name), Some(v)) = (path.rsplit('/').next(), read_trimmed(path)) {
            out.push_str(&format!(" {name}={v}"));
        }
    }
    // `SCX_EV_NAME value` per line.
    for line in read_trimmed(EVENTS).unwrap_or_default().lines() {
        if let Some((name, v)) = line.split_once(char::is_whitespace) {
            out.push_str(&format!(" {}={}", name.trim_start_matches("SCX_EV_"), v.trim()));
        }
    }
    out
}

/// /dev/kmsg positioned at its end: only records logged from now on are read.
fn open_kmsg() -> Option<File> {
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg").ok()?;
    f.seek(SeekFrom::End(0)).ok()?;
    Some(f)
}

/// The message of a /dev/kmsg record `prio,seq,usec,flags;message\n`.
fn kmsg_text(record: &[u8]) -> String {
    let s = String::from_utf8_lossy(record);
    let msg = s.split_once(';').map_or(&*s, |(_, m)| m);
    msg.lines().next().unwrap_or_default().trim_end().to_string()
}

/// The lines of the kernel's sched_ext debug dump in the trace buffer, without the trace
/// prefix (`task-pid [cpu] flags ts: sched_ext_dump: `).
fn dump_lines() -> Vec<String> {
    let Ok(f) = File::open(TRACE) else { return Vec::new() };
    let mut text = String::new();
    if f.take(TRACE_BYTES).read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    const MARK: &str = "sched_ext_dump: ";
    let lines = text.lines().filter_map(|l| l.split_once(MARK).map(|(_, d)| d.trim_end().to_string()));
    lines.take(DUMP_LINES).collect()
}

/// The event kind and the one-line reason for a failure, quoting the kernel when it said why.
/// `attached`: whether it was seen attached before failing.
pub fn explain(
    name: &str,
    failure: &Failure,
    kernel: &[String],
    attached: bool,
    attach_timeout: Duration,
) -> (SchedEventKind, String) {
    // The kernel's "BPF scheduler "x" disabled (reason)" and the "x: message" line after it.
    let disabled = kernel.iter().position(|l| l.contains("disabled ("));
    let quote = disabled.map(|i| {
        let mut q = kernel[i].trim_start_matches("sched_ext: ").to_string();
        if let Some(msg) = kernel.get(i + 1).filter(|l| l.starts_with("sched_ext: ") && !l.contains("disabled (")) {
            q = format!("{q}: {}", msg.trim_start_matches("sched_ext: "));
        }
        q
    });
    let unregistered = quote.as_deref().is_some_and(|q| q.contains("(unregistered from user space)"));
    let kind = match (&quote, failure) {
        (Some(q), _) if q.contains("runnable task stall") => SchedEventKind::Stall,
        (Some(_), _) if !unregistered => SchedEventKind::Error,
        (_, Failure::Exited(_)) => SchedEventKind::Exited,
        _ => SchedEventKind::Detached,
    };
    let what = match failure {
        Failure::Exited(status) if !attached => format!(
            "scheduler did not attach: {name} exited before enabling sched_ext ({}); is it a sched_ext scheduler?",
            sys::describe_status(*status)
        ),
        Failure::Exited(status) => format!("{name} exited ({})", sys::describe_status(*status)),
        Failure::Detached(state) => format!("sched_ext went {state:?} while {name} was running"),
        Failure::Reloaded { from, to } => {
            format!("sched_ext enable_seq moved from {from} to {to}: {name} was replaced")
        }
        Failure::NoAttach => {
            let secs = attach_timeout.as_secs_f64();
            format!("scheduler did not attach: {name} ran {secs} s without enabling sched_ext")
        }
    };
    let why = match quote {
        Some(q) if !unregistered => format!("{what}; kernel: {q}"),
        _ => what,
    };
    (kind, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kernel_errors_are_quoted_and_classified() {
        let k = lines(&[
            "sched_ext: BPF scheduler \"qmap\" disabled (runtime error)",
            "sched_ext: qmap: scx_bpf_error (test triggering error)",
            " scx_bpf_error_bstr+0x6a/0x90",
        ]);
        let (kind, why) = explain("scx_qmap", &Failure::Exited(1 << 8), &k, true, Duration::from_secs(5));
        assert_eq!(kind, SchedEventKind::Error);
        assert_eq!(
            why,
            "scx_qmap exited (exit status 1); kernel: BPF scheduler \"qmap\" disabled (runtime error): qmap: \
             scx_bpf_error (test triggering error)"
        );
        let stall = lines(&[
            "sched_ext: BPF scheduler \"qmap\" disabled (runnable task stall)",
            "sched_ext: qmap: ktstr-init[85] failed to run for 5.216s",
        ]);
        let (kind, why) = explain("scx_qmap", &Failure::Detached("disabled".into()), &stall, true, Duration::ZERO);
        assert_eq!(kind, SchedEventKind::Stall);
        assert!(why.contains("failed to run for 5.216s"), "{why}");
    }

    #[test]
    fn exits_without_kernel_words_say_how_the_process_ended() {
        let (kind, why) = explain("scx_x", &Failure::Exited(libc::SIGSEGV), &[], true, Duration::ZERO);
        assert_eq!(kind, SchedEventKind::Exited);
        assert_eq!(why, "scx_x exited (killed by signal 11 (SIGSEGV))");
        let user = lines(&["sched_ext: BPF scheduler \"x\" disabled (unregistered from user space)"]);
        let (kind, why) = explain("scx_x", &Failure::Exited(0), &user, true, Duration::ZERO);
        assert_eq!((kind, why.as_str()), (SchedEventKind::Exited, "scx_x exited (exit status 0)"));
        let (_, why) = explain("true", &Failure::Exited(0), &[], false, Duration::ZERO);
        assert!(why.contains("did not attach: true exited before enabling sched_ext (exit status 0)"), "{why}");
        let (kind, why) = explain("sleep", &Failure::NoAttach, &[], false, Duration::from_millis(2500));
        assert_eq!(kind, SchedEventKind::Detached);
        assert!(why.starts_with("scheduler did not attach: sleep ran 2.5 s"), "{why}");
    }

    #[test]
    fn output_tail_keeps_the_last_lines_bounded() {
        let mut t = Tail::default();
        for i in 0..100 {
            t.push(format!("line {i}\n").as_bytes());
        }
        t.push(&[b'x'; 10_000]);
        let last = t.last(3);
        assert_eq!(last[0], "line 98");
        assert_eq!(last[2].len(), LINE_BYTES);
        assert_eq!(t.lines.len(), OUTPUT_LINES);
        assert_eq!(kmsg_text(b"3,120,5000,-;sched_ext: hi\n SUBSYSTEM=x\n"), "sched_ext: hi");
    }
}
