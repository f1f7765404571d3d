//! Time to build every topology table of the largest presets: CPUID for every vCPU (from this
//! host's KVM_GET_SUPPORTED_CPUID when /dev/kvm answers, else a small synthetic AMD base) plus
//! all ACPI tables. Run: `cargo run --release -p ktstr-host --example topology_tables`.

use ktstr_host::vmm::{acpi, topology_cpuid};
use ktstr_shared::topology::preset;
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use std::time::{Duration, Instant};

const REPS: usize = 300;

fn base() -> (Vec<kvm_cpuid_entry2>, &'static str) {
    if let Ok(kvm) = kvm_ioctls::Kvm::new()
        && let Ok(c) = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
    {
        return (c.as_slice().to_vec(), "KVM_GET_SUPPORTED_CPUID");
    }
    let e = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 { function, eax, ebx, ecx, edx, ..Default::default() };
    let amd = [0x6874_7541, 0x6974_6e65, 0x444d_4163];
    let v = vec![
        e(0, 0xd, amd[0], amd[2], amd[1]),
        e(1, 0x00a0_0f11, 0, 0, 0),
        e(0x8000_0000, 0x8000_0021, 0, 0, 0),
        e(0x8000_0001, 0, 0, 0, 0),
        e(0x8000_0008, 0x3030, 0, 0, 0),
    ];
    (v, "synthetic AMD base")
}

fn main() {
    let (base, source) = base();
    println!("CPUID base: {source} ({} entries); {REPS} repetitions each", base.len());
    for name in ["max-cpu", "numa4-12llc"] {
        let t = preset(name).unwrap().topology;
        let ram = [(0u64, 3u64 << 30), (1 << 32, 1 << 30)];
        let mut times: Vec<Duration> = (0..REPS)
            .map(|_| {
                let start = Instant::now();
                let prepared = topology_cpuid::prepare(&base, &t);
                let tables: Vec<_> = (0..t.cpus()).map(|c| topology_cpuid::for_vcpu(&prepared, &t, c)).collect();
                let blob = acpi::build(&t, &ram, None, 0xe_0000, 0x1_0000).unwrap();
                let took = start.elapsed();
                std::hint::black_box((tables, blob));
                took
            })
            .collect();
        times.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{name} ({t}, {} CPUs, {} nodes): all CPUID + ACPI tables: min {:.0} us, median {:.0} us, max {:.0} us",
            t.cpus(),
            t.nodes,
            us(times[0]),
            us(times[REPS / 2]),
            us(times[REPS - 1])
        );
    }
}
