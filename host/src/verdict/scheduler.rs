//! The scheduler under test: a sched_ext scheduler stayed attached for the whole run (and the
//! kernel says why when it did not); an EEVDF run had none attached.

use std::fmt::Write as _;

use ktstr_shared::wire::{Outcome, SchedEventKind, ScxState};

use super::{Check, Ctx};
use crate::record::SchedulerKind;

pub(super) fn scheduler(cx: &Ctx) -> Check {
    const NAME: &str = "scheduler";
    let systems = || cx.rec.ticks.iter().filter_map(|t| Some((t.t_ns, t.system?)));
    match cx.rec.meta.scheduler.kind {
        SchedulerKind::Eevdf => {
            let attached = systems().find(|(_, s)| matches!(s.scx, ScxState::Enabled | ScxState::Enabling));
            match attached {
                Some((t, s)) => Check::from_failures(
                    NAME,
                    vec![format!("sched_ext reported {:?} {} in a run meant for EEVDF", s.scx, cx.at(t))],
                    String::new,
                ),
                None => Check::skip(NAME, "not applicable: EEVDF (no BPF scheduler to stay attached)"),
            }
        }
        SchedulerKind::SchedExt => scx_attached(cx),
    }
}

/// sched_ext: attached before the run, enabled at every tick with one enable sequence, no
/// exit/error/stall/detach event, and stopped at the end with the kernel back on EEVDF.
/// A failure quotes the kernel's reason and adds the scheduler's last output lines, the
/// kernel's sched_ext log and dump lines, and the console's last lines.
pub(super) fn scx_attached(cx: &Ctx) -> Check {
    let name = &cx.rec.meta.scheduler.name;
    let events = &cx.rec.sched_events;
    let mut f: Vec<String> = events
        .iter()
        .filter(|e| e.kind.is_failure())
        .map(|e| format!("{name} {} {}: {}", event_word(e.kind), cx.at(e.t_ns), e.text))
        .collect();
    if let Some(Outcome::SchedulerFailed { reason }) = cx.rec.end.result.as_ref().map(|r| &r.outcome)
        && f.is_empty()
    {
        f.push(reason.to_string());
    }
    let attached = events.iter().find(|e| e.kind == SchedEventKind::Attached);
    if attached.is_none() && f.is_empty() {
        f.push(format!("{name} was never seen attached"));
    }
    let mut seq = None;
    let mut n = 0usize;
    for (t, s) in cx.rec.ticks.iter().filter_map(|t| Some((t.t_ns, t.system?))) {
        n += 1;
        if s.scx != ScxState::Enabled {
            f.push(format!("sched_ext state was {:?} {} ({name} not attached)", s.scx, cx.at(t)));
            break;
        }
        if let Some(cur) = s.scx_enable_seq {
            if seq.is_some_and(|prev| prev != cur) {
                f.push(format!("sched_ext enable_seq changed to {cur} {}: {name} was reloaded", cx.at(t)));
                break;
            }
            seq = Some(cur);
        }
    }
    if n == 0 && cx.t0.is_some() {
        f.push(format!("no system samples: cannot tell whether {name} stayed attached"));
    }
    let stopped = events.iter().find(|e| e.kind == SchedEventKind::Stopped);
    if f.is_empty() && stopped.is_none() && cx.rec.end.result.is_some() {
        f.push(format!("{name} was not seen stopping: the return to EEVDF was not confirmed"));
    }
    if f.is_empty() {
        let how = attached.map_or(String::new(), |e| format!("attached as {}; ", e.text));
        let end = stopped.map_or(String::new(), |e| format!("; {}", e.text));
        return Check::pass("scheduler", format!("{how}enabled at all {n} ticks, no exit or error{end}"));
    }
    let mut check = Check::from_failures("scheduler", f, String::new);
    check.detail.push_str(&failure_context(cx));
    check
}

pub(super) fn event_word(kind: SchedEventKind) -> &'static str {
    match kind {
        SchedEventKind::Exited => "exited",
        SchedEventKind::Error => "was disabled by the kernel (error)",
        SchedEventKind::Stall => "was disabled by the sched_ext watchdog (stall)",
        SchedEventKind::Detached => "detached",
        _ => "reported",
    }
}

/// Lines of each context kind shown in a failed verdict (all are in the record).
pub(super) const CONTEXT_LINES: usize = 12;

/// The kernel's log and dump lines, the scheduler's last output and the console's last lines.
pub(super) fn failure_context(cx: &Ctx) -> String {
    let lines = |kind: SchedEventKind| -> Vec<&str> {
        cx.rec.sched_events.iter().filter(|e| e.kind == kind).map(|e| e.text.as_str()).collect()
    };
    let mut out = String::new();
    let mut section = |title: &str, all: Vec<&str>, last: bool| {
        if all.is_empty() {
            return;
        }
        let shown =
            if last { &all[all.len().saturating_sub(CONTEXT_LINES)..] } else { &all[..all.len().min(CONTEXT_LINES)] };
        let _ = write!(out, "\n    {title} ({} of {} lines):", shown.len(), all.len());
        for l in shown {
            let _ = write!(out, "\n      {l}");
        }
    };
    section("kernel log", lines(SchedEventKind::KernelLog), false);
    section("sched_ext debug dump", lines(SchedEventKind::Dump), false);
    section("scheduler output, last", lines(SchedEventKind::Output), true);
    section("console, last", cx.rec.console_tail.lines().collect(), true);
    out
}
