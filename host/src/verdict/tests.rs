//! Every check against fake (synthetic) records made in code: a passing one and failing ones,
//! and the catalog's scenarios.

use super::*;
use crate::record::{KernelInfo, RunMeta, SchedulerInfo, SchedulerKind, Telemetry, Tick};
use crate::scenario::{Expect, from_toml};
use ktstr_shared::hist;
use ktstr_shared::wire::{
    GuestMsg, LogLevel, Outcome, RunResult, ScenarioEvent, SchedEventKind, ScxState, SystemSample, WorkerEnd,
    WorkerReport, WorkerSample, cpu_mask,
};

const MS: u64 = 1_000_000;
const T0: u64 = 10_000 * MS;

/// A fake record of `toml` (catalog format, resolved on 1n2l2c1t) in which every worker
/// ran the whole run on the first CPU it may use, with even progress and CPU time.
fn fake_record(toml: &str) -> RunRecord {
    let topo = "1n2l2c1t".parse().unwrap();
    let r = from_toml(toml, "fake.toml", "fake.toml", &topo, 1.0).unwrap();
    let duration = u64::from(r.scenario.duration_ms) * MS;
    let tl = timeline::build(&r.scenario, 4);
    let mut tel = Telemetry::default();
    let started = ScenarioEventKind::Started { workers: 0, cgroups: 0, cgroups_applied: true };
    tel.push(GuestMsg::Scenario(ScenarioEvent { t_ns: T0, kind: started }));
    for (k, start) in r.scenario.step_starts_ms().enumerate() {
        let kind = ScenarioEventKind::Step { index: k as u16, failed_ops: 0 };
        tel.push(GuestMsg::Scenario(ScenarioEvent { t_ns: T0 + start * MS + MS, kind }));
    }
    tel.push(GuestMsg::Scenario(ScenarioEvent { t_ns: T0 + duration, kind: ScenarioEventKind::Finished }));
    let names: Vec<&str> = r.scenario.cgroup_defs().map(|d| d.name.as_str()).collect();
    for w in r.scenario.workers() {
        let cpu = tl.epochs[0].workers[w.id as usize].as_ref().map_or(0, |p| p.allowed[0]);
        let mut report = fake_report(w.id, w.cgroup, cpu, duration);
        // The expected ratio, where the scenario declares one.
        if let Some(ratio) = r.expect.cpu_ratio.as_ref().filter(|x| x.cgroups[0] == names[w.cgroup as usize]) {
            report.cpu_time_ns = (report.cpu_time_ns as f64 * ratio.ratio) as u64;
        }
        tel.push(GuestMsg::WorkerReport(report));
    }
    let meta = RunMeta {
        run_id: "fake".into(),
        scenario: r.info.clone(),
        plan: r.scenario.clone(),
        expect: r.expect.clone(),
        topology: topo,
        scheduler: SchedulerInfo::eevdf(),
        kernel: KernelInfo::default(),
        backend: "fake".into(),
        emulated: false,
        memory_mib: 512,
        deadline_ms: 60_000,
        kernel_append: None,
    };
    let mut rec = RunRecord::new(meta, tel);
    rec.end.result = Some(RunResult {
        outcome: Outcome::Completed,
        wall_ns: duration,
        stdout: Default::default(),
        stderr: Default::default(),
    });
    rec.ticks = fake_ticks(&r.scenario, &tl, duration);
    if let Some(ratio) = &r.expect.cpu_ratio {
        let ids: Vec<u32> =
            rec.reports.iter().filter(|w| names[w.cgroup as usize] == ratio.cgroups[0]).map(|w| w.id).collect();
        for id in ids {
            cpu_curve(&mut rec, id, |ms| (ms as f64 * ratio.ratio / 2.0) as u64);
        }
    }
    rec
}

fn fake_report(id: u32, cgroup: u16, cpu: u32, duration: u64) -> WorkerReport {
    WorkerReport {
        id,
        cgroup,
        work_units: 1000,
        cpu_time_ns: duration / 2,
        wall_ns: duration,
        run_delay_ns: 0,
        timeslices: 10,
        voluntary_switches: 0,
        involuntary_switches: 0,
        migrations: Some(0),
        observed_migrations: 0,
        cpus_used: cpu_mask([cpu]),
        max_gap_ns: 5 * MS,
        max_gap_at_ns: T0 + 100 * MS,
        max_gap_cpu: cpu,
        latency: Default::default(),
        end: WorkerEnd::Stopped,
    }
}

/// A tick every 100 ms; each worker progressed just before it on an allowed CPU.
fn fake_ticks(scn: &ktstr_shared::scenario::Scenario, tl: &Timeline, duration: u64) -> Vec<Tick> {
    let starts: Vec<u64> = scn.step_starts_ms().collect();
    (1..duration / (100 * MS))
        .map(|i| {
            let t = T0 + i * 100 * MS;
            let epoch = starts.iter().filter(|&&s| T0 + s * MS + 300 * MS <= t).count();
            let workers = tl.epochs[epoch]
                .workers
                .iter()
                .enumerate()
                .filter_map(|(id, p)| {
                    let p = p.as_ref()?;
                    Some(WorkerSample {
                        id: id as u32,
                        cgroup: p.cgroup,
                        units: i * 10,
                        cpu_time_ns: (t - T0) / 2,
                        last_cpu: p.allowed[id % p.allowed.len()],
                        last_progress_ns: t - MS,
                        ..Default::default()
                    })
                })
                .collect();
            let system =
                SystemSample { scx: ScxState::Disabled, scx_enable_seq: None, procs_running: None, cost_ns: 0 };
            Tick { seq: i as u32, t_ns: t, parts: 1, received: 1, workers, cpus: Vec::new(), system: Some(system) }
        })
        .collect()
}

fn check<'v>(v: &'v Verdict, name: &str) -> &'v Check {
    v.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}"))
}

fn judge_default(rec: &RunRecord) -> Verdict {
    judge(rec, &Thresholds::for_record(rec, &Overrides::default()))
}

fn catalog(name: &str) -> RunRecord {
    fake_record(crate::scenario::catalog::get(name).unwrap())
}

#[test]
fn fake_records_of_the_whole_catalog_pass() {
    for name in crate::scenario::catalog::names() {
        let v = judge_default(&catalog(name));
        assert!(v.passed, "{name}: {:#?}", v.failures().collect::<Vec<_>>());
        assert_eq!(v.checks.len(), CHECK_DOCS.len());
        for (c, (doc_name, _)) in v.checks.iter().zip(CHECK_DOCS) {
            assert_eq!(c.name, *doc_name, "CHECK_DOCS lists the checks in order");
        }
    }
}

#[test]
fn fake_record_incomplete_run_fails_run_completed() {
    let mut rec = catalog("basic_spin");
    rec.end.result.as_mut().unwrap().outcome = Outcome::TimedOut;
    rec.reports.retain(|r| r.id != 2);
    rec.reports[0].end = WorkerEnd::Exited { code: 3 };
    let c = check(&judge_default(&rec), "run_completed").clone();
    assert!(!c.passed);
    assert!(c.detail.contains("deadline of 60000 ms"), "{}", c.detail);
    assert!(c.detail.contains("no report from worker(s) 2"), "{}", c.detail);
    assert!(c.detail.contains("worker 0 in cg_0 exited early with code 3"), "{}", c.detail);
    rec.end.result = None;
    rec.end.vm_problem = Some("guest kernel panic:\nKernel panic - not syncing".into());
    let c = check(&judge_default(&rec), "run_completed").clone();
    assert!(!c.passed && c.detail.contains("guest kernel panic"), "{}", c.detail);
}

#[test]
fn fake_record_failed_or_missing_steps_fail() {
    let mut rec = catalog("cpuset_swap");
    for e in &mut rec.events {
        if let ScenarioEventKind::Step { index: 1, failed_ops } = &mut e.kind {
            *failed_ops = 1;
        }
    }
    rec.logs.push(crate::record::LogLine {
        t_ns: T0,
        level: LogLevel::Error,
        text: "steps[1].ops[0] (set_cpuset cg_0): write \"2-3\" to cpuset.cpus: EINVAL".into(),
    });
    rec.telemetry.error_logs = 1;
    let v = judge_default(&rec);
    let c = check(&v, "steps_applied");
    assert!(
        !c.passed
            && c.detail.contains(
                "step 1 (set_cpuset cg_0, set_cpuset cg_1) at 2.00 s: 1 operation(s) failed: steps[1].ops[0]"
            ),
        "{}",
        c.detail
    );
    let e = check(&v, "guest_errors");
    assert!(!e.passed && e.detail.contains("guest error at 0.00 s: steps[1]"), "{}", e.detail);
    rec.events.retain(|e| !matches!(e.kind, ScenarioEventKind::Step { index: 1, .. }));
    let c = check(&judge_default(&rec), "steps_applied").clone();
    assert!(
        !c.passed && c.detail.contains("step 1 (set_cpuset cg_0, set_cpuset cg_1) was never applied"),
        "{}",
        c.detail
    );
    assert!(check(&judge_default(&catalog("basic_spin")), "steps_applied").skipped);
}

#[test]
fn fake_record_bad_telemetry_fails() {
    let mut rec = catalog("basic_spin");
    rec.decode.rejected = 2;
    rec.decode.bad_crc = 2;
    rec.telemetry.incomplete_ticks = 1;
    rec.ticks[0].workers[0].id = 99;
    let c = check(&judge_default(&rec), "telemetry").clone();
    assert!(!c.passed);
    assert!(c.detail.contains("2 frames rejected") && c.detail.contains("1 ticks missing parts"), "{}", c.detail);
    assert!(c.detail.contains("name workers the scenario does not have (it has 4)"), "{}", c.detail);
    rec = catalog("basic_spin");
    rec.ticks.clear();
    assert!(check(&judge_default(&rec), "telemetry").detail.contains("no samples in a 4000 ms run"));
}

#[test]
fn fake_record_stalled_worker_fails_starvation_and_gap_naming_it() {
    let mut rec = catalog("cpuset_apply");
    // Worker 5 (cg_1 on cpus 2-3) stops progressing on cpu 3 at 1.0 s until the end.
    let stop = T0 + 1000 * MS;
    for t in &mut rec.ticks {
        if let Some(w) = t.workers.iter_mut().find(|w| w.id == 5) {
            w.last_progress_ns = w.last_progress_ns.min(stop);
            w.last_cpu = 3;
        }
    }
    let r = rec.reports.iter_mut().find(|r| r.id == 5).unwrap();
    (r.max_gap_ns, r.max_gap_at_ns, r.max_gap_cpu) = (3000 * MS, stop, 3);
    let v = judge_default(&rec);
    assert!(!v.passed);
    let s = check(&v, "not_starved");
    assert!(
        !s.passed
            && s.detail
                .contains("worker 5 in cg_1 made no progress for 3.0 s on cpu 3 (from 1.00 s to the end of the run)"),
        "{}",
        s.detail
    );
    let g = check(&v, "max_gap");
    assert!(
        !g.passed
            && g.detail.contains("worker 5 in cg_1 made no progress for 3.00 s on cpu 3 at 1.00 s (limit 2000 ms)"),
        "{}",
        g.detail
    );
    // A higher limit lets the same record pass: thresholds are applied at judge time.
    let lax = Overrides { max_gap_ms: Some(5000), ..Default::default() };
    let v = judge(&rec, &Thresholds::for_record(&rec, &lax));
    assert!(check(&v, "max_gap").passed && check(&v, "not_starved").passed);
    // No progress at all.
    rec.reports[0].work_units = 0;
    let s = check(&judge_default(&rec), "not_starved").clone();
    assert!(s.detail.contains("worker 0 in cg_0 made no progress at all in 4.0 s"), "{}", s.detail);
}

#[test]
fn fake_record_cpu_outside_the_cpuset_fails_isolation() {
    let mut rec = catalog("cpuset_apply");
    // cg_0 is on cpus 0-1: a sample on cpu 3 at 2.0 s.
    let tick = rec.ticks.iter_mut().find(|t| t.t_ns == T0 + 2000 * MS).unwrap();
    tick.workers[1].last_cpu = 3;
    let c = check(&judge_default(&rec), "cpuset_isolation").clone();
    assert!(!c.passed);
    assert!(c.detail.contains("cg_0: worker 1 ran on cpu 3 outside its cpuset 0-1 at 2.00 s"), "{}", c.detail);
    // The reports' CPU sets are checked too (they cover ticks a sample missed).
    let mut rec = catalog("cpuset_apply");
    rec.reports[4].cpus_used = cpu_mask([1, 2]);
    let c = check(&judge_default(&rec), "cpuset_isolation").clone();
    assert!(
        c.detail.contains("worker 4 in cg_1 ran on cpu 1 during the run, outside every cpuset it had (2-3)"),
        "{}",
        c.detail
    );
}

#[test]
fn fake_record_isolation_follows_steps_with_a_grace() {
    let mut rec = catalog("cpuset_swap");
    // Right after the swap (2.0 s + 100 ms) either side's CPUs count; a second later only the new.
    let swap = T0 + 2000 * MS;
    let set = |rec: &mut RunRecord, t: u64, cpu: u32| {
        let tick = rec.ticks.iter_mut().find(|x| x.t_ns == t).unwrap();
        let w = tick.workers.iter_mut().find(|w| w.id == 0).unwrap();
        (w.last_cpu, w.last_progress_ns) = (cpu, t - MS);
    };
    set(&mut rec, swap + 100 * MS, 3);
    set(&mut rec, swap - 100 * MS, 0);
    let c = check(&judge_default(&rec), "cpuset_isolation").clone();
    assert!(c.passed, "{}", c.detail);
    set(&mut rec, swap + 1000 * MS, 0);
    let c = check(&judge_default(&rec), "cpuset_isolation").clone();
    assert!(
        !c.passed && c.detail.contains("cg_0: worker 0 ran on cpu 0 outside its cpuset 2-3 at 3.00 s"),
        "{}",
        c.detail
    );
}

#[test]
fn fake_record_isolation_is_skipped_when_it_cannot_apply() {
    let rec = catalog("basic_spin");
    let c = check(&judge_default(&rec), "cpuset_isolation").clone();
    assert!(c.skipped && c.detail.contains("no cpuset restricts any worker"));
    let mut rec = catalog("cpuset_apply");
    rec.events[0].kind = ScenarioEventKind::Started { workers: 8, cgroups: 2, cgroups_applied: false };
    let c = check(&judge_default(&rec), "cpuset_isolation").clone();
    assert!(c.skipped && c.detail.contains("cgroups were not applied"), "{}", c.detail);
}

#[test]
fn fake_record_affinity_violation_fails() {
    let mut rec = catalog("affinity_pinned");
    assert!(check(&judge_default(&rec), "affinity").passed);
    let tick = &mut rec.ticks[5];
    let w = tick.workers.iter_mut().find(|w| w.id == 0).unwrap();
    w.last_cpu = 2;
    let c = check(&judge_default(&rec), "affinity").clone();
    assert!(
        !c.passed && c.detail.contains("pinned: worker 0 ran on cpu 2 outside its affinity mask 0"),
        "{}",
        c.detail
    );
}

/// Sets worker `id`'s CPU time in every tick to `f(ms since the release)` and in its report
/// to `f(run time)`.
fn cpu_curve(rec: &mut RunRecord, id: u32, f: impl Fn(u64) -> u64) {
    for t in &mut rec.ticks {
        let ms = (t.t_ns - T0) / MS;
        t.workers.iter_mut().filter(|w| w.id == id).for_each(|w| w.cpu_time_ns = f(ms) * MS);
    }
    let end = u64::from(rec.meta.plan.duration_ms);
    rec.reports.iter_mut().filter(|r| r.id == id).for_each(|r| r.cpu_time_ns = f(end) * MS);
}

#[test]
fn fake_record_uneven_cpu_time_fails_fairness_with_the_spread() {
    let mut rec = catalog("basic_spin");
    cpu_curve(&mut rec, 2, |ms| ms * 3 / 10);
    let v = judge_default(&rec);
    let c = check(&v, "fairness");
    assert!(!c.passed, "{}", c.detail);
    assert!(
        c.detail
            .contains("cg_0 (4 cpu_spin workers): cpu time spread 44.4% > 15% over the whole run (worker 2: 1.20 s"),
        "{}",
        c.detail
    );
    // An impossibly tight limit fails a record as even as real runs get (1 ms in 2 s).
    let rec = catalog("basic_spin");
    let tight = Overrides { max_spread_pct: Some(0.001), ..Default::default() };
    let mut rec2 = rec.clone();
    rec2.reports[1].cpu_time_ns += MS;
    let c = check(&judge(&rec2, &Thresholds::for_record(&rec, &tight)), "fairness").clone();
    assert!(!c.passed && c.detail.contains("> 0.001%"), "{}", c.detail);
    // Units when asked, and a skip where the scenario says shares are not equal.
    let units = Overrides { fairness_metric: Some(Metric::Units), ..Default::default() };
    assert!(check(&judge(&rec, &Thresholds::for_record(&rec, &units)), "fairness").detail.contains("limit 15%"));
    assert!(check(&judge_default(&catalog("cpuset_overlap")), "fairness").skipped);
}

#[test]
fn fake_record_fairness_warm_up_is_opt_in() {
    // Worker 3 gets no CPU for the first second (balancing), then its full share.
    let mut rec = catalog("basic_spin");
    cpu_curve(&mut rec, 3, |ms| ms.saturating_sub(1000) / 2);
    let c = check(&judge_default(&rec), "fairness").clone();
    assert!(!c.passed && c.detail.contains("spread 26.7% > 15% over the whole run"), "{}", c.detail);
    let warm = Overrides { fairness_warmup_pct: Some(25.0), ..Default::default() };
    let c = check(&judge(&rec, &Thresholds::for_record(&rec, &warm)), "fairness").clone();
    assert!(c.passed, "after the first second the shares are even: {}", c.detail);
    // Without samples there is no window: the reports' whole-run totals.
    rec.ticks.clear();
    let c = check(&judge(&rec, &Thresholds::for_record(&rec, &warm)), "fairness").clone();
    assert!(!c.passed && c.detail.contains("over the whole run"), "{}", c.detail);
}

#[test]
fn fake_record_cpu_ratio_is_measured() {
    // One spinner per CPU in each cgroup: hi = workers 0-3, lo = workers 4-7.
    let mut rec = catalog("cgroup_weights_2to1");
    let set = |rec: &mut RunRecord, ids: std::ops::Range<u32>, f: fn(u64) -> u64| {
        ids.for_each(|id| cpu_curve(rec, id, f));
    };
    assert!(check(&judge_default(&rec), "cpu_ratio").passed);
    set(&mut rec, 0..8, |ms| ms / 2);
    let c = check(&judge_default(&rec), "cpu_ratio").clone();
    assert!(!c.passed, "equal CPU time is not 2:1: {}", c.detail);
    assert!(c.detail.contains("cpu time hi:lo = 1.00 (8.00 s / 8.00 s), expected 2 +- 25%"), "{}", c.detail);
    set(&mut rec, 0..4, |ms| ms * 13 / 20);
    set(&mut rec, 4..8, |ms| ms * 7 / 20);
    let v = judge_default(&rec);
    assert!(check(&v, "cpu_ratio").passed, "{}", check(&v, "cpu_ratio").detail);
    assert!((v.numbers.cpu_ratio.unwrap() - 1.857).abs() < 0.01);
    set(&mut rec, 4..8, |_| 0);
    assert!(check(&judge_default(&rec), "cpu_ratio").detail.contains("lo got no CPU time"));
    assert!(check(&judge_default(&catalog("basic_spin")), "cpu_ratio").skipped);
}

#[test]
fn fake_record_stalled_sampling_intervals_are_left_out() {
    // The guest stalls for 1.5 s after the tick at 2.0 s (the host did not run the VM); the
    // stall is charged whole to worker 2, which happened to be current. Not a scheduler fault.
    let mut rec = catalog("basic_spin");
    let stall = 1500 * MS;
    for t in rec.ticks.iter_mut().filter(|t| t.t_ns > T0 + 2000 * MS) {
        t.t_ns += stall;
        for w in &mut t.workers {
            w.last_progress_ns += stall;
            w.cpu_time_ns += if w.id == 2 { stall } else { 0 };
        }
    }
    rec.reports[2].cpu_time_ns += stall;
    for e in rec.events.iter_mut().filter(|e| e.kind == ScenarioEventKind::Finished) {
        e.t_ns += stall;
    }
    let warm = Overrides { fairness_warmup_pct: Some(25.0), ..Default::default() };
    let c = check(&judge(&rec, &Thresholds::for_record(&rec, &warm)), "fairness").clone();
    assert!(c.passed && c.detail.contains("largest spread 0.0%"), "{}", c.detail);
    // The window says what was left out when it matters.
    let tight = Overrides { max_spread_pct: Some(0.001), fairness_warmup_pct: Some(25.0), ..Default::default() };
    cpu_curve(&mut rec, 1, |ms| ms / 3);
    let c = check(&judge(&rec, &Thresholds::for_record(&rec, &tight)), "fairness").clone();
    assert!(c.detail.contains("without 1 stalled sampling interval(s)"), "{}", c.detail);
}

fn with_latency(rec: &mut RunRecord, id: usize, us: u64, n: u64) {
    let mut h = vec![0u64; hist::BUCKETS];
    h[hist::bucket(us * 1000)] = n;
    rec.reports[id].latency = h.into_iter().collect();
}

#[test]
fn fake_record_slow_wakeups_fail_the_p99_limit() {
    let mut rec = catalog("latency_timer_under_load");
    with_latency(&mut rec, 0, 100, 1000);
    with_latency(&mut rec, 1, 90_000, 1000);
    let c = check(&judge_default(&rec), "wake_latency").clone();
    assert!(!c.passed && c.detail.contains("worker 1 in timers p99 wake-up latency"), "{}", c.detail);
    assert!(c.detail.contains("> 50000 us"), "{}", c.detail);
    with_latency(&mut rec, 1, 100, 1000);
    let v = judge_default(&rec);
    assert!(check(&v, "wake_latency").passed);
    assert!(v.numbers.p99_wake_us.unwrap() < 120.0);
    // Without a limit the numbers are reported, the check skipped.
    let mut rec = catalog("basic_spin");
    with_latency(&mut rec, 0, 100, 10);
    assert!(check(&judge_default(&rec), "wake_latency").skipped, "cpu_spin measures no wake-ups");
}

#[test]
fn fake_record_throughput_floor() {
    let rec = catalog("basic_spin");
    assert!(check(&judge_default(&rec), "throughput").skipped);
    let floor = |f: f64| Overrides { min_units_per_sec: Some(f), ..Default::default() };
    assert!(check(&judge(&rec, &Thresholds::for_record(&rec, &floor(100.0))), "throughput").passed);
    let c = check(&judge(&rec, &Thresholds::for_record(&rec, &floor(500.0))), "throughput").clone();
    assert!(!c.passed && c.detail.contains("worker 0 in cg_0 did 250 units/s < 500"), "{}", c.detail);
}

#[test]
fn fake_record_scheduler_attachment() {
    let mut rec = catalog("basic_spin");
    let c = check(&judge_default(&rec), "scheduler").clone();
    assert!(c.skipped && c.detail.contains("not applicable: EEVDF"));
    rec.ticks[3].system.as_mut().unwrap().scx = ScxState::Enabled;
    let c = check(&judge_default(&rec), "scheduler").clone();
    assert!(
        !c.passed && c.detail.contains("sched_ext reported Enabled at 0.40 s in a run meant for EEVDF"),
        "{}",
        c.detail
    );
    // sched_ext: attached, enabled at every tick with one enable sequence, stopped at the end.
    let mut rec = catalog("basic_spin");
    rec.meta.scheduler = SchedulerInfo { name: "scx_qmap".into(), kind: SchedulerKind::SchedExt, args: vec![] };
    for t in &mut rec.ticks {
        let s = t.system.as_mut().unwrap();
        (s.scx, s.scx_enable_seq) = (ScxState::Enabled, Some(1));
    }
    let ev = |t_ms: u64, kind, text: &str| crate::record::SchedEvent { t_ns: T0 + t_ms * MS, kind, text: text.into() };
    let c = check(&judge_default(&rec), "scheduler").clone();
    assert!(!c.passed && c.detail.contains("scx_qmap was never seen attached"), "{}", c.detail);
    rec.sched_events.push(ev(0, SchedEventKind::Attached, "qmap (enable_seq Some(1), after 900 ms)"));
    let c = check(&judge_default(&rec), "scheduler").clone();
    assert!(!c.passed && c.detail.contains("not seen stopping"), "{}", c.detail);
    rec.sched_events.push(ev(9000, SchedEventKind::Stopped, "stopped in 40 ms; sched_ext disabled, back on EEVDF"));
    let c = check(&judge_default(&rec), "scheduler").clone();
    assert!(c.passed && c.detail.contains("attached as qmap") && c.detail.contains("back on EEVDF"), "{}", c.detail);
    rec.ticks[20].system.as_mut().unwrap().scx_enable_seq = Some(2);
    let c = check(&judge_default(&rec), "scheduler").clone();
    assert!(c.detail.contains("enable_seq changed to 2 at 2.10 s: scx_qmap was reloaded"), "{}", c.detail);
    // A kernel error: quoted, with the kernel log, the scheduler's output and the console.
    rec.ticks[10].system.as_mut().unwrap().scx = ScxState::Disabled;
    let why = "scx_qmap exited (exit status 1); kernel: BPF scheduler \"qmap\" disabled (runtime error)";
    rec.sched_events.push(ev(1100, SchedEventKind::Error, why));
    rec.sched_events.push(ev(1100, SchedEventKind::KernelLog, "sched_ext: qmap: scx_bpf_error (test)"));
    for i in 0..20 {
        rec.sched_events.push(ev(1100, SchedEventKind::Output, &format!("out {i}")));
    }
    rec.console_tail = "line a\nline b".into();
    let c = check(&judge_default(&rec), "scheduler").clone();
    let d = &c.detail;
    assert!(!c.passed && d.contains("scx_qmap was disabled by the kernel (error) at 1.10 s: scx_qmap exited"), "{d}");
    assert!(d.contains("sched_ext state was Disabled at 1.10 s (scx_qmap not attached)"), "{d}");
    assert!(d.contains("kernel log (1 of 1 lines):\n      sched_ext: qmap: scx_bpf_error (test)"), "{d}");
    assert!(
        d.contains("scheduler output, last (12 of 20 lines)") && d.contains("out 19") && !d.contains("out 7\n"),
        "{d}"
    );
    assert!(d.contains("console, last (2 of 2 lines)"), "{d}");
}

#[test]
fn fake_record_weight_ratio_skipped_when_the_kernel_says_the_scheduler_ignores_weights() {
    let mut rec = catalog("cgroup_weights_2to1");
    let before = check(&judge_default(&rec), "cpu_ratio").clone();
    assert!(!before.skipped, "{}", before.detail);
    rec.meta.scheduler = SchedulerInfo { name: "scx_simple".into(), kind: SchedulerKind::SchedExt, args: vec![] };
    rec.sched_events.push(crate::record::SchedEvent {
        t_ns: T0,
        kind: SchedEventKind::KernelLog,
        text: "sched_ext: \"simple\" does not implement cgroup cpu.weight".into(),
    });
    let c = check(&judge_default(&rec), "cpu_ratio").clone();
    assert!(c.skipped && c.detail.contains("the kernel says \"simple\" does not implement cgroup cpu.weight"));
    // The same line under EEVDF (impossible, but) changes nothing.
    rec.meta.scheduler = SchedulerInfo::eevdf();
    assert!(!check(&judge_default(&rec), "cpu_ratio").skipped);
}

#[test]
fn thresholds_resolve_default_then_scenario_then_command_line() {
    let expect = Expect { max_gap_ms: Some(3000), fairness: Some(false), p99_wake_us: Some(7), ..Default::default() };
    let t = Thresholds::resolve(&expect, &Overrides::default(), false);
    assert_eq!((t.max_gap_ms, t.fairness, t.p99_wake_us, t.max_spread_pct), (3000, false, Some(7), 15.0));
    let o = Overrides { max_gap_ms: Some(10), p99_wake_us: Some(9), ..Default::default() };
    let t = Thresholds::resolve(&expect, &o, false);
    assert_eq!((t.max_gap_ms, t.p99_wake_us), (10, Some(9)));
    assert_eq!(Thresholds::resolve(&Expect::default(), &Overrides::default(), false), Thresholds::default());
    // Emulated runs: slack on the spread and p99 limits of defaults and scenario, not the command line.
    let t = Thresholds::resolve(&expect, &Overrides::default(), true);
    assert_eq!((t.max_spread_pct, t.p99_wake_us, t.max_gap_ms, t.emulation_slack), (30.0, Some(14), 6000, 2.0));
    let o = Overrides { max_spread_pct: Some(0.001), p99_wake_us: Some(9), max_gap_ms: Some(5), ..Default::default() };
    let t = Thresholds::resolve(&expect, &o, true);
    assert_eq!((t.max_spread_pct, t.p99_wake_us, t.max_gap_ms), (0.001, Some(9), 5));
    let names: Vec<&str> = Thresholds::default().lines().iter().map(|l| l.0).collect();
    for (doc, _, _) in THRESHOLD_DOCS {
        assert!(names.contains(doc), "{doc} is documented and printed");
    }
}

#[test]
fn fake_record_long_failure_lists_are_capped() {
    let mut rec = catalog("stress_oversubscribe_4x");
    for r in &mut rec.reports {
        r.max_gap_ns = 9000 * MS;
    }
    let c = check(&judge_default(&rec), "max_gap").clone();
    assert!(c.detail.ends_with(&format!("and {} more", 16 - MAX_LISTED)), "{}", c.detail);
}

#[test]
fn fake_record_without_samples_does_not_pass_isolation_as_zero_samples_checked() {
    let mut rec = catalog("cpuset_apply");
    rec.meta.plan.sample_period_ms = 0;
    rec.ticks.clear();
    let v = judge_default(&rec);
    let c = check(&v, "cpuset_isolation");
    assert_eq!(c.status, Status::NotJudged, "{c:?}");
    assert!(c.detail.contains("sampling is off (sample_period_ms = 0)"), "{}", c.detail);
    // The rest of the run was judged, so the verdict still passes.
    assert_eq!(v.status, Status::Pass, "{:?}", v.failures().collect::<Vec<_>>());
}

#[test]
fn fake_record_where_nothing_could_be_judged_is_not_judged_not_passed() {
    let mut rec = catalog("basic_spin");
    rec.reports.clear();
    rec.ticks.clear();
    // No reports: run_completed fails on its own; without it failing, nothing else was judged.
    let v = judge_default(&rec);
    assert_eq!(v.status, Status::Fail);
    assert_eq!(check(&v, "not_starved").status, Status::NotJudged);
    let mut only_nj = v.clone();
    only_nj.checks.retain(|c| c.status != Status::Fail);
    assert_eq!(overall(&only_nj.checks), Status::NotJudged);
}

#[test]
fn fake_record_guest_topology_is_judged() {
    let mut rec = catalog("basic_spin");
    assert_eq!(check(&judge_default(&rec), "topology").status, Status::NotJudged, "no report: not judged");
    rec.guest_topology = crate::topo::tests::fake(&rec.meta.topology);
    let c = check(&judge_default(&rec), "topology").clone();
    assert_eq!(c.status, Status::Pass, "{c:?}");
    for cpu in &mut rec.guest_topology {
        cpu.llc = cpu_mask(0..4); // one LLC for all four CPUs of 1n2l2c1t
    }
    let v = judge_default(&rec);
    let c = check(&v, "topology");
    assert!(!v.passed && c.status == Status::Fail, "{c:?}");
    assert!(c.detail.contains("cpu 0: LLC holds CPUs {0-3} in the guest but {0-1}"), "{}", c.detail);
}
