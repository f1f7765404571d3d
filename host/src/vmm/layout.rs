//! Guest-physical address map. Everything the VMM places in guest memory is named here,
//! so the e820 table, the page tables and the loaders can never disagree.
//!
//! ```text
//! 0x0000_0500  GDT (6 slots)            0x0000_0540  IDT (one zero gate, limit 7)
//! 0x0000_1000  free (raw payloads: SIPI trampolines)
//! 0x0000_7000  zero page (boot_params)  0x0000_8ff0  boot stack top (grows down)
//! 0x0000_9000  PML4  0xa000 PDPT  0xb000..0xefff four PDs (identity map of 0..4 GiB)
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA (reserved)          0x000e_0000  BIOS area: ACPI tables; MP table at 0xf_0000
//! 0x0010_0000  kernel (bzImage protected-mode part / raw code)
//! ...          initrd at the top of low RAM
//! 0xc000_0000  MMIO hole (IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000, KVM TSS/identity page)
//! 0x1_0000_0000 RAM above the hole when the guest has more than 3 GiB
//! ```

/// Free low memory the VMM never writes: raw payloads may put real-mode code here (an AP's
/// SIPI trampoline must sit below 1 MiB).
pub const LOW_FREE_START: u64 = 0x1000;
pub const LOW_FREE_END: u64 = ZERO_PAGE_ADDR;
pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x540;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
/// First of the four page directories (one per GiB of the identity map).
pub const PD_ADDR: u64 = 0xb000;
/// GiB of guest-physical space identity-mapped for the 64-bit entry: all of it below 4 GiB,
/// so ring-0 code can reach the LAPIC/IOAPIC and the MMIO hole as well as RAM.
pub const IDENTITY_MAP_GIB: u64 = 4;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Start of the classic extended BIOS data area; not RAM in the e820 table.
pub const EBDA_START: u64 = 0x9_fc00;
/// BIOS area [0xe0000, 1 MiB): ACPI tables (later) and the MP table live here.
pub const BIOS_AREA_START: u64 = 0xe_0000;
/// ACPI tables (RSDP first, found through boot_params.acpi_rsdp_addr), below the MP table's spot.
pub const ACPI_ADDR: u64 = BIOS_AREA_START;
pub const ACPI_END: u64 = MPTABLE_ADDR;
/// The MP floating pointer; Linux scans 0xf0000..0x100000 for it.
pub const MPTABLE_ADDR: u64 = 0xf_0000;
pub const HIMEM_START: u64 = 0x10_0000;
/// Everything below this belongs to the VMM's tables; raw code must be loaded at or above it.
pub const BOOT_TABLES_END: u64 = HIMEM_START;

/// The 32-bit MMIO hole: [3 GiB, 4 GiB) is never RAM.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM needs three pages for the real-mode TSS and one for the identity-map page table,
/// outside any memory slot: put them at the top of the hole like other VMMs do.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// 64-bit boot protocol: the decompressor of a relocatable bzImage moves the kernel to
/// `pref_address` (CONFIG_PHYSICAL_START, 16 MiB by default) and needs `init_size` there.
pub const KERNEL_ALIGNMENT: u32 = 0x100_0000;
