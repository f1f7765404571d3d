//! Telemetry assembly: the guest's samples reassembled by `seq`/`part` into ticks, worker
//! reports, scenario and scheduler events, and logs, as they stream in over the channel.
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

use std::collections::HashSet;

use ktstr_shared::scenario::MAX_WORKERS;
use ktstr_shared::wire::{
    CpuSample, GuestMsg, LogLevel, Sample, ScenarioEvent, SchedEventKind, SystemSample, WorkerReport, WorkerSample,
};
use serde::{Deserialize, Serialize};

/// Ticks kept before decimation (10 minutes at the default 100 ms period).
pub const MAX_TICKS: usize = 6_000;
/// Worker and CPU entries (over all kept ticks) before decimation.
pub const MAX_SAMPLE_ENTRIES: usize = 500_000;
/// Most parts of one tick: `MAX_WORKERS / SAMPLE_WORKERS` (the larger of the two splits).
pub const MAX_PARTS: u16 = 64;
/// Scenario events and scheduler events kept (each).
pub const MAX_EVENTS: usize = 10_000;
/// Log lines kept.
pub const MAX_LOGS: usize = 10_000;

/// One sampling tick, reassembled from its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    pub seq: u32,
    /// Guest CLOCK_BOOTTIME.
    pub t_ns: u64,
    /// Parts announced and parts received: a tick missing some is kept and counted.
    pub parts: u16,
    pub received: u16,
    pub workers: Vec<WorkerSample>,
    pub cpus: Vec<CpuSample>,
    pub system: Option<SystemSample>,
}

impl Tick {
    fn entries(&self) -> usize {
        self.workers.len() + self.cpus.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub t_ns: u64,
    pub level: LogLevel,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedEvent {
    pub t_ns: u64,
    pub kind: SchedEventKind,
    pub text: String,
}

/// What the bounds did to the telemetry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryStats {
    /// Ticks that arrived (complete or not).
    pub ticks_received: u64,
    /// Ticks left out to keep the record bounded.
    pub ticks_decimated: u64,
    /// Every `stride`-th arriving tick is kept (1 = all).
    pub stride: u64,
    /// Ticks kept with parts missing.
    pub incomplete_ticks: u64,
    /// Parts dropped: out of range, duplicate, or inconsistent with their tick.
    pub parts_rejected: u64,
    /// Reports dropped: worker id out of range or a second report for a worker.
    pub reports_rejected: u64,
    pub events_dropped: u64,
    pub logs_dropped: u64,
    /// Error-level logs received, kept or not.
    pub error_logs: u64,
}

/// A tick being reassembled: the parts received so far (bit `p` = part `p`).
#[derive(Debug, Clone)]
struct Pending {
    tick: Tick,
    seen: u64,
}

/// Accumulates the telemetry messages of a run, within the bounds of the module docs.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub ticks: Vec<Tick>,
    pub reports: Vec<WorkerReport>,
    pub events: Vec<ScenarioEvent>,
    pub sched_events: Vec<SchedEvent>,
    pub logs: Vec<LogLine>,
    pub stats: TelemetryStats,
    pending: Option<Pending>,
    entries: usize,
    report_ids: HashSet<u32>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            ticks: Vec::new(),
            reports: Vec::new(),
            events: Vec::new(),
            sched_events: Vec::new(),
            logs: Vec::new(),
            stats: TelemetryStats { stride: 1, ..Default::default() },
            pending: None,
            entries: 0,
            report_ids: HashSet::new(),
        }
    }
}

impl Telemetry {
    /// Takes a telemetry message (sample, report, event, log); hands anything else back.
    pub fn push(&mut self, msg: GuestMsg) -> Option<GuestMsg> {
        match msg {
            GuestMsg::Sample(s) => self.sample(s),
            GuestMsg::WorkerReport(r) => self.report(r),
            GuestMsg::Scenario(e) => bounded_push(&mut self.events, e, MAX_EVENTS, &mut self.stats.events_dropped),
            GuestMsg::SchedulerEvent { t_ns, kind, text } => {
                let e = SchedEvent { t_ns, kind, text: text.as_str().to_owned() };
                bounded_push(&mut self.sched_events, e, MAX_EVENTS, &mut self.stats.events_dropped)
            }
            GuestMsg::Log { t_ns, level, text } => self.log(t_ns, level, text.as_str()),
            other => return Some(other),
        }
        None
    }

    fn log(&mut self, t_ns: u64, level: LogLevel, text: &str) {
        if level == LogLevel::Error {
            self.stats.error_logs += 1;
        }
        let line = LogLine { t_ns, level, text: text.to_owned() };
        bounded_push(&mut self.logs, line, MAX_LOGS, &mut self.stats.logs_dropped);
    }

    fn report(&mut self, r: WorkerReport) {
        if (r.id as usize) < MAX_WORKERS && self.report_ids.insert(r.id) {
            self.reports.push(r);
        } else {
            self.stats.reports_rejected += 1;
        }
    }

    fn sample(&mut self, s: Sample) {
        if s.parts == 0 || s.parts > MAX_PARTS || s.part >= s.parts {
            self.stats.parts_rejected += 1;
            return;
        }
        if self.pending.as_ref().is_some_and(|p| p.tick.seq != s.seq) {
            self.flush();
        }
        let p = self.pending.get_or_insert_with(|| Pending {
            tick: Tick {
                seq: s.seq,
                t_ns: s.t_ns,
                parts: s.parts,
                received: 0,
                workers: Vec::new(),
                cpus: Vec::new(),
                system: None,
            },
            seen: 0,
        });
        let bit = 1u64 << s.part;
        if p.tick.t_ns != s.t_ns || p.tick.parts != s.parts || p.seen & bit != 0 {
            self.stats.parts_rejected += 1;
            return;
        }
        p.seen |= bit;
        p.tick.received += 1;
        p.tick.workers.extend_from_slice(&s.workers);
        p.tick.cpus.extend_from_slice(&s.cpus);
        if s.part == 0 {
            p.tick.system = s.system;
        }
        if p.tick.received == p.tick.parts {
            self.flush();
        }
    }

    /// Ends the tick being reassembled, keeping it if the decimation stride says so.
    fn flush(&mut self) {
        let Some(p) = self.pending.take() else { return };
        let st = &mut self.stats;
        let arrival = st.ticks_received;
        st.ticks_received += 1;
        if p.tick.received < p.tick.parts {
            st.incomplete_ticks += 1;
        }
        if !arrival.is_multiple_of(st.stride) {
            st.ticks_decimated += 1;
            return;
        }
        self.entries += p.tick.entries();
        self.ticks.push(p.tick);
        if self.ticks.len() > MAX_TICKS || self.entries > MAX_SAMPLE_ENTRIES {
            self.halve();
        }
    }

    /// Drops every other kept tick and doubles the stride.
    fn halve(&mut self) {
        let before = self.ticks.len();
        let mut i = 0;
        self.ticks.retain(|_| {
            i += 1;
            i % 2 == 1
        });
        self.stats.ticks_decimated += (before - self.ticks.len()) as u64;
        self.stats.stride = self.stats.stride.saturating_mul(2);
        self.entries = self.ticks.iter().map(Tick::entries).sum();
    }

    /// Ends reassembly (a tick still missing parts is kept as such) and orders the reports.
    pub fn finish(&mut self) {
        self.flush();
        self.reports.sort_by_key(|r| r.id);
    }
}

fn bounded_push<T>(v: &mut Vec<T>, item: T, max: usize, dropped: &mut u64) {
    if v.len() < max {
        v.push(item);
    } else {
        *dropped += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ktstr_shared::wire::{ScenarioEventKind, ScxState, WorkerEnd, text};

    pub(crate) fn sample(seq: u32, part: u16, parts: u16, workers: std::ops::Range<u32>) -> GuestMsg {
        let system = SystemSample { scx: ScxState::Unsupported, scx_enable_seq: None, procs_running: None, cost_ns: 0 };
        GuestMsg::Sample(Sample {
            seq,
            t_ns: u64::from(seq) * 100,
            part,
            parts,
            workers: workers.map(|id| WorkerSample { id, ..Default::default() }).collect(),
            cpus: Default::default(),
            system: (part == 0).then_some(system),
        })
    }

    pub(crate) fn report(id: u32) -> GuestMsg {
        GuestMsg::WorkerReport(WorkerReport {
            id,
            cgroup: 0,
            work_units: 1,
            cpu_time_ns: 0,
            wall_ns: 0,
            run_delay_ns: 0,
            timeslices: 0,
            voluntary_switches: 0,
            involuntary_switches: 0,
            migrations: None,
            observed_migrations: 0,
            cpus_used: Default::default(),
            max_gap_ns: 0,
            max_gap_at_ns: 0,
            max_gap_cpu: 0,
            latency: Default::default(),
            end: WorkerEnd::Stopped,
        })
    }

    #[test]
    fn parts_reassemble_into_ticks() {
        let mut t = Telemetry::default();
        for msg in [sample(0, 0, 2, 0..16), sample(0, 1, 2, 16..20), sample(1, 0, 1, 0..3)] {
            assert!(t.push(msg).is_none());
        }
        t.finish();
        assert_eq!(t.ticks.len(), 2);
        assert_eq!(t.ticks[0].workers.len(), 20);
        assert_eq!((t.ticks[0].received, t.ticks[0].parts), (2, 2));
        assert!(t.ticks[0].system.is_some());
        assert_eq!(t.stats.incomplete_ticks, 0);
        assert!(t.push(GuestMsg::Pong { seq: 1 }).is_some(), "not telemetry: handed back");
    }

    #[test]
    fn bad_parts_are_dropped_and_counted() {
        let mut t = Telemetry::default();
        t.push(sample(0, 0, 3, 0..1));
        t.push(sample(0, 0, 3, 0..1)); // duplicate
        t.push(sample(0, 5, 3, 0..1)); // out of range
        t.push(sample(0, 1, 0, 0..1)); // no parts
        t.push(sample(0, 1, 65, 0..1)); // too many parts
        t.push(sample(1, 0, 1, 0..1)); // a new tick ends the incomplete one
        t.finish();
        assert_eq!(t.stats.parts_rejected, 4);
        assert_eq!(t.stats.incomplete_ticks, 1);
        assert_eq!(t.ticks.len(), 2);
        assert_eq!((t.ticks[0].received, t.ticks[0].parts), (1, 3));
    }

    #[test]
    fn a_flood_of_ticks_is_decimated_not_unbounded() {
        let mut t = Telemetry::default();
        let n = MAX_TICKS as u32 * 5;
        for seq in 0..n {
            t.push(sample(seq, 0, 1, 0..4));
        }
        t.finish();
        assert!(t.ticks.len() <= MAX_TICKS, "{}", t.ticks.len());
        assert!(t.ticks.len() > MAX_TICKS / 4);
        assert_eq!(t.stats.ticks_received, u64::from(n));
        assert_eq!(t.stats.ticks_decimated + t.ticks.len() as u64, u64::from(n));
        // The whole run is still covered, at an even grain.
        assert_eq!(t.ticks[0].seq, 0);
        assert!(t.ticks.last().unwrap().seq >= n - t.stats.stride as u32);
        let stride = t.stats.stride as u32;
        assert!(t.ticks.windows(2).all(|w| w[1].seq - w[0].seq == stride));
    }

    #[test]
    fn wide_ticks_are_bounded_by_entries() {
        let mut t = Telemetry::default();
        for seq in 0..2000 {
            for part in 0..MAX_PARTS {
                t.push(sample(seq, part, MAX_PARTS, 0..16));
            }
        }
        t.finish();
        let entries: usize = t.ticks.iter().map(Tick::entries).sum();
        assert!(entries <= MAX_SAMPLE_ENTRIES, "{entries}");
        assert!(t.stats.ticks_decimated > 0);
    }

    #[test]
    fn reports_logs_and_events_are_bounded() {
        let mut t = Telemetry::default();
        for id in [3, 3, MAX_WORKERS as u32, 1] {
            t.push(report(id));
        }
        for i in 0..MAX_LOGS + 5 {
            let level = if i % 2 == 0 { LogLevel::Error } else { LogLevel::Info };
            t.push(GuestMsg::Log { t_ns: 0, level, text: text("x") });
        }
        for _ in 0..MAX_EVENTS + 1 {
            t.push(GuestMsg::Scenario(ScenarioEvent { t_ns: 0, kind: ScenarioEventKind::Finished }));
        }
        t.finish();
        assert_eq!(t.reports.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(t.stats.reports_rejected, 2);
        assert_eq!((t.logs.len(), t.stats.logs_dropped), (MAX_LOGS, 5));
        assert_eq!(t.stats.error_logs, (MAX_LOGS as u64 + 5).div_ceil(2));
        assert_eq!((t.events.len(), t.stats.events_dropped), (MAX_EVENTS, 1));
    }
}
