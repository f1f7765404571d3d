//! The init's side of the worker processes: spawn them held, place them (cgroup, policy,
//! nice, affinity), release them, read their progress, stop them, and say how each ended.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::{Relaxed, Release};

use ktstr_shared::scenario::{SchedPolicy, WorkerInfo, WorkerSpec};
use ktstr_shared::wire::{CPU_MASK_WORDS, WorkerEnd};

use crate::cgroup::Cgroups;
use crate::procfs::{TaskFiles, TaskStats};
use crate::shm::{Shm, futex_wake};
use crate::sys;
use crate::worker::{self, SHM_FD};

/// Why the init ended a worker, to tell a clean stop from a death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    Stop,
    Kill,
    Remove,
}

/// A worker's progress and counters at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub t_ns: u64,
    pub units: u64,
    pub last_ns: u64,
    pub released_ns: u64,
    pub cpu: u32,
    pub max_gap_ns: u64,
    pub max_gap_at_ns: u64,
    pub max_gap_cpu: u32,
    pub observed_migrations: u64,
    pub cpus_used: [u64; CPU_MASK_WORDS],
    pub latency: Vec<u64>,
    /// The last /proc reading (kept after the task is gone).
    pub task: Option<TaskStats>,
}

pub struct Worker {
    pub id: u32,
    /// Current cgroup (definition index) and its name.
    pub cgroup: u16,
    pub cgroup_name: String,
    pub work: &'static str,
    pub pid: libc::pid_t,
    files: TaskFiles,
    pub task: Option<TaskStats>,
    pub asked: Option<Asked>,
    /// Wait status once reaped.
    pub status: Option<libc::c_int>,
    /// Frozen at the end of the run or when the worker ended: what its report says.
    pub last: Option<Snapshot>,
}

impl Worker {
    pub fn alive(&self) -> bool {
        self.status.is_none()
    }

    /// How it ended (once reaped).
    pub fn end(&self) -> Option<WorkerEnd> {
        let st = self.status?;
        Some(match self.asked {
            Some(Asked::Remove) => WorkerEnd::Removed,
            Some(Asked::Kill) => WorkerEnd::Killed,
            Some(Asked::Stop) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => WorkerEnd::Stopped,
            _ if libc::WIFSIGNALED(st) => WorkerEnd::Signaled { signal: libc::WTERMSIG(st) },
            _ => WorkerEnd::Exited { code: libc::WEXITSTATUS(st) },
        })
    }

    pub fn describe(&self) -> String {
        format!("worker {} ({} in {})", self.id, self.work, self.cgroup_name)
    }
}

/// Every worker of the run, indexed by id (= its shared-memory slot).
pub struct Pool {
    shm: Shm,
    pub workers: Vec<Worker>,
    buf: Vec<u8>,
}

impl Pool {
    /// Shared memory for `total` workers (every worker the scenario will ever have).
    pub fn new(total: usize) -> io::Result<Pool> {
        Ok(Pool { shm: Shm::create(total)?, workers: Vec::new(), buf: Vec::with_capacity(8192) })
    }

    /// Spawns the workers of one spec, held until [`Self::release`]; groups get their pipes.
    /// `first` is the id of `workers[0]`.
    pub fn spawn(&mut self, workers: &[WorkerInfo], cgroup_name: &str) -> Result<(), String> {
        let Some(first) = workers.first() else { return Ok(()) };
        let group = first.spec.work.group_size() as usize;
        for members in workers.chunks(group) {
            let pipes = if matches!(first.spec.work, ktstr_shared::scenario::WorkType::PipePingPong { .. }) {
                Some(pipe_pair().map_err(|e| format!("pipes for workers {}..: {e}", members[0].id))?)
            } else {
                None
            };
            for (role, info) in members.iter().enumerate() {
                let fds = pipes.as_ref().map(|p| p[role].each_ref().map(AsRawFd::as_raw_fd));
                let args = worker::Args {
                    slot: info.id as usize,
                    leader: members[0].id as usize,
                    role: role as u32,
                    work: info.spec.work.clone(),
                };
                let pid = self.launch(&args, fds).map_err(|e| format!("cannot start worker {}: {e}", info.id))?;
                self.workers.push(Worker {
                    id: info.id,
                    cgroup: info.cgroup,
                    cgroup_name: cgroup_name.into(),
                    work: info.spec.work.name(),
                    pid,
                    files: TaskFiles::open(pid),
                    task: None,
                    asked: None,
                    status: None,
                    last: None,
                });
            }
        }
        Ok(())
    }

    /// `/proc/self/exe --worker ...` with the shared memory (and pipe ends) as fds 3 (4, 5).
    fn launch(&self, args: &worker::Args, pipe: Option<[RawFd; 2]>) -> io::Result<libc::pid_t> {
        let mut map = [self.shm.fd(), -1, -1];
        if let Some([r, w]) = pipe {
            map[1..].copy_from_slice(&[r, w]);
        }
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("--worker").args(args.to_argv()).env_clear();
        // Never the protocol fd: in host mode that is our stdout.
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        // SAFETY: the closure only makes async-signal-safe system calls.
        unsafe { cmd.pre_exec(move || child_fds(&map, parent)) };
        Ok(cmd.spawn()?.id() as libc::pid_t)
    }

    /// Moves worker `i` into its cgroup and applies policy, nice and affinity.
    pub fn place(&self, i: usize, spec: &WorkerSpec, cgroups: Option<&Cgroups>) -> Result<(), String> {
        let w = &self.workers[i];
        let fail = |what: String, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", w.describe());
        if let Some(cg) = cgroups {
            cg.place(&w.cgroup_name, w.pid).map_err(|e| fail("placing it".into(), &e))?;
        }
        let (policy, prio, name) = policy_args(spec.policy);
        if spec.policy != SchedPolicy::Normal {
            let what = format!("sched_setscheduler(pid {}, {name}, priority {prio})", w.pid);
            sys::set_scheduler(w.pid, policy, prio).map_err(|e| fail(what, &e))?;
        }
        if spec.nice != 0 {
            let what = format!("setpriority(pid {}, nice {})", w.pid, spec.nice);
            sys::set_nice(w.pid, spec.nice).map_err(|e| fail(what, &e))?;
        }
        if let Some(cpus) = &spec.affinity {
            self.set_affinity(i, Some(&cpus.0))?;
        }
        Ok(())
    }

    /// `sched_setaffinity` of worker `i`; `None` = every possible CPU.
    pub fn set_affinity(&self, i: usize, cpus: Option<&[u32]>) -> Result<(), String> {
        let w = &self.workers[i];
        let all: Vec<u32>;
        let cpus = match cpus {
            Some(c) => c,
            None => {
                all = (0..sys::possible_cpus()).collect();
                &all
            }
        };
        let list = ktstr_shared::scenario::CpuList(cpus.to_vec());
        sys::set_affinity(w.pid, cpus)
            .map_err(|e| format!("{}: sched_setaffinity(pid {}, CPUs {list}): {e}", w.describe(), w.pid))
    }

    /// Lets worker `i` start working.
    pub fn release(&self, i: usize) {
        let slot = self.shm.slot(self.workers[i].id as usize);
        slot.control.go.store(1, Release);
        futex_wake(&slot.control.go, 1);
    }

    /// Asks worker `i` to finish: stop flag, then SIGCONT (if paused) and SIGUSR1 (interrupts
    /// a blocking call). A paused worker cannot finish by itself; it is killed after the grace.
    pub fn ask_stop(&mut self, i: usize) {
        let w = &mut self.workers[i];
        w.asked.get_or_insert(Asked::Stop);
        self.shm.slot(w.id as usize).control.stop.store(1, Release);
        if w.alive() {
            sys::signal(w.pid, libc::SIGCONT);
            sys::signal(w.pid, libc::SIGUSR1);
        }
    }

    /// SIGKILL to worker `i`, remembering why.
    pub fn kill(&mut self, i: usize, why: Asked) {
        let w = &mut self.workers[i];
        if w.alive() {
            w.asked = Some(why);
            sys::signal(w.pid, libc::SIGKILL);
        }
    }

    /// Reaps exited children; returns the indices of workers that just ended. Other
    /// children (orphans re-parented to PID 1) are reaped and ignored.
    pub fn reap(&mut self) -> Vec<usize> {
        let mut ended = Vec::new();
        while let Some((pid, status)) = sys::reap_one() {
            if let Some(i) = self.workers.iter().position(|w| w.pid == pid && w.alive()) {
                self.workers[i].status = Some(status);
                ended.push(i);
            }
        }
        ended
    }

    /// Reads workers `which` now: all their slots first (so that counts are taken at nearly
    /// the same moment), then their /proc counters (the last ones kept once a task is gone);
    /// `details` includes switches and migrations (see [`TaskFiles::read`]).
    /// Their `t_ns` is taken right after the slots, so no progress is newer than it.
    pub fn read(&mut self, which: &[usize], details: bool) -> Vec<Snapshot> {
        self.read_with(which, details, false)
    }

    fn read_with(&mut self, which: &[usize], details: bool, latency: bool) -> Vec<Snapshot> {
        let mut snaps: Vec<Snapshot> = which.iter().map(|&i| self.progress(i, latency)).collect();
        let t_ns = sys::boottime_ns();
        for (&i, snap) in which.iter().zip(&mut snaps) {
            self.read_task(i, details);
            snap.task = self.workers[i].task;
            snap.t_ns = t_ns;
        }
        snaps
    }

    fn progress(&self, i: usize, latency: bool) -> Snapshot {
        let slot = self.shm.slot(self.workers[i].id as usize);
        let p = &slot.progress;
        // The histogram before the counters: a worker still running between the two reads
        // adds latencies and units, and each latency comes with a unit, so read this way the
        // histogram never holds more wake-ups than the units say (at most one more).
        let latency = if latency { slot.histogram() } else { Vec::new() };
        Snapshot {
            t_ns: 0,
            units: p.units.load(Relaxed),
            last_ns: p.last_ns.load(Relaxed),
            released_ns: p.released_ns.load(Relaxed),
            cpu: p.cpu.load(Relaxed),
            max_gap_ns: p.max_gap_ns.load(Relaxed),
            max_gap_at_ns: p.max_gap_at_ns.load(Relaxed),
            max_gap_cpu: p.max_gap_cpu.load(Relaxed),
            observed_migrations: p.migrations.load(Relaxed),
            cpus_used: std::array::from_fn(|k| p.cpus_used[k].load(Relaxed)),
            latency,
            task: None,
        }
    }

    fn read_task(&mut self, i: usize, details: bool) {
        let w = &mut self.workers[i];
        if let Some(t) = w.files.read(&mut self.buf, details, w.task.unwrap_or_default()) {
            w.task = Some(t);
        }
    }

    /// Freezes the report values of workers `which` now (each once).
    pub fn freeze(&mut self, which: &[usize]) {
        let which: Vec<usize> = which.iter().copied().filter(|&i| self.workers[i].last.is_none()).collect();
        for (&i, snap) in which.iter().zip(self.read_with(&which, true, true)) {
            self.workers[i].last = Some(snap);
        }
    }

    /// The reason worker `i` gave for failing, if any.
    pub fn error(&self, i: usize) -> Option<String> {
        self.shm.slot(self.workers[i].id as usize).error()
    }

    pub fn has_schedstat(&self) -> bool {
        self.workers.iter().any(|w| w.files.has_schedstat())
    }
}

/// Each worker's (read end, write end) of a pipe pair: role 0 reads what role 1 writes and
/// the other way round.
fn pipe_pair() -> io::Result<[[OwnedFd; 2]; 2]> {
    let (a_read, b_write) = sys::pipe()?;
    let (b_read, a_write) = sys::pipe()?;
    Ok([[a_read, a_write], [b_read, b_write]])
}

fn policy_args(p: SchedPolicy) -> (libc::c_int, libc::c_int, &'static str) {
    match p {
        SchedPolicy::Normal => (libc::SCHED_OTHER, 0, "SCHED_OTHER"),
        SchedPolicy::Batch => (libc::SCHED_BATCH, 0, "SCHED_BATCH"),
        SchedPolicy::Idle => (libc::SCHED_IDLE, 0, "SCHED_IDLE"),
        SchedPolicy::Fifo(p) => (libc::SCHED_FIFO, p.into(), "SCHED_FIFO"),
        SchedPolicy::RoundRobin(p) => (libc::SCHED_RR, p.into(), "SCHED_RR"),
    }
}

/// In the forked child: `map[k]` becomes fd `3 + k`, the worker dies with the init.
fn child_fds(map: &[RawFd; 3], parent: libc::pid_t) -> io::Result<()> {
    // First above every target, so that a source which is also a target is not overwritten;
    // the copies are close-on-exec, the targets (made by dup2) are not.
    let mut high = [-1; 3];
    for (k, &fd) in map.iter().enumerate().filter(|(_, fd)| **fd >= 0) {
        // SAFETY: plain syscall on an fd we hold.
        high[k] = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if high[k] < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (k, &fd) in high.iter().enumerate().filter(|(_, fd)| **fd >= 0) {
        // SAFETY: plain syscall.
        if unsafe { libc::dup2(fd, SHM_FD + k as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: plain syscalls. The check after PDEATHSIG closes the race with a parent that
    // died before it was set.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}
