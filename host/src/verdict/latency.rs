//! Wake-up latency percentiles and work throughput against their limits.

use ktstr_shared::hist;
use ktstr_shared::scenario::WorkType;
use ktstr_shared::wire::{WorkerEnd, WorkerReport};

use super::{Check, Ctx, KeyNumbers};

/// Work types whose latency histogram holds wake-up latencies.
pub(super) fn measures_wakeups(w: &WorkType) -> bool {
    match w {
        WorkType::PeriodicTimer { .. }
        | WorkType::PipePingPong { .. }
        | WorkType::FutexPingPong { .. }
        | WorkType::FutexFanOut { .. }
        | WorkType::Mixed { .. }
        | WorkType::Bursty { .. } => true,
        WorkType::Sequence { phases } => phases.iter().any(|p| measures_wakeups(&p.work)),
        _ => false,
    }
}

pub(super) fn wake_latency(cx: &Ctx, numbers: &mut KeyNumbers) -> Check {
    const NAME: &str = "wake_latency";
    let measured: Vec<_> = cx
        .rec
        .reports
        .iter()
        .filter(|r| cx.workers.get(r.id as usize).is_some_and(|m| measures_wakeups(&m.work)))
        .filter(|r| hist::total(&r.latency) > 0)
        .collect();
    if measured.is_empty() {
        return Check::skip(NAME, "no worker measured wake-up latencies");
    }
    let mut all = vec![0u64; hist::BUCKETS];
    for r in &measured {
        for (a, &c) in all.iter_mut().zip(r.latency.iter()) {
            *a = a.saturating_add(c);
        }
    }
    let us = |q: f64, h: &[u64]| hist::quantile(h, q).unwrap_or(0) as f64 / 1e3;
    numbers.p99_wake_us = Some(us(0.99, &all));
    let summary = format!(
        "p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us over {} wake-ups of {} workers",
        us(0.5, &all),
        us(0.99, &all),
        us(0.999, &all),
        hist::total(&all),
        measured.len()
    );
    let Some(limit) = cx.th.p99_wake_us else {
        return Check::skip(NAME, format!("{summary} (no limit set: --p99-wake-us)"));
    };
    let f = measured
        .iter()
        .filter(|r| us(0.99, &r.latency) > limit as f64)
        .map(|r| {
            let p99 = us(0.99, &r.latency);
            format!("{} p99 wake-up latency {p99:.0} us > {limit} us", cx.worker(r.id, r.cgroup))
        })
        .collect();
    Check::from_failures(NAME, f, || format!("{summary}, limit {limit} us"))
}

pub(super) fn throughput(cx: &Ctx) -> Check {
    const NAME: &str = "throughput";
    let rate = |r: &WorkerReport| r.work_units as f64 / (r.wall_ns.max(1) as f64 / 1e9);
    let judged: Vec<_> = cx.rec.reports.iter().filter(|r| r.end != WorkerEnd::Removed && r.wall_ns > 0).collect();
    let slowest = judged.iter().min_by(|a, b| rate(a).total_cmp(&rate(b)));
    let summary = slowest.map(|r| format!("slowest {} at {:.0} units/s", cx.worker(r.id, r.cgroup), rate(r)));
    let Some(floor) = cx.th.min_units_per_sec else {
        let s = summary.unwrap_or_else(|| "no workers".into());
        return Check::skip(NAME, format!("{s} (no floor set: --min-units-per-sec)"));
    };
    let f = judged
        .iter()
        .filter(|r| rate(r) < floor)
        .map(|r| format!("{} did {:.0} units/s < {floor}", cx.worker(r.id, r.cgroup), rate(r)))
        .collect();
    Check::from_failures(NAME, f, || format!("{}, floor {floor} units/s", summary.unwrap_or_default()))
}
