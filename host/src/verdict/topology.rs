//! The guest's CPU topology as its kernel reports it (nodes, packages, LLCs, cores, SMT
//! siblings) against the topology spec the VM was built from.

use super::Check;
use super::Ctx;

pub(super) fn topology(cx: &Ctx) -> Check {
    const NAME: &str = "topology";
    let observed = &cx.rec.guest_topology;
    if observed.is_empty() {
        return Check::skip(NAME, "the guest sent no topology report (host mode, or the init ended before it)");
    }
    let v = crate::topo::check(&cx.rec.meta.topology, observed);
    let mut f = v.mismatches.clone();
    if v.mismatches_total > v.mismatches.len() {
        f.push(format!("and {} more mismatches", v.mismatches_total - v.mismatches.len()));
    }
    if !v.matches && f.is_empty() {
        f.push("the guest's topology does not match the spec".into());
    }
    Check::from_failures(NAME, f, || {
        format!("{} CPUs as the spec {} says (nodes, LLCs, cores, siblings)", v.cpus_reported, cx.rec.meta.topology)
    })
}
