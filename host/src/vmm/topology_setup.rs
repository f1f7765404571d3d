//! Glue between a [`Topology`] and the VM being built: checks it against the vCPU count and
//! xAPIC limits, writes the ACPI tables into the BIOS area and makes each vCPU's CPUID.
//! (Kept apart from `vm.rs` so the lifecycle code only calls three functions.)

use ktstr_shared::topology::Topology;
use kvm_bindings::CpuId;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::acpi;
use super::error::VmError;
use super::layout::{ACPI_ADDR, ACPI_END, ZERO_PAGE_ADDR};
use super::memory::MemoryLayout;
use super::topology_cpuid;
use linux_loader::bootparam::boot_params;

fn topology_error(t: &Topology, problem: impl Into<String>) -> VmError {
    VmError::Topology { spec: t.to_string(), problem: problem.into() }
}

/// The topology must describe exactly `vcpus` CPUs with xAPIC-sized IDs (no x2APIC mode yet).
pub fn check(t: &Topology, vcpus: u32) -> Result<(), VmError> {
    t.validate_xapic().map_err(|e| topology_error(t, e.to_string()))?;
    if t.cpus() != vcpus {
        return Err(topology_error(t, format!("describes {} CPUs but the VM has {vcpus} vCPUs", t.cpus())));
    }
    Ok(())
}

/// Writes RSDP, XSDT, FADT, DSDT, MADT, SRAT and SLIT at `ACPI_ADDR` and points the zero
/// page's acpi_rsdp_addr at them (call after the zero page is written); returns that address.
pub fn write_acpi(memory: &GuestMemoryMmap, layout: &MemoryLayout, t: &Topology) -> Result<u64, VmError> {
    let ram: Vec<(u64, u64)> = layout.ram_ranges().iter().map(|(a, s)| (a.0, *s as u64)).collect();
    let room = (ACPI_END - ACPI_ADDR) as usize;
    let blob = acpi::build(t, &ram, None, ACPI_ADDR, room).map_err(|e| topology_error(t, e.to_string()))?;
    memory.write_slice(&blob.bytes, GuestAddress(blob.base)).map_err(VmError::guest_write("ACPI tables", blob.base))?;
    // boot_params is already written: patch its RSDP pointer in place.
    let field = ZERO_PAGE_ADDR + std::mem::offset_of!(boot_params, acpi_rsdp_addr) as u64;
    memory.write_obj(blob.rsdp_addr(), GuestAddress(field)).map_err(VmError::guest_write("acpi_rsdp_addr", field))?;
    Ok(blob.rsdp_addr())
}

/// Per-vCPU CPUID tables (index = vCPU), derived from KVM's supported CPUID.
pub fn cpuid_tables(base: &CpuId, t: &Topology) -> Vec<CpuId> {
    let prepared = topology_cpuid::prepare(base.as_slice(), t);
    (0..t.cpus()).map(|cpu| topology_cpuid::for_vcpu(&prepared, t, cpu)).collect()
}

/// The KVM vCPU id of vCPU `index`: KVM sets the LAPIC ID register from it, so it must be the
/// APIC ID that CPUID and the MADT give.
pub fn vcpu_id(t: Option<&Topology>, index: u32) -> u64 {
    u64::from(t.map_or(index, |t| t.place(index).apic_id))
}
