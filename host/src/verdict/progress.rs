//! Did the run happen as planned: completed, steps applied, no guest errors, intact
//! telemetry, and every worker progressing (no starvation, no long gap).

use std::collections::BTreeMap;

use ktstr_shared::scenario::Op;
use ktstr_shared::wire::{LogLevel, Outcome, ScenarioEventKind, WorkerEnd, WorkerReport};

use super::{Check, Ctx, ms_to_ns};

pub(super) fn run_completed(cx: &Ctx) -> Check {
    let rec = cx.rec;
    let mut f = Vec::new();
    if let Some(p) = &rec.end.vm_problem {
        f.push(p.lines().next().unwrap_or_default().to_string());
    }
    match rec.end.result.as_ref().map(|r| &r.outcome) {
        None if rec.end.vm_problem.is_none() => f.push("the guest sent no result".into()),
        None | Some(Outcome::Completed) => {}
        Some(Outcome::TimedOut) => {
            f.push(format!("the run hit its deadline of {} ms before the scenario ended", rec.meta.deadline_ms))
        }
        Some(Outcome::SchedulerFailed { reason }) => f.push(format!("the run was cut short: {reason}")),
        Some(o) => f.push(format!("the run ended as {o:?}, not Completed")),
    }
    if cx.t0.is_none() && rec.end.result.is_some() {
        f.push("the workers were never released (no Started event)".into());
    }
    let reported: Vec<bool> = (0..cx.n_workers).map(|id| rec.reports.iter().any(|r| r.id as usize == id)).collect();
    let missing: Vec<String> =
        reported.iter().enumerate().filter(|(_, r)| !**r).map(|(id, _)| id.to_string()).collect();
    if !missing.is_empty() && rec.end.result.is_some() {
        f.push(format!("no report from worker(s) {}", missing.join(", ")));
    }
    for r in &rec.reports {
        let how = match r.end {
            WorkerEnd::Exited { code } => format!("exited early with code {code}"),
            WorkerEnd::Signaled { signal } => format!("was killed early by signal {signal}"),
            _ => continue,
        };
        let when = exit_time(cx, r.id).map(|t| format!(" {}", cx.at(t))).unwrap_or_default();
        f.push(format!("{} {how}{when}", cx.worker(r.id, r.cgroup)));
    }
    Check::from_failures("run_completed", f, || format!("completed; {} workers reported", rec.reports.len()))
}

pub(super) fn exit_time(cx: &Ctx, id: u32) -> Option<u64> {
    cx.rec.events.iter().find_map(|e| match e.kind {
        ScenarioEventKind::WorkerExited { id: i } if i == id => Some(e.t_ns),
        _ => None,
    })
}

pub(super) fn steps_applied(cx: &Ctx) -> Check {
    let plan = &cx.rec.meta.plan;
    if plan.steps.is_empty() {
        return Check::skip("steps_applied", "the scenario has no steps");
    }
    let mut f = Vec::new();
    for (k, step) in plan.steps.iter().enumerate() {
        let ops: Vec<String> = step.ops.iter().map(Op::describe).collect();
        let what = if ops.is_empty() { "hold".into() } else { ops.join(", ") };
        let event = cx.rec.events.iter().find_map(|e| match e.kind {
            ScenarioEventKind::Step { index, failed_ops } if index as usize == k => Some((e.t_ns, failed_ops)),
            _ => None,
        });
        match event {
            None => f.push(format!("step {k} ({what}) was never applied")),
            Some((t, failed)) if failed > 0 => {
                let tag = format!("steps[{k}].");
                let why: Vec<&str> =
                    cx.rec.logs.iter().filter(|l| l.text.starts_with(&tag)).map(|l| l.text.as_str()).collect();
                f.push(format!("step {k} ({what}) {}: {failed} operation(s) failed: {}", cx.at(t), why.join(" | ")));
            }
            Some(_) => {}
        }
    }
    Check::from_failures("steps_applied", f, || {
        format!("{} steps applied on time, no operation failed", plan.steps.len())
    })
}

pub(super) fn guest_errors(cx: &Ctx) -> Check {
    let errors: Vec<String> = cx
        .rec
        .logs
        .iter()
        .filter(|l| l.level == LogLevel::Error)
        .map(|l| format!("guest error {}: {}", cx.at(l.t_ns), l.text))
        .collect();
    let mut f = errors;
    let unlisted = cx.rec.telemetry.error_logs.saturating_sub(f.len() as u64);
    if unlisted > 0 {
        f.push(format!("{unlisted} more guest errors beyond the log limit"));
    }
    let warnings = cx.rec.logs.iter().filter(|l| l.level == LogLevel::Warn).count();
    Check::from_failures("guest_errors", f, || format!("no error logged ({warnings} warnings)"))
}

pub(super) fn telemetry(cx: &Ctx) -> Check {
    let (rec, t) = (cx.rec, &cx.rec.telemetry);
    let mut f = Vec::new();
    if rec.decode.rejected > 0 {
        let d = &rec.decode;
        f.push(format!(
            "{} frames rejected on the protocol channel (crc {}, cobs {}, postcard {}, oversize {})",
            d.rejected, d.bad_crc, d.bad_cobs, d.bad_postcard, d.oversize
        ));
    }
    for (n, what) in [
        (t.parts_rejected, "sample parts rejected (out of range, duplicate or inconsistent)"),
        (t.incomplete_ticks, "ticks missing parts"),
        (t.reports_rejected, "worker reports rejected (unknown or duplicate worker)"),
    ] {
        if n > 0 {
            f.push(format!("{n} {what}"));
        }
    }
    let n = cx.n_workers as u32;
    let unknown = rec.ticks.iter().flat_map(|t| &t.workers).filter(|w| w.id >= n).count()
        + rec.reports.iter().filter(|r| r.id >= n).count();
    if unknown > 0 {
        f.push(format!("{unknown} samples or reports name workers the scenario does not have (it has {n})"));
    }
    let period = u64::from(rec.meta.plan.sample_period_ms);
    let ran_ms = match (cx.t0, cx.finished_ns()) {
        (Some(a), Some(b)) => b.saturating_sub(a) / 1_000_000,
        _ => 0,
    };
    if period > 0 && ran_ms > 3 * period && rec.ticks.is_empty() {
        f.push(format!("no samples in a {ran_ms} ms run sampled every {period} ms"));
    }
    Check::from_failures("telemetry", f, || {
        let kept = if t.stride > 1 { format!(", every {}th tick kept", t.stride) } else { String::new() };
        format!("{} frames, {} ticks{kept}", rec.decode.frames, rec.ticks.len())
    })
}

/// When each worker last progressed according to the samples: (tick time, last progress, cpu).
pub(super) fn last_progress(cx: &Ctx) -> BTreeMap<u32, (u64, u64, u32)> {
    let mut last = BTreeMap::new();
    for tick in &cx.rec.ticks {
        for w in &tick.workers {
            last.insert(w.id, (tick.t_ns, w.last_progress_ns, w.last_cpu));
        }
    }
    last
}

pub(super) fn not_starved(cx: &Ctx) -> Check {
    if cx.rec.reports.is_empty() {
        return Check::skip("not_starved", "no worker reports to judge");
    }
    let limit_ns = ms_to_ns(cx.th.max_gap_ms);
    let last = last_progress(cx);
    let end = cx.finished_ns();
    let mut f = Vec::new();
    for r in &cx.rec.reports {
        let who = cx.worker(r.id, r.cgroup);
        if r.work_units == 0 {
            f.push(format!("{who} made no progress at all in {:.1} s (cpu {})", r.wall_ns as f64 / 1e9, r.max_gap_cpu));
            continue;
        }
        if r.end == WorkerEnd::Removed {
            continue; // its cgroup was removed: it stopped by design
        }
        // A gap still open at the end: from the last sample, else from the report.
        let open = match (last.get(&r.id), end) {
            (Some(&(_, progress, cpu)), Some(end)) => Some((end.saturating_sub(progress), progress, cpu)),
            _ => end
                .filter(|&e| r.max_gap_at_ns.saturating_add(r.max_gap_ns).saturating_add(1_000_000) >= e)
                .map(|_| (r.max_gap_ns, r.max_gap_at_ns, r.max_gap_cpu)),
        };
        if let Some((stall, from, cpu)) = open.filter(|o| o.0 > limit_ns) {
            let (s, at) = (stall as f64 / 1e9, cx.secs(from));
            f.push(format!("{who} made no progress for {s:.1} s on cpu {cpu} (from {at:.2} s to the end of the run)"));
        }
    }
    Check::from_failures("not_starved", f, || {
        let min = cx.rec.reports.iter().min_by_key(|r| r.work_units);
        let least = min.map(|r| format!("; fewest units: {} by {}", r.work_units, cx.worker(r.id, r.cgroup)));
        format!("all {} workers progressed to the end{}", cx.rec.reports.len(), least.unwrap_or_default())
    })
}

pub(super) fn max_gap(cx: &Ctx) -> Check {
    let Some(worst) = cx.rec.reports.iter().max_by_key(|r| r.max_gap_ns) else {
        return Check::skip("max_gap", "no worker reports to judge");
    };
    let limit_ns = ms_to_ns(cx.th.max_gap_ms);
    let describe = |r: &WorkerReport| {
        format!(
            "{} made no progress for {:.2} s on cpu {} {}",
            cx.worker(r.id, r.cgroup),
            r.max_gap_ns as f64 / 1e9,
            r.max_gap_cpu,
            cx.at(r.max_gap_at_ns)
        )
    };
    let mut over: Vec<_> = cx.rec.reports.iter().filter(|r| r.max_gap_ns > limit_ns).collect();
    over.sort_by_key(|r| std::cmp::Reverse(r.max_gap_ns));
    let f = over.iter().map(|r| format!("{} (limit {} ms)", describe(r), cx.th.max_gap_ms)).collect();
    Check::from_failures("max_gap", f, || {
        format!(
            "longest gap {:.1} ms ({} on cpu {} {}), limit {} ms",
            worst.max_gap_ns as f64 / 1e6,
            cx.worker(worst.id, worst.cgroup),
            worst.max_gap_cpu,
            cx.at(worst.max_gap_at_ns),
            cx.th.max_gap_ms
        )
    })
}
