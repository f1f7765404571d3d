//! The boot GDT. The 64-bit boot protocol wants flat segments at the selectors Linux calls
//! __BOOT_CS (0x10) and __BOOT_DS (0x18); the kernel loads its own GDT right away, so this
//! table only has to be valid for the first instructions (and for micro-guests).

use kvm_bindings::kvm_segment;

pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const BOOT_TSS: u16 = 0x20;

/// Access/flags for a 64-bit code segment: present, DPL 0, code execute/read, L=1.
const CODE64: u16 = 0xa09b;
/// Data segment: present, DPL 0, read/write, 4 KiB granularity, 32-bit default size.
const DATA: u16 = 0xc093;
/// Busy 64-bit TSS (type 0xb), present. TR must hold a busy TSS to enter the guest.
const TSS64: u16 = 0x808b;

/// Packs one 8-byte descriptor. `flags` holds the access byte (bits 0-7) and the
/// flags nibble G/DB/L/AVL (bits 12-15), the layout other VMMs also use.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The table written at `layout::GDT_ADDR`: null, unused, code, data, and a 16-byte TSS
/// descriptor (base 0; its upper half is zero).
pub fn boot_gdt() -> [u64; 6] {
    [0, 0, gdt_entry(CODE64, 0, 0xfffff), gdt_entry(DATA, 0, 0xfffff), gdt_entry(TSS64, 0, 0xfffff), 0]
}

/// The hidden part of a segment register, decoded from its descriptor, as KVM wants it.
pub fn segment_from_entry(entry: u64, selector: u16) -> kvm_segment {
    let granular = (entry >> 55) & 1 == 1;
    let raw_limit = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let limit = if granular { (raw_limit << 12) | 0xfff } else { raw_limit };
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: limit as u32,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// The segment that `selector` names in `gdt`.
pub fn segment(gdt: &[u64], selector: u16) -> kvm_segment {
    segment_from_entry(gdt[usize::from(selector >> 3)], selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_the_documented_encodings() {
        let gdt = boot_gdt();
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[1], 0);
        // Flat 64-bit code: limit 0xfffff, G=1, L=1, D=0, P=1, DPL0, type 0xb.
        assert_eq!(gdt[2], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[3], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[4], 0x008f_8b00_0000_ffff);
        assert_eq!(gdt[5], 0);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let s = segment_from_entry(e, 0x08);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
        assert_eq!(s.db, 1);
    }

    #[test]
    fn code_segment_is_long_mode() {
        let cs = segment(&boot_gdt(), BOOT_CS);
        assert_eq!(cs.selector, 0x10);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.dpl), (1, 0, 1, 1, 0));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.base, 0);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let gdt = boot_gdt();
        let ds = segment(&gdt, BOOT_DS);
        assert_eq!((ds.type_, ds.db, ds.l, ds.s, ds.g), (3, 1, 0, 1, 1));
        let tr = segment(&gdt, BOOT_TSS);
        assert_eq!(tr.selector, 0x20);
        // A system segment (s = 0) of type busy TSS.
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(segment_from_entry(0, 0).unusable, 1);
    }
}
