//! Where workers ran: inside their cgroup's effective cpuset and their affinity mask, at
//! every sample and over the whole run.

use std::collections::BTreeMap;

use ktstr_shared::wire::mask_cpus;

use super::{Check, Ctx};
use crate::scenario::timeline::Placement;

/// Which mask an isolation check enforces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mask {
    Cpuset,
    Affinity,
}

impl Mask {
    fn name(self) -> &'static str {
        match self {
            Mask::Cpuset => "cpuset_isolation",
            Mask::Affinity => "affinity",
        }
    }

    fn restricts(self, p: &Placement) -> bool {
        match self {
            Mask::Cpuset => p.cpuset_restricted,
            Mask::Affinity => p.affinity_restricted,
        }
    }

    fn cpus(self, p: &Placement) -> &[u32] {
        match self {
            Mask::Cpuset => &p.cpuset,
            Mask::Affinity => &p.allowed,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Mask::Cpuset => "cpuset",
            Mask::Affinity => "affinity mask",
        }
    }
}

pub(super) fn isolation(cx: &Ctx, mask: Mask) -> Check {
    let name = mask.name();
    if cx.cgroups_applied() == Some(false) && mask == Mask::Cpuset {
        return Check::skip(name, "cgroups were not applied (host mode without a cgroup root): no cpuset to check");
    }
    let restricted = cx.timeline.epochs.iter().flat_map(|e| e.workers.iter().flatten()).any(|p| mask.restricts(p));
    if !restricted {
        return Check::skip(name, format!("no {} restricts any worker", mask.what()));
    }
    if cx.t0.is_none() {
        return Check::skip(name, "the workers were never released: nothing ran");
    }
    let mut first: BTreeMap<u32, (String, usize)> = BTreeMap::new();
    let mut checked = 0usize;
    for tick in &cx.rec.ticks {
        for w in &tick.workers {
            let places = cx.placements(w.id, w.last_progress_ns);
            if places.is_empty() || !places.iter().any(|p| mask.restricts(p)) {
                continue;
            }
            checked += 1;
            if places.iter().any(|p| mask.cpus(p).contains(&w.last_cpu)) {
                continue;
            }
            let allowed = union(places.iter().map(|p| mask.cpus(p)));
            let entry = first.entry(w.id).or_insert_with(|| {
                let cg = cx.cgroup(places[0].cgroup);
                let msg = format!(
                    "{cg}: worker {} ran on cpu {} outside its {} {} {}",
                    w.id,
                    w.last_cpu,
                    mask.what(),
                    cpu_list(&allowed),
                    cx.at(w.last_progress_ns)
                );
                (msg, 0)
            });
            entry.1 += 1;
        }
    }
    let mut f: Vec<String> =
        first.into_values().map(|(msg, n)| if n > 1 { format!("{msg} ({n} samples)") } else { msg }).collect();
    let (whole_run, workers_checked) = cpus_used_violations(cx, mask);
    f.extend(whole_run);
    if checked == 0 && f.is_empty() {
        let period = cx.rec.meta.plan.sample_period_ms;
        let why = if period == 0 {
            "sampling is off (sample_period_ms = 0)".to_string()
        } else {
            format!("{} ticks", cx.rec.ticks.len())
        };
        return Check::skip(
            name,
            format!(
                "no sample showed a restricted worker ({why}); the whole-run CPU sets of {workers_checked} workers \
                 were within their {}, which alone does not judge placement over time",
                mask.what()
            ),
        );
    }
    Check::from_failures(name, f, || {
        let changes = cx.rec.meta.plan.steps.len();
        format!("{checked} samples checked across {changes} steps: no worker outside its {}", mask.what())
    })
}

/// Whole-run check from the reports: every CPU a worker used was in some mask it ever had.
/// Returns the violations and how many workers it could check.
pub(super) fn cpus_used_violations(cx: &Ctx, mask: Mask) -> (Vec<String>, usize) {
    let mut f = Vec::new();
    let mut checked = 0;
    for r in &cx.rec.reports {
        let ever: Vec<&Placement> =
            cx.timeline.epochs.iter().filter_map(|e| e.workers.get(r.id as usize)?.as_ref()).collect();
        if ever.is_empty() || !ever.iter().all(|p| mask.restricts(p)) {
            continue;
        }
        checked += 1;
        let allowed = union(ever.iter().map(|p| mask.cpus(p)));
        let outside: Vec<u32> = mask_cpus(&r.cpus_used).filter(|c| !allowed.contains(c)).collect();
        if !outside.is_empty() {
            f.push(format!(
                "{} ran on cpu {} during the run, outside every {} it had ({})",
                cx.worker(r.id, r.cgroup),
                cpu_list(&outside),
                mask.what(),
                cpu_list(&allowed)
            ));
        }
    }
    (f, checked)
}

pub(super) fn union<'a>(sets: impl Iterator<Item = &'a [u32]>) -> Vec<u32> {
    let mut all: Vec<u32> = sets.flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

pub(super) fn cpu_list(cpus: &[u32]) -> String {
    ktstr_shared::scenario::CpuList(cpus.to_vec()).to_string()
}
