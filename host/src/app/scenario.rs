//! The command-line edge of scenarios: `run --scenario` options, `list`, `explain` and
//! `judge`. Ties resolution, records, verdicts and reports together (anyhow errors: this is
//! the edge); the VM loop itself lives in `cli::run`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ktstr_shared::scenario::{Op, Scenario};
use ktstr_shared::topology::Topology;

use crate::app::thresholds::ThresholdArgs;
use crate::backend::{Accel, Backend};
use crate::kernel::Kernel;
use crate::record::{self, KernelInfo, RunMeta, RunRecord};
use crate::report::{self, ScenarioRow};
use crate::runner::{RunOutput, RunRequest};
use crate::scenario::{self, Resolved};
use crate::sched::SchedulerUnderTest;
use crate::verdict::{self, Overrides, Thresholds, Verdict};

/// Options of `run` for scenario runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Scenario to run, each in its own VM, one after the other: a catalog name (see `list`), a
    /// category, `all`, or a TOML file. Repeatable. Without it, `run` boots the trivial default plan
    #[arg(long = "scenario", value_name = "NAME|FILE")]
    pub scenarios: Vec<String>,
    /// Multiply scenario run times and step holds by F (e.g. 0.5 under TCG emulation)
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub duration_scale: f64,
    /// Scheduler under test: eevdf, an in-tree sched_ext scheduler (scx_simple, scx_qmap,
    /// scx_central, scx_flatcg: built for the kernel on first use) or the path of any scheduler
    /// binary. Arguments may follow in the same word ('scx_qmap -s 5000') or after `--`.
    /// Repeatable: every scenario runs under each scheduler (a matrix)
    #[arg(long = "scheduler", value_name = "NAME|PATH", default_value = "eevdf")]
    pub schedulers: Vec<String>,
    /// Arguments for the sched_ext scheduler(s)
    #[arg(last = true, value_name = "SCHED_ARGS")]
    pub sched_args: Vec<String>,
    /// Seconds a scheduler gets to attach (sched_ext enabled) before the run fails
    #[arg(long, default_value_t = 20, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub attach_timeout: u32,
    /// Where run records go: DIR/<run-id>/record.json and verdict.json
    #[arg(long, default_value = "target/ktstr", value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Also write the results as JUnit XML to FILE (one suite per scheduler, one test case per
    /// scenario, failed checks in the failure); written when the runs end or are interrupted
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Topology the worker counts are shown for
    #[arg(long, default_value = "1n2l2c1t")]
    pub topology: Topology,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// A scenario (name, category member, file) or a record.json; nothing: the defaults
    #[arg(value_name = "SCENARIO|RECORD")]
    pub target: Option<String>,
    /// Topology a scenario is resolved on
    #[arg(long, default_value = "1n2l2c1t")]
    pub topology: Topology,
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub duration_scale: f64,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct JudgeArgs {
    /// A record.json written by `run --scenario`
    #[arg(value_name = "RECORD")]
    pub record: PathBuf,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Print the verdict as JSON
    #[arg(long)]
    pub json: bool,
}

/// Every scenario the arguments name, resolved on `topo` (before any VM boots).
pub fn resolve_all(args: &ScenarioArgs, topo: &Topology) -> Result<Vec<Resolved>> {
    let mut all = Vec::new();
    for spec in &args.scenarios {
        all.extend(scenario::load(spec, topo, args.duration_scale)?);
    }
    Ok(all)
}

fn kernel_info(k: &Kernel) -> KernelInfo {
    KernelInfo {
        release: None,
        version: k.version.clone(),
        origin: k.origin.clone(),
        image: k.image.display().to_string(),
    }
}

impl ScenarioArgs {
    /// The schedulers of the matrix, resolved (and in-tree ones built) before any VM boots.
    pub fn resolve_schedulers(
        &self,
        cache: &crate::kernel::cache::Cache,
        k: &Kernel,
    ) -> Result<Vec<SchedulerUnderTest>> {
        let all = self.schedulers.iter().map(|s| crate::sched::resolve(s, &self.sched_args, cache, k));
        let all = all.collect::<Result<Vec<_>>>()?;
        if !self.sched_args.is_empty() && all.iter().all(|s| s.binary.is_none()) {
            bail!("arguments after -- are for a sched_ext scheduler, but the only scheduler is eevdf; add --scheduler");
        }
        Ok(all)
    }

    pub fn attach_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.attach_timeout.into())
    }
}

/// Records, judges and stores one scenario's run; returns its table row. Never fails: a
/// record that cannot be written fails the row, with the reason.
pub fn finish(
    r: &Resolved,
    sched: &SchedulerUnderTest,
    k: &Kernel,
    req: &RunRequest,
    out: RunOutput,
    args: &ScenarioArgs,
) -> ScenarioRow {
    let wall_s = out.collected.phases.stopped.map_or(0.0, |d| d.as_secs_f64()) + out.setup.as_secs_f64();
    let meta = RunMeta {
        run_id: run_id(r, sched, req),
        scenario: r.info.clone(),
        plan: r.scenario.clone(),
        expect: r.expect.clone(),
        topology: req.topology,
        scheduler: sched.info(),
        kernel: kernel_info(k),
        backend: out.backend.to_string(),
        emulated: out.backend == Backend::Qemu(Accel::Tcg),
        memory_mib: req.memory_mib,
        deadline_ms: req.plan.deadline_ms,
        kernel_append: req.append.clone(),
    };
    let rec = RunRecord::from_run(meta, out);
    let verdict = verdict::judge(&rec, &Thresholds::for_record(&rec, &args.thresholds.overrides()));
    let stored = store(&args.out_dir, &rec, &verdict);
    let (path, error) = match stored {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(format!("the record could not be written: {e:#}"))),
    };
    ScenarioRow::judged(&r.info.name, sched.label(), verdict, path, wall_s, error)
}

/// The run id of a scenario under a scheduler on a topology.
pub fn run_id(r: &Resolved, sched: &SchedulerUnderTest, req: &RunRequest) -> String {
    let id_name = if sched.binary.is_some() { format!("{}-{}", r.info.name, sched.name) } else { r.info.name.clone() };
    record::run_id(&id_name, &req.topology)
}

/// Writes record.json and verdict.json into the run's directory; returns the record's path.
fn store(out_dir: &Path, rec: &RunRecord, verdict: &Verdict) -> Result<std::path::PathBuf> {
    let dir = record::run_dir(out_dir, &rec.meta.run_id)?;
    record::write_json(&dir.join("record.json"), rec, false)?;
    record::write_json(&dir.join("verdict.json"), verdict, true)?;
    Ok(dir.join("record.json"))
}

#[derive(serde::Serialize)]
struct ListRow<'a> {
    name: &'a str,
    category: &'a str,
    duration_ms: u32,
    workers: usize,
    steps: usize,
    description: &'a str,
}

/// `ktstr-host list`.
pub fn list(args: &ListArgs) -> Result<i32> {
    let all = scenario::load("all", &args.topology, 1.0)?;
    let rows: Vec<ListRow> = all
        .iter()
        .map(|r| ListRow {
            name: &r.info.name,
            category: &r.info.category,
            duration_ms: r.scenario.duration_ms,
            workers: r.scenario.workers().count(),
            steps: r.scenario.steps.len(),
            description: &r.info.description,
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!("{} built-in scenarios (worker counts on {}):\n", rows.len(), args.topology);
    for row in &rows {
        println!(
            "{:<26} {:<12} {:>5.1} s {:>3} workers {:>2} steps",
            row.name,
            row.category,
            f64::from(row.duration_ms) / 1e3,
            row.workers,
            row.steps
        );
        println!("{}\n", indent(row.description, 4));
    }
    println!(
        "Run one: ktstr-host run --scenario NAME (or a category, `all`, a TOML file). Details: ktstr-host explain NAME"
    );
    Ok(0)
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{}", l.trim())).collect::<Vec<_>>().join("\n")
}

/// `ktstr-host judge RECORD`.
pub fn judge(args: &JudgeArgs) -> Result<i32> {
    let rec = RunRecord::read(&args.record)?;
    let v = verdict::judge(&rec, &Thresholds::for_record(&rec, &args.thresholds.overrides()));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} ({}, {} on {})",
            rec.meta.scenario.name, rec.meta.run_id, rec.meta.scheduler.name, rec.meta.topology
        );
        report::print_verdict(&v);
    }
    Ok(if v.passed { 0 } else { 1 })
}

#[derive(serde::Serialize)]
struct Explained<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    scenario: Option<&'a scenario::ScenarioInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a Scenario>,
    /// Where the thresholds come from.
    source: String,
    thresholds: &'a Thresholds,
    checks: Vec<Doc<'a>>,
    defaults: Vec<Doc<'a>>,
}

#[derive(serde::Serialize)]
struct Doc<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    default: Option<&'a str>,
    meaning: &'a str,
}

/// `ktstr-host explain [SCENARIO|RECORD]`.
pub fn explain(args: &ExplainArgs) -> Result<i32> {
    let target = args.target.as_deref();
    let (resolved, record) = match target {
        None => (None, None),
        Some(t) if t.ends_with(".json") || Path::new(t).is_dir() => (None, Some(read_record(Path::new(t))?)),
        Some(t) => {
            let mut all = scenario::load(t, &args.topology, args.duration_scale)?;
            if all.len() != 1 {
                bail!("{t} names {} scenarios; explain takes one", all.len());
            }
            (all.pop(), None)
        }
    };
    let (thresholds, source) = match (&resolved, &record) {
        (_, Some((rec, path))) => recorded_thresholds(rec, path, &args.thresholds.overrides())?,
        (Some(r), None) => {
            let th = Thresholds::resolve(&r.expect, &args.thresholds.overrides(), false);
            let src = "defaults, then the scenario's [expect], then the command line; under TCG emulation spread and p99 \
                       limits not given on the command line are multiplied by the emulation slack";
            (th, src.to_string())
        }
        (None, None) => {
            (Thresholds::resolve(&Default::default(), &args.thresholds.overrides(), false), "defaults".to_string())
        }
    };
    let info = resolved.as_ref().map(|r| &r.info).or(record.as_ref().map(|(rec, _)| &rec.meta.scenario));
    let plan = resolved.as_ref().map(|r| &r.scenario).or(record.as_ref().map(|(rec, _)| &rec.meta.plan));
    let checks = verdict::CHECK_DOCS.iter().map(|(name, meaning)| Doc { name, default: None, meaning }).collect();
    let defaults =
        verdict::THRESHOLD_DOCS.iter().map(|(name, d, meaning)| Doc { name, default: Some(d), meaning }).collect();
    let e = Explained { scenario: info, plan, source, thresholds: &thresholds, checks, defaults };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print_explained(&e);
    }
    Ok(0)
}

fn read_record(path: &Path) -> Result<(RunRecord, PathBuf)> {
    let file = if path.is_dir() { path.join("record.json") } else { path.to_path_buf() };
    Ok((RunRecord::read(&file)?, file))
}

/// The thresholds a recorded run was judged with (its verdict.json), unless overridden now.
fn recorded_thresholds(rec: &RunRecord, path: &Path, o: &Overrides) -> Result<(Thresholds, String)> {
    let verdict_path = path.with_file_name("verdict.json");
    if *o == Overrides::default() && verdict_path.is_file() {
        let bytes = std::fs::read(&verdict_path).with_context(|| format!("reading {}", verdict_path.display()))?;
        let v: Verdict =
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not a verdict", verdict_path.display()))?;
        return Ok((v.thresholds, format!("as judged at run time ({})", verdict_path.display())));
    }
    let th = Thresholds::for_record(rec, o);
    Ok((th, "defaults, then the recorded scenario's [expect], then the command line".into()))
}

fn print_explained(e: &Explained) {
    if let (Some(info), Some(plan)) = (e.scenario, e.plan) {
        println!("{} ({}, from {})\n{}\n", info.name, info.category, info.source, indent(&info.description, 2));
        print_plan(plan);
    }
    println!("thresholds ({}):", e.source);
    for (name, value) in e.thresholds.lines() {
        println!("  {name:<20} {value}");
    }
    println!("\nchecks:");
    for c in &e.checks {
        println!("  {:<18} {}", c.name, c.meaning);
    }
    println!("\ndefaults (override with the flags of `run` and `judge`, e.g. --max-gap-ms):");
    for d in &e.defaults {
        println!("  {:<20} {:<9} {}", d.name, d.default.unwrap_or(""), d.meaning);
    }
}

fn print_plan(plan: &Scenario) {
    println!(
        "run time {} ms, sampling every {} ms, deadline {} ms",
        plan.duration_ms,
        plan.sample_period_ms,
        scenario::deadline_ms(plan)
    );
    for cg in plan.cgroup_defs() {
        let cpus = cg.cpuset.as_ref().map_or("(parent's)".to_string(), ToString::to_string);
        let weight = cg.weight.map_or(String::new(), |w| format!(" weight {w}"));
        println!("  cgroup {:<20} cpuset {cpus}{weight}", cg.name);
        for w in &cg.workers {
            let aff = w.affinity.as_ref().map_or(String::new(), |a| format!(" affinity {a}"));
            println!("    {} x {} {:?} nice {}{aff}", w.count, w.work.name(), w.policy, w.nice);
        }
    }
    for (k, (step, start)) in plan.steps.iter().zip(plan.step_starts_ms()).enumerate() {
        let ops: Vec<String> = step.ops.iter().map(describe_op).collect();
        println!(
            "  step {k} at {start} ms, hold {} ms: {}",
            step.hold_ms,
            if ops.is_empty() { "-".into() } else { ops.join("; ") }
        );
    }
    println!();
}

fn describe_op(op: &Op) -> String {
    let cpus = |c: &Option<ktstr_shared::scenario::CpuList>| c.as_ref().map_or("all".to_string(), ToString::to_string);
    match op {
        Op::SetCpuset { cgroup, cpus: c } => format!("set_cpuset {cgroup} {}", cpus(c)),
        Op::SetAffinity { cgroup, cpus: c } => format!("set_affinity {cgroup} {}", cpus(c)),
        Op::SetWeight { cgroup, weight } => format!("set_weight {cgroup} {weight}"),
        other => other.describe(),
    }
}
