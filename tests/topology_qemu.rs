//! Topology as code, checked by the real kernel: boot specs through the QEMU backend and
//! require the guest's own view (sysfs: nodes, packages, LLCs, SMT siblings) to equal the spec.
//! Several LLCs per socket run on QEMU's Intel model (see `backend::qemu::cpu_model`).

mod common;

use common::*;

#[test]
fn guest_view_equals_the_spec_under_qemu() {
    if default_kernel().is_none() {
        return;
    }
    for spec in ["1n1l2c1t", "1n2l2c1t", "1n2l2c2t", "2n4l2c1t", "1n3l3c1t", "1n4l2c1t2s"] {
        let out = run(host().args(["run", "--json", "--backend", "qemu", "--topology", spec]));
        let s = json(&out);
        let check = &s["topology_check"];
        assert!(check.is_object(), "{spec}: the guest sent no topology: {s}");
        assert_eq!(check["matches"], true, "{spec}: {check}");
        assert_eq!(check["cpus_reported"], check["cpus_expected"], "{spec}: {check}");
        assert_eq!(s["passed"], true, "{spec}: {s}");
        // Sched domains (read through the sched debugfs) follow the same shape.
        let t: ktstr_shared::topology::Topology = spec.parse().unwrap();
        let domains = check["cpu0_sched_domains"].as_array().unwrap();
        assert_eq!(domains.contains(&"SMT".into()), t.threads_per_core > 1, "{spec}: {domains:?}");
        assert_eq!(domains.contains(&"NUMA".into()), t.nodes > 1, "{spec}: {domains:?}");
        assert!(out.status.success(), "{spec}: {}", text(&out.stderr));
    }
}
