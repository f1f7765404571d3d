//! Per-vCPU CPUID: KVM_GET_SUPPORTED_CPUID with each vCPU's APIC ID patched in.
//!
//! Deliberately minimal: the topology issue replaces this file with a full per-topology table
//! (leaves 0x4, 0xB/0x1F levels, 0x8000001D/1E, 0x80000008). Only the fields that name the
//! vCPU itself are set here, so every vCPU at least knows who it is.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;
/// Leaf 1 ECX bit 31: "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit 24: the LAPIC timer has TSC-deadline mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// The APIC ID of vCPU `index` (identity until topologies exist).
pub fn apic_id(index: u32) -> u32 {
    index
}

/// Patches one entry for the vCPU whose APIC ID is `apic_id`.
pub fn patch_entry(entry: &mut kvm_cpuid_entry2, apic_id: u32) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX[31:24] = initial APIC ID (8 bits; x2APIC IDs live in leaf 0xB).
            entry.ebx = (entry.ebx & 0x00ff_ffff) | ((apic_id & 0xff) << 24);
            entry.ecx |= ECX_HYPERVISOR;
        }
        LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => entry.edx = apic_id,
        LEAF_AMD_EXT_APIC_ID => entry.eax = apic_id,
        _ => {}
    }
}

/// Adds the features KVM emulates but leaves out of KVM_GET_SUPPORTED_CPUID because they need
/// the VMM's consent (Documentation/virt/kvm/api.rst): the TSC-deadline LAPIC timer, reported
/// through KVM_CAP_TSC_DEADLINE_TIMER instead.
///
/// Without it Linux must calibrate the LAPIC timer against the PIT and verify it; on a slow or
/// overcommitted host (nested KVM under emulation) that verification mostly fails, the LAPIC
/// timers are declared dummy and every CPU's tick hangs off the PIT through broadcast IPIs.
pub fn add_emulated_features(cpuid: &mut CpuId, tsc_deadline: bool) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == LEAF_FEATURES && tsc_deadline {
            entry.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

/// A copy of `base` (the host's supported CPUID) for the vCPU with `apic_id`.
pub fn for_vcpu(base: &CpuId, apic_id: u32) -> CpuId {
    let mut cpuid = base.clone();
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, apic_id);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn base() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, [0x10, 1, 2, 3]),
            entry(1, 0, [0x00a0_0f11, 0xff08_0800, 0x0120_2000, 0x178b_fbff]),
            entry(0xb, 0, [1, 2, 0x100, 0xdead]),
            entry(0xb, 1, [4, 16, 0x201, 0xdead]),
            entry(0x8000_001e, 0, [0xdead, 0x100, 0, 0]),
        ])
        .unwrap()
    }

    #[test]
    fn leaf1_ebx_carries_the_apic_id_and_keeps_the_rest() {
        let cpuid = for_vcpu(&base(), 5);
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx, 0x0508_0800);
        assert_eq!(leaf1.eax, 0x00a0_0f11);
        assert_eq!(leaf1.ecx, 0x8120_2000);
        assert_eq!(leaf1.edx, 0x178b_fbff);
    }

    #[test]
    fn extended_topology_edx_is_the_x2apic_id_in_every_subleaf() {
        let cpuid = for_vcpu(&base(), 300);
        let leaf_b: Vec<_> = cpuid.as_slice().iter().filter(|e| e.function == 0xb).collect();
        assert_eq!(leaf_b.len(), 2);
        assert!(leaf_b.iter().all(|e| e.edx == 300));
        // Leaf 1 can only hold the low 8 bits.
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, 300 & 0xff);
    }

    #[test]
    fn amd_extended_apic_id() {
        let cpuid = for_vcpu(&base(), 7);
        let e = cpuid.as_slice().iter().find(|e| e.function == 0x8000_001e).unwrap();
        assert_eq!(e.eax, 7);
        assert_eq!(e.ebx, 0x100);
    }

    #[test]
    fn other_leaves_and_the_base_are_untouched() {
        let base = base();
        let cpuid = for_vcpu(&base, 3);
        assert_eq!(cpuid.as_slice()[0], base.as_slice()[0]);
        assert_eq!(base.as_slice()[1].ebx, 0xff08_0800);
    }

    #[test]
    fn tsc_deadline_only_when_kvm_emulates_it() {
        let mut cpuid = base();
        add_emulated_features(&mut cpuid, false);
        assert_eq!(cpuid.as_slice(), base().as_slice());
        add_emulated_features(&mut cpuid, true);
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ecx, 0x0120_2000 | ECX_TSC_DEADLINE);
        assert_eq!((leaf1.eax, leaf1.ebx, leaf1.edx), (0x00a0_0f11, 0xff08_0800, 0x178b_fbff));
    }

    #[test]
    fn every_vcpu_gets_its_own_id() {
        let base = base();
        let ids: Vec<u32> = (0..4)
            .map(|i| {
                let c = for_vcpu(&base, apic_id(i));
                c.as_slice().iter().find(|e| e.function == 1).unwrap().ebx >> 24
            })
            .collect();
        assert_eq!(ids, vec![0, 1, 2, 3]);
    }
}
