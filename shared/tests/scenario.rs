//! Scenario types: postcard round trips, numbering, and validation that explains itself.

use ktstr_shared::plan::{ExecPlan, PlanError, RunPlan};
use ktstr_shared::scenario::*;
use ktstr_shared::wire::{cpu_mask, mask_cpus};

fn cpus(s: &str) -> CpuList {
    s.parse().unwrap()
}

/// Two cgroups (one nested), every work type, and a step of every op.
fn full() -> Scenario {
    let mut outer = CgroupSpec::new("cg_0");
    outer.cpuset = Some(cpus("0-1"));
    let mut inner = CgroupSpec::new("cg_0/inner");
    inner.weight = Some(200);
    for work in WorkType::catalog() {
        let n = work.group_size();
        inner.workers.push(WorkerSpec {
            count: n,
            work,
            policy: SchedPolicy::Fifo(10),
            nice: -5,
            affinity: Some(cpus("0,1")),
        });
    }
    let added = CgroupSpec::new("cg_1").with_workers(2, WorkType::CpuSpin);
    let ops = vec![
        Op::AddCgroup(added),
        Op::SetCpuset { cgroup: "cg_1".into(), cpus: Some(cpus("1")) },
        Op::SetWeight { cgroup: "cg_1".into(), weight: 50 },
        Op::SetAffinity { cgroup: "cg_1".into(), cpus: None },
        Op::PauseWorkers { cgroup: "cg_1".into() },
        Op::ResumeWorkers { cgroup: "cg_1".into() },
        Op::MoveTasks { from: "cg_1".into(), to: "cg_2".into() },
        Op::RemoveCgroup { cgroup: "cg_1".into() },
    ];
    let mut s = Scenario::new(vec![outer, inner, CgroupSpec::new("cg_2")], 1000);
    s.steps.push(Step { ops: vec![], hold_ms: 100 });
    s.steps.push(Step { ops, hold_ms: 900 });
    s
}

fn problem(s: &Scenario) -> (String, Problem) {
    let e = s.validate().unwrap_err();
    (e.to_string(), e.problem)
}

#[test]
fn scenario_round_trips_in_a_plan() {
    let s = full();
    s.validate().unwrap();
    let plan = RunPlan { scenario: Some(s.clone()), ..RunPlan::new(5000) };
    let back = RunPlan::from_bytes(&plan.to_bytes().unwrap()).unwrap();
    assert_eq!(back.scenario, Some(s));
    for work in WorkType::catalog() {
        assert_eq!(work_from_bytes(&work_to_bytes(&work)), Some(work));
    }
    assert_eq!(work_from_bytes(b"\xff\xff"), None);
}

#[test]
fn cgroups_and_workers_are_numbered_in_definition_order() {
    let s = full();
    let names: Vec<&str> = s.cgroup_defs().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["cg_0", "cg_0/inner", "cg_2", "cg_1"]);
    let workers: Vec<_> = s.workers().collect();
    let in_inner: u32 = WorkType::catalog().iter().map(WorkType::group_size).sum();
    assert_eq!(workers.len() as u32, in_inner + 2);
    assert!(workers.iter().enumerate().all(|(i, w)| w.id == i as u32));
    assert!(workers[..in_inner as usize].iter().all(|w| w.cgroup == 1));
    let last = workers.last().unwrap();
    assert_eq!((last.cgroup, last.index, &last.spec.work), (3, 1, &WorkType::CpuSpin));
    assert_eq!(s.step_starts_ms().collect::<Vec<_>>(), [0, 100]);
}

#[test]
fn cpu_lists_parse_and_print_in_kernel_syntax() {
    assert_eq!(cpus("0-3, 6,8-9").0, [0, 1, 2, 3, 6, 8, 9]);
    assert_eq!(CpuList::new([9, 0, 1, 2, 2, 5]).to_string(), "0-2,5,9");
    assert_eq!(cpus("").0, Vec::<u32>::new());
    assert!("3-1".parse::<CpuList>().is_err());
    assert!("512".parse::<CpuList>().unwrap_err().contains("0..512"));
    assert!("x".parse::<CpuList>().unwrap_err().contains("\"x\""));
    let mask = cpu_mask([0, 3, 64, 511]);
    assert_eq!(mask.len(), 8);
    assert_eq!(mask_cpus(&mask).collect::<Vec<_>>(), [0, 3, 64, 511]);
    assert!(cpu_mask([]).is_empty());
}

#[test]
fn duplicate_and_bad_names_are_refused() {
    let mut s = full();
    s.cgroups.push(CgroupSpec::new("cg_0"));
    let (msg, p) = problem(&s);
    assert_eq!(p, Problem::DuplicateCgroup { name: "cg_0".into() });
    assert!(msg.starts_with("cgroups[3] (cg_0): cgroup \"cg_0\" already exists"), "{msg}");
    for bad in ["", "/a", "a/", "a//b", "a/../b", "a b", "cg/cgroup.procs"] {
        let s = Scenario::new(vec![CgroupSpec::new(bad)], 100);
        assert!(matches!(problem(&s).1, Problem::BadName { .. }), "{bad:?}");
    }
}

#[test]
fn nesting_follows_cgroup_v2_rules() {
    let orphan = Scenario::new(vec![CgroupSpec::new("a/b")], 100);
    let (msg, _) = problem(&orphan);
    assert!(msg.contains("parent cgroup \"a\" does not exist"), "{msg}");
    let busy_parent =
        Scenario::new(vec![CgroupSpec::new("a").with_workers(1, WorkType::CpuSpin), CgroupSpec::new("a/b")], 100);
    let (msg, p) = problem(&busy_parent);
    assert_eq!(p, Problem::WorkersInParent { parent: "a".into() });
    assert!(msg.contains("leaves only"), "{msg}");
}

#[test]
fn worker_specs_are_checked() {
    let bad = [
        (WorkerSpec::new(0, WorkType::CpuSpin), "count is 0"),
        (WorkerSpec::new(3, WorkType::PipePingPong { spin_iters: 1 }), "not a multiple of 2"),
        (WorkerSpec::new(4, WorkType::FutexFanOut { fan_out: 4, spin_iters: 1 }), "multiple of 5"),
        (WorkerSpec { nice: 20, ..WorkerSpec::new(1, WorkType::CpuSpin) }, "nice 20"),
        (WorkerSpec { policy: SchedPolicy::RoundRobin(0), ..WorkerSpec::new(1, WorkType::CpuSpin) }, "priority 0"),
        (WorkerSpec { affinity: Some(CpuList::default()), ..WorkerSpec::new(1, WorkType::CpuSpin) }, "empty CPU"),
        (WorkerSpec::new(1, WorkType::PeriodicTimer { period_us: 0, spin_us: 0 }), "period_us"),
        (WorkerSpec::new(1, WorkType::Sequence { phases: vec![] }), "phases is empty"),
        (
            WorkerSpec::new(
                1,
                WorkType::Sequence {
                    phases: vec![Phase { work: WorkType::FutexPingPong { spin_iters: 1 }, duration_ms: 5 }],
                },
            ),
            "phases[0]: futex_ping_pong: works in groups",
        ),
    ];
    for (spec, needle) in bad {
        let mut cg = CgroupSpec::new("cg");
        cg.workers.push(spec);
        let (msg, p) = problem(&Scenario::new(vec![cg], 100));
        assert!(matches!(p, Problem::Worker { index: 0, .. }), "{msg}");
        assert!(msg.contains(needle), "{msg} lacks {needle:?}");
        assert!(msg.starts_with("cgroups[0] (cg): workers[0]: "), "{msg}");
    }
}

#[test]
fn steps_must_name_live_cgroups() {
    let mut s = full();
    s.steps[1].ops.push(Op::SetWeight { cgroup: "cg_1".into(), weight: 10 });
    let (msg, p) = problem(&s);
    assert!(matches!(p, Problem::UnknownCgroup { .. }));
    assert!(msg.starts_with("steps[1].ops[8] (set_weight cg_1): unknown cgroup \"cg_1\""), "{msg}");
    assert!(msg.contains("alive at this point: cg_0, cg_0/inner, cg_2"), "{msg}");

    let mut s = full();
    s.steps[1].ops.insert(0, Op::RemoveCgroup { cgroup: "cg_0".into() });
    assert_eq!(problem(&s).1, Problem::RemoveParent { name: "cg_0".into() });

    let mut s = full();
    s.steps[1].ops.insert(0, Op::MoveTasks { from: "cg_2".into(), to: "cg_0".into() });
    assert_eq!(problem(&s).1, Problem::WorkersInParent { parent: "cg_0".into() });

    let mut s = full();
    s.steps[1].ops.insert(0, Op::SetWeight { cgroup: "cg_0".into(), weight: 0 });
    assert_eq!(problem(&s).1, Problem::Weight { weight: 0 });
}

#[test]
fn times_are_checked() {
    let mut s = full();
    s.duration_ms = 999;
    let (msg, _) = problem(&s);
    assert!(msg.contains("hold 1000 ms in all, more than duration_ms 999"), "{msg}");
    let mut s = full();
    s.duration_ms = 0;
    assert_eq!(problem(&s).1, Problem::ZeroDuration);
    let mut s = full();
    s.sample_period_ms = 5;
    assert_eq!(problem(&s).1, Problem::SamplePeriod { ms: 5 });
    s.sample_period_ms = 0;
    s.validate().unwrap();
}

#[test]
fn plan_refuses_a_bad_scenario_or_both_exec_and_scenario() {
    let mut bad = full();
    bad.cgroups[0].cpuset = Some(CpuList::new([600]));
    let plan = RunPlan { scenario: Some(bad), ..RunPlan::new(5000) };
    let err = RunPlan::from_bytes(&plan.to_bytes().unwrap()).unwrap_err();
    assert!(matches!(err, PlanError::Scenario(_)));
    assert!(err.to_string().contains("cgroups[0] (cg_0): cpuset names CPU 600"), "{err}");
    let both = RunPlan { scenario: Some(full()), exec: Some(ExecPlan::new(["/bin/true"])), ..RunPlan::new(5000) };
    assert_eq!(both.validate(), Err(PlanError::ExecAndScenario));
}

#[test]
fn limits_are_enforced() {
    let many = Scenario::new(vec![CgroupSpec::new("cg").with_workers(MAX_WORKERS as u32 + 1, WorkType::CpuSpin)], 10);
    assert_eq!(problem(&many).1, Problem::TooManyWorkers { n: MAX_WORKERS + 1 });
}

/// The serde names are the ones a human-written file (TOML on the host) uses, and what such a
/// file may leave out has defaults.
#[test]
fn self_describing_form_is_readable_and_defaults_apply() {
    let json = r#"{
        "cgroups": [
            { "name": "cg_0", "cpuset": [0, 1], "weight": 200,
              "workers": [ { "count": 2, "work": "cpu_spin" },
                           { "count": 1, "work": { "bursty": { "burst_ms": 5, "sleep_ms": 5 } },
                             "policy": { "fifo": 10 }, "nice": -3, "affinity": [1] } ] },
            { "name": "cg_1" }
        ],
        "steps": [ { "ops": [ { "set_cpuset": { "cgroup": "cg_0", "cpus": null } },
                              { "move_tasks": { "from": "cg_0", "to": "cg_1" } } ],
                     "hold_ms": 100 } ],
        "duration_ms": 500
    }"#;
    let s: Scenario = serde_json::from_str(json).unwrap();
    s.validate().unwrap();
    assert_eq!(s.sample_period_ms, DEFAULT_SAMPLE_PERIOD_MS);
    assert_eq!(s.cgroups[0].cpuset, Some(cpus("0-1")));
    assert_eq!(s.cgroups[0].workers[0].policy, SchedPolicy::Normal);
    assert_eq!(s.cgroups[0].workers[1].policy, SchedPolicy::Fifo(10));
    assert_eq!(s.cgroups[1].workers, vec![]);
    assert_eq!(s.steps[0].ops[1], Op::MoveTasks { from: "cg_0".into(), to: "cg_1".into() });
    let back: Scenario = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

/// A huge count is refused from the specs, not by counting workers one by one (the test would
/// take minutes in a debug build otherwise); every number that feeds arithmetic has a bound.
#[test]
fn numbers_beyond_their_bounds_are_refused_at_once() {
    let start = std::time::Instant::now();
    let huge = Scenario::new(vec![CgroupSpec::new("cg").with_workers(4_000_000_000, WorkType::CpuSpin)], 10);
    assert_eq!(problem(&huge).1, Problem::TooManyWorkers { n: 4_000_000_000 });
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "counted one by one: {:?}", start.elapsed());
    let mut two = huge.clone();
    two.cgroups.push(CgroupSpec::new("cg2").with_workers(u32::MAX, WorkType::CpuSpin));
    assert!(matches!(problem(&two).1, Problem::TooManyWorkers { .. }));

    let long = Scenario::new(vec![], u32::MAX);
    assert!(problem(&long).0.contains("duration_ms 4294967295"), "{}", problem(&long).0);
    let mut slow = full();
    slow.sample_period_ms = u32::MAX;
    assert!(problem(&slow).0.contains("sample_period_ms 4294967295"), "{}", problem(&slow).0);
    let mut steps = Scenario::new(vec![], 10);
    steps.steps = vec![Step { ops: vec![], hold_ms: 0 }; 100_000];
    assert!(problem(&steps).0.contains("100000 steps"), "{}", problem(&steps).0);

    let works = [
        (WorkType::Mixed { sleep_us: u32::MAX }, "sleep_us"),
        (WorkType::Bursty { burst_ms: u32::MAX, sleep_ms: 1 }, "burst_ms"),
        (WorkType::Bursty { burst_ms: 1, sleep_ms: u32::MAX }, "sleep_ms"),
        (WorkType::PipePingPong { spin_iters: u32::MAX }, "spin_iters"),
        (WorkType::FutexFanOut { fan_out: 1, spin_iters: u32::MAX }, "spin_iters"),
        (WorkType::AffinityChurn { spin_iters: u32::MAX }, "spin_iters"),
        (WorkType::PeriodicTimer { period_us: u32::MAX, spin_us: 0 }, "period_us"),
        (WorkType::IoSync { block_kb: 1, sleep_us: u32::MAX }, "sleep_us"),
        (WorkType::Sequence { phases: vec![Phase { work: WorkType::CpuSpin, duration_ms: u32::MAX }] }, "duration_ms"),
        (WorkType::Sequence { phases: vec![Phase { work: WorkType::CpuSpin, duration_ms: 1 }; 10_000] }, "phases"),
    ];
    for (work, field) in works {
        let n = work.group_size();
        let s = Scenario::new(vec![CgroupSpec::new("cg").with_workers(n, work.clone())], 10);
        let (msg, _) = problem(&s);
        assert!(msg.starts_with("cgroups[0] (cg): workers[0]: ") && msg.contains(field), "{work:?}: {msg}");
    }
}
