//! Turning a run's outcome into what users see: a summary (terminal or JSON) and exit codes.

use crate::backend::Backend;
use crate::collect::End;
use crate::kernel::Kernel;
use crate::runner::{RunOutput, RunRequest};
use crate::sched::SchedulerUnderTest;
use ktstr_shared::wire::Outcome;
use serde::Serialize;

use crate::verdict::{Check, Status, Verdict};

pub use crate::runner::{EXIT_GUEST_DIED, EXIT_INTERRUPTED};

/// `exec`'s exit code and an optional message for stderr.
pub fn exec_status(out: &RunOutput) -> (i32, Option<String>) {
    if let Some((code, msg)) = out.failure() {
        return (code, Some(msg));
    }
    let r = out.collected.result.as_ref().expect("failure() checked the result");
    let msg = match &r.outcome {
        Outcome::TimedOut => Some("timed out: the command was killed at its deadline (--timeout)".to_string()),
        Outcome::FailedToStart { reason } => {
            Some(format!("the command could not start in the guest: {}", reason.as_str()))
        }
        Outcome::Signaled { signal } => Some(format!("the command was killed by signal {signal}")),
        Outcome::SchedulerFailed { reason } => Some(format!("scheduler failed: {}", reason.as_str())),
        _ => None,
    };
    let notes = crate::collect::output::notes(r, out.collected.output);
    let msg = match (msg, notes.join("; ")) {
        (m, n) if n.is_empty() => m,
        (Some(m), n) => Some(format!("{m}; {n}")),
        (None, n) => Some(n),
    };
    (r.outcome.exit_code(), msg)
}

/// The result of `ktstr-host run`, for the terminal and `--json`.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub passed: bool,
    pub kernel: String,
    pub kernel_version: Option<String>,
    pub backend: Backend,
    pub topology: String,
    pub memory_mib: u32,
    pub guest_release: Option<String>,
    pub guest_cpus: Option<u32>,
    pub protocol_version: Option<u16>,
    /// Seconds from machine start.
    pub first_console_s: Option<f64>,
    pub hello_s: Option<f64>,
    pub result_s: Option<f64>,
    pub stopped_s: Option<f64>,
    /// The init's own clock (CLOCK_BOOTTIME): when it started and when it said Hello.
    pub init_start_s: Option<f64>,
    /// The init's own start-to-Hello time (mounts, plan, tty), in ms.
    pub init_to_hello_ms: Option<f64>,
    pub host_setup_ms: f64,
    pub initrd_bytes: u64,
    pub frames: u64,
    pub frames_rejected: u64,
    /// How the VM ended, as the backend reports it (micro-VMM: exit kind and boot phases).
    pub vm_exit: String,
    pub problem: Option<String>,
    /// The guest's reported topology against the spec (None when the guest sent none).
    pub topology_check: Option<crate::topo::TopologyVerdict>,
    pub scheduler: String,
    /// What the scheduler did, one line per event (guest clock).
    pub scheduler_events: Vec<String>,
}

/// `t kind: text` lines of scheduler events, for the terminal.
fn scheduler_lines(events: &[crate::record::SchedEvent]) -> Vec<String> {
    events.iter().map(|e| format!("{:>7.2} s {:?}: {}", e.t_ns as f64 / 1e9, e.kind, e.text)).collect()
}

fn teardown(c: &crate::collect::Collected) -> &str {
    c.teardown.as_deref().unwrap_or("torn down")
}

fn secs(d: Option<std::time::Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

/// A run whose guest saw another topology than the spec fails, naming the first mismatch.
fn topology_problem(v: Option<&crate::topo::TopologyVerdict>) -> Option<String> {
    let v = v.filter(|v| !v.matches)?;
    let first = v.mismatches.first().map_or("", String::as_str);
    Some(format!("the guest's topology differs from the spec ({} mismatches): {first}", v.mismatches_total))
}

impl RunSummary {
    pub fn new(k: &Kernel, req: &RunRequest, out: &RunOutput, sched: &SchedulerUnderTest) -> Self {
        let c = &out.collected;
        let topology_check = (!c.topology.is_empty()).then(|| crate::topo::check(&req.topology, &c.topology));
        let problem = out
            .failure()
            .map(|(_, m)| m)
            .or_else(|| match &c.result.as_ref()?.outcome {
                Outcome::SchedulerFailed { reason } => Some(format!("scheduler failed: {reason}")),
                o if o.exit_code() != 0 => Some(format!("the default plan's command ended with {o:?}")),
                _ => None,
            })
            .or_else(|| topology_problem(topology_check.as_ref()));
        RunSummary {
            passed: problem.is_none() && c.hello.is_some(),
            kernel: k.origin.clone(),
            kernel_version: k.version.clone(),
            backend: out.backend,
            topology: req.topology.to_string(),
            memory_mib: req.memory_mib,
            guest_release: c.hello.as_ref().map(|h| h.kernel_release.as_str().to_owned()),
            guest_cpus: c.hello.as_ref().map(|h| h.nr_cpus),
            protocol_version: c.hello.as_ref().map(|h| h.version),
            first_console_s: secs(c.phases.first_console_byte),
            hello_s: secs(c.phases.hello),
            result_s: secs(c.phases.result),
            stopped_s: secs(c.phases.stopped),
            init_start_s: c.hello.as_ref().map(|h| h.init_start_ns as f64 / 1e9),
            init_to_hello_ms: c.hello.as_ref().map(|h| h.hello_ns.saturating_sub(h.init_start_ns) as f64 / 1e6),
            host_setup_ms: out.setup.as_secs_f64() * 1e3,
            initrd_bytes: out.initrd_bytes,
            frames: c.decode.frames,
            frames_rejected: c.decode.rejected(),
            vm_exit: match &c.end {
                End::Exited(e) => e.detail.clone(),
                End::Timeout(t) => format!("timed out after {:.0} s; {}", t.as_secs_f64(), teardown(c)),
                End::Interrupted => format!("interrupted; {}", teardown(c)),
            },
            problem,
            topology_check,
            scheduler: sched.label(),
            scheduler_events: scheduler_lines(&c.telemetry.sched_events),
        }
    }

    pub fn print(&self) {
        let s = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} s"));
        println!("kernel     {} ({})", self.kernel_version.as_deref().unwrap_or("?"), self.kernel);
        println!("backend    {}   topology {}   memory {} MiB", self.backend, self.topology, self.memory_mib);
        println!("scheduler  {}", self.scheduler);
        for line in &self.scheduler_events {
            println!("           {line}");
        }
        if let Some(rel) = &self.guest_release {
            println!(
                "guest      Linux {rel}, {} CPUs, protocol v{}",
                self.guest_cpus.unwrap_or(0),
                self.protocol_version.unwrap_or(0)
            );
        }
        println!(
            "timeline   host setup {:.1} ms | console {} | init started {} (guest clock) | Hello {} | result {} | stopped {}",
            self.host_setup_ms,
            s(self.first_console_s),
            s(self.init_start_s),
            s(self.hello_s),
            s(self.result_s),
            s(self.stopped_s)
        );
        println!("channel    {} frames, {} rejected", self.frames, self.frames_rejected);
        match (&self.problem, self.passed) {
            (None, true) => println!("result     PASS"),
            (Some(p), _) => println!("result     FAIL: {p}"),
            (None, false) => println!("result     FAIL: no Hello from the guest"),
        }
    }
}

/// One scenario run, for the `run --scenario` table and `--json`. A run whose VM could not
/// start, or whose record could not be written, is a failed row carrying the reason, so a
/// matrix always completes.
#[derive(Debug, Serialize)]
pub struct ScenarioRow {
    pub scenario: String,
    /// The scheduler under test, with its arguments.
    pub scheduler: String,
    pub status: Status,
    pub passed: bool,
    /// Where its record.json went (verdict.json beside it); none when no record was written.
    pub record: Option<std::path::PathBuf>,
    /// Host time for the whole VM run.
    pub wall_s: f64,
    /// None when the VM could not run.
    pub verdict: Option<Verdict>,
    /// Why the row failed outside the verdict (VM did not start, record not written).
    pub error: Option<String>,
}

impl ScenarioRow {
    /// A judged run; `error` (e.g. the record could not be written) fails it whatever the verdict.
    pub fn judged(
        scenario: &str,
        scheduler: String,
        verdict: Verdict,
        record: Option<std::path::PathBuf>,
        wall_s: f64,
        error: Option<String>,
    ) -> Self {
        let status = if error.is_some() { Status::Fail } else { verdict.status };
        ScenarioRow {
            scenario: scenario.into(),
            scheduler,
            status,
            passed: status == Status::Pass,
            record,
            wall_s,
            verdict: Some(verdict),
            error,
        }
    }

    /// A run that produced no verdict.
    pub fn failed(scenario: &str, scheduler: String, error: String) -> Self {
        ScenarioRow {
            scenario: scenario.into(),
            scheduler,
            status: Status::Fail,
            passed: false,
            record: None,
            wall_s: 0.0,
            verdict: None,
            error: Some(error),
        }
    }

    /// Names of the failed checks, or what failed outside the verdict.
    pub fn failed_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.verdict.iter().flat_map(|v| v.failures()).map(|c| c.name.as_str()).collect();
        if self.error.is_some() {
            names.insert(0, if self.verdict.is_some() { "record" } else { "vm" });
        }
        names
    }

    /// Checks that were not judged.
    pub fn not_judged(&self) -> impl Iterator<Item = &Check> {
        self.verdict.iter().flat_map(|v| v.checks.iter()).filter(|c| c.status == Status::NotJudged)
    }
}

/// The header of the scenario table.
pub fn scenario_header() -> String {
    format!(
        "{:<26} {:<10} {:>7} {:>10} {:>9} {:>8} {:>9} {:>6} {:>6}  FAILED CHECKS",
        "SCENARIO", "VERDICT", "WORKERS", "UNITS", "MAX GAP", "SPREAD", "P99 WAKE", "RATIO", "TIME"
    )
}

/// One table line: the scenario, its verdict and its key numbers.
pub fn scenario_line(row: &ScenarioRow) -> String {
    let n = row.verdict.as_ref().map(|v| v.numbers.clone()).unwrap_or_default();
    let opt = |v: Option<f64>, unit: &str, prec: usize| v.map_or("-".into(), |v| format!("{v:.prec$}{unit}"));
    let not_judged = row.not_judged().count();
    let tail = match (row.failed_names(), not_judged) {
        (f, 0) => f.join(", "),
        (f, n) if f.is_empty() => format!("({n} not judged)"),
        (f, n) => format!("{} ({n} not judged)", f.join(", ")),
    };
    format!(
        "{:<26} {:<10} {:>7} {:>10} {:>9} {:>8} {:>9} {:>6} {:>5.0}s  {}",
        row.scenario,
        row.status.word(),
        n.workers,
        n.units,
        opt(n.max_gap_ms, "ms", 0),
        opt(n.spread_pct, "%", 1),
        opt(n.p99_wake_us, "us", 0),
        opt(n.cpu_ratio, "", 2),
        row.wall_s,
        tail
    )
}

/// The failures of every row that did not pass, after the table.
pub fn print_scenario_failures(rows: &[ScenarioRow]) {
    for row in rows.iter().filter(|r| !r.passed) {
        let at = row.record.as_ref().map_or("no record".into(), |p| p.display().to_string());
        println!("\n{} under {} {} ({at}):", row.scenario, row.scheduler, row.status.word());
        if let Some(e) = &row.error {
            println!("  {}: {e}", if row.verdict.is_some() { "record" } else { "vm" });
        }
        for c in row.verdict.iter().flat_map(|v| v.failures()) {
            println!("  {}: {}", c.name, c.detail);
        }
        if row.status == Status::NotJudged {
            for c in row.not_judged() {
                println!("  not judged: {}: {}", c.name, c.detail);
            }
        }
    }
}

/// Every check of a verdict, one per line, and the overall result.
pub fn print_verdict(v: &Verdict) {
    for c in &v.checks {
        let status = match c.status {
            Status::Fail => "FAIL",
            Status::NotJudged => "not judged",
            Status::Pass => "pass",
        };
        println!("  {status:>10}  {:<18} {}", c.name, c.detail);
    }
    println!("verdict: {}", v.status.word());
}
