use ktstr_shared::plan::*;

fn exec_plan() -> RunPlan {
    let mut exec = ExecPlan::new(["/bin/sh", "-c", "echo $FOO"]);
    exec.env.push(("FOO".into(), "bar".into()));
    exec.cwd = Some("/tmp".into());
    exec.output_limit = Some(10);
    RunPlan { console_quiet: true, exec: Some(exec), ..RunPlan::new(5000) }
}

fn sched(argv0: &str, attach_timeout_ms: u32) -> SchedPlan {
    SchedPlan {
        name: "scx_qmap".into(),
        argv: vec![argv0.into(), "-e".into(), "100".into()],
        env: vec![("RUST_LOG".into(), "info".into())],
        attach_timeout_ms,
        stop_timeout_ms: 2000,
    }
}

#[test]
fn plan_round_trips() {
    let scenario = ktstr_shared::scenario::Scenario::new(
        vec![
            ktstr_shared::scenario::CgroupSpec::new("cg_0")
                .with_workers(2, ktstr_shared::scenario::WorkType::Bursty { burst_ms: 5, sleep_ms: 5 }),
        ],
        300,
    );
    let with_sched = RunPlan { scheduler: Some(sched("/ktstr/sched/scx_qmap", 5000)), ..exec_plan() };
    for plan in [RunPlan::new(1), exec_plan(), RunPlan { scenario: Some(scenario), ..RunPlan::new(1000) }, with_sched] {
        let bytes = plan.to_bytes().unwrap();
        assert_eq!(RunPlan::from_bytes(&bytes).unwrap(), plan);
    }
}

#[test]
fn plan_rejects_what_the_init_cannot_run() {
    let cases = [
        (RunPlan::new(0), PlanError::ZeroDeadline),
        (RunPlan { version: 99, ..RunPlan::new(1) }, PlanError::Version { found: 99 }),
        (RunPlan { exec: Some(ExecPlan::new(Vec::<String>::new())), ..RunPlan::new(1) }, PlanError::EmptyArgv),
        (RunPlan { exec: Some(ExecPlan::new(["a\0b"])), ..RunPlan::new(1) }, PlanError::NulByte),
        (RunPlan { scheduler: Some(sched("scx_qmap", 5000)), ..RunPlan::new(1) }, PlanError::SchedulerPath),
        (RunPlan { scheduler: Some(sched("/s", 0)), ..RunPlan::new(1) }, PlanError::ZeroAttachTimeout),
        (RunPlan { scheduler: Some(sched("/s\0", 1)), ..RunPlan::new(1) }, PlanError::NulByte),
    ];
    for (plan, want) in cases {
        assert_eq!(plan.validate(), Err(want.clone()));
        assert_eq!(RunPlan::from_bytes(&plan.to_bytes().unwrap()), Err(want));
    }
    let mut bad_env = exec_plan();
    bad_env.exec.as_mut().unwrap().env.push(("A=B".into(), "c".into()));
    assert!(matches!(bad_env.validate(), Err(PlanError::BadEnvName { .. })));
    let mut huge_limit = exec_plan();
    huge_limit.exec.as_mut().unwrap().output_limit = Some(MAX_OUTPUT_LIMIT + 1);
    assert_eq!(huge_limit.validate(), Err(PlanError::OutputLimit { limit: MAX_OUTPUT_LIMIT + 1 }));
}

#[test]
fn plan_rejects_bad_bytes() {
    let mut bytes = exec_plan().to_bytes().unwrap();
    assert_eq!(RunPlan::from_bytes(&[]), Err(PlanError::Decode));
    assert_eq!(RunPlan::from_bytes(&bytes[..bytes.len() - 1]), Err(PlanError::Decode));
    bytes.push(0);
    assert_eq!(RunPlan::from_bytes(&bytes), Err(PlanError::TrailingBytes { len: 1 }));
    let huge = vec![1u8; MAX_PLAN_BYTES + 1];
    assert!(matches!(RunPlan::from_bytes(&huge), Err(PlanError::TooLarge { .. })));
    // Errors tell the user what to do.
    assert!(PlanError::Decode.to_string().contains("rebuild"));
}
