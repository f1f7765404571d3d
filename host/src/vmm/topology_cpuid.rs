//! Per-topology CPUID: turns KVM_GET_SUPPORTED_CPUID (the base, from `cpuid.rs`) plus a
//! [`Topology`] into each vCPU's table, so leaves 0x1, 0x4, 0xB, 0x1F (Intel) and 0x80000001,
//! 0x80000008, 0x8000001D, 0x8000001E (AMD) describe the same machine as the ACPI tables.
//!
//! Pure functions: [`prepare`] does the shared work once, [`for_vcpu`] patches one vCPU's
//! APIC ID into a copy. Caches are synthesized (same sizes on every host) so the guest's
//! cacheinfo, and with it the LLC partition, depends only on the spec.
//!
//! How Linux (6.12) reads these, and why the values are what they are:
//! - Intel: LLC id = APIC ID with the low `order(leaf 4 L3 sharing)` bits cleared; SMT/core/die
//!   shifts from leaf 0x1F (0xB when absent); package = APIC ID >> last shift.
//! - AMD with TOPOEXT: shifts from leaf 0xB (its last level spans the package, AMD has no die
//!   level there); L3 shared_cpu_map from the 0x8000001D sharing count; llc_id from that count
//!   for family >= 0x17 except family 0x17 model <= 0x1F (hard-coded apicid >> 3, so such
//!   models are moved to 0x31) and from 0x8000001E ECX node_id for family < 0x17 (QEMU TCG's
//!   AMD `max` is family 15): so node_id carries the global LLC index.

use ktstr_shared::topology::{ApicLayout, Topology};
use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPO: u32 = 0xb;
const LEAF_TOPO_V2: u32 = 0x1f;
const LEAF_EXT_MAX: u32 = 0x8000_0000;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
const LEAF_AMD_TOPO: u32 = 0x8000_001e;
/// AMD's newer topology leaf: Linux prefers it when present, so it is dropped (and the
/// extended range capped below it) to keep 0xB authoritative.
const LEAF_AMD_TOPO_V3: u32 = 0x8000_0026;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_CMP_LEGACY: u32 = 1 << 1;
const ECX_TOPOEXT: u32 = 1 << 22;

/// Leaf 0xB/0x1F level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;
const LEVEL_DIE: u32 = 5;

/// Family/model that Linux's AMD cacheinfo reads the 0x8000001D sharing count for (Zen 2).
const AMD_SAFE_MODEL: u32 = 0x31;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    /// Anything else (Hygon, Zhaoxin...): only APIC IDs are patched.
    Other,
}

/// The vendor named by leaf 0.
pub fn vendor(base: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(e) = base.iter().find(|e| e.function == LEAF_VENDOR) else { return Vendor::Other };
    match (e.ebx, e.edx, e.ecx) {
        (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => Vendor::Intel, // GenuineIntel
        (0x6874_7541, 0x6974_6e65, 0x444d_4163) => Vendor::Amd,   // AuthenticAMD
        _ => Vendor::Other,
    }
}

/// One synthesized cache: (level, type: 1 data / 2 instruction / 3 unified, size KiB, ways).
struct Cache {
    level: u32,
    kind: u32,
    kib: u32,
    ways: u32,
}

const LINE: u32 = 64;
const CACHES: [Cache; 4] = [
    Cache { level: 1, kind: 1, kib: 32, ways: 8 },
    Cache { level: 1, kind: 2, kib: 32, ways: 8 },
    Cache { level: 2, kind: 3, kib: 1024, ways: 16 },
    Cache { level: 3, kind: 3, kib: 16384, ways: 16 },
];

fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    let flags = match function {
        LEAF_CACHE | LEAF_TOPO | LEAF_TOPO_V2 | LEAF_AMD_CACHE => KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        _ => 0,
    };
    kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// Leaf 4 / 0x8000001D subleaves (same layout), with a terminating null subleaf. L1 and L2
/// are per core, L3 per LLC; sharing counts are APIC ID ranges, as Linux rounds them so.
fn cache_leaves(function: u32, l: &ApicLayout) -> Vec<kvm_cpuid_entry2> {
    let package_cores = ((1u32 << (l.core_bits + l.die_bits)) - 1).min(63);
    let mut out: Vec<kvm_cpuid_entry2> = CACHES
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let share_bits = if c.level == 3 { l.die_shift() } else { l.smt_bits };
            let mut eax = c.kind | c.level << 5 | 1 << 8 | ((1 << share_bits) - 1) << 14;
            if function == LEAF_CACHE {
                eax |= package_cores << 26;
            }
            let sets = c.kib * 1024 / (LINE * c.ways);
            let ebx = (LINE - 1) | (c.ways - 1) << 22;
            let edx = u32::from(c.level == 3) << 1; // L3 inclusive
            entry(function, i as u32, [eax, ebx, sets - 1, edx])
        })
        .collect();
    out.push(entry(function, CACHES.len() as u32, [0; 4]));
    out
}

/// Leaf 0xB or 0x1F levels; EDX (the x2APIC ID) is filled in per vCPU.
fn topo_leaves(function: u32, t: &Topology, l: &ApicLayout, with_die: bool) -> Vec<kvm_cpuid_entry2> {
    let mut levels = vec![(LEVEL_SMT, l.smt_bits, t.threads_per_core)];
    if with_die {
        levels.push((LEVEL_CORE, l.die_shift(), t.cpus_per_llc()));
        levels.push((LEVEL_DIE, l.socket_shift(), t.cpus_per_socket()));
    } else {
        // The last level's shift is the package's: without a die level it covers the dies.
        levels.push((LEVEL_CORE, l.socket_shift(), t.cpus_per_socket()));
    }
    let mut out: Vec<kvm_cpuid_entry2> = levels
        .iter()
        .enumerate()
        .map(|(i, &(kind, shift, count))| entry(function, i as u32, [shift, count & 0xffff, i as u32 | kind << 8, 0]))
        .collect();
    let n = out.len() as u32;
    out.push(entry(function, n, [0, 0, n, 0]));
    out
}

fn amd_family_model(eax: u32) -> (u32, u32) {
    let base_family = eax >> 8 & 0xf;
    let family = if base_family == 0xf { base_family + (eax >> 20 & 0xff) } else { base_family };
    let model = (eax >> 4 & 0xf) | if base_family == 0xf { (eax >> 16 & 0xf) << 4 } else { 0 };
    (family, model)
}

/// Leaf 1 EAX with the model moved off family 0x17 models <= 0x1F (see the module comment).
fn amd_signature(eax: u32) -> u32 {
    match amd_family_model(eax) {
        (0x17, model) if model <= 0x1f => {
            (eax & !(0xf << 16 | 0xf << 4)) | (AMD_SAFE_MODEL >> 4) << 16 | (AMD_SAFE_MODEL & 0xf) << 4
        }
        _ => eax,
    }
}

fn patch_common(e: &mut kvm_cpuid_entry2, t: &Topology, l: &ApicLayout, vendor: Vendor) {
    match e.function {
        LEAF_VENDOR => {
            let min = if vendor == Vendor::Intel { LEAF_TOPO_V2 } else { LEAF_TOPO };
            e.eax = e.eax.max(min);
        }
        LEAF_FEATURES => {
            let logical = (1u32 << l.socket_shift()).min(255);
            e.ebx = (e.ebx & 0xff00_ffff) | logical << 16;
            e.ecx |= ECX_HYPERVISOR;
            e.edx = if t.cpus_per_socket() > 1 { e.edx | EDX_HTT } else { e.edx & !EDX_HTT };
            if vendor == Vendor::Amd {
                e.eax = amd_signature(e.eax);
            }
        }
        LEAF_EXT_MAX if vendor == Vendor::Amd => e.eax = e.eax.clamp(LEAF_AMD_TOPO, LEAF_AMD_TOPO_V3 - 1),
        LEAF_EXT_FEATURES if vendor == Vendor::Amd => {
            e.ecx |= ECX_TOPOEXT;
            e.ecx = if t.cpus_per_socket() > 1 { e.ecx | ECX_CMP_LEGACY } else { e.ecx & !ECX_CMP_LEGACY };
        }
        LEAF_AMD_SIZES if vendor == Vendor::Amd => {
            e.ecx = (e.ecx & !0xf0ff) | l.socket_shift() << 12 | ((t.cpus_per_socket() - 1) & 0xff);
        }
        _ => {}
    }
}

/// Leaves this module owns for `vendor` (generated, so dropped from the base).
fn generated(function: u32, vendor: Vendor) -> bool {
    match vendor {
        Vendor::Intel => matches!(function, LEAF_CACHE | LEAF_TOPO | LEAF_TOPO_V2),
        Vendor::Amd => {
            matches!(function, LEAF_TOPO | LEAF_TOPO_V2 | LEAF_AMD_CACHE | LEAF_AMD_TOPO)
                || (LEAF_AMD_TOPO_V3..0x8000_ffff).contains(&function)
        }
        Vendor::Other => false,
    }
}

/// The table every vCPU starts from: base leaves patched for `t`, topology leaves generated
/// (per-vCPU APIC ID fields still zero). Invariant: `t` is valid.
pub fn prepare(base: &[kvm_cpuid_entry2], t: &Topology) -> Vec<kvm_cpuid_entry2> {
    let vendor = vendor(base);
    let l = t.apic_layout();
    let mut out: Vec<kvm_cpuid_entry2> = base.iter().filter(|e| !generated(e.function, vendor)).copied().collect();
    out.iter_mut().for_each(|e| patch_common(e, t, &l, vendor));
    match vendor {
        Vendor::Intel => {
            out.extend(cache_leaves(LEAF_CACHE, &l));
            out.extend(topo_leaves(LEAF_TOPO, t, &l, false));
            out.extend(topo_leaves(LEAF_TOPO_V2, t, &l, true));
        }
        Vendor::Amd => {
            out.extend(topo_leaves(LEAF_TOPO, t, &l, false));
            out.extend(cache_leaves(LEAF_AMD_CACHE, &l));
            out.push(entry(LEAF_AMD_TOPO, 0, [0; 4]));
            ensure_ext_leaf(&mut out, LEAF_EXT_FEATURES, [0, 0, ECX_TOPOEXT, 0]);
        }
        Vendor::Other => {}
    }
    out
}

fn ensure_ext_leaf(out: &mut Vec<kvm_cpuid_entry2>, function: u32, regs: [u32; 4]) {
    if !out.iter().any(|e| e.function == function) {
        out.push(entry(function, 0, regs));
    }
}

/// Fills in the fields that name vCPU `cpu` in a copy of `prepared`.
pub fn for_vcpu(prepared: &[kvm_cpuid_entry2], t: &Topology, cpu: u32) -> CpuId {
    let mut entries = prepared.to_vec();
    patch_vcpu(&mut entries, t, cpu);
    // A table longer than KVM_MAX_CPUID_ENTRIES cannot come out of `prepare`.
    CpuId::from_entries(&entries).expect("CPUID table within KVM_MAX_CPUID_ENTRIES")
}

/// The per-vCPU patch, in place (what `for_vcpu` and the bench run).
pub fn patch_vcpu(entries: &mut [kvm_cpuid_entry2], t: &Topology, cpu: u32) {
    let p = t.place(cpu);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => e.ebx = (e.ebx & 0x00ff_ffff) | (p.apic_id & 0xff) << 24,
            LEAF_TOPO | LEAF_TOPO_V2 => e.edx = p.apic_id,
            LEAF_AMD_TOPO => {
                let core_in_socket = p.die * t.cores_per_llc + p.core;
                e.eax = p.apic_id;
                e.ebx = (core_in_socket & 0xff) | (t.threads_per_core - 1) << 8;
                e.ecx = (p.llc & 0xff) | (t.llcs_per_socket() - 1).min(7) << 8;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_shared::topology::PRESETS;
    use raw_cpuid::{CpuId as Decoder, CpuIdResult, TopologyType};

    fn vendor_regs(name: &[u8; 12]) -> [u32; 3] {
        let w = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
        [w(0), w(4), w(8)] // ebx, edx, ecx
    }

    /// A KVM_GET_SUPPORTED_CPUID-like base for a vendor (family/model given as leaf 1 EAX).
    fn base(name: &[u8; 12], leaf1_eax: u32) -> Vec<kvm_cpuid_entry2> {
        let [b, d, c] = vendor_regs(name);
        vec![
            entry(0, 0, [0xd, b, c, d]),
            entry(1, 0, [leaf1_eax, 0x0008_0800, 0x8120_2000, 0x078b_fbff]),
            entry(0xb, 0, [1, 2, 0x100, 0]),
            entry(0x8000_0000, 0, [0x8000_0021, b, c, d]),
            entry(0x8000_0001, 0, [0, 0, 0x1, 0x2c10_0800]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7007, 0]),
            entry(0x8000_0026, 0, [1, 2, 3, 4]),
        ]
    }

    fn intel() -> Vec<kvm_cpuid_entry2> {
        base(b"GenuineIntel", 0x0005_0654)
    }

    /// Family 0x17 model 0x01: Linux would hard-code the LLC unless the model is moved.
    fn amd_zen1() -> Vec<kvm_cpuid_entry2> {
        base(b"AuthenticAMD", 0x0080_0f11)
    }

    fn decoder(table: CpuId) -> Decoder<impl raw_cpuid::CpuIdReader> {
        let entries = table.as_slice().to_vec();
        Decoder::with_cpuid_reader(move |leaf: u32, sub: u32| {
            entries
                .iter()
                .find(|e| e.function == leaf && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == sub))
                .map_or(CpuIdResult { eax: 0, ebx: 0, ecx: 0, edx: 0 }, |e| CpuIdResult {
                    eax: e.eax,
                    ebx: e.ebx,
                    ecx: e.ecx,
                    edx: e.edx,
                })
        })
    }

    /// APIC ID >> order(sharing): what Linux groups caches by.
    fn group(apic: u32, sharing: usize) -> u32 {
        apic >> ktstr_shared::topology::field_bits(sharing as u32)
    }

    fn check_common<R: raw_cpuid::CpuIdReader>(d: &Decoder<R>, t: &Topology, cpu: u32) -> (u32, u32) {
        let p = t.place(cpu);
        let f = d.get_feature_info().unwrap();
        assert_eq!(u32::from(f.initial_local_apic_id()), p.apic_id & 0xff);
        assert_eq!(f.has_htt(), t.cpus_per_socket() > 1);
        let levels: Vec<_> = d.get_extended_topology_info().unwrap().collect();
        assert_eq!(levels.len(), 2, "{t}");
        assert!(levels.iter().all(|lv| lv.x2apic_id() == p.apic_id));
        assert_eq!(levels[0].level_type(), TopologyType::SMT);
        assert_eq!(levels[1].level_type(), TopologyType::Core);
        // The package is what remains above the last level's shift.
        assert_eq!(p.apic_id >> levels[1].shift_right_for_next_apic_id(), p.socket, "{t} cpu {cpu}");
        assert_eq!(u32::from(levels[0].processors()), t.threads_per_core);
        let caches: Vec<_> = d.get_cache_parameters().unwrap().collect();
        assert_eq!(caches.iter().map(|c| c.level()).collect::<Vec<_>>(), [1, 1, 2, 3]);
        let l2 = group(p.apic_id, caches[2].max_cores_for_cache());
        let l3 = group(p.apic_id, caches[3].max_cores_for_cache());
        (l2, l3)
    }

    /// Cache groups decoded from every vCPU must be the spec's cores and LLCs.
    fn check_partitions(t: &Topology, groups: &[(u32, u32)]) {
        for a in 0..t.cpus() {
            for b in 0..t.cpus() {
                let (pa, pb) = (t.place(a), t.place(b));
                let (ga, gb) = (groups[a as usize], groups[b as usize]);
                assert_eq!(ga.1 == gb.1, pa.llc == pb.llc, "{t}: L3 of cpus {a},{b}");
                assert_eq!(ga.0 == gb.0, pa.core_global(t) == pb.core_global(t), "{t}: L2 of cpus {a},{b}");
            }
        }
    }

    #[test]
    fn intel_tables_decode_to_every_preset() {
        for preset in PRESETS {
            let t = preset.topology;
            let prepared = prepare(&intel(), &t);
            let groups: Vec<(u32, u32)> = (0..t.cpus())
                .map(|cpu| {
                    let d = decoder(for_vcpu(&prepared, &t, cpu));
                    let p = t.place(cpu);
                    let v2: Vec<_> = d.get_extended_topology_info_v2().unwrap().collect();
                    assert_eq!(v2.len(), 3);
                    assert_eq!(v2[2].level_type(), TopologyType::Die);
                    let die_bits = t.apic_layout().die_bits;
                    assert_eq!(p.apic_id >> v2[1].shift_right_for_next_apic_id(), p.die | p.socket << die_bits);
                    assert_eq!(p.apic_id >> v2[2].shift_right_for_next_apic_id(), p.socket);
                    check_common(&d, &t, cpu)
                })
                .collect();
            check_partitions(&t, &groups);
        }
    }

    #[test]
    fn amd_tables_decode_to_every_preset() {
        for preset in PRESETS {
            let t = preset.topology;
            let prepared = prepare(&amd_zen1(), &t);
            let groups: Vec<(u32, u32)> = (0..t.cpus())
                .map(|cpu| {
                    let d = decoder(for_vcpu(&prepared, &t, cpu));
                    let p = t.place(cpu);
                    let ext = d.get_extended_processor_and_feature_identifiers().unwrap();
                    assert!(ext.has_topology_extensions());
                    let topo = d.get_processor_topology_info().unwrap();
                    assert_eq!(topo.x2apic_id(), p.apic_id);
                    assert_eq!(u32::from(topo.threads_per_core()), t.threads_per_core);
                    assert_eq!(u32::from(topo.node_id()), p.llc & 0xff);
                    let sizes = d.get_processor_capacity_feature_info().unwrap();
                    assert_eq!(u32::from(sizes.apic_id_size()), t.apic_layout().socket_shift());
                    assert_eq!(sizes.num_phys_threads() as u32, t.cpus_per_socket());
                    check_common(&d, &t, cpu)
                })
                .collect();
            check_partitions(&t, &groups);
        }
    }

    #[test]
    fn amd_zen1_models_move_off_the_hardcoded_llc() {
        let t = Topology::default();
        let d = decoder(for_vcpu(&prepare(&amd_zen1(), &t), &t, 0));
        let f = d.get_feature_info().unwrap();
        assert_eq!((f.family_id(), f.model_id()), (0x17, 0x31));
        // Family 15 (QEMU TCG's AMD `max`) keeps its signature: LLC comes from node_id there.
        let fam15 = base(b"AuthenticAMD", 0x0006_0fb1);
        let d = decoder(for_vcpu(&prepare(&fam15, &t), &t, 0));
        assert_eq!(d.get_feature_info().unwrap().family_id(), 0xf);
    }

    #[test]
    fn amd_drops_leaf_0x80000026_and_caps_the_extended_range() {
        let t: Topology = "1n2l2c2t".parse().unwrap();
        let table = prepare(&amd_zen1(), &t);
        assert!(!table.iter().any(|e| e.function == LEAF_AMD_TOPO_V3));
        let max = table.iter().find(|e| e.function == LEAF_EXT_MAX).unwrap().eax;
        assert!((LEAF_AMD_TOPO..LEAF_AMD_TOPO_V3).contains(&max));
        assert!(!table.iter().any(|e| e.function == LEAF_TOPO_V2));
    }

    #[test]
    fn unknown_vendors_only_get_apic_ids() {
        let b = base(b"HygonGenuine", 0x0090_0f01);
        let t: Topology = "1n2l2c2t".parse().unwrap();
        let table = for_vcpu(&prepare(&b, &t), &t, 5);
        let leaf1 = table.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, t.place(5).apic_id);
        assert_eq!(table.as_slice().iter().filter(|e| e.function == 0xb).count(), 1);
    }
}
