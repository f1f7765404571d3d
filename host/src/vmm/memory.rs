//! Guest RAM: where it lives (below the MMIO hole, and above 4 GiB for big guests), the e820
//! table that describes it, and its registration with KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::error::VmError;
use super::layout::{BIOS_AREA_START, EBDA_START, HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START};

/// Below this a guest cannot hold the boot tables plus anything useful.
pub const MIN_MEMORY_MIB: u64 = 16;
/// 1 TiB: far beyond any test guest; larger values are typos.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

const MIB: u64 = 1 << 20;

/// e820 entry types the VMM hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// How `memory_mib` of RAM is laid out in guest-physical space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// End (exclusive) of RAM below the MMIO hole; RAM is [0, low_end).
    pub low_end: u64,
    /// RAM at [4 GiB, 4 GiB + high_size); zero for guests of 3 GiB or less.
    pub high_size: u64,
}

impl MemoryLayout {
    /// Validates `memory_mib` and splits it around the MMIO hole.
    pub fn new(memory_mib: u64) -> Result<Self, VmError> {
        let problem = if memory_mib == 0 {
            Some("a VM needs memory".to_string())
        } else if memory_mib < MIN_MEMORY_MIB {
            Some("too small for the boot tables and a kernel".to_string())
        } else if memory_mib > MAX_MEMORY_MIB {
            Some("absurdly large (more than 1 TiB)".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(VmError::MemorySize { mib: memory_mib, problem });
        }
        let total = memory_mib * MIB;
        let low_end = total.min(MMIO_HOLE_START);
        Ok(Self { low_end, high_size: total - low_end })
    }

    pub fn total_bytes(&self) -> u64 {
        self.low_end + self.high_size
    }

    /// The (address, size) pairs backing guest RAM, one KVM memory slot each.
    pub fn ram_ranges(&self) -> Vec<(GuestAddress, usize)> {
        let mut ranges = vec![(GuestAddress(0), self.low_end as usize)];
        if self.high_size > 0 {
            ranges.push((GuestAddress(MMIO_HOLE_END), self.high_size as usize));
        }
        ranges
    }

    /// The e820 map the guest kernel sees. The legacy hole [EBDA, 1 MiB) stays out of RAM:
    /// the MP table (and later ACPI) live there and must not be handed to the allocator.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            E820Entry { addr: 0, size: EBDA_START, kind: E820Kind::Ram },
            E820Entry { addr: BIOS_AREA_START, size: HIMEM_START - BIOS_AREA_START, kind: E820Kind::Reserved },
            E820Entry { addr: HIMEM_START, size: self.low_end - HIMEM_START, kind: E820Kind::Ram },
        ];
        if self.high_size > 0 {
            map.push(E820Entry { addr: MMIO_HOLE_END, size: self.high_size, kind: E820Kind::Ram });
        }
        map
    }
}

/// Refuses memory the host does not have: the mapping is lazy, so an oversized guest would
/// only fail later, as an OOM kill in the middle of a run.
pub fn check_fits_host(memory_mib: u64, host_mib: Option<u64>) -> Result<(), VmError> {
    match host_mib {
        Some(host_mib) if memory_mib > host_mib => Err(VmError::MemoryExceedsHost { mib: memory_mib, host_mib }),
        _ => Ok(()),
    }
}

/// MemTotal of /proc/meminfo, in MiB (None if unreadable).
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Maps anonymous memory for every RAM range (lazily populated, MAP_NORESERVE), asking for
/// transparent huge pages: the first touch of guest RAM (the VMM copying the kernel and
/// initrd, then the guest) faults in 2 MiB at a time instead of 4 KiB. Copying a 25 MiB
/// vmlinux is ~6400 page faults otherwise, the largest part of the VMM's setup time. Where THP
/// is off (`never`) the advice is a no-op and memory stays 4 KiB pages.
pub fn allocate(layout: &MemoryLayout) -> Result<GuestMemoryMmap, VmError> {
    let memory = GuestMemoryMmap::from_ranges(&layout.ram_ranges())
        .map_err(|e| VmError::MemoryAlloc { mib: layout.total_bytes() / MIB, reason: e.to_string() })?;
    for region in memory.iter() {
        if let Ok(host) = memory.get_host_address(region.start_addr()) {
            // SAFETY: advice on a mapping `memory` owns; MADV_HUGEPAGE changes no contents.
            let rc = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
            if rc != 0 {
                tracing::debug!("madvise(MADV_HUGEPAGE) on guest RAM: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(memory)
}

/// Registers each region as a KVM memory slot.
pub fn register(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::MemoryAlloc { mib: region.len() / MIB, reason: e.to_string() })?;
        let slot = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range is a live mmap owned by `memory`, which the VM keeps alive
        // (in an Arc shared with every vCPU thread) until after the VM fd is closed.
        unsafe { vm.set_user_memory_region(slot) }.map_err(VmError::kvm("set_user_memory_region"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_low_range() {
        let layout = MemoryLayout::new(256).unwrap();
        assert_eq!(layout.low_end, 256 * MIB);
        assert_eq!(layout.high_size, 0);
        assert_eq!(layout.ram_ranges(), vec![(GuestAddress(0), (256 * MIB) as usize)]);
    }

    #[test]
    fn e820_without_high_memory() {
        let map = MemoryLayout::new(512).unwrap().e820();
        assert_eq!(
            map,
            vec![
                E820Entry { addr: 0, size: 0x9_fc00, kind: E820Kind::Ram },
                E820Entry { addr: 0xe_0000, size: 0x2_0000, kind: E820Kind::Reserved },
                E820Entry { addr: 0x10_0000, size: 512 * MIB - 0x10_0000, kind: E820Kind::Ram },
            ]
        );
    }

    #[test]
    fn big_guest_puts_ram_above_the_hole() {
        let layout = MemoryLayout::new(5 * 1024).unwrap();
        assert_eq!(layout.low_end, 3 << 30);
        assert_eq!(layout.high_size, 2 << 30);
        assert_eq!(layout.total_bytes(), 5 << 30);
        let map = layout.e820();
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, 0xc000_0000);
        assert_eq!(map[3], E820Entry { addr: 1 << 32, size: 2 << 30, kind: E820Kind::Ram });
        // No RAM entry may touch the hole.
        for e in &map {
            let end = e.addr + e.size;
            assert!(end <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END, "{e:?}");
        }
        let ram: u64 = map.iter().filter(|e| e.kind == E820Kind::Ram).map(|e| e.size).sum();
        assert_eq!(ram, (5 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn exactly_three_gib_has_no_high_range() {
        let layout = MemoryLayout::new(3 * 1024).unwrap();
        assert_eq!(layout.high_size, 0);
        assert_eq!(layout.ram_ranges().len(), 1);
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        for mib in [0, 1, MIN_MEMORY_MIB - 1, MAX_MEMORY_MIB + 1] {
            let err = MemoryLayout::new(mib).unwrap_err().to_string();
            assert!(err.contains(&format!("memory_mib = {mib}")), "{err}");
            assert!(err.contains("give between"), "{err}");
        }
    }

    #[test]
    fn more_than_the_host_has_is_refused() {
        assert!(check_fits_host(1024, Some(2048)).is_ok());
        assert!(check_fits_host(1024, None).is_ok());
        let err = check_fits_host(4096, Some(2048)).unwrap_err().to_string();
        assert!(err.contains("2048 MiB"), "{err}");
    }

    #[test]
    fn allocation_covers_both_ranges() {
        // MAP_NORESERVE: 4.5 GiB of address space costs nothing until touched.
        let layout = MemoryLayout::new(4608).unwrap();
        let mem = allocate(&layout).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(MMIO_HOLE_START - 1)));
        assert!(!mem.address_in_range(GuestAddress(MMIO_HOLE_START)));
        assert!(mem.address_in_range(GuestAddress(MMIO_HOLE_END)));
    }
}
