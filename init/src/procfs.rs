//! Readers of the kernel's scheduler statistics files. Files stay open and are re-read from
//! offset 0 (procfs, sysfs and debugfs regenerate their text then): one system call per file
//! per sample. The parsers are pure and take the text, so they are tested on fixtures.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ktstr_shared::wire::ScxState;

/// Longest file text read (the sched debug file lists every task; bound it).
const MAX_TEXT: usize = 4 << 20;

/// An open statistics file.
pub struct StatFile(File);

impl StatFile {
    pub fn open(path: impl AsRef<Path>) -> Option<StatFile> {
        File::open(path).ok().map(StatFile)
    }

    /// The whole current text into `buf` (cleared first); `None` when unreadable (the task is
    /// gone, the file is empty).
    pub fn read<'b>(&self, buf: &'b mut Vec<u8>) -> Option<&'b str> {
        buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.0.read_at(&mut chunk, buf.len() as u64).ok()?;
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || buf.len() >= MAX_TEXT {
                break;
            }
        }
        (!buf.is_empty()).then(|| std::str::from_utf8(buf).ok()).flatten()
    }
}

/// One task's scheduler counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TaskStats {
    pub cpu_time_ns: u64,
    pub run_delay_ns: u64,
    pub timeslices: u64,
    pub voluntary: u64,
    pub involuntary: u64,
    pub migrations: Option<u64>,
}

/// The files of one task.
pub struct TaskFiles {
    schedstat: Option<StatFile>,
    /// `/proc/<pid>/sched` (CONFIG_SCHED_DEBUG); else switches come from `status`.
    sched: Option<StatFile>,
    status: Option<StatFile>,
}

impl TaskFiles {
    pub fn open(pid: libc::pid_t) -> TaskFiles {
        let sched = StatFile::open(format!("/proc/{pid}/sched"));
        let status = if sched.is_none() { StatFile::open(format!("/proc/{pid}/status")) } else { None };
        TaskFiles { schedstat: StatFile::open(format!("/proc/{pid}/schedstat")), sched, status }
    }

    /// `None` once the task is gone. `details` also reads switches and migrations (the big
    /// `sched` or `status` file); without it they are kept from `prev`.
    pub fn read(&self, buf: &mut Vec<u8>, details: bool, prev: TaskStats) -> Option<TaskStats> {
        let mut st = prev;
        if let Some(f) = &self.schedstat {
            (st.cpu_time_ns, st.run_delay_ns, st.timeslices) = parse_task_schedstat(f.read(buf)?)?;
        }
        if !details {
            return Some(st);
        }
        if let Some(f) = &self.sched {
            let text = f.read(buf)?;
            st.migrations = field(text, "se.nr_migrations");
            st.voluntary = field(text, "nr_voluntary_switches").unwrap_or(0);
            st.involuntary = field(text, "nr_involuntary_switches").unwrap_or(0);
        } else if let Some(f) = &self.status {
            let text = f.read(buf)?;
            st.voluntary = field(text, "voluntary_ctxt_switches").unwrap_or(0);
            st.involuntary = field(text, "nonvoluntary_ctxt_switches").unwrap_or(0);
        }
        Some(st)
    }

    pub fn has_schedstat(&self) -> bool {
        self.schedstat.is_some()
    }
}

/// `/proc/<pid>/schedstat`: time on CPU (ns), time waiting on a run queue (ns), timeslices.
pub fn parse_task_schedstat(text: &str) -> Option<(u64, u64, u64)> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// The integer value of `name` in `name : value` / `name:\tvalue` lines (`/proc/<pid>/sched`,
/// `/proc/<pid>/status`). Fractional values are cut to their integer part.
pub fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim() != name {
            return None;
        }
        let value = value.trim();
        value.split('.').next()?.parse().ok()
    })
}

/// The per-CPU counters of one `/proc/schedstat` `cpuN` line (versions 15 to 17).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CpuCounters {
    pub cpu: u32,
    pub sched_count: u64,
    pub sched_goidle: u64,
    pub ttwu_count: u64,
    pub ttwu_local: u64,
    pub run_ns: u64,
    pub run_delay_ns: u64,
    pub timeslices: u64,
}

/// Every `cpuN` line of `/proc/schedstat`: `cpuN yld_count legacy sched_count sched_goidle
/// ttwu_count ttwu_local rq_cpu_time run_delay pcount`.
pub fn parse_cpu_schedstat(text: &str) -> Vec<CpuCounters> {
    text.lines().filter_map(parse_cpu_line).collect()
}

fn parse_cpu_line(line: &str) -> Option<CpuCounters> {
    let mut words = line.split_whitespace();
    let cpu = words.next()?.strip_prefix("cpu")?.parse().ok()?;
    let v: Vec<u64> = words.map(|w| w.parse().ok()).collect::<Option<_>>()?;
    let [_, _, sched_count, sched_goidle, ttwu_count, ttwu_local, run_ns, run_delay_ns, timeslices, ..] = v[..] else {
        return None;
    };
    Some(CpuCounters { cpu, sched_count, sched_goidle, ttwu_count, ttwu_local, run_ns, run_delay_ns, timeslices })
}

/// `nr_running` per CPU from `/sys/kernel/debug/sched/debug`: the first `.nr_running` after
/// each `cpu#N` header is the run queue's (the cfs_rq and rt_rq sections come later).
pub fn parse_debug_nr_running(text: &str) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut cpu = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cpu#") {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            cpu = digits.parse().ok();
        } else if let Some(c) = cpu
            && let Some(n) = field(line, ".nr_running")
        {
            out.push((c, n as u32));
            cpu = None;
        }
    }
    out
}

/// `procs_running` of `/proc/stat`.
pub fn parse_procs_running(text: &str) -> Option<u32> {
    text.lines().find_map(|l| l.strip_prefix("procs_running ")?.trim().parse().ok())
}

/// `/sys/kernel/sched_ext/state`.
pub fn parse_scx_state(text: &str) -> ScxState {
    match text.trim() {
        "disabled" => ScxState::Disabled,
        "enabling" => ScxState::Enabling,
        "enabled" => ScxState::Enabled,
        "disabling" => ScxState::Disabling,
        _ => ScxState::Other,
    }
}

/// The state letter of `/proc/<pid>/stat` (after the parenthesised command, which may hold
/// spaces and parentheses), with what it means for a task that should have died.
pub fn parse_task_state(stat: &str) -> Option<(char, &'static str)> {
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()?;
    let meaning = match state {
        'R' => "runnable, yet the scheduler did not run it",
        'D' => "in uninterruptible sleep",
        'Z' => "exited, not yet reaped",
        'T' | 't' => "stopped",
        'S' => "sleeping",
        _ => "",
    };
    Some((state, meaning))
}

/// Why task `pid` is still there: "state R (runnable, ...)", or "state unknown".
pub fn task_state(pid: libc::pid_t) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match parse_task_state(&stat) {
        Some((c, "")) => format!("state {c}"),
        Some((c, meaning)) => format!("state {c} ({meaning})"),
        None => "state unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_state_letter_after_an_awkward_command_name() {
        assert_eq!(
            parse_task_state("62 (cpu (spin) x) R 1 62 0"),
            Some(('R', "runnable, yet the scheduler did not run it"))
        );
        assert_eq!(parse_task_state("7 (a) D 1").map(|s| s.0), Some('D'));
        assert_eq!(parse_task_state("no parenthesis"), None);
        assert!(task_state(libc::pid_t::MAX).contains("unknown"));
        // This test's own thread is running (/proc/<tid> works for any thread).
        // SAFETY: gettid has no preconditions.
        assert!(task_state(unsafe { libc::gettid() }).starts_with("state R"));
    }

    #[test]
    fn task_files() {
        assert_eq!(parse_task_schedstat("241333 17 3\n"), Some((241333, 17, 3)));
        assert_eq!(parse_task_schedstat("1 2"), None);
        let sched = "cat (6009, #threads: 1)\n------\nse.sum_exec_runtime  :   12.5\n\
                     se.nr_migrations                             :                    4\n\
                     nr_voluntary_switches                        :                    7\n\
                     nr_involuntary_switches                      :                    2\n";
        assert_eq!(field(sched, "se.nr_migrations"), Some(4));
        assert_eq!(field(sched, "nr_involuntary_switches"), Some(2));
        assert_eq!(field(sched, "se.sum_exec_runtime"), Some(12));
        assert_eq!(
            field("voluntary_ctxt_switches:\t9\nnonvoluntary_ctxt_switches:\t1\n", "voluntary_ctxt_switches"),
            Some(9)
        );
    }

    #[test]
    fn proc_schedstat_cpu_lines() {
        let text = "version 17\ntimestamp 4295\ncpu0 0 0 100 40 30 20 5000 600 70\n\
                    domain0 MC 3 0 0 0 0\ncpu1 0 0 1 2 3 4 5 6 7\n";
        let cpus = parse_cpu_schedstat(text);
        assert_eq!(cpus.len(), 2);
        assert_eq!(
            cpus[0],
            CpuCounters {
                cpu: 0,
                sched_count: 100,
                sched_goidle: 40,
                ttwu_count: 30,
                ttwu_local: 20,
                run_ns: 5000,
                run_delay_ns: 600,
                timeslices: 70
            }
        );
        assert_eq!(cpus[1].timeslices, 7);
    }

    #[test]
    fn sched_debug_nr_running() {
        let text = "Sched Debug Version: v0.11\ncpu#0, 2894.561 MHz\n  .nr_running                    : 2\n\
                    \n  .nr_switches : 5\ncfs_rq[0]:/\n  .nr_running                    : 9\n\
                    cpu#1\n  .nr_running                    : 0\n";
        assert_eq!(parse_debug_nr_running(text), [(0, 2), (1, 0)]);
    }

    #[test]
    fn system_files() {
        assert_eq!(parse_procs_running("cpu 1 2\nctxt 5\nprocs_running 3\nprocs_blocked 0\n"), Some(3));
        assert_eq!(parse_scx_state("enabled\n"), ScxState::Enabled);
        assert_eq!(parse_scx_state("weird"), ScxState::Other);
    }

    #[test]
    fn own_files_are_readable() {
        // This thread's files: the process's are its main thread's, which does not spin.
        // SAFETY: gettid has no preconditions.
        let files = TaskFiles::open(unsafe { libc::gettid() });
        let mut buf = Vec::new();
        let first = files.read(&mut buf, true, TaskStats::default()).expect("own /proc files");
        // Re-reading the same open files gives fresh values.
        crate::workload::spin(1 << 22);
        let second = files.read(&mut buf, false, TaskStats { voluntary: 12345, ..first }).unwrap();
        if files.has_schedstat() {
            assert!(second.cpu_time_ns > first.cpu_time_ns, "{first:?} {second:?}");
        }
        assert_eq!(second.voluntary, 12345, "kept without details");
    }
}
