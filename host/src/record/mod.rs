//! The record of one scenario run: the guest's telemetry (samples reassembled by `seq`/`part`,
//! worker reports, scenario and scheduler events, logs) and what the host knows (scenario as
//! run, kernel, backend, topology, scheduler, boot phases, decode statistics). It is written as
//! `record.json` and is all a verdict needs, so a run can be judged again later with other
//! thresholds (`ktstr-host judge record.json`).
//!
//! Everything the guest sends is untrusted, so [`Telemetry`] is bounded whatever arrives:
//! - samples: every tick is kept until [`MAX_TICKS`] ticks or [`MAX_SAMPLE_ENTRIES`] worker and
//!   CPU entries are held; then every other kept tick is dropped and from then on only every
//!   `stride`-th arriving tick is kept (stride doubles at each such halving), so a record covers
//!   the whole run at a coarser grain ([`TelemetryStats::ticks_decimated`] says how many went);
//! - parts: at most [`MAX_PARTS`] per tick, one tick reassembled at a time; inconsistent or
//!   duplicate parts are dropped and counted;
//! - reports: one per worker id below [`MAX_WORKERS`]; events, scheduler events and logs: the
//!   first [`MAX_EVENTS`] / [`MAX_EVENTS`] / [`MAX_LOGS`] (the rest are counted; error logs
//!   are always counted).

mod validate;
use std::io::Write;
use std::path::{Path, PathBuf};

use ktstr_shared::scenario::Scenario;
use ktstr_shared::topology::Topology;
use ktstr_shared::wire::{CpuTopo, DecodeStats, RunResult, ScenarioEvent, ScenarioEventKind, WorkerReport};
use serde::{Deserialize, Serialize};

pub use crate::collect::telemetry::{
    LogLine, MAX_EVENTS, MAX_LOGS, MAX_PARTS, MAX_SAMPLE_ENTRIES, MAX_TICKS, SchedEvent, Telemetry, TelemetryStats,
    Tick,
};
use crate::runner::RunOutput;
use crate::scenario::{Expect, ScenarioInfo};
pub use crate::spec::{SchedulerInfo, SchedulerKind};

/// Layout version of `record.json`; bumped on incompatible changes.
pub const RECORD_FORMAT: u32 = 1;
/// Console lines kept in the record, for diagnosis.
pub const CONSOLE_LINES: usize = 40;
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// `uname -r` in the guest (from Hello).
    pub release: Option<String>,
    pub version: Option<String>,
    pub origin: String,
    pub image: String,
}

/// Times of the run, ms: host ones since the machine started, guest ones on its own clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootPhases {
    pub host_setup_ms: f64,
    pub first_console_ms: Option<f64>,
    pub hello_ms: Option<f64>,
    pub result_ms: Option<f64>,
    pub stopped_ms: Option<f64>,
    /// Guest CLOCK_BOOTTIME when the init started (the kernel's share of boot) and said Hello.
    pub guest_init_start_ms: Option<f64>,
    pub guest_hello_ms: Option<f64>,
}

/// How the VM run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnd {
    pub result: Option<RunResult>,
    pub bye: Option<i32>,
    pub init_panic: Option<String>,
    /// Why the VM run failed before the plan could finish (timeout, kernel panic, VM died).
    pub vm_problem: Option<String>,
    pub protocol_version: Option<u16>,
    pub guest_cpus: Option<u32>,
}

/// [`DecodeStats`] of the protocol channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeInfo {
    pub frames: u64,
    pub rejected: u64,
    pub dropped_bytes: u64,
    pub bad_crc: u64,
    pub bad_cobs: u64,
    pub bad_postcard: u64,
    pub oversize: u64,
}

impl From<&DecodeStats> for DecodeInfo {
    fn from(d: &DecodeStats) -> Self {
        DecodeInfo {
            frames: d.frames,
            rejected: d.rejected(),
            dropped_bytes: d.dropped_bytes,
            bad_crc: d.bad_crc,
            bad_cobs: d.bad_cobs,
            bad_postcard: d.bad_postcard,
            oversize: d.oversize,
        }
    }
}

/// Everything about one scenario run: what the host knew before it ([`RunMeta`], flattened
/// into the same JSON object) and what it produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    #[serde(flatten)]
    pub meta: RunMeta,
    pub created: String,
    pub boot: BootPhases,
    pub end: RunEnd,
    pub decode: DecodeInfo,
    pub telemetry: TelemetryStats,
    pub ticks: Vec<Tick>,
    pub reports: Vec<WorkerReport>,
    pub events: Vec<ScenarioEvent>,
    pub sched_events: Vec<SchedEvent>,
    pub logs: Vec<LogLine>,
    pub console_tail: String,
    /// The guest kernel's view of its CPU topology (one entry per CPU; empty in host mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_topology: Vec<CpuTopo>,
}

/// What the host side knows before the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub scenario: ScenarioInfo,
    /// The scenario as the guest ran it (CPU lists explicit, durations scaled).
    pub plan: Scenario,
    pub expect: Expect,
    pub topology: Topology,
    pub scheduler: SchedulerInfo,
    pub kernel: KernelInfo,
    pub backend: String,
    /// Guest code was emulated (QEMU TCG): CPU accounting in the guest is skewed by the host's
    /// scheduling of vCPU threads (see `verdict::EMULATION_SLACK`).
    pub emulated: bool,
    pub memory_mib: u32,
    pub deadline_ms: u32,
    /// Kernel parameters added with `--append`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_append: Option<String>,
}

impl RunRecord {
    /// A record of `meta` with the given telemetry and nothing else (no VM details).
    pub fn new(meta: RunMeta, mut telemetry: Telemetry) -> RunRecord {
        telemetry.finish();
        RunRecord {
            format: RECORD_FORMAT,
            meta,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            boot: BootPhases::default(),
            end: RunEnd::default(),
            decode: DecodeInfo::default(),
            telemetry: telemetry.stats,
            ticks: telemetry.ticks,
            reports: telemetry.reports,
            events: telemetry.events,
            sched_events: telemetry.sched_events,
            logs: telemetry.logs,
            console_tail: String::new(),
            guest_topology: Vec::new(),
        }
    }

    /// The record of a finished VM run.
    pub fn from_run(meta: RunMeta, out: RunOutput) -> RunRecord {
        let vm_problem = out.vm_problem();
        let c = out.collected;
        let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let mut rec = RunRecord::new(meta, c.telemetry);
        rec.meta.kernel.release = c.hello.as_ref().map(|h| h.kernel_release.as_str().to_owned());
        rec.boot = BootPhases {
            host_setup_ms: out.setup.as_secs_f64() * 1e3,
            first_console_ms: ms(c.phases.first_console_byte),
            hello_ms: ms(c.phases.hello),
            result_ms: ms(c.phases.result),
            stopped_ms: ms(c.phases.stopped),
            guest_init_start_ms: c.hello.as_ref().map(|h| h.init_start_ns as f64 / 1e6),
            guest_hello_ms: c.hello.as_ref().map(|h| h.hello_ns as f64 / 1e6),
        };
        rec.end = RunEnd {
            result: c.result,
            bye: c.bye,
            init_panic: c.init_panic,
            vm_problem,
            protocol_version: c.hello.as_ref().map(|h| h.version),
            guest_cpus: c.hello.as_ref().map(|h| h.nr_cpus),
        };
        rec.decode = DecodeInfo::from(&c.decode);
        rec.console_tail = c.console.last_lines(CONSOLE_LINES);
        rec.guest_topology = c.topology;
        rec
    }

    /// Whether the run was emulated.
    pub fn emulated(&self) -> bool {
        self.meta.emulated
    }

    /// Guest time the workers were released (the `Started` event).
    pub fn started_ns(&self) -> Option<u64> {
        self.events.iter().find(|e| matches!(e.kind, ScenarioEventKind::Started { .. })).map(|e| e.t_ns)
    }

    /// Reads a `record.json`.
    pub fn read(path: &Path) -> Result<RunRecord, RecordError> {
        let bytes = std::fs::read(path).map_err(|err| RecordError::Io { path: path.into(), err })?;
        let format = serde_json::from_slice::<FormatOnly>(&bytes).map(|f| f.format).ok();
        if format.is_some_and(|f| f != RECORD_FORMAT) {
            return Err(RecordError::Format { path: path.into(), found: format.unwrap_or(0) });
        }
        serde_json::from_slice(&bytes)
            .map_err(|err| RecordError::Json { path: path.into(), err })
            .and_then(|rec| validate::checked(rec, path))
    }
}

#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path} is not a ktstr run record: {err}")]
    Json { path: PathBuf, err: serde_json::Error },
    #[error("{path} is a record of format {found}; this ktstr-host reads format {RECORD_FORMAT}")]
    Format { path: PathBuf, found: u32 },
}

/// A fresh run id: UTC time, scenario, topology (`20261126T085100Z-cpuset_swap-1n2l2c1t`).
pub fn run_id(scenario: &str, topo: &Topology) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let safe: String = scenario.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
    format!("{stamp}-{safe}-{topo}")
}

/// Makes `<out>/<run_id>` (a suffix `-2`, `-3`, ... if taken) and returns it.
pub fn run_dir(out: &Path, run_id: &str) -> Result<PathBuf, RecordError> {
    std::fs::create_dir_all(out).map_err(|err| RecordError::Io { path: out.into(), err })?;
    for n in 1..1000 {
        let dir = if n == 1 { out.join(run_id) } else { out.join(format!("{run_id}-{n}")) };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(RecordError::Io { path: dir, err }),
        }
    }
    let err = std::io::Error::other("too many runs with this id");
    Err(RecordError::Io { path: out.join(run_id), err })
}

/// Writes `value` as JSON to `path` through a temp file and a rename: readers never see a
/// half-written file. `pretty` for files people read (a verdict); records are compact (a
/// minute of 16 workers sampled every 100 ms is ~3 MiB compact, ~5 MiB pretty).
pub fn write_json<T: Serialize>(path: &Path, value: &T, pretty: bool) -> Result<(), RecordError> {
    let io = |err| RecordError::Io { path: path.into(), err };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(io)?;
    let out = std::io::BufWriter::new(&mut tmp);
    let written = if pretty { serde_json::to_writer_pretty(out, value) } else { serde_json::to_writer(out, value) };
    written.map_err(std::io::Error::from).map_err(io)?;
    tmp.as_file_mut().flush().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::telemetry::tests::{report, sample};

    #[test]
    fn records_round_trip_through_json_files() {
        let meta = RunMeta {
            run_id: run_id("a/b c", &Topology::default()),
            scenario: ScenarioInfo {
                name: "x".into(),
                category: "basic".into(),
                description: String::new(),
                source: "catalog".into(),
                duration_scale: 1.0,
            },
            plan: Scenario::new(
                vec![
                    ktstr_shared::scenario::CgroupSpec::new("cg")
                        .with_workers(2, ktstr_shared::scenario::WorkType::CpuSpin),
                ],
                100,
            ),
            expect: Expect::default(),
            topology: Topology::default(),
            scheduler: SchedulerInfo::eevdf(),
            kernel: KernelInfo::default(),
            backend: "qemu (tcg)".into(),
            emulated: true,
            memory_mib: 512,
            deadline_ms: 1000,
            kernel_append: None,
        };
        assert!(meta.run_id.ends_with("-a-b-c-1n1l2c1t"), "{}", meta.run_id);
        let mut t = Telemetry::default();
        t.push(sample(0, 0, 1, 0..2));
        t.push(report(0));
        let rec = RunRecord::new(meta, t);
        let out = tempfile::tempdir().unwrap();
        let d1 = run_dir(out.path(), &rec.meta.run_id).unwrap();
        let d2 = run_dir(out.path(), &rec.meta.run_id).unwrap();
        assert_ne!(d1, d2, "a second run with the same id gets its own directory");
        let path = d1.join("record.json");
        write_json(&path, &rec, false).unwrap();
        assert_eq!(RunRecord::read(&path).unwrap(), rec);
        let names: Vec<_> = std::fs::read_dir(&d1).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["record.json"], "no temp file left behind");
        std::fs::write(&path, br#"{"format": 99}"#).unwrap();
        assert!(RunRecord::read(&path).unwrap_err().to_string().contains("format 99"));
        std::fs::write(&path, b"[]").unwrap();
        assert!(RunRecord::read(&path).unwrap_err().to_string().contains("not a ktstr run record"));
    }
}
