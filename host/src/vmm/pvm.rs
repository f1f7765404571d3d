//! Workarounds for instructions KVM's emulator cannot run under PVM (see ARCHITECTURE.md,
//! "Test tiers"): a real kernel's ring-0 code is emulated there, and `int3`,
//! `clac`/`stac` and `fwait` come back as KVM_EXIT_INTERNAL_ERROR. The VMM performs them itself.
//! Never needed on hardware KVM, where these instructions run natively.

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RFLAGS_AC: u64 = 1 << 18;
const BP_VECTOR: u8 = 3;
const CR0_PG: u64 = 1 << 31;
const PTE_PRESENT: u64 = 1;
const PTE_LARGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// What to do for the instruction at RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixup {
    /// Advance RIP by `len`, setting or clearing RFLAGS.AC.
    Skip { len: u64, ac: Option<bool> },
    /// `int3`: deliver #BP with RIP after the instruction (it is a trap).
    Breakpoint,
}

/// Decodes the few instructions PVM's emulator fails on.
pub fn decode(bytes: &[u8]) -> Option<Fixup> {
    match bytes {
        [0xcc, ..] => Some(Fixup::Breakpoint),
        [0x0f, 0x01, 0xca, ..] => Some(Fixup::Skip { len: 3, ac: Some(false) }),
        [0x0f, 0x01, 0xcb, ..] => Some(Fixup::Skip { len: 3, ac: Some(true) }),
        [0x9b, ..] => Some(Fixup::Skip { len: 1, ac: None }),
        _ => None,
    }
}

/// Guest-virtual to guest-physical through the guest's 4-level page tables.
fn translate(memory: &GuestMemoryMmap, sregs: &kvm_sregs, virt: u64) -> Option<u64> {
    if sregs.cr0 & CR0_PG == 0 {
        return Some(virt);
    }
    let mut table = sregs.cr3 & ADDR_MASK;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let index = (virt >> shift) & 511;
        let entry: u64 = memory.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        let page_mask = (1u64 << shift) - 1;
        if level == 0 || (level <= 2 && entry & PTE_LARGE != 0) {
            return Some((entry & ADDR_MASK & !page_mask) | (virt & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    None
}

fn apply(fd: &VcpuFd, mut regs: kvm_regs, fixup: Fixup) -> bool {
    match fixup {
        Fixup::Skip { len, ac } => {
            regs.rip += len;
            match ac {
                Some(true) => regs.rflags |= RFLAGS_AC,
                Some(false) => regs.rflags &= !RFLAGS_AC,
                None => {}
            }
            fd.set_regs(&regs).is_ok()
        }
        Fixup::Breakpoint => {
            regs.rip += 1;
            let Ok(mut events) = fd.get_vcpu_events() else {
                return false;
            };
            events.exception.injected = 1;
            events.exception.nr = BP_VECTOR;
            events.exception.has_error_code = 0;
            fd.set_regs(&regs).is_ok() && fd.set_vcpu_events(&events).is_ok()
        }
    }
}

/// Tries to perform the instruction that failed emulation. True if the vCPU can resume.
pub fn fix_up(fd: &VcpuFd, memory: &GuestMemoryMmap) -> bool {
    let (Ok(regs), Ok(sregs)) = (fd.get_regs(), fd.get_sregs()) else {
        return false;
    };
    let Some(phys) = translate(memory, &sregs, regs.rip) else {
        return false;
    };
    let mut bytes = [0u8; 3];
    if memory.read_slice(&mut bytes, GuestAddress(phys)).is_err() {
        return false;
    }
    match decode(&bytes) {
        Some(fixup) => apply(fd, regs, fixup),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_known_gaps_only() {
        assert_eq!(decode(&[0xcc, 0, 0]), Some(Fixup::Breakpoint));
        assert_eq!(decode(&[0x0f, 0x01, 0xca]), Some(Fixup::Skip { len: 3, ac: Some(false) }));
        assert_eq!(decode(&[0x0f, 0x01, 0xcb]), Some(Fixup::Skip { len: 3, ac: Some(true) }));
        assert_eq!(decode(&[0x9b, 0x90, 0x90]), Some(Fixup::Skip { len: 1, ac: None }));
        assert_eq!(decode(&[0x0f, 0x0b, 0]), None, "ud2 is not ours to fix");
    }

    #[test]
    fn walks_the_boot_identity_tables_and_a_4k_mapping() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 22)]).unwrap();
        super::super::paging::write(&mem).unwrap();
        let sregs = kvm_sregs { cr0: CR0_PG, cr3: 0x9000, ..Default::default() };
        assert_eq!(translate(&mem, &sregs, 0x12_3456), Some(0x12_3456));
        // A kernel-style high mapping: PML4[511] -> PDPT 0x20000 -> PD 0x21000 -> PT 0x22000.
        let virt: u64 = 0xffff_ffff_8100_1234;
        mem.write_obj(0x2_0003u64, GuestAddress(0x9000 + 511 * 8)).unwrap();
        mem.write_obj(0x2_1003u64, GuestAddress(0x2_0000 + ((virt >> 30) & 511) * 8)).unwrap();
        mem.write_obj(0x2_2003u64, GuestAddress(0x2_1000 + ((virt >> 21) & 511) * 8)).unwrap();
        mem.write_obj(0x30_0003u64, GuestAddress(0x2_2000 + ((virt >> 12) & 511) * 8)).unwrap();
        assert_eq!(translate(&mem, &sregs, virt), Some(0x30_0234));
        assert_eq!(translate(&mem, &sregs, 0xffff_8000_0000_0000), None);
    }
}
