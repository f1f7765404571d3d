//! Scenarios end to end: the whole built-in catalog under EEVDF on 1n2l2c1t through QEMU (TCG
//! on these machines) with the real kernel and init, the 2:1 weight split measured, cpuset
//! isolation never violated; and runs that must fail, with the explanation naming what failed.
//! Also the scenario commands that need no VM (list, explain, file errors).
//!
//! VM tests share a lock: in parallel they would compete for the 2 host cores and skew the very
//! CPU shares they measure. The catalog runs once (one VM per scenario) and its records serve
//! several tests. Timing checks (gaps, CPU shares) assume the host gives the VM's vCPU threads
//! their time: under emulation their limits carry the verdict's emulation slack, but a machine
//! loaded far beyond its cores (other VMs, kernel builds) can still stall a vCPU for seconds.
//! So a scenario that fails only on timing checks is run once more (at most MAX_RERUNS per
//! catalog, each printed as RERUN), and a failure message states the host load average.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Instant;

const TOPOLOGY: &str = "1n2l2c1t";
/// Scenarios of the catalog that may be run again after failing only on timing checks.
const MAX_RERUNS: usize = 2;

/// `ktstr-host run --scenario ...` on the default kernel; records under `out`.
fn run_scenarios(scenarios: &[&str], out: &Path, extra: &[&str]) -> Option<Output> {
    let k = default_kernel()?;
    let mut c = host();
    c.args(["run", "--backend", "qemu", "--kernel", k["image"].as_str().unwrap(), "--topology", TOPOLOGY]);
    c.arg("--out-dir").arg(out).arg("--json");
    for s in scenarios {
        c.args(["--scenario", s]);
    }
    c.args(extra);
    let _guard = vm_lock();
    Some(run(&mut c))
}

struct CatalogRun {
    rows: Vec<Value>,
    /// The rows as the catalog run printed them, before any rerun.
    first_pass: Vec<Value>,
    /// What `--junit` wrote for that run.
    junit: String,
    exit: Option<i32>,
    /// Host load averages before and after: timing checks assume the host runs the VM.
    load: (String, String),
}

/// The whole catalog, once per test process: `run --scenario all` (each scenario in its own VM).
/// Its records stay in the target dir's tmp folder (replaced by the next run) for inspection.
fn catalog() -> Option<&'static CatalogRun> {
    default_kernel()?; // logs the skip for each test that asks, not only the first
    static RUN: OnceLock<Option<CatalogRun>> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scenarios_qemu-catalog");
        let _ = std::fs::remove_dir_all(&dir);
        let t = Instant::now();
        let before = loadavg();
        let junit = dir.join("junit.xml");
        let out = run_scenarios(&["all"], &dir, &["--junit", junit.to_str().unwrap()])?;
        let mut rows = rows(&out);
        let first_pass = rows.clone();
        let reruns = rerun_timing_failures(&mut rows, MAX_RERUNS, |row| {
            let out = run_scenarios(&[row["scenario"].as_str()?], &dir, &[])?;
            self::rows(&out).pop()
        });
        eprintln!(
            "TIMING catalog: {} scenarios in {:.0} s ({reruns} rerun); records in {}",
            rows.len(),
            t.elapsed().as_secs_f64(),
            dir.display()
        );
        let junit = std::fs::read_to_string(&junit).unwrap_or_default();
        Some(CatalogRun { rows, first_pass, junit, exit: out.status.code(), load: (before, loadavg()) })
    })
    .as_ref()
}

/// The catalog run's row of scenario `name` (`None` only when the catalog could not run here;
/// a scenario missing from the run fails the test).
fn catalog_row(name: &str) -> Option<&'static Value> {
    Some(scenario_row(&catalog()?.rows, name, "eevdf"))
}

fn record_of(row: &Value) -> PathBuf {
    PathBuf::from(row["record"].as_str().unwrap())
}

/// This 6.12.117 kernel's EEVDF can oops in pick_task_fair (pick_eevdf finds no entity to run)
/// under a sched_yield storm across cgroups: here in about 1 of 6 stress_yield_storm runs. With
/// `oops=panic` the run ends at once and its verdict carries the oops; such a run is a kernel
/// bug found, not a harness failure, so the catalog test names it instead of failing on it.
fn known_kernel_bug(row: &Value) -> bool {
    if row["passed"] == true {
        return false;
    }
    let rec: Value = serde_json::from_slice(&std::fs::read(record_of(row)).unwrap()).unwrap();
    let problem = rec["end"]["vm_problem"].as_str().unwrap_or_default();
    problem.contains("BUG: kernel NULL pointer dereference") && problem.contains("RIP: 0010:pick_task_fair")
}

#[test]
fn whole_catalog_passes_under_eevdf() {
    let Some(run) = catalog() else { return };
    let listed = json(&run_cmd(&["list", "--json"]));
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    let ran: Vec<&str> = run.rows.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(ran, names, "every catalog scenario ran, in order");
    assert!(names.len() >= 20);
    // At most one row may be the known kernel bug; every other row must pass.
    let oops = "EEVDF oops in pick_task_fair (pick_eevdf found no entity to run)";
    let (before, after) = &run.load;
    let exempted = exempt_one(&run.rows, |r| known_kernel_bug(r).then(|| oops.to_string())).unwrap_or_else(|failed| {
        panic!(
            "scenarios failed (host load average before {before}, after {after} on {} CPUs):\n{failed}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        )
    });
    let exempted = exempted.map(|(i, what)| {
        let row = &run.rows[i];
        note_known_bug(&format!("{what}, hit by {} (record {})", row["scenario"], row["record"]));
        i
    });
    let first_pass_failed = run.first_pass.iter().any(|r| r["passed"] == false);
    assert_eq!(run.exit, Some(if first_pass_failed { 1 } else { 0 }), "the exit code says whether all passed");
    for (_, row) in run.rows.iter().enumerate().filter(|(i, _)| Some(*i) != exempted) {
        let record = record_of(row);
        assert!(record.is_file() && record.with_file_name("verdict.json").is_file(), "{record:?}");
        assert!(row["verdict"]["numbers"]["units"].as_u64().unwrap() > 0, "{}", row["scenario"]);
        // Every worker reported and made progress: these checks can fail and did not.
        for name in ["run_completed", "not_starved", "max_gap", "telemetry", "guest_errors"] {
            assert_eq!(check(row, name)["skipped"], false, "{} {name}", row["scenario"]);
        }
    }
}

/// `--junit` on the catalog run: one test case per scenario in an `eevdf` suite, a failure
/// element exactly for the runs that failed, with their failed checks named.
#[test]
fn catalog_results_are_also_written_as_junit() {
    let Some(run) = catalog() else { return };
    let xml = &run.junit;
    assert!(xml.starts_with("<?xml") && xml.contains(r#"<testsuite name="eevdf""#), "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), run.first_pass.len(), "{xml}");
    let failed: Vec<&Value> = run.first_pass.iter().filter(|r| r["passed"] == false).collect();
    assert_eq!(xml.matches("<failure ").count(), failed.len(), "{xml}");
    for r in failed {
        let name = r["scenario"].as_str().unwrap();
        assert!(xml.contains(&format!(r#"<testcase name="{name}" classname="ktstr.eevdf""#)), "{name}: {xml}");
    }
    for r in &run.first_pass {
        assert!(xml.contains(&format!("record: {}", r["record"].as_str().unwrap())), "{xml}");
    }
}

#[test]
fn weights_2_to_1_give_a_measured_2_to_1_cpu_split() {
    let Some(row) = catalog_row("cgroup_weights_2to1") else { return };
    let c = check(row, "cpu_ratio");
    assert_eq!(c["passed"], true, "{c}");
    let ratio = row["verdict"]["numbers"]["cpu_ratio"].as_f64().unwrap();
    assert!((1.5..=2.5).contains(&ratio), "hi:lo CPU time {ratio}, expected 2 +- 25 %");
    let changed = catalog_row("cgroup_weight_change").unwrap();
    let ratio = changed["verdict"]["numbers"]["cpu_ratio"].as_f64().unwrap();
    assert!((1.25..=2.1).contains(&ratio), "100 -> 300 halfway: 5:3 expected, got {ratio}");
}

#[test]
fn cpuset_isolation_is_never_violated() {
    let Some(run) = catalog() else { return };
    let mut judged = 0;
    for row in &run.rows {
        let c = check(row, "cpuset_isolation");
        assert_eq!(c["passed"], true, "{}: {}", row["scenario"], c["detail"]);
        if c["skipped"] == false {
            judged += 1;
            assert!(c["detail"].as_str().unwrap().contains("no worker outside its cpuset"), "{c}");
        }
        assert_eq!(check(row, "affinity")["passed"], true, "{}", row["scenario"]);
    }
    // Every cpuset scenario (and the cgroup ones with cpusets) was actually checked.
    assert!(judged >= 10, "only {judged} scenarios had their isolation judged");
}

#[test]
fn rejudging_with_an_impossibly_tight_spread_fails_with_the_spread() {
    let Some(row) = catalog_row("basic_spin") else { return };
    let record = record_of(row);
    let out = run_cmd(&["judge", record.to_str().unwrap(), "--max-spread-pct", "0.001"]);
    assert_eq!(out.status.code(), Some(1), "the same record now fails");
    let text = text(&out.stdout);
    assert!(text.contains("FAIL  fairness") && text.contains("cg_0 (4 cpu_spin workers): cpu time spread"), "{text}");
    assert!(text.contains("% > 0.001%"), "{text}");
    // With its own thresholds it passes again: judge changes only what it is told to.
    assert_eq!(run_cmd(&["judge", record.to_str().unwrap()]).status.code(), Some(0));
    let explained = text_of(&run_cmd(&["explain", record.to_str().unwrap()]));
    assert!(explained.contains("as judged at run time") && explained.contains("emulation_slack      2"), "{explained}");
}

/// Honest construction of an isolation violation: the kernel refuses to run a worker outside its
/// cpuset, so the violation is in the declaration. `cpuset_swap` really moved cg_0 from CPUs
/// 0-1 to 2-3 halfway; the edited record no longer declares that swap, so the verdict is told
/// cg_0 stayed on 0-1 while its (real) telemetry shows it on 2-3. The check must catch it.
#[test]
fn isolation_violation_in_an_edited_record_is_named() {
    let Some(row) = catalog_row("cpuset_swap") else { return };
    let mut rec: Value = serde_json::from_slice(&std::fs::read(record_of(row)).unwrap()).unwrap();
    let ops = &mut rec["plan"]["steps"][1]["ops"];
    assert!(ops[0]["set_cpuset"]["cgroup"] == "cg_0", "{ops}");
    ops.as_array_mut().unwrap().clear();
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("record.json");
    std::fs::write(&edited, serde_json::to_vec(&rec).unwrap()).unwrap();
    let out = run_cmd(&["judge", edited.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "cpuset_isolation").unwrap();
    let detail = c["detail"].as_str().unwrap();
    assert_eq!(c["passed"], false);
    assert!(
        detail.contains("cg_0: worker 0 ran on cpu 2") || detail.contains("cg_0: worker 0 ran on cpu 3"),
        "{detail}"
    );
    assert!(detail.contains("outside its cpuset 0-1 at"), "{detail}");
}

const PAUSED: &str = r#"
name = "paused_worker"
description = "negative test: one worker is SIGSTOPped after 1 s and never resumed"
duration_ms = 4000

[expect]
# 2 s under TCG (emulation slack x2): the 3 s pause must exceed it.
max_gap_ms = 1000

[[cgroups]]
name = "cg_ok"
workers = [{ count = 1, work = "cpu_spin" }]

[[cgroups]]
name = "cg_paused"
workers = [{ count = 1, work = "cpu_spin" }]

[[steps]]
hold_ms = 1000

[[steps]]
hold_ms = 3000
ops = [{ pause_workers = { cgroup = "cg_paused" } }]
"#;

#[test]
fn a_sigstopped_worker_fails_starvation_and_gap_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("paused.toml");
    std::fs::write(&file, PAUSED).unwrap();
    let Some(out) = run_scenarios(&[file.to_str().unwrap()], dir.path(), &[]) else { return };
    assert_eq!(out.status.code(), Some(1), "a failed verdict exits 1");
    let row = &rows(&out)[0];
    assert_eq!(row["passed"], false);
    for name in ["not_starved", "max_gap"] {
        let c = check(row, name);
        let detail = c["detail"].as_str().unwrap();
        assert_eq!(c["passed"], false, "{name}: {detail}");
        assert!(detail.contains("worker 1 in cg_paused made no progress for"), "{name}: {detail}");
        assert!(!detail.contains("worker 0"), "the running worker is not blamed: {detail}");
    }
    let starved = check(row, "not_starved")["detail"].as_str().unwrap().to_string();
    assert!(starved.contains("to the end of the run"), "{starved}");
    // Everything else about the run was fine: the failure is the pause, nothing else.
    for name in ["run_completed", "steps_applied", "guest_errors", "telemetry"] {
        assert_eq!(check(row, name)["passed"], true, "{name}: {}", check(row, name)["detail"]);
    }
    // Re-judged with a gap limit beyond the pause, the same record passes.
    let record = record_of(row);
    let out = run_cmd(&["judge", record.to_str().unwrap(), "--max-gap-ms", "10000"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

fn run_cmd(args: &[&str]) -> Output {
    run(host().args(args))
}

fn text_of(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn list_shows_every_scenario_with_what_it_proves() {
    let listed = json(&run_cmd(&["list", "--json"]));
    let rows = listed.as_array().unwrap();
    assert!(rows.len() >= 20);
    for category in ["basic", "cpuset", "cgroup", "affinity", "interaction", "stress", "latency"] {
        assert!(rows.iter().any(|r| r["category"] == category), "{category}");
    }
    assert!(rows.iter().all(|r| r["description"].as_str().unwrap().len() > 40));
    let table = text_of(&run_cmd(&["list"]));
    assert!(table.contains("cgroup_weights_2to1") && table.contains("2:1"), "{table}");
}

#[test]
fn explain_prints_thresholds_and_the_resolved_scenario() {
    let out = text_of(&run_cmd(&["explain"]));
    assert!(out.contains("max_gap_ms           2000") && out.contains("max_spread_pct       15"), "{out}");
    let out = text_of(&run_cmd(&["explain", "cpuset_swap", "--topology", "1n2l2c1t"]));
    assert!(out.contains("cgroup cg_0") && out.contains("cpuset 0-1"), "{out}");
    assert!(out.contains("set_cpuset cg_0 2-3"), "{out}");
    let json = json(&run_cmd(&["explain", "cgroup_weights_2to1", "--json", "--max-gap-ms", "99"]));
    assert_eq!(json["thresholds"]["max_gap_ms"], 99);
    assert_eq!(json["thresholds"]["cpu_ratio"]["ratio"], 2.0);
}

#[test]
fn bad_scenario_files_fail_before_booting_with_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "duration_ms = 1000\n[[cgroups]]\nname = \"a\"\ncpuset = { llc = 5 }\n").unwrap();
    let out =
        run_cmd(&["run", "--topology", TOPOLOGY, "--scenario", file.to_str().unwrap(), "--kernel", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:4:10: LLC 5 is not in topology 1n2l2c1t", file.display())), "{err}");
    let out = run_cmd(&["run", "--scenario", "no_such_scenario"]);
    assert!(text(&out.stderr).contains("unknown scenario \"no_such_scenario\""), "{}", text(&out.stderr));
    let out = run_cmd(&["run", "--scenario", "basic_spin", "--scheduler", "/no/such/scx_sched"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--scheduler /no/such/scx_sched: cannot read"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "refused before any VM");
    let out = run_cmd(&["run", "--junit", "j.xml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--junit j.xml: JUnit reports scenario runs; add --scenario"), "{out:?}");
}

/// The rerun rule on synthetic rows (no VM): only rows that failed on timing checks alone are
/// rerun, each once, at most `max` in all, and the rerun's row takes the place of the first.
#[test]
fn synthetic_rows_only_timing_failures_are_rerun_and_bounded() {
    let row = |name: &str, failed: &[&str]| {
        let checks: Vec<Value> = ["fairness", "max_gap", "not_starved", "cpuset_isolation"]
            .iter()
            .map(|c| serde_json::json!({"name": c, "passed": !failed.contains(c), "detail": "d"}))
            .collect();
        serde_json::json!({"scenario": name, "scheduler": "eevdf", "record": "r", "passed": failed.is_empty(),
            "verdict": {"checks": checks}})
    };
    let mut rows = vec![
        row("ok", &[]),
        row("spread", &["fairness"]),
        row("starved", &["max_gap", "not_starved"]),
        row("isolation", &["cpuset_isolation"]),
        row("gap", &["max_gap", "fairness"]),
        row("third", &["fairness"]),
    ];
    let mut asked = Vec::new();
    let n = rerun_timing_failures(&mut rows, 2, |r| {
        asked.push(r["scenario"].as_str().unwrap().to_string());
        Some(row(r["scenario"].as_str().unwrap(), &[]))
    });
    assert_eq!((n, asked), (2, vec!["spread".to_string(), "gap".to_string()]));
    let passed: Vec<bool> = rows.iter().map(|r| r["passed"] == true).collect();
    assert_eq!(passed, [true, true, false, false, true, false], "reruns replaced their rows; the third was not rerun");
}

/// The skip helper (no VM): it prints the reason and appends `<target> <test>: <reason>` to the
/// log dev.sh summarises, once per test, one line per test from parallel test threads.
#[test]
fn skip_helper_appends_target_test_and_reason_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips.log");
    log_skip(Some(&log), "needs hardware KVM (made-up reason)");
    log_skip(Some(&log), "needs hardware KVM (made-up reason)");
    let other = log.clone();
    let thread = std::thread::Builder::new().name("another_test".into());
    thread.spawn(move || log_skip(Some(&other), "no /dev/kvm")).unwrap().join().unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "scenarios_qemu skip_helper_appends_target_test_and_reason_to_the_log: needs hardware KVM (made-up reason)\n\
         scenarios_qemu another_test: no /dev/kvm\n"
    );
}

/// A lookup of a scenario the run does not have (renamed in the catalog, say) fails the test
/// that asks, instead of letting it return early as a pass.
#[test]
#[should_panic(expected = "no row for scenario \"cpuset_swap\" under eevdf: renamed or removed from the catalog?")]
fn synthetic_rows_a_missing_catalog_scenario_fails_the_lookup() {
    let rows = [serde_json::json!({"scenario": "cpuset_swapped", "scheduler": "eevdf"})];
    scenario_row(&rows, "cpuset_swap", "eevdf");
}
