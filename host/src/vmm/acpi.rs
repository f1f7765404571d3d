//! ACPI tables for a topology, as pure byte builders: RSDP -> XSDT -> FADT -> DSDT (empty),
//! MADT, SRAT, SLIT. APIC IDs come from [`Topology::place`], the same function the CPUID
//! leaves use, so MADT, SRAT and CPUID cannot disagree.
//!
//! The FADT is deliberately NOT hardware-reduced: in that mode Linux drops the legacy PIC and
//! with it the ISA IRQ mappings, so the 8250 UARTs (COM2 is our protocol channel) cannot get
//! IRQs 3/4 unless the DSDT describes them (measured: the init's tty open failed under nested
//! KVM). A full FADT with SMI_CMD = 0 ("already in ACPI mode") keeps the PIC/IOAPIC/PIT setup
//! the MP table gave. A full FADT must describe the PM1a event and control blocks, which
//! ACPICA writes while enabling ACPI (clearing status, masking the fixed events): without them
//! every such access fails with AE_BAD_ADDRESS. They are the minimal register file the VMM
//! answers in `ports` ([`PM1A_EVT_BLK`], [`PM1A_CNT_BLK`]): no status ever set, SCI_EN always
//! set. There is no PM timer, no GPE block and no ACPI power-off (no \_S5 in the empty DSDT):
//! the guest ends with a reboot through the i8042 (`reboot=k`), flagged in IAPC_BOOT_ARCH.
//! With ACPI present Linux ignores the MP table, so the VMM does not write one then.

use ktstr_shared::topology::{MAX_XAPIC_ID, Topology};

pub const OEM_ID: [u8; 6] = *b"KTSTR ";
const OEM_TABLE_ID: [u8; 8] = *b"KTSTRVM ";
const CREATOR_ID: [u8; 4] = *b"KTST";
const HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;

const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const MADT_PCAT_COMPAT: u32 = 1;
const ENABLED: u32 = 1;
/// FADT flags: power and sleep buttons are control-method (absent).
const FADT_PWR_BUTTON: u32 = 1 << 4;
const FADT_SLP_BUTTON: u32 = 1 << 5;
/// The SCI on its traditional ISA IRQ, free here (IRQ 0 would collide with the timer).
const SCI_IRQ: u16 = 9;
/// IAPC_BOOT_ARCH: an 8042 exists (our i8042 reset port), no VGA.
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const FADT_LEN: usize = 276;
/// PM1a event block (PM1_STS, PM1_EN: 2 bytes each) and control block (PM1_CNT, 2 bytes), in
/// I/O space where QEMU's PIIX4 puts them; answered by `ports::Devices`.
pub const PM1A_EVT_BLK: u16 = 0x600;
pub const PM1_EVT_LEN: u8 = 4;
pub const PM1A_CNT_BLK: u16 = 0x604;
pub const PM1_CNT_LEN: u8 = 2;
/// C2/C3 latencies above 100 / 1000 us mean "not supported" (there is no P_BLK either).
const P_LVL2_LAT_NONE: u16 = 101;
const P_LVL3_LAT_NONE: u16 = 1001;

/// Default SLIT distances.
pub const LOCAL_DISTANCE: u8 = 10;
pub const REMOTE_DISTANCE: u8 = 20;
/// NUMA node boundaries are kept on 2 MiB so every node holds whole large pages.
const NODE_ALIGN: u64 = 2 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("SLIT distance matrix has {got} entries; {nodes} nodes need {nodes}x{nodes}")]
    DistanceMatrix { nodes: u32, got: usize },
    #[error("{nodes} NUMA nodes cannot share {mib} MiB of RAM (each needs at least 4 MiB)")]
    TooLittleMemory { nodes: u32, mib: u64 },
    #[error("ACPI tables take {size} bytes, more than the {room} reserved for them")]
    TooLarge { size: usize, room: usize },
}

/// A range of guest RAM and the node it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMemory {
    pub node: u32,
    pub base: u64,
    pub size: u64,
}

/// Built tables: `bytes` go at guest-physical `base`; the RSDP is at `base`.
#[derive(Debug, Clone)]
pub struct AcpiBlob {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl AcpiBlob {
    pub fn rsdp_addr(&self) -> u64 {
        self.base
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)).wrapping_neg()
}

/// A table: standard header (length and checksum fixed up by `finish`), then `body`.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER_LEN + body.len());
    t.extend_from_slice(signature);
    t.extend(((HEADER_LEN + body.len()) as u32).to_le_bytes());
    t.extend([revision, 0]);
    t.extend(OEM_ID);
    t.extend(OEM_TABLE_ID);
    t.extend(1u32.to_le_bytes());
    t.extend(CREATOR_ID);
    t.extend(1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_LEN);
    r.extend(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend(OEM_ID);
    r.push(2); // revision: ACPI 2.0+, use the XSDT
    r.extend(0u32.to_le_bytes()); // no RSDT
    r.extend((RSDP_LEN as u32).to_le_bytes());
    r.extend(xsdt_addr.to_le_bytes());
    r.extend([0; 4]); // extended checksum, reserved
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

fn xsdt(tables: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = tables.iter().flat_map(|a| a.to_le_bytes()).collect();
    table(b"XSDT", 1, &body)
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut body = vec![0u8; FADT_LEN - HEADER_LEN];
    let at = |off: usize| off - HEADER_LEN;
    body[at(40)..at(44)].copy_from_slice(&(dsdt_addr as u32).to_le_bytes());
    body[at(46)..at(48)].copy_from_slice(&SCI_IRQ.to_le_bytes());
    body[at(56)..at(60)].copy_from_slice(&u32::from(PM1A_EVT_BLK).to_le_bytes());
    body[at(64)..at(68)].copy_from_slice(&u32::from(PM1A_CNT_BLK).to_le_bytes());
    body[at(88)] = PM1_EVT_LEN;
    body[at(89)] = PM1_CNT_LEN;
    body[at(96)..at(98)].copy_from_slice(&P_LVL2_LAT_NONE.to_le_bytes());
    body[at(98)..at(100)].copy_from_slice(&P_LVL3_LAT_NONE.to_le_bytes());
    body[at(109)..at(111)].copy_from_slice(&(BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA).to_le_bytes());
    body[at(112)..at(116)].copy_from_slice(&(FADT_PWR_BUTTON | FADT_SLP_BUTTON).to_le_bytes());
    body[at(131)] = 5; // FADT minor version (ACPI 6.5)
    body[at(140)..at(148)].copy_from_slice(&dsdt_addr.to_le_bytes());
    table(b"FACP", 6, &body)
}

fn dsdt() -> Vec<u8> {
    table(b"DSDT", 2, &[])
}

fn madt(t: &Topology) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(LAPIC_ADDR.to_le_bytes());
    b.extend(MADT_PCAT_COMPAT.to_le_bytes());
    for p in t.places() {
        if p.apic_id <= MAX_XAPIC_ID {
            b.extend([0, 8, p.cpu as u8, p.apic_id as u8]);
            b.extend(ENABLED.to_le_bytes());
        } else {
            b.extend([9, 16, 0, 0]);
            b.extend(p.apic_id.to_le_bytes());
            b.extend(ENABLED.to_le_bytes());
            b.extend(p.cpu.to_le_bytes());
        }
    }
    // One IOAPIC; ISA IRQs map 1:1 to its pins (no overrides), as KVM's routing does.
    b.extend([1, 12, 0, 0]);
    b.extend(IOAPIC_ADDR.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    // LINT1 is NMI on every processor.
    b.extend([4, 6, 0xff, 0, 0, 1]);
    if t.max_apic_id() > MAX_XAPIC_ID {
        b.extend([0xa, 12, 0, 0]);
        b.extend(u32::MAX.to_le_bytes());
        b.extend([1, 0, 0, 0]);
    }
    table(b"APIC", 5, &b)
}

/// Splits guest RAM (`ram`: (base, size) ranges in address order) into `nodes` contiguous
/// shares of equal size (2 MiB-aligned; the last node takes the remainder).
pub fn node_memory(ram: &[(u64, u64)], nodes: u32) -> Result<Vec<NodeMemory>, AcpiError> {
    let total: u64 = ram.iter().map(|r| r.1).sum();
    let share = total / u64::from(nodes) / NODE_ALIGN * NODE_ALIGN;
    if share < 2 * NODE_ALIGN {
        return Err(AcpiError::TooLittleMemory { nodes, mib: total >> 20 });
    }
    let mut out = Vec::new();
    let mut offset = 0u64; // bytes of RAM before the current range
    for &(base, size) in ram {
        let mut at = 0;
        while at < size {
            let node = ((offset + at) / share).min(u64::from(nodes) - 1) as u32;
            let node_end = if node + 1 == nodes { u64::MAX } else { u64::from(node + 1) * share };
            let len = (size - at).min(node_end - (offset + at));
            out.push(NodeMemory { node, base: base + at, size: len });
            at += len;
        }
        offset += size;
    }
    Ok(out)
}

fn srat(t: &Topology, memory: &[NodeMemory]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(1u32.to_le_bytes()); // reserved, 1 for compatibility
    b.extend(0u64.to_le_bytes());
    for p in t.places() {
        if p.apic_id <= MAX_XAPIC_ID {
            let d = p.node.to_le_bytes();
            b.extend([0, 16, d[0], p.apic_id as u8]);
            b.extend(ENABLED.to_le_bytes());
            b.extend([0, d[1], d[2], d[3]]);
            b.extend(0u32.to_le_bytes());
        } else {
            b.extend([2, 24, 0, 0]);
            b.extend(p.node.to_le_bytes());
            b.extend(p.apic_id.to_le_bytes());
            b.extend(ENABLED.to_le_bytes());
            b.extend([0; 8]);
        }
    }
    for m in memory {
        b.extend([1, 40]);
        b.extend(m.node.to_le_bytes());
        b.extend([0; 2]);
        b.extend(m.base.to_le_bytes());
        b.extend(m.size.to_le_bytes());
        b.extend([0; 4]);
        b.extend(ENABLED.to_le_bytes());
        b.extend([0; 8]);
    }
    table(b"SRAT", 3, &b)
}

/// SLIT from a row-major `nodes x nodes` matrix, or 10 local / 20 remote.
fn slit(nodes: u32, distances: Option<&[u8]>) -> Result<Vec<u8>, AcpiError> {
    let n = nodes as usize;
    let matrix: Vec<u8> = match distances {
        Some(d) if d.len() == n * n => d.to_vec(),
        Some(d) => return Err(AcpiError::DistanceMatrix { nodes, got: d.len() }),
        None => (0..n * n).map(|i| if i / n == i % n { LOCAL_DISTANCE } else { REMOTE_DISTANCE }).collect(),
    };
    let mut b = (n as u64).to_le_bytes().to_vec();
    b.extend(matrix);
    Ok(table(b"SLIT", 1, &b))
}

fn align8(v: &mut Vec<u8>) {
    v.resize(v.len().next_multiple_of(8), 0);
}

/// Every table, laid out from `base` (RSDP first). `ram` is guest RAM as (base, size) ranges;
/// `distances` an optional row-major SLIT matrix. Fails if it would not fit in `room` bytes.
pub fn build(
    t: &Topology,
    ram: &[(u64, u64)],
    distances: Option<&[u8]>,
    base: u64,
    room: usize,
) -> Result<AcpiBlob, AcpiError> {
    let memory = node_memory(ram, t.nodes)?;
    let dsdt = dsdt();
    let others = [madt(t), srat(t, &memory), slit(t.nodes, distances)?];
    // Addresses: RSDP, XSDT (FADT + the others; the DSDT hangs off the FADT), FADT, DSDT, then
    // the others, each 8-aligned.
    let xsdt_addr = base + RSDP_LEN.next_multiple_of(8) as u64;
    let xsdt_len = HEADER_LEN + 8 * (1 + others.len());
    let fadt_addr = xsdt_addr + xsdt_len.next_multiple_of(8) as u64;
    let dsdt_addr = fadt_addr + FADT_LEN.next_multiple_of(8) as u64;
    let mut next = dsdt_addr + dsdt.len().next_multiple_of(8) as u64;
    let mut pointers = vec![fadt_addr];
    for o in &others {
        pointers.push(next);
        next += o.len().next_multiple_of(8) as u64;
    }
    let mut bytes = rsdp(xsdt_addr);
    for part in [xsdt(&pointers), fadt(dsdt_addr), dsdt].iter().chain(&others) {
        align8(&mut bytes);
        bytes.extend_from_slice(part);
    }
    if bytes.len() > room {
        return Err(AcpiError::TooLarge { size: bytes.len(), room });
    }
    Ok(AcpiBlob { base, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::acpi::madt::{Madt, MadtEntry};
    use ::acpi::sdt::{SdtHeader, Signature};
    use ::acpi::{AcpiHandler, AcpiTable, AcpiTables, PhysicalMapping};
    use ktstr_shared::topology::PRESETS;
    use std::ptr::NonNull;

    const BASE: u64 = 0xe_0000;
    const ROOM: usize = 0x1_0000;
    const RAM: [(u64, u64); 1] = [(0, 1 << 30)];

    /// Guest memory for the parser: the blob, addressed by guest-physical address.
    #[derive(Clone)]
    struct Blob(std::rc::Rc<AcpiBlob>);

    impl AcpiHandler for Blob {
        unsafe fn map_physical_region<T>(&self, addr: usize, size: usize) -> PhysicalMapping<Self, T> {
            let off = addr - self.0.base as usize;
            assert!(off + size <= self.0.bytes.len(), "parser read past the tables at {addr:#x}+{size}");
            let ptr = NonNull::new(self.0.bytes[off..].as_ptr() as *mut T).unwrap();
            // SAFETY: the mapping points into the blob, which the handler keeps alive.
            unsafe { PhysicalMapping::new(addr, ptr, size, size, self.clone()) }
        }
        fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}
    }

    /// SRAT and SLIT are not parsed by the `acpi` crate: this lets it find and checksum
    /// them; their entries are decoded by the small independent readers below.
    #[repr(C, packed)]
    struct Raw<const S: u32> {
        header: SdtHeader,
    }

    macro_rules! raw_table {
        ($name:ident, $sig:expr, $id:literal) => {
            type $name = Raw<$id>;
            // SAFETY: the type is a standard header followed by the table's body.
            unsafe impl AcpiTable for $name {
                const SIGNATURE: Signature = $sig;
                fn header(&self) -> &SdtHeader {
                    &self.header
                }
            }
        };
    }
    raw_table!(Srat, Signature::SRAT, 1);
    raw_table!(Slit, Signature::SLIT, 2);

    fn parse(blob: &AcpiBlob) -> AcpiTables<Blob> {
        let handler = Blob(std::rc::Rc::new(blob.clone()));
        // SAFETY: the handler maps only addresses inside the blob.
        unsafe { AcpiTables::from_rsdp(handler, blob.rsdp_addr() as usize) }.expect("RSDP and XSDT parse")
    }

    /// The body of a table found (and checksummed) by the parser.
    fn body<T: AcpiTable>(blob: &AcpiBlob, tables: &AcpiTables<Blob>) -> Vec<u8> {
        let m = tables.find_table::<T>().unwrap_or_else(|e| panic!("{:?}: {e:?}", T::SIGNATURE));
        let off = m.physical_start() - blob.base as usize;
        let len = m.region_length();
        blob.bytes[off + HEADER_LEN..off + len].to_vec()
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn madt_apic_ids(tables: &AcpiTables<Blob>) -> Vec<u32> {
        let madt = tables.find_table::<Madt>().expect("MADT");
        madt.get()
            .entries()
            .filter_map(|e| match e {
                MadtEntry::LocalApic(l) => {
                    assert_eq!({ l.flags }, 1, "every processor enabled");
                    Some(u32::from(l.apic_id))
                }
                MadtEntry::LocalX2Apic(x) => Some(x.x2apic_id),
                _ => None,
            })
            .collect()
    }

    /// SRAT processor entries as (APIC ID, node).
    type SratCpus = Vec<(u32, u32)>;
    /// SRAT memory entries as (node, base, size).
    type SratMemory = Vec<(u32, u64, u64)>;

    fn srat_entries(b: &[u8]) -> (SratCpus, SratMemory) {
        let (mut cpus, mut mem) = (Vec::new(), Vec::new());
        let mut at = 12;
        while at < b.len() {
            let (kind, len) = (b[at], b[at + 1] as usize);
            let e = &b[at..at + len];
            match kind {
                0 => cpus.push((u32::from(e[3]), u32::from(e[2]) | u32_at(&[0, e[9], e[10], e[11]], 0))),
                2 => cpus.push((u32_at(e, 8), u32_at(e, 4))),
                1 => {
                    let q = |i| u64::from_le_bytes(e[i..i + 8].try_into().unwrap());
                    mem.push((u32_at(e, 2), q(8), q(16)));
                }
                k => panic!("unexpected SRAT entry type {k}"),
            }
            at += len;
        }
        (cpus, mem)
    }

    #[test]
    fn every_preset_parses_and_agrees_with_the_mapping() {
        for preset in PRESETS {
            let t = preset.topology;
            let blob = build(&t, &RAM, None, BASE, ROOM).unwrap();
            let tables = parse(&blob);
            assert_eq!(tables.revision(), 2);
            let want: Vec<u32> = t.places().map(|p| p.apic_id).collect();
            assert_eq!(madt_apic_ids(&tables), want, "{}", preset.name);
            let (cpus, mem) = srat_entries(&body::<Srat>(&blob, &tables));
            let want: Vec<(u32, u32)> = t.places().map(|p| (p.apic_id, p.node)).collect();
            assert_eq!(cpus, want, "{}", preset.name);
            assert_eq!(mem.iter().map(|m| m.2).sum::<u64>(), 1 << 30);
            let slit = body::<Slit>(&blob, &tables);
            let n = t.nodes as usize;
            assert_eq!(u64::from_le_bytes(slit[..8].try_into().unwrap()), n as u64);
            for (i, d) in slit[8..].iter().enumerate() {
                assert_eq!(*d, if i / n == i % n { 10 } else { 20 });
            }
            assert_eq!(slit.len(), 8 + n * n);
        }
    }

    #[test]
    fn fadt_keeps_legacy_hardware_and_points_at_the_dsdt() {
        let blob = build(&Topology::default(), &RAM, None, BASE, ROOM).unwrap();
        let tables = parse(&blob);
        let fadt = tables.find_table::<::acpi::fadt::Fadt>().expect("FADT");
        let flags = { fadt.get().flags };
        assert!(!flags.system_is_hw_reduced_acpi(), "legacy PIC and ISA IRQs stay");
        assert_eq!({ fadt.get().sci_interrupt }, SCI_IRQ);
        // The PM1a blocks ACPICA needs to enable ACPI, in I/O space, answered by the VMM.
        let f = fadt.get();
        assert_eq!({ f.smi_cmd_port }, 0, "already in ACPI mode");
        let io = ::acpi::address::AddressSpace::SystemIo;
        let evt = f.pm1a_event_block().expect("PM1a event block");
        assert_eq!((evt.address, evt.address_space, evt.bit_width), (0x600, io, 32));
        let cnt = f.pm1a_control_block().expect("PM1a control block");
        assert_eq!((cnt.address, cnt.address_space, cnt.bit_width), (0x604, io, 16));
        assert!(f.pm1b_event_block().unwrap().is_none() && f.pm1b_control_block().unwrap().is_none());
        assert!(f.pm_timer_block().unwrap().is_none() && f.pm2_control_block().unwrap().is_none());
        // Raw bytes the parser does not expose: no GPE blocks, C2/C3 "not supported".
        let raw = body::<::acpi::fadt::Fadt>(&blob, &tables);
        let at = |off: usize| off - HEADER_LEN;
        assert_eq!((raw[at(80)..at(88)].to_vec(), raw[at(92)], raw[at(93)]), (vec![0; 8], 0, 0));
        assert_eq!(u16::from_le_bytes([raw[at(96)], raw[at(97)]]), 101);
        let dsdt = tables.dsdt().expect("DSDT");
        assert_eq!(dsdt.length, 0, "empty AML");
        let xsdt_entries = tables.headers().count();
        assert_eq!(xsdt_entries, 4);
    }

    #[test]
    fn x2apic_entries_beyond_the_xapic_range() {
        let t = ktstr_shared::topology::preset("max-cpu").unwrap().topology;
        let blob = build(&t, &RAM, None, BASE, ROOM).unwrap();
        let tables = parse(&blob);
        let ids = madt_apic_ids(&tables);
        assert_eq!(ids.len() as u32, t.cpus());
        assert_eq!(*ids.last().unwrap(), 433);
        let (cpus, _) = srat_entries(&body::<Srat>(&blob, &tables));
        assert!(cpus.iter().any(|c| c.0 == 433));
    }

    #[test]
    fn memory_splits_per_node_across_the_mmio_hole() {
        let ram = [(0, 3 << 30), (1 << 32, 1 << 30)];
        let m = node_memory(&ram, 2).unwrap();
        assert_eq!(
            m,
            [
                NodeMemory { node: 0, base: 0, size: 2 << 30 },
                NodeMemory { node: 1, base: 2 << 30, size: 1 << 30 },
                NodeMemory { node: 1, base: 1 << 32, size: 1 << 30 },
            ]
        );
        let odd = node_memory(&[(0, 1000 << 20)], 3).unwrap();
        assert_eq!(odd.iter().map(|m| m.size).sum::<u64>(), 1000 << 20);
        assert!(odd.iter().all(|m| m.base % NODE_ALIGN == 0));
        assert!(matches!(node_memory(&[(0, 4 << 20)], 2), Err(AcpiError::TooLittleMemory { .. })));
    }

    #[test]
    fn user_distance_matrix() {
        let t: Topology = "2n2l1c1t".parse().unwrap();
        let blob = build(&t, &RAM, Some(&[10, 31, 31, 10]), BASE, ROOM).unwrap();
        let slit = body::<Slit>(&blob, &parse(&blob));
        assert_eq!(slit[8..], [10, 31, 31, 10]);
        let e = build(&t, &RAM, Some(&[10]), BASE, ROOM).unwrap_err();
        assert_eq!(e, AcpiError::DistanceMatrix { nodes: 2, got: 1 });
        assert!(matches!(build(&t, &RAM, None, BASE, 64), Err(AcpiError::TooLarge { .. })));
    }
}
