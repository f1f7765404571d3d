//! How CPU time was shared: the spread among like workers of a cgroup (fairness) and the
//! ratio between two cgroups (weights).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ktstr_shared::scenario::WorkType;
use ktstr_shared::wire::{SchedEventKind, WorkerEnd, WorkerReport};

use super::{Check, Ctx, KeyNumbers, Metric};
use crate::record::{SchedulerKind, Tick};

/// CPU-bound work whose workers should get equal shares.
pub(super) fn fair_class(w: &WorkType) -> bool {
    matches!(w, WorkType::CpuSpin | WorkType::CachePressure { .. } | WorkType::YieldHeavy)
}

pub(super) fn fairness(cx: &Ctx, numbers: &mut KeyNumbers) -> Check {
    const NAME: &str = "fairness";
    if !cx.th.fairness {
        return Check::skip(NAME, "the scenario declares that its workers are not meant to get equal shares");
    }
    // Like workers: same final cgroup, same spec, CPU-bound, ran to the end.
    let mut groups: BTreeMap<(u16, usize), Vec<&WorkerReport>> = BTreeMap::new();
    for r in &cx.rec.reports {
        let Some(meta) = cx.workers.get(r.id as usize) else { continue };
        if fair_class(&meta.work) && matches!(r.end, WorkerEnd::Stopped | WorkerEnd::Killed) {
            groups.entry((r.cgroup, meta.spec)).or_default().push(r);
        }
    }
    groups.retain(|_, g| g.len() >= 2);
    if groups.is_empty() {
        return Check::skip(NAME, "no group of two or more like CPU-bound workers in one cgroup");
    }
    let steady = (cx.th.fairness_warmup_pct > 0.0).then(|| steady_state(cx)).flatten();
    let mut f = Vec::new();
    let mut widest: Option<(f64, String)> = None;
    for ((cg, _), g) in &groups {
        let Some(s) = spread(g, cx.th.fairness_metric, steady.as_ref()) else { continue };
        let label = format!("{} ({} {} workers)", cx.cgroup(*cg), g.len(), cx.workers[g[0].id as usize].work.name());
        if widest.as_ref().is_none_or(|w| s.pct > w.0) {
            widest = Some((s.pct, label.clone()));
        }
        if s.pct > cx.th.max_spread_pct {
            f.push(format!(
                "{label}: {} spread {:.1}% > {}% {} (worker {}: {}, worker {}: {}, mean {})",
                s.metric,
                s.pct,
                cx.th.max_spread_pct,
                s.window,
                s.min.0,
                s.fmt(s.min.1),
                s.max.0,
                s.fmt(s.max.1),
                s.fmt(s.mean)
            ));
        }
    }
    numbers.spread_pct = widest.as_ref().map(|w| w.0);
    let Some((pct, label)) = widest else {
        return Check::skip(NAME, "no group of like workers had a measurable share");
    };
    Check::from_failures(NAME, f, || format!("largest spread {pct:.1}% ({label}), limit {}%", cx.th.max_spread_pct))
}

/// Worker id and its (cpu time ns, units).
pub(super) type Gained = (u32, (u64, u64));

/// What each worker gained over a span of the sampled run.
pub(super) struct Steady {
    /// Worker id -> (cpu time ns, units).
    gained: BTreeMap<u32, (u64, u64)>,
    window: String,
}

/// Fairness looks at the run after the warm-up.
pub(super) fn steady_state(cx: &Ctx) -> Option<Steady> {
    let t0 = cx.t0?;
    let last = cx.rec.ticks.last()?;
    let end = cx.finished_ns().unwrap_or(last.t_ns).max(last.t_ns);
    // A verdict.json read back may hold any share: at most the whole run, and no overflow.
    let share = (cx.th.fairness_warmup_pct / 100.0).clamp(0.0, 1.0);
    gains(cx, t0.saturating_add((end.saturating_sub(t0) as f64 * share) as u64))
}

/// What each worker gained in the sampling intervals from guest time `from` on, leaving out
/// intervals more than twice the median long: the guest (or its sampler) did not run then, and
/// under emulation such a stall is charged whole to whichever task happened to be current.
pub(super) fn gains(cx: &Ctx, from: u64) -> Option<Steady> {
    let ticks: Vec<&Tick> = cx.rec.ticks.iter().filter(|t| t.t_ns >= from).collect();
    let (first, last) = (ticks.first()?, ticks.last()?);
    let mut dts: Vec<u64> = ticks.windows(2).map(|w| w[1].t_ns.saturating_sub(w[0].t_ns)).collect();
    if dts.is_empty() {
        return None;
    }
    dts.sort_unstable();
    let limit = dts[dts.len() / 2].saturating_mul(2).max(1);
    let mut gained: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut stalled = 0;
    for w in ticks.windows(2) {
        if w[1].t_ns.saturating_sub(w[0].t_ns) > limit {
            stalled += 1;
            continue;
        }
        let before: BTreeMap<u32, (u64, u64)> = w[0].workers.iter().map(|s| (s.id, (s.cpu_time_ns, s.units))).collect();
        for s in &w[1].workers {
            if let Some(&(cpu, units)) = before.get(&s.id) {
                let g = gained.entry(s.id).or_default();
                g.0 = g.0.saturating_add(s.cpu_time_ns.saturating_sub(cpu));
                g.1 = g.1.saturating_add(s.units.saturating_sub(units));
            }
        }
    }
    let mut window = format!("from {:.2} s to {:.2} s", cx.secs(first.t_ns), cx.secs(last.t_ns));
    if stalled > 0 {
        let _ = write!(window, " without {stalled} stalled sampling interval(s)");
    }
    Some(Steady { gained, window })
}

pub(super) struct Spread {
    metric: &'static str,
    pct: f64,
    min: (u32, f64),
    max: (u32, f64),
    mean: f64,
    seconds: bool,
    window: String,
}

impl Spread {
    fn fmt(&self, v: f64) -> String {
        if self.seconds { format!("{:.2} s", v / 1e9) } else { format!("{v:.0} units") }
    }
}

/// (max - min) / mean of the metric over the steady state (the whole run when a worker has no
/// samples), falling back to units without schedstat CPU times.
pub(super) fn spread(g: &[&WorkerReport], metric: Metric, steady: Option<&Steady>) -> Option<Spread> {
    let window_of = |r: &WorkerReport| steady.and_then(|s| s.gained.get(&r.id)).copied();
    let steady_pairs: Option<Vec<Gained>> = g.iter().map(|r| Some((r.id, window_of(r)?))).collect();
    let (pairs, window) = match steady_pairs {
        Some(p) => (p, steady.map(|s| s.window.clone()).unwrap_or_default()),
        None => (g.iter().map(|r| (r.id, (r.cpu_time_ns, r.work_units))).collect(), "over the whole run".into()),
    };
    let cpu = metric == Metric::CpuTime && pairs.iter().any(|p| p.1.0 > 0);
    let vals: Vec<(u32, f64)> = pairs.iter().map(|&(id, (c, u))| (id, if cpu { c as f64 } else { u as f64 })).collect();
    let mean = vals.iter().map(|v| v.1).sum::<f64>() / vals.len() as f64;
    let min = *vals.iter().min_by(|a, b| a.1.total_cmp(&b.1))?;
    let max = *vals.iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
    let pct = if mean > 0.0 { (max.1 - min.1) / mean * 100.0 } else { 0.0 };
    Some(Spread { metric: if cpu { "cpu time" } else { "units" }, pct, min, max, mean, seconds: cpu, window })
}

pub(super) fn cpu_ratio(cx: &Ctx, numbers: &mut KeyNumbers) -> Check {
    const NAME: &str = "cpu_ratio";
    let Some(r) = &cx.th.cpu_ratio else { return Check::skip(NAME, "the scenario expects no CPU ratio") };
    // Whole-run totals: EEVDF evens out what a stall of the vCPU charged to one side.
    let sum = |name: &str| -> f64 {
        let prefix = format!("{name}/");
        let in_subtree = |cg: u16| cx.cgroups.get(cg as usize).is_some_and(|n| *n == name || n.starts_with(&prefix));
        cx.rec.reports.iter().filter(|w| in_subtree(w.cgroup)).map(|w| w.cpu_time_ns as f64).sum()
    };
    let (a, b) = (sum(&r.cgroups[0]), sum(&r.cgroups[1]));
    let pair = format!("{}:{}", r.cgroups[0], r.cgroups[1]);
    if b <= 0.0 {
        let why = format!("{} got no CPU time: the ratio {pair} is undefined", r.cgroups[1]);
        return Check::from_failures(NAME, vec![why], String::new);
    }
    let ratio = a / b;
    numbers.cpu_ratio = Some(ratio);
    if let Some(line) = no_weight_support(cx) {
        return Check::skip(NAME, format!("not applicable (measured {ratio:.2}): the kernel says {line}"));
    }
    let text = format!(
        "cpu time {pair} = {ratio:.2} ({:.2} s / {:.2} s), expected {} +- {:.0}%",
        a / 1e9,
        b / 1e9,
        r.ratio,
        r.tolerance * 100.0
    );
    let f = if (ratio / r.ratio - 1.0).abs() > r.tolerance { vec![text.clone()] } else { Vec::new() };
    Check::from_failures(NAME, f, || text)
}

/// The kernel's warning that the sched_ext scheduler ignores cgroup cpu.weight, if it gave one.
pub(super) fn no_weight_support<'a>(cx: &Ctx<'a>) -> Option<&'a str> {
    if cx.rec.meta.scheduler.kind != SchedulerKind::SchedExt {
        return None;
    }
    let line = cx
        .rec
        .sched_events
        .iter()
        .find(|e| e.kind == SchedEventKind::KernelLog && e.text.contains("does not implement cgroup cpu.weight"))?;
    Some(line.text.trim_start_matches("sched_ext: "))
}
