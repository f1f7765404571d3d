//! Runs a scenario: cgroups, workers held until placed, release (time 0), steps on schedule,
//! a sample every period, then stop (SIGKILL after a grace), remove the cgroups, report.
//!
//! Setup errors end the run (the caller turns them into a Panic frame) after cleaning up;
//! errors of a step's operation are logged, counted in its Step event, and the run goes on.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use ktstr_shared::scenario::{CgroupSpec, Op, Scenario, SchedPolicy, WorkerInfo};
use ktstr_shared::wire::{
    GuestMsg, LogLevel, Outcome, RunResult, ScenarioEvent, ScenarioEventKind, WorkerReport, cpu_mask, mask_cpus, text,
};

use crate::cgroup::{Cgroups, Needs};
use crate::control::Control;
use crate::sampler::Sampler;
use crate::sched::Scheduler;
use crate::sink::Sink;
use crate::sys;
use crate::workers::{Asked, Pool};

/// Time workers get to exit after being asked, before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_millis(500);
/// Longest time between two looks at the scheduler under test.
const SCHED_CHECK: Duration = Duration::from_millis(100);
/// Time a SIGKILLed worker gets to disappear before the init gives up on it.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// What the session lends a scenario run.
pub struct Env<'a> {
    pub sink: &'a Sink,
    pub control: &'a Control,
    /// Where the run's cgroups go; `None` skips cgroup operations (host mode).
    pub cgroup_root: Option<&'a Path>,
    /// Logs only as frames, not on stderr.
    pub quiet: bool,
    /// In a guest (not host mode): the init may change kernel settings.
    pub guest: bool,
    /// The scheduler under test: the run ends early when it fails.
    pub sched: Option<&'a Scheduler>,
}

impl Env<'_> {
    fn log(&self, level: LogLevel, msg: &str) {
        if !self.quiet {
            eprintln!("ktstr-init: {msg}");
        }
        self.sink.send(&GuestMsg::Log { t_ns: sys::boottime_ns(), level, text: text(msg) });
    }

    fn event(&self, kind: ScenarioEventKind) {
        self.sink.send(&GuestMsg::Scenario(ScenarioEvent { t_ns: sys::boottime_ns(), kind }));
    }
}

/// Runs `scn` until its end, the deadline or a Stop; `Err` when it cannot be set up.
pub fn run(scn: &Scenario, env: &Env, deadline: Instant) -> Result<RunResult, String> {
    let mut r = Runner::new(scn, env)?;
    if let Err(e) = r.setup() {
        env.log(LogLevel::Error, &e);
        r.finish(STOP_GRACE);
        return Err(e);
    }
    r.start_sampler();
    let t0 = Instant::now();
    r.release_all();
    let workers = r.pool.workers.len() as u32;
    let cgroups_applied = r.cgroups.is_some();
    env.event(ScenarioEventKind::Started { workers, cgroups: r.live.len() as u16, cgroups_applied });
    let outcome = r.main_loop(t0, deadline);
    let wall_ns = t0.elapsed().as_nanos() as u64;
    env.event(ScenarioEventKind::Finished);
    // Past the deadline the watchdog is near: no grace, SIGKILL at once.
    r.finish(if outcome == Outcome::TimedOut { Duration::ZERO } else { STOP_GRACE });
    for report in r.reports() {
        env.sink.send(&GuestMsg::WorkerReport(report));
    }
    Ok(RunResult { outcome, wall_ns, stdout: Default::default(), stderr: Default::default() })
}

struct Runner<'a> {
    scn: &'a Scenario,
    env: &'a Env<'a>,
    /// Workers of each cgroup definition (wire numbering).
    defs: Vec<(&'a CgroupSpec, Vec<WorkerInfo<'a>>)>,
    /// The next definition an `AddCgroup` creates.
    next_def: usize,
    /// Live cgroups: name -> definition index.
    live: BTreeMap<String, u16>,
    cgroups: Option<Cgroups>,
    needs: Needs,
    pool: Pool,
    sampler: Option<Sampler>,
    sigchld: OwnedFd,
}

impl<'a> Runner<'a> {
    fn new(scn: &'a Scenario, env: &'a Env<'a>) -> Result<Runner<'a>, String> {
        let mut defs: Vec<(&CgroupSpec, Vec<WorkerInfo>)> = scn.cgroup_defs().map(|d| (d, Vec::new())).collect();
        for w in scn.workers() {
            defs[w.cgroup as usize].1.push(w);
        }
        let total = defs.iter().map(|d| d.1.len()).sum();
        let pool = Pool::new(total).map_err(|e| format!("cannot create shared memory for {total} workers: {e}"))?;
        let sigchld = sys::sigchld_fd().map_err(|e| format!("cannot create a signalfd: {e}"))?;
        Ok(Runner {
            scn,
            env,
            defs,
            next_def: 0,
            live: BTreeMap::new(),
            cgroups: None,
            needs: needs(scn),
            pool,
            sampler: None,
            sigchld,
        })
    }

    fn setup(&mut self) -> Result<(), String> {
        self.boost_if_realtime();
        match self.env.cgroup_root {
            Some(root) => self.open_cgroups(root)?,
            None => self.env.log(
                LogLevel::Info,
                "host mode: cgroup operations skipped (no --cgroup-root): cpusets, weights and moves are not applied",
            ),
        }
        if self.scn.sample_period_ms > 0 && self.env.guest {
            self.enable_schedstats();
        }
        for _ in &self.scn.cgroups {
            self.add_cgroup()?;
        }
        if !self.pool.has_schedstat() && !self.pool.workers.is_empty() {
            self.env.log(LogLevel::Warn, "no /proc/<pid>/schedstat: worker CPU time and run delay read as 0");
        }
        Ok(())
    }

    /// The per-CPU counters of /proc/schedstat other than run time and delay count only while
    /// `kernel.sched_schedstats` is on (off by default): turn it on in the guest.
    fn enable_schedstats(&self) {
        const KNOB: &str = "/proc/sys/kernel/sched_schedstats";
        match std::fs::write(KNOB, "1") {
            Ok(()) => self.env.log(LogLevel::Info, "enabled kernel.sched_schedstats for per-CPU counters"),
            Err(e) => self
                .env
                .log(LogLevel::Warn, &format!("write \"1\" to {KNOB}: {e}; per-CPU schedule/wake-up counts read as 0")),
        }
    }

    fn open_cgroups(&mut self, root: &Path) -> Result<(), String> {
        let cg = Cgroups::open(root, self.needs).map_err(|e| format!("cgroup setup: {e}"))?;
        for w in &cg.warnings {
            self.env.log(LogLevel::Warn, w);
        }
        if cg.is_plain() {
            let msg = format!(
                "cgroup root {} is not a cgroup2 filesystem: control files are written as plain files",
                root.display()
            );
            self.env.log(LogLevel::Warn, &msg);
        }
        self.cgroups = Some(cg);
        Ok(())
    }

    /// The scheduler under test must not starve the sampler of a run with real-time workers.
    /// Reset-on-fork keeps the workers from inheriting it.
    fn boost_if_realtime(&self) {
        let rt = self
            .defs
            .iter()
            .flat_map(|d| &d.0.workers)
            .any(|w| matches!(w.policy, SchedPolicy::Fifo(_) | SchedPolicy::RoundRobin(_)));
        if !rt {
            return;
        }
        match sys::set_scheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, 99) {
            Ok(()) => self.env.log(LogLevel::Info, "real-time workers: the init samples at SCHED_FIFO 99"),
            Err(e) => self.env.log(
                LogLevel::Warn,
                &format!("real-time workers, but the init cannot raise itself to SCHED_FIFO: {e}"),
            ),
        }
    }

    /// Creates the next cgroup definition and starts its workers (held).
    fn add_cgroup(&mut self) -> Result<Vec<usize>, String> {
        let k = self.next_def;
        self.next_def += 1;
        let (spec, infos) = (self.defs[k].0, self.defs[k].1.clone());
        if let Some(cg) = &mut self.cgroups {
            cg.create(spec, self.needs).map_err(|e| format!("cgroup {}: {e}", spec.name))?;
        }
        self.live.insert(spec.name.clone(), k as u16);
        let first = self.pool.workers.len();
        for group in infos.chunk_by(|a, b| std::ptr::eq(a.spec, b.spec)) {
            self.pool.spawn(group, &spec.name)?;
        }
        let started: Vec<usize> = (first..self.pool.workers.len()).collect();
        for (&i, info) in started.iter().zip(&infos) {
            self.pool.place(i, info.spec, self.cgroups.as_ref())?;
        }
        Ok(started)
    }

    /// Opens the statistics files and takes the per-CPU baseline: the first sample's deltas
    /// start at the release.
    fn start_sampler(&mut self) {
        if self.scn.sample_period_ms > 0 {
            let sampler = Sampler::new(self.scn.sample_period_ms);
            self.env.log(LogLevel::Info, &sampler.describe());
            self.sampler = Some(sampler);
        }
    }

    fn release_all(&self) {
        for i in 0..self.pool.workers.len() {
            self.pool.release(i);
        }
    }

    fn main_loop(&mut self, t0: Instant, deadline: Instant) -> Outcome {
        let end = t0 + Duration::from_millis(self.scn.duration_ms.into());
        let steps: Vec<Instant> = self.scn.step_starts_ms().map(|ms| t0 + Duration::from_millis(ms)).collect();
        let period = Duration::from_millis(self.scn.sample_period_ms.into());
        let mut next_step = 0;
        let mut next_sample = (!period.is_zero()).then(|| t0 + period);
        loop {
            let now = Instant::now();
            if self.env.control.stop_requested() {
                return Outcome::Stopped;
            }
            if now >= deadline {
                return Outcome::TimedOut;
            }
            if now >= end {
                return Outcome::Completed;
            }
            if self.env.sched.and_then(Scheduler::check).is_some() {
                // The session asks the scheduler again and explains the failure.
                return Outcome::SchedulerFailed { reason: text("the scheduler under test failed") };
            }
            if steps.get(next_step).is_some_and(|&t| now >= t) {
                self.apply_step(next_step);
                next_step += 1;
                continue;
            }
            if let Some(t) = next_sample.filter(|&t| now >= t) {
                self.sample();
                // Missed ticks are skipped: samples stay on the period grid.
                let behind = (now - t).as_nanos() / period.as_nanos();
                next_sample = Some(t + period * (behind as u32 + 1));
                continue;
            }
            let watch = self.env.sched.map(|_| now + SCHED_CHECK);
            let wake = [Some(end), Some(deadline), steps.get(next_step).copied(), next_sample, watch];
            self.wait(wake.into_iter().flatten().min().unwrap_or(end));
        }
    }

    /// Sleeps until `until`, a child exit or a host request.
    fn wait(&mut self, until: Instant) {
        let mut fds = [sys::pollfd(self.sigchld.as_raw_fd()), sys::pollfd(self.env.control.wake_fd())];
        if let Err(e) = sys::poll(&mut fds, until.saturating_duration_since(Instant::now())) {
            self.env.log(LogLevel::Error, &format!("poll failed in the scenario loop: {e}"));
            std::thread::sleep(Duration::from_millis(10));
        }
        if fds[0].revents != 0 {
            sys::drain(self.sigchld.as_raw_fd());
            self.handle_exits();
        }
        if fds[1].revents != 0 {
            self.env.control.clear_wake();
        }
    }

    /// Workers that ended by themselves: frozen, announced, their error logged.
    fn handle_exits(&mut self) {
        for i in self.pool.reap() {
            self.pool.freeze(&[i]);
            let w = &self.pool.workers[i];
            if w.asked.is_some() {
                continue;
            }
            self.env.event(ScenarioEventKind::WorkerExited { id: w.id });
            let why = self.pool.error(i).unwrap_or_else(|| format!("{:?}", w.end()));
            self.env.log(LogLevel::Warn, &format!("{} ended early: {why}", w.describe()));
        }
    }

    fn sample(&mut self) {
        let Some(sampler) = &mut self.sampler else { return };
        for frame in sampler.tick(&mut self.pool) {
            self.env.sink.send(&GuestMsg::Sample(frame));
        }
    }

    fn apply_step(&mut self, k: usize) {
        let mut failed = 0u16;
        for (o, op) in self.scn.steps[k].ops.iter().enumerate() {
            if let Err(e) = self.apply(op) {
                failed += 1;
                self.env.log(LogLevel::Error, &format!("steps[{k}].ops[{o}] ({}): {e}", op.describe()));
            }
        }
        self.env.event(ScenarioEventKind::Step { index: k as u16, failed_ops: failed });
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::AddCgroup(_) => {
                let started = self.add_cgroup()?;
                started.iter().for_each(|&i| self.pool.release(i));
                Ok(())
            }
            Op::RemoveCgroup { cgroup } => self.remove_cgroup(cgroup),
            Op::SetCpuset { cgroup, cpus } => {
                let value = cpus.as_ref().map(|c| c.to_string()).unwrap_or_default();
                self.write(cgroup, "cpuset.cpus", &value)
            }
            Op::SetWeight { cgroup, weight } => self.write(cgroup, "cpu.weight", &weight.to_string()),
            Op::SetAffinity { cgroup, cpus } => {
                let cpus = cpus.as_ref().map(|c| c.0.as_slice());
                self.members(cgroup).into_iter().try_for_each(|i| self.pool.set_affinity(i, cpus))
            }
            Op::MoveTasks { from, to } => self.move_tasks(from, to),
            Op::PauseWorkers { cgroup } => self.signal(cgroup, libc::SIGSTOP),
            Op::ResumeWorkers { cgroup } => self.signal(cgroup, libc::SIGCONT),
        }
    }

    /// Live workers now in cgroup `name`.
    fn members(&self, name: &str) -> Vec<usize> {
        let ws = &self.pool.workers;
        (0..ws.len()).filter(|&i| ws[i].alive() && ws[i].cgroup_name == name).collect()
    }

    fn write(&self, cgroup: &str, file: &str, value: &str) -> Result<(), String> {
        match &self.cgroups {
            Some(cg) => cg.write(cgroup, file, value).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn signal(&self, cgroup: &str, sig: libc::c_int) -> Result<(), String> {
        self.members(cgroup).into_iter().for_each(|i| sys::signal(self.pool.workers[i].pid, sig));
        Ok(())
    }

    fn move_tasks(&mut self, from: &str, to: &str) -> Result<(), String> {
        let index = *self.live.get(to).ok_or_else(|| format!("cgroup {to} is not alive"))?;
        for i in self.members(from) {
            if let Some(cg) = &self.cgroups {
                cg.place(to, self.pool.workers[i].pid).map_err(|e| e.to_string())?;
            }
            let w = &mut self.pool.workers[i];
            (w.cgroup, w.cgroup_name) = (index, to.to_owned());
        }
        Ok(())
    }

    fn remove_cgroup(&mut self, name: &str) -> Result<(), String> {
        let members = self.members(name);
        self.pool.freeze(&members);
        for &i in &members {
            self.pool.kill(i, Asked::Remove);
        }
        self.wait_until_gone(&members, KILL_WAIT);
        self.live.remove(name);
        match &mut self.cgroups {
            Some(cg) => cg.remove(name).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Reaps until none of `workers` is alive or `limit` passes.
    fn wait_until_gone(&mut self, workers: &[usize], limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            self.pool.reap();
            if workers.iter().all(|&i| !self.pool.workers[i].alive()) || Instant::now() >= until {
                return;
            }
            let mut fds = [sys::pollfd(self.sigchld.as_raw_fd())];
            let _ = sys::poll(&mut fds, until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
            sys::drain(self.sigchld.as_raw_fd());
        }
    }

    /// Freezes every live worker now, stops them (SIGKILL after the grace) and removes
    /// the cgroups.
    fn finish(&mut self, grace: Duration) {
        let live: Vec<usize> = (0..self.pool.workers.len()).filter(|&i| self.pool.workers[i].alive()).collect();
        self.pool.freeze(&live);
        for &i in &live {
            self.pool.ask_stop(i);
        }
        self.wait_until_gone(&live, grace);
        for &i in &live {
            self.pool.kill(i, Asked::Kill);
        }
        self.wait_until_gone(&live, KILL_WAIT);
        for &i in live.iter().filter(|&&i| self.pool.workers[i].alive()) {
            let w = &self.pool.workers[i];
            let msg = format!(
                "{} (pid {}) survived SIGKILL for {KILL_WAIT:?}: {}",
                w.describe(),
                w.pid,
                crate::procfs::task_state(w.pid)
            );
            self.env.log(LogLevel::Error, &msg);
        }
        if let Some(cg) = &mut self.cgroups {
            for e in cg.teardown() {
                self.env.log(LogLevel::Warn, &format!("cgroup cleanup: {e}"));
            }
        }
    }

    fn reports(&self) -> Vec<WorkerReport> {
        self.pool.workers.iter().filter_map(|w| Some(report(w, w.last.as_ref()?))).collect()
    }
}

fn report(w: &crate::workers::Worker, s: &crate::workers::Snapshot) -> WorkerReport {
    let task = s.task.unwrap_or_default();
    // A gap still open at the end (a worker that stopped progressing) counts too.
    let open_gap = s.t_ns.saturating_sub(s.last_ns);
    let (max_gap_ns, max_gap_at_ns, max_gap_cpu) = if open_gap > s.max_gap_ns {
        (open_gap, s.last_ns, s.cpu)
    } else {
        (s.max_gap_ns, s.max_gap_at_ns, s.max_gap_cpu)
    };
    let measured = s.latency.iter().any(|&c| c > 0);
    WorkerReport {
        id: w.id,
        cgroup: w.cgroup,
        work_units: s.units,
        cpu_time_ns: task.cpu_time_ns,
        wall_ns: s.t_ns.saturating_sub(s.released_ns),
        run_delay_ns: task.run_delay_ns,
        timeslices: task.timeslices,
        voluntary_switches: task.voluntary,
        involuntary_switches: task.involuntary,
        migrations: task.migrations,
        observed_migrations: s.observed_migrations,
        cpus_used: cpu_mask(mask_cpus(&s.cpus_used)),
        max_gap_ns,
        max_gap_at_ns,
        max_gap_cpu,
        latency: if measured { s.latency.iter().copied().collect() } else { Default::default() },
        end: w.end().unwrap_or(ktstr_shared::wire::WorkerEnd::Killed),
    }
}

/// Controllers the scenario's writes rely on.
fn needs(scn: &Scenario) -> Needs {
    let ops = || scn.steps.iter().flat_map(|s| &s.ops);
    Needs {
        cpuset: scn.cgroup_defs().any(|d| d.cpuset.is_some())
            || ops().any(|op| matches!(op, Op::SetCpuset { cpus: Some(_), .. })),
        cpu: scn.cgroup_defs().any(|d| d.weight.is_some()) || ops().any(|op| matches!(op, Op::SetWeight { .. })),
    }
}
