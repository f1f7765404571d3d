//! The plan-running path shared by PID 1 and host mode: Hello, plan, run, Result, Bye.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ktstr_shared::plan::{MAX_PLAN_BYTES, PlanError, RunPlan};
use ktstr_shared::scenario::Scenario;
use ktstr_shared::wire::{
    EXIT_INIT_FAILED, EXIT_TIMED_OUT, GuestMsg, Hello, LogLevel, Outcome, PROTOCOL_VERSION, RunResult, text,
};

use crate::control::{self, Control};
use crate::exec::{self, CHILD_PGID};
use crate::pid1::{self, EarlyReport};
use crate::scenario;
use crate::sched::Scheduler;
use crate::sink::Sink;
use crate::sys;
use crate::watchdog::WATCHDOG_GRACE;

/// Watchdog deadline until the plan says otherwise: reading the plan takes milliseconds.
const PRE_PLAN_DEADLINE: Duration = Duration::from_secs(30);
use crate::watchdog::Watchdog;

/// How the process ends.
#[derive(Clone, Copy)]
pub enum Exit {
    /// PID 1: drain the protocol tty and power off.
    PowerOff { tty: RawFd },
    /// Host mode: exit with the code.
    Process,
}

impl Exit {
    pub fn now(self, code: i32) -> ! {
        sys::kill_group(CHILD_PGID.load(Ordering::SeqCst));
        match self {
            Exit::PowerOff { tty } => pid1::power_off(Some(tty)),
            // _exit: other threads may hold locks that exit handlers would need.
            // SAFETY: _exit has no preconditions.
            Exit::Process => unsafe { libc::_exit(code) },
        }
    }
}

/// Where this boot stands when the protocol channel opens.
pub struct Boot {
    pub t0: Instant,
    pub init_start_ns: u64,
    pub mounts_done_ns: u64,
    pub early: EarlyReport,
    /// Where scenario cgroups go; `None` skips cgroup operations.
    pub cgroup_root: Option<PathBuf>,
}

/// One run of a plan; the channel is `out` (frames) and `input` (host messages).
pub fn run(boot: Boot, out: RawFd, input: RawFd, exit: Exit, plan_path: &Path) -> ! {
    let sink = Arc::new(Sink::new(out));
    sink.delimit();
    install_panic_hook(sink.clone(), exit);
    let watchdog = Watchdog::start(boot.t0 + PRE_PLAN_DEADLINE, watchdog_fire(sink.clone(), exit))
        .unwrap_or_else(|e| fatal(&sink, exit, &format!("cannot start the watchdog: {e}")));
    let control = Control::new().map(Arc::new);
    let control = control.unwrap_or_else(|e| fatal(&sink, exit, &format!("cannot create an eventfd: {e}")));
    if let Err(e) = control::spawn_reader(input, control.clone(), sink.clone()) {
        fatal(&sink, exit, &format!("cannot start the host reader: {e}"));
    }
    sink.send(&hello(&boot, exit));
    if matches!(exit, Exit::PowerOff { .. }) {
        // The guest's view of its topology, for the host to check against the spec.
        for cpu in crate::topo::read() {
            sink.send(&GuestMsg::Topology(cpu));
        }
    }
    let mut session = Session {
        sink,
        control,
        watchdog: watchdog.clone(),
        exit,
        quiet: false,
        cgroup_root: boot.cgroup_root.clone(),
    };
    for (level, note) in &boot.early.notes {
        session.log(*level, note);
    }
    if let Some(why) = &boot.early.fatal {
        fatal(&session.sink, exit, why);
    }
    let plan = load_plan(plan_path).unwrap_or_else(|e| fatal(&session.sink, exit, &e.to_string()));
    let deadline = boot.t0 + Duration::from_millis(plan.deadline_ms.into());
    watchdog.set_deadline(deadline + WATCHDOG_GRACE);
    session.quiet = plan.console_quiet;
    if plan.console_quiet
        && matches!(exit, Exit::PowerOff { .. })
        && let Err(e) = pid1::quiet_kernel_console()
    {
        session.log(LogLevel::Warn, &format!("cannot lower the console loglevel: {e}"));
    }
    let result = session.run_plan(&plan, deadline);
    let exit_code = result.outcome.exit_code();
    session.sink.send(&GuestMsg::Result(result));
    session.sink.send(&GuestMsg::Bye { exit_code });
    exit.now(exit_code)
}

struct Session {
    sink: Arc<Sink>,
    control: Arc<Control>,
    watchdog: Arc<Watchdog>,
    exit: Exit,
    /// Logs go only over the protocol, not to the console.
    quiet: bool,
    cgroup_root: Option<PathBuf>,
}

impl Session {
    fn log(&self, level: LogLevel, msg: &str) {
        if !self.quiet {
            eprintln!("ktstr-init: {msg}");
        }
        self.sink.send(&GuestMsg::Log { t_ns: sys::boottime_ns(), level, text: text(msg) });
    }

    fn run_plan(&self, plan: &RunPlan, deadline: Instant) -> RunResult {
        if plan.wait_for_start
            && let Some(outcome) = self.wait_for_start(deadline)
        {
            return nothing_run(outcome);
        }
        let mut sched = None;
        if let Some(sp) = &plan.scheduler {
            match self.start_scheduler(sp) {
                Ok(s) => sched = Some(s),
                Err(reason) => return nothing_run(Outcome::SchedulerFailed { reason: text(&reason) }),
            }
        }
        let mut result = match (&plan.scenario, &plan.exec) {
            (Some(scn), _) => self.run_scenario(scn, deadline, sched.as_ref()),
            (None, Some(exec)) => exec::run(exec, deadline, &self.sink, &self.control, &self.watchdog),
            (None, None) => nothing_run(Outcome::Completed),
        };
        let Some(sched) = sched else { return result };
        // A scheduler failure outranks how the workload ended: it is usually the cause.
        let ended = match sched.check() {
            Some(failure) => Err(sched.fail(failure, &self.sink)),
            None => sched.stop(&self.sink),
        };
        if let Err(reason) = ended {
            result.outcome = Outcome::SchedulerFailed { reason: text(&reason) };
        }
        result
    }

    /// Starts the plan's scheduler and waits for it to attach; `Err` with the reason.
    fn start_scheduler(&self, sp: &ktstr_shared::plan::SchedPlan) -> Result<Scheduler, String> {
        let mut s = Scheduler::start(sp, &self.sink).inspect_err(|e| self.log(LogLevel::Error, e))?;
        match s.wait_attached(&self.sink, &self.control) {
            Ok(()) => Ok(s),
            Err(failure) => Err(s.fail(failure, &self.sink)),
        }
    }

    fn run_scenario(&self, scn: &Scenario, deadline: Instant, sched: Option<&Scheduler>) -> RunResult {
        let env = scenario::Env {
            sink: &self.sink,
            control: &self.control,
            cgroup_root: self.cgroup_root.as_deref(),
            quiet: self.quiet,
            guest: matches!(self.exit, Exit::PowerOff { .. }),
            sched,
        };
        scenario::run(scn, &env, deadline).unwrap_or_else(|e| fatal(&self.sink, self.exit, &format!("scenario: {e}")))
    }

    /// `None` once the host said Start; otherwise why the run ends before starting.
    fn wait_for_start(&self, deadline: Instant) -> Option<Outcome> {
        self.log(LogLevel::Info, "waiting for the host's Start");
        loop {
            self.control.clear_wake();
            if self.control.stop_requested() {
                return Some(Outcome::Stopped);
            }
            if self.control.started() {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(Outcome::TimedOut);
            }
            if let Err(e) = sys::poll(&mut [sys::pollfd(self.control.wake_fd())], left) {
                fatal(&self.sink, self.exit, &format!("poll failed while waiting for Start: {e}"));
            }
        }
    }
}

fn nothing_run(outcome: Outcome) -> RunResult {
    RunResult { outcome, wall_ns: 0, stdout: Default::default(), stderr: Default::default() }
}

fn hello(boot: &Boot, exit: Exit) -> GuestMsg {
    GuestMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        kernel_release: text(&sys::kernel_release()),
        nr_cpus: sys::nr_cpus(),
        host_mode: matches!(exit, Exit::Process),
        init_start_ns: boot.init_start_ns,
        mounts_done_ns: boot.mounts_done_ns,
        hello_ns: sys::boottime_ns(),
    })
}

/// The init cannot go on: say why on both channels and end.
fn fatal(sink: &Sink, exit: Exit, why: &str) -> ! {
    eprintln!("ktstr-init: fatal: {why}");
    sink.send_urgent(&GuestMsg::Panic { text: text(why) });
    exit.now(EXIT_INIT_FAILED)
}

fn watchdog_fire(sink: Arc<Sink>, exit: Exit) -> impl FnOnce() + Send + 'static {
    move || {
        let why = "watchdog: the run outlived its deadline plus grace; the init is stuck";
        eprintln!("ktstr-init: {why}");
        // The main path may be blocked inside a write: give the report a bounded time only.
        pid1::bounded(Duration::from_secs(1), move || sink.send_urgent(&GuestMsg::Panic { text: text(why) }));
        exit.now(EXIT_TIMED_OUT)
    }
}

fn install_panic_hook(sink: Arc<Sink>, exit: Exit) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let payload = info.payload();
        let msg = payload.downcast_ref::<&str>().copied();
        let msg = msg.or(payload.downcast_ref::<String>().map(String::as_str)).unwrap_or("non-string panic payload");
        let at = info.location().map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()));
        let why = format!("panic in thread '{name}': {msg}{}", at.unwrap_or_default());
        eprintln!("ktstr-init: {why}");
        sink.send_urgent(&GuestMsg::Panic { text: text(&why) });
        exit.now(EXIT_INIT_FAILED)
    }));
}

#[derive(Debug)]
enum LoadError {
    Read { path: PathBuf, err: io::Error },
    Plan { path: PathBuf, err: PlanError },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, err } => write!(
                f,
                "cannot read the run plan {}: {err}; the image must contain it (ktstr-host writes it)",
                path.display()
            ),
            LoadError::Plan { path, err } => write!(f, "bad run plan {}: {err}", path.display()),
        }
    }
}

fn load_plan(path: &Path) -> Result<RunPlan, LoadError> {
    let read_err = |err| LoadError::Read { path: path.to_owned(), err };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    // One byte over the limit is enough for RunPlan::from_bytes to refuse the file.
    file.take(MAX_PLAN_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(read_err)?;
    RunPlan::from_bytes(&bytes).map_err(|err| LoadError::Plan { path: path.to_owned(), err })
}
