//! Runs the plan's command: streams its output, enforces the deadline, obeys Stop, and reaps
//! every child that exits meanwhile (as PID 1 that includes orphans re-parented to us).
//!
//! Output is never dropped silently. Without a limit every byte read is sent at once; sending
//! blocks while the channel is full, so the pipes fill and the command waits in `write`
//! (back-pressure). With a limit, each stream's last bytes are kept in a bounded [`Tail`] and
//! sent when the command has ended; the bytes before them are counted as dropped.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use ktstr_shared::plan::{DEFAULT_PATH, ExecPlan};
use ktstr_shared::wire::{Outcome, RunResult, Stream, StreamStats, output_chunks, text};

use crate::control::Control;
use crate::sink::Sink;
use crate::sys;
use crate::tail::Tail;
use crate::watchdog::WATCHDOG_GRACE;
use crate::watchdog::Watchdog;

/// Process group of the running command, for the watchdog and panic paths to kill.
pub static CHILD_PGID: AtomicI32 = AtomicI32::new(0);

/// How long output is still read after the command ended or was killed. Bounds the wait on a
/// descendant that left the process group but still holds a pipe. After an exit of its own,
/// output still flowing extends it (a slow channel may hold back a full pipe), up to the
/// deadline.
const DRAIN: Duration = Duration::from_secs(1);
/// Bytes read from a pipe at once (a pipe holds 64 KiB); sent in `MAX_CHUNK` frames.
const READ_BUF: usize = 16 * 1024;
const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kill {
    Deadline,
    Stop,
}

pub fn run(plan: &ExecPlan, deadline: Instant, sink: &Sink, control: &Control, watchdog: &Watchdog) -> RunResult {
    if control.stop_requested() {
        return result(Outcome::Stopped, 0, [StreamStats::default(); 2]);
    }
    let started = Instant::now();
    let spawned = sys::sigchld_fd().and_then(|sigfd| Ok((sigfd, command(plan).spawn()?)));
    let (sigfd, mut child) = match spawned {
        Ok(ok) => ok,
        Err(e) => {
            let reason = format!("cannot start {:?}: {e}", plan.argv[0]);
            return result(Outcome::FailedToStart { reason: text(&reason) }, 0, Default::default());
        }
    };
    let pid = child.id() as libc::pid_t;
    CHILD_PGID.store(pid, Ordering::SeqCst);
    let pipes = [child.stdout.take().map(OwnedFd::from), child.stderr.take().map(OwnedFd::from)];
    let mut watch = Watch::new(pid, pipes, plan.output_limit, deadline);
    let outcome = watch.run(sigfd.as_raw_fd(), sink, control);
    CHILD_PGID.store(0, Ordering::SeqCst);
    watch.count_unread();
    let wall_ns = started.elapsed().as_nanos() as u64;
    watch.send_tails(sink, watchdog);
    result(outcome, wall_ns, watch.stats)
}

fn result(outcome: Outcome, wall_ns: u64, [stdout, stderr]: [StreamStats; 2]) -> RunResult {
    RunResult { outcome, wall_ns, stdout, stderr }
}

/// The command in its own process group (so it can be killed whole), with only the plan's
/// environment, stdin from /dev/null and both outputs piped to us.
fn command(plan: &ExecPlan) -> Command {
    let mut cmd = isolated(&plan.argv, &plan.env);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(cwd) = &plan.cwd {
        cmd.current_dir(cwd);
    }
    cmd
}

/// `argv` in its own process group with exactly `env` (plus [`DEFAULT_PATH`] when it has no
/// `PATH`) and stdin from /dev/null; the caller decides where the output goes.
pub fn isolated(argv: &[String], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).process_group(0);
    if !env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd
}

struct Watch {
    pid: libc::pid_t,
    /// stdout, stderr; `None` once at EOF or abandoned.
    pipes: [Option<OwnedFd>; 2],
    stats: [StreamStats; 2],
    /// Per stream, with an output limit: the last bytes, sent at the end.
    tails: [Option<Tail>; 2],
    buf: Box<[u8]>,
    deadline: Instant,
    status: Option<libc::c_int>,
    killed: Option<Kill>,
    /// Set once the command is over: stop reading output at this time.
    drain_until: Option<Instant>,
}

impl Watch {
    fn new(pid: libc::pid_t, pipes: [Option<OwnedFd>; 2], limit: Option<u32>, deadline: Instant) -> Self {
        let tail = || limit.map(|l| Tail::new(l as usize));
        Watch {
            pid,
            pipes,
            stats: Default::default(),
            tails: [tail(), tail()],
            buf: vec![0; READ_BUF].into_boxed_slice(),
            deadline,
            status: None,
            killed: None,
            drain_until: None,
        }
    }

    fn run(&mut self, sigfd: RawFd, sink: &Sink, control: &Control) -> Outcome {
        let deadline = self.deadline;
        while !self.finished() {
            let now = Instant::now();
            if self.running() && now >= deadline {
                self.kill(Kill::Deadline);
            }
            let wake_at = if self.running() { deadline } else { self.drain_until.unwrap_or(deadline) };
            if let Err(e) = self.wait(wake_at, sigfd, sink, control) {
                eprintln!("ktstr-init: poll failed: {e}; killing the command");
                self.kill(Kill::Deadline);
                break;
            }
        }
        self.outcome()
    }

    /// Not yet exited and not yet killed.
    fn running(&self) -> bool {
        self.status.is_none() && self.killed.is_none()
    }

    /// Reaped with all output read, or out of drain time (a killed command stuck in the
    /// kernel, or a pipe held by a descendant outside the group).
    fn finished(&self) -> bool {
        let drained = self.pipes.iter().all(Option::is_none);
        let late = self.drain_until.is_some_and(|t| Instant::now() >= t);
        (self.status.is_some() && drained) || late
    }

    fn wait(&mut self, until: Instant, sigfd: RawFd, sink: &Sink, control: &Control) -> io::Result<()> {
        let mut fds = vec![sys::pollfd(sigfd), sys::pollfd(control.wake_fd())];
        fds.extend(self.pipes.iter().flatten().map(|p| sys::pollfd(p.as_raw_fd())));
        sys::poll(&mut fds, until.saturating_duration_since(Instant::now()))?;
        if fds[0].revents != 0 {
            sys::drain(sigfd);
            self.reap();
        }
        if fds[1].revents != 0 {
            control.clear_wake();
            if control.stop_requested() && self.running() {
                self.kill(Kill::Stop);
            }
        }
        let ready: Vec<RawFd> = fds[2..].iter().filter(|p| p.revents != 0).map(|p| p.fd).collect();
        for fd in ready {
            self.read_output(fd, sink);
        }
        Ok(())
    }

    /// Reaps every exited child; ours ends the command and its stragglers are killed.
    fn reap(&mut self) {
        while let Some((pid, status)) = sys::reap_one() {
            if pid == self.pid {
                self.status = Some(status);
                // The command's lifetime bounds its process group: background leftovers would
                // otherwise hold the output pipes open until the deadline.
                sys::kill_group(self.pid);
                self.drain_until.get_or_insert(Instant::now() + DRAIN);
            }
        }
    }

    fn kill(&mut self, why: Kill) {
        sys::kill_group(self.pid);
        self.killed = Some(why);
        self.drain_until.get_or_insert(Instant::now() + DRAIN);
    }

    fn read_output(&mut self, fd: RawFd, sink: &Sink) {
        let Some(i) = self.pipes.iter().position(|p| p.as_ref().is_some_and(|p| p.as_raw_fd() == fd)) else {
            return;
        };
        let n = match sys::read(fd, &mut self.buf) {
            Ok(0) | Err(_) => {
                self.pipes[i] = None;
                return;
            }
            Ok(n) => n,
        };
        if self.killed.is_none()
            && let Some(until) = &mut self.drain_until
        {
            *until = (*until).max((Instant::now() + DRAIN).min(self.deadline));
        }
        let data = &self.buf[..n];
        match &mut self.tails[i] {
            Some(tail) => tail.push(data),
            None => {
                // Blocks while the channel is full: back-pressure on the command.
                output_chunks(STREAMS[i], data).for_each(|m| sink.send(&m));
                self.stats[i].sent += n as u64;
            }
        }
    }

    /// Pipes still open when reading stopped: what they hold was not read.
    fn count_unread(&mut self) {
        for (pipe, stats) in self.pipes.iter().zip(&mut self.stats) {
            let Some(pipe) = pipe else { continue };
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int to a valid pointer; the fd is open.
            if unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut n) } == 0 {
                stats.unread = n.max(0) as u64;
            }
        }
    }

    /// Sends what the output limit kept of each stream, and counts what it dropped. A slow
    /// channel may take longer than the watchdog's grace for this: each chunk sent moves the
    /// watchdog on (a flush in progress is not a stuck init; a stuck write still trips it).
    fn send_tails(&mut self, sink: &Sink, watchdog: &Watchdog) {
        let plan_end = self.deadline + WATCHDOG_GRACE;
        for (i, tail) in self.tails.iter().enumerate() {
            let Some(tail) = tail else { continue };
            let (a, b) = tail.as_slices();
            output_chunks(STREAMS[i], a).chain(output_chunks(STREAMS[i], b)).for_each(|m| {
                watchdog.set_deadline(plan_end.max(Instant::now() + WATCHDOG_GRACE));
                sink.send(&m);
            });
            self.stats[i].sent += tail.len() as u64;
            self.stats[i].dropped = tail.dropped();
        }
    }

    fn outcome(&self) -> Outcome {
        match (self.killed, self.status) {
            (Some(Kill::Deadline), _) => Outcome::TimedOut,
            (Some(Kill::Stop), _) => Outcome::Stopped,
            (None, Some(st)) if libc::WIFSIGNALED(st) => Outcome::Signaled { signal: libc::WTERMSIG(st) },
            (None, Some(st)) => Outcome::Exited { code: libc::WEXITSTATUS(st) },
            // Unreachable: the loop ends only after an exit or a kill.
            (None, None) => Outcome::TimedOut,
        }
    }
}
