//! Scenarios in host mode over a pipe: every work type does its work and reports sane numbers,
//! samples stream while the run goes, steps and errors behave. Runs are a few hundred ms.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use ktstr_shared::hist;
use ktstr_shared::plan::RunPlan;
use ktstr_shared::scenario::*;
use ktstr_shared::wire::*;

const INIT: &str = env!("CARGO_BIN_EXE_ktstr-init");
const MS: u64 = 1_000_000;

fn write_plan(plan: &RunPlan) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("scn-{}-{n}", std::process::id()));
    std::fs::write(&path, plan.to_bytes().unwrap()).unwrap();
    path
}

struct Run {
    msgs: Vec<GuestMsg>,
    status: ExitStatus,
}

impl Run {
    fn reports(&self) -> Vec<&WorkerReport> {
        self.msgs.iter().filter_map(|m| if let GuestMsg::WorkerReport(r) = m { Some(r) } else { None }).collect()
    }

    fn samples(&self) -> Vec<&Sample> {
        self.msgs.iter().filter_map(|m| if let GuestMsg::Sample(s) = m { Some(s) } else { None }).collect()
    }

    fn events(&self) -> Vec<ScenarioEventKind> {
        self.msgs.iter().filter_map(|m| if let GuestMsg::Scenario(e) = m { Some(e.kind) } else { None }).collect()
    }

    fn logs(&self, level: LogLevel) -> Vec<&str> {
        let logs = self.msgs.iter().filter_map(|m| match m {
            GuestMsg::Log { level: l, text, .. } if *l == level => Some(text.as_str()),
            _ => None,
        });
        logs.collect()
    }

    fn outcome(&self) -> &Outcome {
        self.msgs.iter().find_map(|m| if let GuestMsg::Result(r) = m { Some(&r.outcome) } else { None }).unwrap()
    }

    /// Completed, one report per worker, every worker stopped cleanly, no error logged.
    fn assert_clean(&self, workers: usize) {
        assert_eq!(self.outcome(), &Outcome::Completed, "{:?}", self.msgs);
        assert_eq!(self.status.code(), Some(0));
        assert!(self.logs(LogLevel::Error).is_empty(), "{:?}", self.logs(LogLevel::Error));
        let reports = self.reports();
        assert_eq!(reports.len(), workers, "{:?}", self.msgs);
        for r in &reports {
            assert_eq!(r.end, WorkerEnd::Stopped, "{r:?}");
            assert!(r.work_units > 0, "worker {} made no progress: {r:?}", r.id);
            assert!(!r.cpus_used.is_empty(), "{r:?}");
            assert!(r.wall_ns > 100 * MS, "{r:?}");
        }
        let ids: Vec<u32> = reports.iter().map(|r| r.id).collect();
        assert_eq!(ids, (0..workers as u32).collect::<Vec<_>>());
    }
}

fn run_with(plan: &RunPlan, extra: &[&str]) -> Run {
    let path = write_plan(plan);
    let mut child = Command::new(INIT)
        .args(["--host-mode", "--plan"])
        .arg(&path)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let status = child.wait().unwrap();
    let mut decoder = FrameDecoder::<GuestMsg>::new();
    let mut msgs = Vec::new();
    decoder.push(&out, |m| msgs.push(m));
    assert_eq!(decoder.stats().rejected(), 0);
    Run { msgs, status }
}

fn plan(scn: Scenario) -> RunPlan {
    RunPlan { scenario: Some(scn), ..RunPlan::new(20_000) }
}

/// `count` workers of `work` in one cgroup for `ms`.
fn run_work(work: WorkType, count: u32, ms: u32) -> Run {
    let scn = Scenario::new(vec![CgroupSpec::new("cg_0").with_workers(count, work)], ms);
    let run = run_with(&plan(scn), &[]);
    run.assert_clean(count as usize);
    run
}

fn latencies(r: &WorkerReport) -> u64 {
    hist::total(&r.latency)
}

/// The CPUs this test may use.
fn allowed() -> Vec<u32> {
    // SAFETY: all-zero is an empty set; a valid out pointer of the given size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set);
        set
    };
    // SAFETY: CPU_ISSET reads within the set.
    (0..libc::CPU_SETSIZE as u32).filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &set) }).collect()
}

#[test]
fn cpu_spin_counts_units_and_cpu_time() {
    let run = run_work(WorkType::CpuSpin, 2, 400);
    for r in run.reports() {
        assert!(r.cpu_time_ns > 10 * MS, "{r:?}");
        assert!(r.latency.is_empty(), "cpu_spin measures no latency");
        assert!(r.max_gap_ns > 0 && r.max_gap_ns < r.wall_ns, "{r:?}");
    }
}

#[test]
fn yield_heavy_yields() {
    let run = run_work(WorkType::YieldHeavy, 2, 300);
    // A yield per unit: far more units than a spin chunk of the same time would give.
    assert!(run.reports().iter().all(|r| r.work_units > 100));
}

#[test]
fn mixed_sleeps_and_measures_oversleep() {
    let run = run_work(WorkType::Mixed { sleep_us: 100 }, 2, 300);
    for r in run.reports() {
        let sleeps = latencies(r);
        assert!(sleeps > 0 && sleeps <= r.work_units / 8 + 1, "{sleeps} sleeps for {} units", r.work_units);
        assert!(r.voluntary_switches > 0, "{r:?}");
    }
}

#[test]
fn bursty_alternates_bursts_and_sleeps() {
    let run = run_work(WorkType::Bursty { burst_ms: 20, sleep_ms: 20 }, 2, 400);
    for r in run.reports() {
        // About one sleep per 40 ms cycle.
        assert!((3..=12).contains(&latencies(r)), "{r:?}");
        // Sleeping half the time: the worker is off CPU for a large part of its wall time.
        assert!(r.cpu_time_ns < r.wall_ns * 9 / 10, "{r:?}");
        // The sleeps show up as gaps of at least the sleep time.
        assert!(r.max_gap_ns >= 19 * MS, "{r:?}");
    }
}

/// Both sides of every pair progress in lock step and measure wake-ups. (Lock step means a
/// difference of 1 at most; the final readings of two workers are a few us apart, during
/// which a fast pair can make one more exchange.)
fn assert_pairs(run: &Run) {
    let reports = run.reports();
    for pair in reports.chunks(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(a.work_units.abs_diff(b.work_units) <= 2, "{a:?} vs {b:?}");
        for r in pair {
            assert!(latencies(r) > 0 && latencies(r) <= r.work_units + 1, "{r:?}");
            assert!(r.voluntary_switches > 0, "{r:?}");
        }
    }
}

#[test]
fn pipe_pairs_ping_pong() {
    assert_pairs(&run_work(WorkType::PipePingPong { spin_iters: 1000 }, 4, 300));
}

#[test]
fn futex_pairs_ping_pong() {
    assert_pairs(&run_work(WorkType::FutexPingPong { spin_iters: 1000 }, 4, 300));
}

#[test]
fn futex_fan_out_wakes_every_waiter() {
    let run = run_work(WorkType::FutexFanOut { fan_out: 3, spin_iters: 1000 }, 4, 300);
    let reports = run.reports();
    let waker = reports[0];
    assert!(waker.latency.is_empty(), "the waker measures nothing: {waker:?}");
    for w in &reports[1..] {
        // Each broadcast wakes each waiter once; the run ends mid-round at most.
        assert!(w.work_units.abs_diff(waker.work_units) <= 2, "{w:?} vs {waker:?}");
        // A wake-up is measured just before its unit is counted.
        assert!(latencies(w).abs_diff(w.work_units) <= 1, "{w:?}");
    }
}

#[test]
fn cache_pressure_walks_its_buffer() {
    let run = run_work(WorkType::CachePressure { size_kb: 8192 }, 1, 400);
    let r = run.reports()[0];
    // 1024 random lines of 8 MiB per unit: far slower per unit than cpu_spin's.
    assert!(r.work_units > 10, "{r:?}");
    assert!(r.work_units < r.cpu_time_ns.max(1) / 1000, "{r:?}");
}

#[test]
fn fork_exit_forks() {
    let run = run_work(WorkType::ForkExit, 1, 300);
    let r = run.reports()[0];
    assert!(r.work_units >= 10, "{r:?}");
    // It waits for its children: it blocks (unless a child is always done first).
    assert!(r.voluntary_switches > 0, "{r:?}");
}

#[test]
fn affinity_churn_moves_between_cpus() {
    let run = run_work(WorkType::AffinityChurn { spin_iters: 1000 }, 1, 300);
    let r = run.reports()[0];
    let used = mask_cpus(&r.cpus_used).count();
    if allowed().len() >= 2 {
        assert!(used >= 2, "ran on {used} CPU(s): {r:?}");
        assert!(r.observed_migrations > 0, "{r:?}");
        assert!(r.migrations.is_none_or(|m| m > 0), "{r:?}");
    }
}

#[test]
fn nice_sweep_sweeps() {
    let run = run_work(WorkType::NiceSweep, 1, 300);
    assert!(run.reports()[0].work_units > 16, "{:?}", run.reports());
}

#[test]
fn sequence_runs_its_phases() {
    let phases = vec![
        Phase { work: WorkType::CpuSpin, duration_ms: 40 },
        Phase { work: WorkType::PeriodicTimer { period_us: 2000, spin_us: 0 }, duration_ms: 40 },
    ];
    let run = run_work(WorkType::Sequence { phases }, 1, 400);
    let r = run.reports()[0];
    // Timer wake-ups come from the timer phases only: about 20 per 80 ms round.
    let wakes = latencies(r);
    assert!((10..=120).contains(&wakes), "{wakes} timer wake-ups: {r:?}");
    assert!(r.work_units > wakes, "the spin phases add units: {r:?}");
}

#[test]
fn periodic_timer_records_wake_latency() {
    let run = run_work(WorkType::PeriodicTimer { period_us: 1000, spin_us: 100 }, 2, 400);
    for r in run.reports() {
        assert!((50..=420).contains(&r.work_units), "{r:?}");
        assert!(latencies(r).abs_diff(r.work_units) <= 1, "{r:?}");
        let p50 = hist::quantile(&r.latency, 0.5).unwrap();
        let p99 = hist::quantile(&r.latency, 0.99).unwrap();
        assert!(p50 <= p99 && p99 < 400 * MS, "p50 {p50} p99 {p99}");
        // A period's sleep is the longest gap in a healthy run.
        assert!(r.max_gap_ns >= 800_000, "{r:?}");
    }
}

#[test]
fn io_sync_writes_and_syncs() {
    let run = run_work(WorkType::IoSync { block_kb: 16, sleep_us: 100 }, 2, 300);
    for r in run.reports() {
        assert!(r.work_units > 10, "{r:?}");
        assert!(latencies(r).abs_diff(r.work_units) <= 1, "{r:?}");
    }
}

#[test]
fn samples_arrive_periodically() {
    let mut scn = Scenario::new(vec![CgroupSpec::new("cg_0").with_workers(2, WorkType::CpuSpin)], 600);
    scn.sample_period_ms = 50;
    let run = run_with(&plan(scn), &[]);
    run.assert_clean(2);
    let samples = run.samples();
    // Ticks at 50, 100, ... 550 ms: 11, give or take a late start or a skipped tick.
    assert!((6..=12).contains(&samples.len()), "{} samples", samples.len());
    let started = run.msgs.iter().find_map(|m| match m {
        GuestMsg::Scenario(ScenarioEvent { t_ns, kind: ScenarioEventKind::Started { .. } }) => Some(*t_ns),
        _ => None,
    });
    let mut prev = (started.unwrap(), 0u64);
    for (k, s) in samples.iter().enumerate() {
        assert_eq!((s.part, s.parts, s.seq as usize), (0, 1, k));
        assert!(s.system.is_some());
        assert_eq!(s.workers.len(), 2);
        assert!(s.t_ns > prev.0, "samples are in time order");
        let units = s.workers[0].units;
        assert!(units >= prev.1, "units never go back");
        assert!(s.workers[0].last_progress_ns <= s.t_ns);
        prev = (s.t_ns, units);
    }
    assert!(prev.1 > 0);
    // Samples come during the run: the first is near 50 ms after the start, not at the end.
    let first_after = samples[0].t_ns - started.unwrap();
    assert!((40 * MS..300 * MS).contains(&first_after), "{first_after}");
}

#[test]
fn sampling_off_sends_no_samples() {
    let mut scn = Scenario::new(vec![CgroupSpec::new("cg_0").with_workers(1, WorkType::CpuSpin)], 200);
    scn.sample_period_ms = 0;
    let run = run_with(&plan(scn), &[]);
    run.assert_clean(1);
    assert!(run.samples().is_empty());
}

#[test]
fn policy_nice_and_affinity_are_applied() {
    let cpu = *allowed().last().unwrap();
    let mut cg = CgroupSpec::new("cg_0");
    cg.workers.push(WorkerSpec {
        policy: SchedPolicy::Batch,
        nice: 5,
        affinity: Some(CpuList::new([cpu])),
        ..WorkerSpec::new(2, WorkType::CpuSpin)
    });
    let run = run_with(&plan(Scenario::new(vec![cg], 300)), &[]);
    run.assert_clean(2);
    for r in run.reports() {
        assert_eq!(mask_cpus(&r.cpus_used).collect::<Vec<_>>(), [cpu], "{r:?}");
        assert_eq!(r.observed_migrations, 0);
    }
}

#[test]
fn a_failing_placement_ends_the_run_with_a_panic_naming_it() {
    let mut cg = CgroupSpec::new("cg_0");
    cg.workers.push(WorkerSpec { affinity: Some(CpuList::new([511])), ..WorkerSpec::new(1, WorkType::CpuSpin) });
    let run = run_with(&plan(Scenario::new(vec![cg], 5_000)), &[]);
    let Some(GuestMsg::Panic { text }) = run.msgs.last() else { panic!("{:?}", run.msgs) };
    assert!(text.contains("worker 0 (cpu_spin in cg_0): sched_setaffinity"), "{text}");
    assert!(text.contains("CPUs 511"), "{text}");
    assert_eq!(run.status.code(), Some(EXIT_INIT_FAILED));
    assert!(run.reports().is_empty());
}

#[test]
fn a_failing_step_is_logged_and_the_run_goes_on() {
    let mut scn = Scenario::new(vec![CgroupSpec::new("cg_0").with_workers(1, WorkType::CpuSpin)], 300);
    scn.steps.push(Step { ops: vec![], hold_ms: 100 });
    scn.steps.push(Step {
        ops: vec![Op::SetAffinity { cgroup: "cg_0".into(), cpus: Some(CpuList::new([511])) }],
        hold_ms: 100,
    });
    let run = run_with(&plan(scn), &[]);
    assert_eq!(run.outcome(), &Outcome::Completed);
    let errors = run.logs(LogLevel::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("steps[1].ops[0] (set_affinity cg_0): worker 0"), "{}", errors[0]);
    let steps: Vec<_> = run.events().into_iter().filter(|e| matches!(e, ScenarioEventKind::Step { .. })).collect();
    assert_eq!(
        steps,
        [ScenarioEventKind::Step { index: 0, failed_ops: 0 }, ScenarioEventKind::Step { index: 1, failed_ops: 1 }]
    );
    assert_eq!(run.reports()[0].end, WorkerEnd::Stopped);
}

/// Steps against a plain directory as the cgroup root: every write lands where it should,
/// removed workers are killed, moved ones change cgroup, paused ones stop progressing.
#[test]
fn steps_drive_cgroups_and_workers() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cgroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut a = CgroupSpec::new("a").with_workers(1, WorkType::CpuSpin);
    a.cpuset = Some(CpuList::new([0, 1]));
    let mut scn = Scenario::new(vec![a, CgroupSpec::new("b"), CgroupSpec::new("p")], 500);
    let mut nested = CgroupSpec::new("p/q").with_workers(1, WorkType::PeriodicTimer { period_us: 1000, spin_us: 0 });
    nested.weight = Some(50);
    scn.steps = vec![
        Step { ops: vec![Op::AddCgroup(nested)], hold_ms: 100 },
        Step {
            ops: vec![
                Op::MoveTasks { from: "a".into(), to: "b".into() },
                Op::SetCpuset { cgroup: "a".into(), cpus: None },
                Op::PauseWorkers { cgroup: "b".into() },
            ],
            hold_ms: 100,
        },
        Step { ops: vec![Op::RemoveCgroup { cgroup: "p/q".into() }], hold_ms: 100 },
    ];
    let run = run_with(&plan(scn), &["--cgroup-root", root.to_str().unwrap()]);
    assert_eq!(run.outcome(), &Outcome::Completed, "{:?}", run.msgs);
    assert!(run.logs(LogLevel::Error).is_empty(), "{:?}", run.logs(LogLevel::Error));
    assert!(run.events().contains(&ScenarioEventKind::Started { workers: 1, cgroups: 3, cgroups_applied: true }));
    let failed: u16 = run
        .events()
        .iter()
        .map(|e| if let ScenarioEventKind::Step { failed_ops, .. } = e { *failed_ops } else { 0 })
        .sum();
    assert_eq!(failed, 0);

    let reports = run.reports();
    let (moved, removed) = (reports[0], reports[1]);
    // Moved to "b" (definition 1) and paused from ~100 ms to the end: a gap of ~400 ms.
    assert_eq!(moved.cgroup, 1);
    assert_eq!(moved.end, WorkerEnd::Stopped, "a paused worker is resumed to stop");
    assert!(moved.max_gap_ns > 250 * MS, "{moved:?}");
    // "p/q" is definition 3; its worker ran ~100 ms, then was killed with the cgroup.
    assert_eq!((removed.cgroup, removed.end), (3, WorkerEnd::Removed));
    assert!(removed.work_units > 20 && removed.wall_ns < 300 * MS, "{removed:?}");

    // The root was made by the run, so it is removed with everything in it.
    assert!(!root.exists(), "cgroups are removed at the end");
}

#[test]
fn cgroup_writes_land_in_the_files() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cgkeep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    // A pre-existing root is not ours: it stays, so its top-level files can be read after.
    let mut a = CgroupSpec::new("a").with_workers(1, WorkType::CpuSpin);
    a.cpuset = Some(CpuList::new([0]));
    a.weight = Some(200);
    let scn = Scenario::new(vec![a], 200);
    let run = run_with(&plan(scn), &["--cgroup-root", root.to_str().unwrap()]);
    run.assert_clean(1);
    assert_eq!(std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(), "+cpuset\n+cpu\n");
    assert!(run.logs(LogLevel::Warn).iter().any(|l| l.contains("not a cgroup2 filesystem")));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn host_stop_ends_the_run_with_reports() {
    let scn = Scenario::new(vec![CgroupSpec::new("cg_0").with_workers(1, WorkType::CpuSpin)], 60_000);
    let path = write_plan(&RunPlan { scenario: Some(scn), ..RunPlan::new(120_000) });
    let mut child = Command::new(INIT)
        .args(["--host-mode", "--plan"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut decoder = FrameDecoder::<GuestMsg>::new();
    let mut msgs = Vec::new();
    // Stop once the first sample shows the worker running.
    while !msgs.iter().any(|m| matches!(m, GuestMsg::Sample(s) if s.workers.iter().any(|w| w.units > 0))) {
        let mut buf = [0u8; 4096];
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "EOF before a sample: {msgs:?}");
        decoder.push(&buf[..n], |m| msgs.push(m));
    }
    child.stdin.take().unwrap().write_all(&encode_to_vec(&HostMsg::Stop).unwrap()).unwrap();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    decoder.push(&rest, |m| msgs.push(m));
    assert_eq!(child.wait().unwrap().code(), Some(EXIT_STOPPED));
    let run = Run { msgs, status: std::process::ExitStatus::default() };
    assert_eq!(run.outcome(), &Outcome::Stopped);
    assert_eq!(run.reports().len(), 1);
    assert!(run.reports()[0].work_units > 0);
}

#[test]
fn deadline_cuts_a_long_scenario() {
    let scn = Scenario::new(vec![CgroupSpec::new("cg_0").with_workers(1, WorkType::CpuSpin)], 60_000);
    let run = run_with(&RunPlan { scenario: Some(scn), ..RunPlan::new(700) }, &[]);
    assert_eq!(run.outcome(), &Outcome::TimedOut);
    assert_eq!(run.status.code(), Some(EXIT_TIMED_OUT));
    assert_eq!(run.reports().len(), 1);
}
