//! Runs the plan's command: streams its output, enforces the deadline, obeys Stop, and reaps
//! every child that exits meanwhile (as PID 1 that includes orphans re-parented to us).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use ktstr_shared::plan::{DEFAULT_PATH, ExecPlan};
use ktstr_shared::wire::{GuestMsg, MAX_CHUNK, Outcome, RunResult, Stream, StreamStats, chunk, text};

use crate::control::Control;
use crate::sink::Sink;
use crate::sys;

/// Process group of the running command, for the watchdog and panic paths to kill.
pub static CHILD_PGID: AtomicI32 = AtomicI32::new(0);

/// How long output is still read after the command ended or was killed. Bounds the wait on a
/// descendant that left the process group but still holds a pipe.
const DRAIN: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kill {
    Deadline,
    Stop,
}

pub fn run(plan: &ExecPlan, deadline: Instant, sink: &Sink, control: &Control) -> RunResult {
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
    let mut watch = Watch::new(pid, pipes, plan.output_limit);
    let outcome = watch.run(deadline, sigfd.as_raw_fd(), sink, control);
    CHILD_PGID.store(0, Ordering::SeqCst);
    result(outcome, started.elapsed().as_nanos() as u64, watch.stats)
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
    limit: u64,
    status: Option<libc::c_int>,
    killed: Option<Kill>,
    /// Set once the command is over: stop reading output at this time.
    drain_until: Option<Instant>,
}

impl Watch {
    fn new(pid: libc::pid_t, pipes: [Option<OwnedFd>; 2], limit: u32) -> Self {
        Watch {
            pid,
            pipes,
            stats: Default::default(),
            limit: limit.into(),
            status: None,
            killed: None,
            drain_until: None,
        }
    }

    fn run(&mut self, deadline: Instant, sigfd: RawFd, sink: &Sink, control: &Control) -> Outcome {
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
        let mut buf = [0u8; MAX_CHUNK];
        let n = match sys::read(fd, &mut buf) {
            Ok(0) | Err(_) => {
                self.pipes[i] = None;
                return;
            }
            Ok(n) => n,
        };
        let stats = &mut self.stats[i];
        let room = self.limit.saturating_sub(stats.sent).min(n as u64) as usize;
        if room > 0 {
            let stream = if i == 0 { Stream::Stdout } else { Stream::Stderr };
            sink.send(&GuestMsg::ExecOutput { stream, data: chunk(&buf[..room]) });
        }
        stats.sent += room as u64;
        stats.truncated += (n - room) as u64;
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
