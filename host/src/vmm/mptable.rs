//! Intel MultiProcessor Specification 1.4 table. Without ACPI (which comes with the topology
//! issue), this is how Linux learns the vCPUs' APIC IDs, the IOAPIC and the ISA IRQ routing.
//! Linux scans 0xf0000..0x100000 for the `_MP_` floating pointer.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::cpuid::apic_id;
use super::error::VmError;
use super::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR};

const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature with FPU and APIC feature flags: only informational for Linux.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ISA_IRQS: u8 = 16;
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// APIC IDs are 8-bit in the MP table and 0xff means "all"; the IOAPIC needs an ID too.
pub const MAX_VCPUS: u32 = 254;

/// The IOAPIC's ID: the first one after the vCPUs' APIC IDs.
pub fn ioapic_id(vcpus: u32) -> u8 {
    (apic_id(vcpus - 1) + 1) as u8
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)).wrapping_neg()
}

fn processor(out: &mut Vec<u8>, index: u32) {
    let flags = CPU_ENABLED | if index == 0 { CPU_BSP } else { 0 };
    out.extend([ENTRY_PROCESSOR, apic_id(index) as u8, LAPIC_VERSION, flags]);
    out.extend(CPU_SIGNATURE.to_le_bytes());
    out.extend(CPU_FEATURES.to_le_bytes());
    out.extend([0u8; 8]);
}

fn interrupt(out: &mut Vec<u8>, kind: u8, int_type: u8, irq: u8, dest_id: u8, dest_pin: u8) {
    // flags 0 = polarity and trigger "conform to the bus" (ISA: active high, edge).
    out.extend([kind, int_type, 0, 0, 0, irq, dest_id, dest_pin]);
}

/// The entries: one per vCPU, the ISA bus, the IOAPIC, ISA IRQs 0-15 routed 1:1 to IOAPIC
/// pins (as KVM's default GSI routing does), and LINT0 = ExtINT, LINT1 = NMI on every LAPIC.
fn entries(vcpus: u32) -> (Vec<u8>, u16) {
    let ioapic = ioapic_id(vcpus);
    let mut out = Vec::new();
    for index in 0..vcpus {
        processor(&mut out, index);
    }
    out.extend([ENTRY_BUS, 0]);
    out.extend(*b"ISA   ");
    out.extend([ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    out.extend(IOAPIC_ADDR.to_le_bytes());
    for irq in 0..ISA_IRQS {
        interrupt(&mut out, ENTRY_IO_INTERRUPT, INT_TYPE_INT, irq, ioapic, irq);
    }
    interrupt(&mut out, ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0xff, 0);
    interrupt(&mut out, ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0xff, 1);
    let count = vcpus as u16 + 3 + u16::from(ISA_IRQS);
    (out, count)
}

/// The whole structure as it sits at `base`: floating pointer, header, entries.
pub fn build(vcpus: u32, base: u64) -> Result<Vec<u8>, VmError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(VmError::MpTable {
            vcpus,
            problem: format!(
                "the MP table holds 1..={MAX_VCPUS} vCPUs; larger guests need ACPI (MADT with x2APIC entries)"
            ),
        });
    }
    let (body, count) = entries(vcpus);
    let table_len = HEADER_LEN + body.len();
    let table_addr = base + FLOATING_LEN as u64;

    let mut header = Vec::with_capacity(table_len);
    header.extend(*b"PCMP");
    header.extend((table_len as u16).to_le_bytes());
    header.extend([SPEC_REV, 0]); // checksum patched below
    header.extend(*b"KTSTR   ");
    header.extend(*b"MICROVM     ");
    header.extend(0u32.to_le_bytes()); // OEM table pointer
    header.extend(0u16.to_le_bytes()); // OEM table size
    header.extend(count.to_le_bytes());
    header.extend(LAPIC_ADDR.to_le_bytes());
    header.extend([0u8; 4]); // extended table length, checksum, reserved
    header.extend(body);
    header[7] = checksum(&header);

    let mut floating = Vec::with_capacity(FLOATING_LEN + table_len);
    floating.extend(*b"_MP_");
    floating.extend((table_addr as u32).to_le_bytes());
    floating.extend([1, SPEC_REV, 0, 0, 0, 0, 0, 0]); // length in 16-byte units, features
    floating[10] = checksum(&floating);
    floating.extend(header);
    Ok(floating)
}

pub fn write(memory: &GuestMemoryMmap, vcpus: u32) -> Result<(), VmError> {
    let bytes = build(vcpus, MPTABLE_ADDR)?;
    memory.write_slice(&bytes, GuestAddress(MPTABLE_ADDR)).map_err(VmError::guest_write("MP table", MPTABLE_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn floating_pointer_and_checksums() {
        let t = build(4, MPTABLE_ADDR).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(u32_at(&t, 4) as u64, MPTABLE_ADDR + 16);
        assert_eq!(t[8], 1);
        assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(u16_at(table, 4) as usize, table.len());
        assert_eq!(sum(table), 0, "configuration table checksum");
        assert_eq!(u32_at(table, 36), 0xfee0_0000);
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_bsp_first() {
        let t = build(3, MPTABLE_ADDR).unwrap();
        let table = &t[16..];
        assert_eq!(u16_at(table, 34), 3 + 3 + 16);
        let entries = &table[44..];
        for i in 0..3 {
            let e = &entries[i * 20..(i + 1) * 20];
            assert_eq!(e[0], 0, "processor entry type");
            assert_eq!(e[1], i as u8, "APIC ID");
            let expected_flags = if i == 0 { 3 } else { 1 };
            assert_eq!(e[3], expected_flags);
        }
        let rest = &entries[60..];
        assert_eq!(&rest[..8], &[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
        assert_eq!(&rest[8..12], &[2, 3, 0x11, 1]);
        assert_eq!(u32_at(rest, 12), 0xfec0_0000);
        // IRQ 4 (COM1) goes to IOAPIC pin 4.
        let irq4 = &rest[16 + 4 * 8..16 + 5 * 8];
        assert_eq!(irq4, &[3, 0, 0, 0, 0, 4, 3, 4]);
        let lint = &rest[16 + 16 * 8..];
        assert_eq!(lint, &[4, 3, 0, 0, 0, 0, 0xff, 0, 4, 1, 0, 0, 0, 0, 0xff, 1]);
    }

    #[test]
    fn fits_the_bios_area_at_the_maximum() {
        let t = build(MAX_VCPUS, MPTABLE_ADDR).unwrap();
        assert!(MPTABLE_ADDR + t.len() as u64 <= 0x10_0000);
        assert_eq!(sum(&t[16..]), 0);
    }

    #[test]
    fn refuses_zero_and_too_many_vcpus() {
        assert!(build(0, MPTABLE_ADDR).is_err());
        let err = build(MAX_VCPUS + 1, MPTABLE_ADDR).unwrap_err().to_string();
        assert!(err.contains("ACPI"), "{err}");
    }
}
