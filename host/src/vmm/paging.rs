//! Identity page tables for the 64-bit entry: 0..4 GiB mapped with 2 MiB pages, so the kernel,
//! the zero page, the command line, the initrd and the LAPIC/IOAPIC are all reachable.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::VmError;
use super::layout::{IDENTITY_MAP_GIB, PD_ADDR, PDPT_ADDR, PML4_ADDR};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;
const ENTRIES: usize = 512;

/// One 4 KiB table and the guest-physical address it goes to.
pub struct PageTable {
    pub addr: u64,
    pub entries: [u64; ENTRIES],
}

/// PML4, PDPT, then one PD per GiB; CR3 = `PML4_ADDR`.
pub fn identity_tables() -> Vec<PageTable> {
    let mut pml4 = [0u64; ENTRIES];
    pml4[0] = PDPT_ADDR | PRESENT | WRITABLE;
    let mut pdpt = [0u64; ENTRIES];
    let mut tables = vec![PageTable { addr: PML4_ADDR, entries: pml4 }];
    let mut pds = Vec::new();
    for gib in 0..IDENTITY_MAP_GIB {
        let pd_addr = PD_ADDR + gib * 0x1000;
        pdpt[gib as usize] = pd_addr | PRESENT | WRITABLE;
        let mut pd = [0u64; ENTRIES];
        for (i, entry) in pd.iter_mut().enumerate() {
            let phys = (gib << 30) | ((i as u64) << 21);
            *entry = phys | PRESENT | WRITABLE | PAGE_SIZE_2M;
        }
        pds.push(PageTable { addr: pd_addr, entries: pd });
    }
    tables.push(PageTable { addr: PDPT_ADDR, entries: pdpt });
    tables.extend(pds);
    tables
}

pub fn write(memory: &GuestMemoryMmap) -> Result<(), VmError> {
    for table in identity_tables() {
        let bytes: Vec<u8> = table.entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        memory
            .write_slice(&bytes, GuestAddress(table.addr))
            .map_err(VmError::guest_write("page tables", table.addr))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU does for a 2 MiB mapping.
    fn translate(tables: &[PageTable], virt: u64) -> Option<u64> {
        let find = |addr: u64| tables.iter().find(|t| t.addr == addr).map(|t| &t.entries);
        let pml4e = find(PML4_ADDR)?[((virt >> 39) & 511) as usize];
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = find(pml4e & !0xfff)?[((virt >> 30) & 511) as usize];
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = find(pdpte & !0xfff)?[((virt >> 21) & 511) as usize];
        if pde & PRESENT == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & !(1 << 63)) | (virt & 0x1f_ffff))
    }

    #[test]
    fn layout_of_the_tables() {
        let tables = identity_tables();
        let addrs: Vec<u64> = tables.iter().map(|t| t.addr).collect();
        assert_eq!(addrs, vec![0x9000, 0xa000, 0xb000, 0xc000, 0xd000, 0xe000]);
        assert_eq!(tables[0].entries[0], 0xa003);
        assert!(tables[0].entries[1..].iter().all(|&e| e == 0));
        assert_eq!(tables[1].entries[..4], [0xb003, 0xc003, 0xd003, 0xe003]);
        assert_eq!(tables[2].entries[0], 0x83);
        assert_eq!(tables[2].entries[1], 0x20_0083);
    }

    #[test]
    fn identity_below_4_gib_and_nothing_above() {
        let tables = identity_tables();
        for addr in [0, 0x7000, 0x10_0000, 0x1234_5678, 0xfee0_0300, 0xffff_ffff] {
            assert_eq!(translate(&tables, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(translate(&tables, 1 << 32), None);
    }

    #[test]
    fn written_tables_read_back() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem).unwrap();
        let pde: u64 = mem.read_obj(GuestAddress(PD_ADDR + 3 * 0x1000 + 8 * 511)).unwrap();
        assert_eq!(pde, 0xffe0_0083);
    }
}
