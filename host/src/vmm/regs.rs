//! Architectural state of a vCPU at the 64-bit entry: registers, control registers and
//! segments for long mode, FPU, boot MSRs and the LAPIC's LINT pins. Pure builders, so every
//! value can be checked without KVM.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};

use super::gdt::{self, BOOT_CS, BOOT_DS, BOOT_TSS};
use super::layout::{BOOT_STACK_TOP, GDT_ADDR, IDT_ADDR, PML4_ADDR, ZERO_PAGE_ADDR};

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled (bit 11), default memory type write-back (6).
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// General registers: entry point, boot stack, RSI = zero page (the 64-bit boot protocol),
/// RDI = vCPU index (for micro-guests whose APs start runnable), interrupts off.
pub fn boot_regs(entry: u64, vcpu_index: u32) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rsi: ZERO_PAGE_ADDR,
        rdi: u64::from(vcpu_index),
        rflags: 0x2,
        ..Default::default()
    }
}

/// Long mode with paging through the identity tables, flat boot segments, the boot GDT and
/// a one-entry IDT (so any exception escalates to a triple fault the VMM can report).
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let table = gdt::boot_gdt();
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let code = gdt::segment(&table, BOOT_CS);
    let data = gdt::segment(&table, BOOT_DS);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(&table, BOOT_TSS);
    // Caches on (CD/NW clear): a guest left with caching disabled is slow on hardware KVM.
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

/// MSRs a freshly booted kernel expects in a known state: syscall MSRs cleared, fast strings
/// on, MTRRs enabled with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let zeroed = [
        MSR_IA32_SYSENTER_CS,
        MSR_IA32_SYSENTER_ESP,
        MSR_IA32_SYSENTER_EIP,
        MSR_STAR,
        MSR_CSTAR,
        MSR_KERNEL_GS_BASE,
        MSR_SYSCALL_MASK,
        MSR_LSTAR,
        MSR_IA32_TSC,
    ];
    let entry = |index, data| kvm_msr_entry { index, data, ..Default::default() };
    let mut msrs: Vec<_> = zeroed.iter().map(|&i| entry(i, 0)).collect();
    msrs.push(entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING));
    msrs.push(entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB));
    msrs
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *dst = src as _;
    }
}

/// Delivery mode lives in bits 8-10 of an LVT register.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 = ExtINT (the 8259 PIC's output) and LINT1 = NMI, as on a PC.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn general_registers_follow_the_64_bit_boot_protocol() {
        let r = boot_regs(0x10_0200, 3);
        assert_eq!(r.rip, 0x10_0200);
        assert_eq!(r.rsi, 0x7000);
        assert_eq!((r.rsp, r.rbp), (0x8ff0, 0x8ff0));
        assert_eq!(r.rdi, 3);
        assert_eq!(r.rflags, 2, "interrupts off, reserved bit 1 set");
    }

    #[test]
    fn long_mode_control_registers_and_segments() {
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr0 & (3 << 29), 0, "CD/NW clear");
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x10, 1, 0));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, 0x18);
            assert_eq!(seg.type_, 3);
        }
        assert_eq!(s.tr.selector, 0x20);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 47));
        assert_eq!((s.idt.base, s.idt.limit), (0x540, 7));
    }

    #[test]
    fn fpu_defaults() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn boot_msrs_values() {
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(get(MSR_IA32_TSC), Some(0));
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(msrs.len(), 11);
    }

    #[test]
    fn lint_pins_get_extint_and_nmi_and_keep_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        // Masked (bit 16) with a stale fixed-mode vector: mask and vector survive.
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x1_0030);
        set_lapic_reg(&mut lapic, APIC_LVT1, 0x1_0000);
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x1_0730);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x1_0400);
    }
}
