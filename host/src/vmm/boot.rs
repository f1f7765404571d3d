//! Putting a payload into guest memory: a Linux kernel (bzImage through its 64-bit entry, or an
//! ELF vmlinux), its command line, initrd and zero page; or raw code for micro-guests.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{KernelLoader, bzimage::BzImage};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::VmError;
use super::layout::{
    BOOT_TABLES_END, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, KERNEL_ALIGNMENT, LOW_FREE_END, LOW_FREE_START,
    ZERO_PAGE_ADDR,
};
use super::memory::{E820Entry, MemoryLayout};

const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG: u16 = 0xaa55;
/// "Undefined" boot loader ID: we have none registered.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// xloadflags bit 0: the kernel has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
const STARTUP_64_OFFSET: u64 = 0x200;
/// loadflags bit 0: the protected-mode part is loaded at 1 MiB (bzImage).
const LOADED_HIGH: u8 = 1;
/// x86 COMMAND_LINE_SIZE when the image does not say (protocol < 2.06, or ELF).
const DEFAULT_CMDLINE_SIZE: usize = 2048;
/// initrd_addr_max when the image does not say (ELF): the 2 GiB modern kernels report.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE: u64 = 0x1000;
const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

/// Where a kernel landed and what the zero page needs from it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// 64-bit entry point (guest-physical).
    pub entry: u64,
    /// End of everything the kernel owns at boot, including the room it decompresses into.
    pub end: u64,
    /// The image's own setup header (bzImage only).
    pub setup_header: Option<setup_header>,
    /// PVH entry from the ELF note, if any (recorded; the 64-bit entry is used).
    pub pvh_entry: Option<u64>,
}

impl LoadedKernel {
    pub fn cmdline_max(&self) -> usize {
        match self.setup_header {
            Some(h) if h.version >= 0x0206 && h.cmdline_size > 0 => h.cmdline_size as usize + 1,
            _ => DEFAULT_CMDLINE_SIZE,
        }
        .min(CMDLINE_MAX)
    }

    pub fn initrd_addr_max(&self) -> u64 {
        match self.setup_header {
            Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
            _ => DEFAULT_INITRD_ADDR_MAX,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

fn open(path: &Path) -> Result<File, VmError> {
    File::open(path).map_err(|source| VmError::ReadFile { path: path.to_owned(), source })
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| VmError::ReadFile { path: path.to_owned(), source }
}

fn format_error(path: &Path, problem: impl Into<String>) -> VmError {
    VmError::KernelFormat { path: path.to_owned(), problem: problem.into() }
}

/// Recognises an image by its magic: ELF at 0, "HdrS" at 0x202 for a bzImage.
pub fn detect_format(path: &Path, file: &mut File) -> Result<KernelFormat, VmError> {
    let mut head = [0u8; 0x210];
    file.rewind().map_err(read_error(path))?;
    let n = read_up_to(file, &mut head).map_err(read_error(path))?;
    if n >= 5 && head[..4] == *b"\x7fELF" {
        if head[4] != 2 {
            return Err(format_error(path, "a 32-bit ELF"));
        }
        return Ok(KernelFormat::Elf);
    }
    if n >= 0x206 && u32::from_le_bytes(head[0x202..0x206].try_into().unwrap()) == HDRS_MAGIC {
        return Ok(KernelFormat::BzImage);
    }
    Err(format_error(path, format!("{n} bytes without an ELF magic or a \"HdrS\" boot header")))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn too_large(what: &'static str, path: &Path, needed: u64, layout: &MemoryLayout) -> VmError {
    VmError::ImageTooLarge {
        what,
        path: path.to_owned(),
        needed,
        available: layout.low_end,
        // Low RAM ends at 3 GiB at most; beyond that more memory does not help.
        suggest_mib: needed.div_ceil(MIB) + 16,
    }
}

/// Loads `path` (bzImage or ELF vmlinux) into low RAM.
pub fn load_kernel(memory: &GuestMemoryMmap, layout: &MemoryLayout, path: &Path) -> Result<LoadedKernel, VmError> {
    let mut file = open(path)?;
    match detect_format(path, &mut file)? {
        KernelFormat::BzImage => load_bzimage(memory, layout, path, &mut file),
        KernelFormat::Elf => load_elf(memory, layout, path, &mut file),
    }
}

fn load_bzimage(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    path: &Path,
    file: &mut File,
) -> Result<LoadedKernel, VmError> {
    let mut raw = [0u8; std::mem::size_of::<setup_header>()];
    file.seek(SeekFrom::Start(0x1f1)).map_err(read_error(path))?;
    file.read_exact(&mut raw).map_err(read_error(path))?;
    // SAFETY: setup_header is a packed plain-old-data struct; any bit pattern is valid.
    let hdr: setup_header = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    check_bzimage_header(path, &hdr)?;
    let file_len = file.metadata().map_err(read_error(path))?.len();
    let end = bzimage_end(&hdr, file_len);
    if end > layout.low_end {
        return Err(too_large("kernel", path, end, layout));
    }
    let loaded = BzImage::load(memory, Some(GuestAddress(HIMEM_START)), file, None)
        .map_err(|source| VmError::KernelLoad { path: path.to_owned(), source })?;
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: loaded.kernel_load.0 + STARTUP_64_OFFSET,
        end,
        setup_header: loaded.setup_header,
        pvh_entry: None,
    })
}

fn check_bzimage_header(path: &Path, hdr: &setup_header) -> Result<(), VmError> {
    let (version, loadflags, xloadflags) = (hdr.version, hdr.loadflags, hdr.xloadflags);
    if version < 0x020c {
        return Err(format_error(path, format!("boot protocol {version:#06x} predates the 64-bit entry (2.12)")));
    }
    if loadflags & LOADED_HIGH == 0 {
        return Err(format_error(path, "a zImage (not loaded high)"));
    }
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(format_error(path, "no 64-bit entry point (XLF_KERNEL_64 unset)"));
    }
    Ok(())
}

/// The highest address the bzImage touches: its own payload at 1 MiB, and the decompressed
/// kernel (`init_size` bytes at `pref_address`, or at the load address if that is higher).
pub fn bzimage_end(hdr: &setup_header, file_len: u64) -> u64 {
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let payload_end = HIMEM_START + file_len.saturating_sub((setup_sects + 1) * 512);
    let init_size = u64::from(hdr.init_size);
    let relocated = hdr.pref_address.max(HIMEM_START) + init_size;
    payload_end.max(relocated)
}

fn load_elf(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    path: &Path,
    file: &mut File,
) -> Result<LoadedKernel, VmError> {
    let elf = read_elf(path, file)?;
    let end = elf.loads.iter().map(|s| s.paddr.saturating_add(s.memsz)).max().unwrap_or(0);
    if end > layout.low_end {
        return Err(too_large("kernel", path, end, layout));
    }
    if elf.entry < HIMEM_START {
        return Err(format_error(path, format!("an ELF entry point {:#x} below 1 MiB", elf.entry)));
    }
    // Copied, not mapped from the file like the initrd's base: guest RAM is THP-backed, so the
    // kernel's text and data get 2 MiB pages (and 2 MiB EPT entries) for the whole run, which
    // a 4 KiB page-cache mapping would not. Tried under nested KVM: with the vmlinux mapped,
    // its boot to Hello was slower than the bzImage's (medians 9.0 s against 8.1 s), with it
    // copied faster (5.5 s against 6.8 s, another session); see bench/README.md.
    copy_segments(memory, path, file, &elf.loads)?;
    let pvh_entry = elf.notes.iter().find_map(|n| pvh_note(file, n));
    Ok(LoadedKernel { format: KernelFormat::Elf, entry: elf.entry, end, setup_header: None, pvh_entry })
}

/// Bytes one copy job moves at most: jobs are shared out between two threads.
const COPY_CHUNK: u64 = 2 * MIB;

/// Copies every segment's file contents to its physical address (.bss is fresh, zero RAM),
/// in 2 MiB chunks on two threads: the copy of a 17 MiB vmlinux (page faults on fresh guest
/// RAM and memcpy from the page cache) is CPU work, and the VMM's other thread spends this
/// time asleep in the host kernel, so on a busy host a second copier gets a second share of
/// the CPUs. One thread if a second cannot be started.
fn copy_segments(memory: &GuestMemoryMmap, path: &Path, file: &File, loads: &[Segment]) -> Result<(), VmError> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestMemoryBackend;
    let mut jobs = Vec::new();
    for s in loads {
        let mut done = 0;
        while done < s.filesz {
            let len = (s.filesz - done).min(COPY_CHUNK);
            jobs.push((s.paddr + done, s.offset + done, len));
            done += len;
        }
    }
    let next = AtomicUsize::new(0);
    let work = || -> Result<(), VmError> {
        while let Some(&(addr, offset, len)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
            let slice =
                memory.get_slice(GuestAddress(addr), len as usize).map_err(VmError::guest_write("kernel", addr))?;
            let guard = slice.ptr_guard_mut();
            // SAFETY: the slice is `len` bytes of guest RAM owned by `memory`; nothing else reads
            // or writes it while the VM is being built, and jobs never overlap.
            let bytes = unsafe { std::slice::from_raw_parts_mut(guard.as_ptr(), len as usize) };
            file.read_exact_at(bytes, offset).map_err(read_error(path))?;
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let helper = (jobs.len() > 1)
            .then(|| std::thread::Builder::new().name("ktstr-vm-copy".into()).spawn_scoped(scope, work).ok())
            .flatten();
        let mine = work();
        let theirs = helper.map_or(Ok(()), |h| h.join().unwrap_or(Err(VmError::LoaderPanicked)));
        mine.and(theirs)
    })
}

/// The PVH entry (XEN_ELFNOTE_PHYS32_ENTRY, a 32-bit physical address) from a PT_NOTE segment.
fn pvh_note(file: &File, note: &Segment) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let mut bytes = vec![0u8; usize::try_from(note.filesz).ok()?.min(1 << 16)];
    file.read_exact_at(&mut bytes, note.offset).ok()?;
    let word = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let (namesz, descsz, kind) = (word(at)? as usize, word(at + 4)? as usize, word(at + 8)?);
        let name_at = at + 12;
        let desc_at = name_at + namesz.next_multiple_of(4);
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && bytes.get(name_at..name_at + namesz)? == b"Xen\0" && descsz >= 4 {
            return word(desc_at).map(u64::from);
        }
        at = desc_at + descsz.next_multiple_of(4);
    }
    None
}

/// A program header's file range and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// What loading an ELF kernel needs from its headers.
struct ElfHeaders {
    entry: u64,
    /// PT_LOAD segments with file contents.
    loads: Vec<Segment>,
    notes: Vec<Segment>,
}

/// The ELF and program headers, read without touching guest memory, so a kernel that does not
/// fit is refused before anything is copied.
fn read_elf(path: &Path, file: &mut File) -> Result<ElfHeaders, VmError> {
    let mut ehdr = [0u8; 64];
    file.rewind().map_err(read_error(path))?;
    file.read_exact(&mut ehdr).map_err(read_error(path))?;
    if u16::from_le_bytes([ehdr[18], ehdr[19]]) != 62 {
        return Err(format_error(path, "an ELF file for another machine than x86-64"));
    }
    let entry = u64::from_le_bytes(ehdr[24..32].try_into().unwrap());
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().unwrap());
    let phentsize = u64::from(u16::from_le_bytes([ehdr[54], ehdr[55]]));
    let phnum = u64::from(u16::from_le_bytes([ehdr[56], ehdr[57]]));
    if phentsize < 56 || phnum == 0 {
        return Err(format_error(path, "an ELF file without program headers"));
    }
    let (mut loads, mut notes) = (Vec::new(), Vec::new());
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        file.seek(SeekFrom::Start(phoff + i * phentsize)).map_err(read_error(path))?;
        file.read_exact(&mut ph).map_err(read_error(path))?;
        let q = |at: usize| u64::from_le_bytes(ph[at..at + 8].try_into().unwrap());
        let seg = Segment { offset: q(8), paddr: q(24), filesz: q(32), memsz: q(40) };
        match u32::from_le_bytes(ph[0..4].try_into().unwrap()) {
            1 if seg.filesz > 0 => loads.push(seg),
            4 => notes.push(seg),
            _ => {}
        }
    }
    Ok(ElfHeaders { entry, loads, notes })
}

/// Alignment of each initrd part after the first: the kernel looks for the next cpio archive's
/// magic only at 4-byte aligned offsets (and skips the NUL padding before it).
pub const INITRD_PART_ALIGN: u64 = 4;

/// Offsets of parts of `sizes` bytes laid back to back, each 4-byte aligned, and the total.
pub fn initrd_layout(sizes: &[u64]) -> (Vec<u64>, u64) {
    let mut offsets = Vec::with_capacity(sizes.len());
    let mut end = 0u64;
    for size in sizes {
        let at = end.next_multiple_of(INITRD_PART_ALIGN);
        offsets.push(at);
        end = at + size;
    }
    (offsets, end)
}

/// Places the initrd parts back to back (see [`initrd_layout`]) as high in low RAM as
/// `initrd_addr_max` allows, page aligned, so a cached base archive and a per-run suffix never
/// need concatenating on disk. The first part (page aligned in the file and in the guest) is
/// mapped copy-on-write over guest RAM ([`map_file`]): no copy, no page zeroing, the guest
/// faults in page-cache pages as the kernel unpacks it. The others are read straight into
/// guest memory; padding between parts is written as NULs.
pub fn load_initrd(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
    parts: &[impl AsRef<Path>],
) -> Result<InitrdPlacement, VmError> {
    let mut files = Vec::with_capacity(parts.len());
    for part in parts {
        let path = part.as_ref();
        let file = open(path)?;
        let size = file.metadata().map_err(read_error(path))?.len();
        files.push((path, file, size));
    }
    let sizes: Vec<u64> = files.iter().map(|f| f.2).collect();
    let (offsets, size) = initrd_layout(&sizes);
    let name = files.last().map_or(Path::new("<initrd>"), |f| f.0);
    let addr = place_initrd(layout, kernel, size)
        .ok_or_else(|| too_large("initrd", name, kernel.end.div_ceil(PAGE) * PAGE + size, layout))?;
    let mut end = 0;
    for ((path, mut file, len), offset) in files.into_iter().zip(offsets) {
        if offset > end {
            let pad = [0u8; INITRD_PART_ALIGN as usize];
            let at = addr + end;
            memory
                .write_slice(&pad[..(offset - end) as usize], GuestAddress(at))
                .map_err(VmError::guest_write("initrd padding", at))?;
        }
        let at = addr + offset;
        if offset == 0 && map_file(memory, at, &file, 0, len) {
            end = len;
            continue;
        }
        let read = memory.read_exact_volatile_from(GuestAddress(at), &mut file, len as usize);
        read.map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(source) => VmError::ReadFile { path: path.to_owned(), source },
            other => VmError::guest_write("initrd", at)(other),
        })?;
        end = offset + len;
    }
    Ok(InitrdPlacement { addr, size })
}

/// Maps `len` bytes of `file` from the page-aligned `offset` privately (copy-on-write) over
/// guest RAM at the page aligned `addr`, replacing the anonymous pages there; bytes past the end
/// of the file in the last page read as zeros. False (nothing changed) if the range is not inside one region or
/// mmap fails; the caller then copies instead. Meant for files nobody modifies in place (the
/// content-addressed cached base archives): the guest could see a later in-place write to a
/// page it has not touched yet.
pub fn map_file(memory: &GuestMemoryMmap, addr: u64, file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mapped = len.div_ceil(PAGE) * PAGE;
    let Ok(file_offset) = libc::off_t::try_from(offset) else {
        return false;
    };
    if len == 0 || !addr.is_multiple_of(PAGE) || !offset.is_multiple_of(PAGE) {
        return false;
    }
    let Some(region) = memory.find_region(GuestAddress(addr)) else {
        return false;
    };
    if addr + mapped > region.start_addr().0 + region.len() {
        return false;
    }
    let Ok(host) = memory.get_host_address(GuestAddress(addr)) else {
        return false;
    };
    // SAFETY: [host, host + mapped) lies inside the region's own mapping (checked above), which
    // `memory` keeps mapped until it is dropped (its munmap covers this mapping too); MAP_FIXED
    // only replaces those pages, which hold nothing yet. Guest memory stays readable and
    // writable (private: writes never reach the file).
    let ptr = unsafe {
        libc::mmap(
            host.cast(),
            mapped as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            file_offset,
        )
    };
    ptr == host.cast()
}

/// The initrd's address: top of usable low RAM minus its size, page aligned, above the kernel.
pub fn place_initrd(layout: &MemoryLayout, kernel: &LoadedKernel, size: u64) -> Option<u64> {
    let top = layout.low_end.min(kernel.initrd_addr_max().saturating_add(1));
    let addr = top.checked_sub(size)? & !(PAGE - 1);
    (addr >= kernel.end).then_some(addr)
}

/// Writes the NUL-terminated command line at `CMDLINE_ADDR`.
pub fn write_cmdline(memory: &GuestMemoryMmap, cmdline: &str, max_with_nul: usize) -> Result<(), VmError> {
    let len = cmdline.len() + 1;
    if len > max_with_nul {
        return Err(VmError::CmdlineTooLong { len, max: max_with_nul });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    memory.write_slice(&bytes, GuestAddress(CMDLINE_ADDR)).map_err(VmError::guest_write("command line", CMDLINE_ADDR))
}

/// The zero page: the image's setup header (or a synthesized one for ELF), plus what the
/// loader must fill in: loader type, command line, initrd and the e820 map.
pub fn boot_params(
    kernel: Option<&LoadedKernel>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.and_then(|k| k.setup_header) {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    // ACPI comes with the topology issue; until then Linux uses the MP table.
    params.acpi_rsdp_addr = 0;
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind as u32;
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    params
}

pub fn write_boot_params(memory: &GuestMemoryMmap, params: &boot_params) -> Result<(), VmError> {
    memory.write_obj(*params, GuestAddress(ZERO_PAGE_ADDR)).map_err(VmError::guest_write("zero page", ZERO_PAGE_ADDR))
}

/// Whether [addr, addr + len) is free for raw code: the low free window, or RAM above the
/// VMM's tables.
fn raw_segment_fits(layout: &MemoryLayout, addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let low = addr >= LOW_FREE_START && end <= LOW_FREE_END;
    let high = addr >= BOOT_TABLES_END && end <= layout.low_end;
    low || high
}

/// Raw code for micro-guests, copied where it asks to be if that does not clobber the VMM's
/// tables.
pub fn load_raw(memory: &GuestMemoryMmap, layout: &MemoryLayout, segments: &[(u64, Vec<u8>)]) -> Result<(), VmError> {
    for (addr, bytes) in segments {
        let len = bytes.len() as u64;
        if !raw_segment_fits(layout, *addr, len) {
            return Err(VmError::RawSegment { addr: *addr, len, reserved_end: BOOT_TABLES_END });
        }
        memory.write_slice(bytes, GuestAddress(*addr)).map_err(VmError::guest_write("raw code", *addr))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::memory::E820Kind;
    use super::*;
    use linux_loader::loader::elf::{Elf, PvhBootCapability};

    fn bz_header() -> setup_header {
        setup_header {
            setup_sects: 27,
            version: 0x020f,
            loadflags: 1,
            xloadflags: 0x7f,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            pref_address: 0x100_0000,
            init_size: 0x200_0000,
            kernel_alignment: 0x20_0000,
            header: HDRS_MAGIC,
            ..Default::default()
        }
    }

    fn bz_kernel() -> LoadedKernel {
        let hdr = bz_header();
        LoadedKernel {
            format: KernelFormat::BzImage,
            entry: 0x10_0200,
            end: bzimage_end(&hdr, 8 << 20),
            setup_header: Some(hdr),
            pvh_entry: None,
        }
    }

    #[test]
    fn zero_page_fields_for_a_bzimage() {
        let layout = MemoryLayout::new(256).unwrap();
        let initrd = InitrdPlacement { addr: 0x0f00_0000, size: 0x12_3456 };
        let p = boot_params(Some(&bz_kernel()), 42, Some(initrd), &layout.e820());
        let hdr = p.hdr;
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.cmd_line_ptr }, 0x2_0000);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x12_3456);
        // Copied from the image, not invented.
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ hdr.init_size }, 0x200_0000);
        assert_eq!({ p.acpi_rsdp_addr }, 0);
    }

    #[test]
    fn zero_page_e820_matches_the_layout() {
        let layout = MemoryLayout::new(4096 + 512).unwrap();
        let e820 = layout.e820();
        let p = boot_params(None, 1, None, &e820);
        assert_eq!(p.e820_entries as usize, e820.len());
        let table = p.e820_table;
        for (got, want) in table.iter().zip(&e820) {
            assert_eq!(({ got.addr }, { got.size }), (want.addr, want.size));
            assert_eq!({ got.r#type }, want.kind as u32);
        }
        assert_eq!({ table[1].r#type }, E820Kind::Reserved as u32);
        assert_eq!({ table[3].addr }, 1 << 32);
        assert_eq!({ table[4].size }, 0);
    }

    #[test]
    fn zero_page_for_an_elf_kernel() {
        let kernel = LoadedKernel {
            format: KernelFormat::Elf,
            entry: 0x100_0000,
            end: 0x300_0000,
            setup_header: None,
            pvh_entry: Some(0x100_0400),
        };
        let p = boot_params(Some(&kernel), 10, None, &[]);
        let hdr = p.hdr;
        assert_eq!({ hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.ramdisk_image }, 0);
        assert_eq!(kernel.cmdline_max(), 2048);
        assert_eq!(kernel.initrd_addr_max(), 0x7fff_ffff);
    }

    #[test]
    fn zero_page_is_4_kib_and_lands_at_0x7000() {
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let p = boot_params(Some(&bz_kernel()), 5, None, &[]);
        write_boot_params(&mem, &p).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(0x7000 + 0x202)).unwrap();
        assert_eq!(&sig, b"HdrS");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x7000 + 0x210)).unwrap(), 0xff);
    }

    #[test]
    fn bzimage_end_covers_the_decompressed_kernel() {
        let hdr = bz_header();
        // 8 MiB file: payload ends below 9 MiB, but decompression needs 16 MiB + 32 MiB.
        assert_eq!(bzimage_end(&hdr, 8 << 20), 0x300_0000);
        let big = bzimage_end(&hdr, 100 << 20);
        assert_eq!(big, HIMEM_START + (100 << 20) - 28 * 512);
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let layout = MemoryLayout::new(256).unwrap();
        let k = bz_kernel();
        let addr = place_initrd(&layout, &k, 0x12_3456).unwrap();
        assert_eq!(addr, (256 << 20) - 0x12_4000);
        assert_eq!(addr % 4096, 0);
        // Bounded by initrd_addr_max, not the end of RAM, for big guests.
        let big = MemoryLayout::new(8192).unwrap();
        let mut small_max = k;
        let mut hdr = bz_header();
        hdr.initrd_addr_max = 0x3fff_ffff;
        small_max.setup_header = Some(hdr);
        assert_eq!(place_initrd(&big, &small_max, 0x1000).unwrap(), 0x3fff_f000);
        // Overlapping the kernel's decompression area is refused.
        assert_eq!(place_initrd(&layout, &k, 250 << 20), None);
    }

    /// An x86-64 ELF kernel: two PT_LOADs (the second with .bss) and a PVH note; file bytes
    /// around the segments are non-zero, so a loader that maps pages must zero them.
    fn small_elf() -> Vec<u8> {
        let mut f = vec![0xeeu8; 0x4000];
        f[..64].fill(0);
        f[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&0x10_0123u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&3u16.to_le_bytes());
        let phdrs: [(u32, u64, u64, u64, u64); 3] =
            [(1, 0x1000, 0x10_0000, 0x1800, 0x1800), (1, 0x3000, 0x10_3000, 0x100, 0x2000), (4, 0x200, 0, 24, 24)];
        for (i, (kind, offset, paddr, filesz, memsz)) in phdrs.into_iter().enumerate() {
            let ph = &mut f[64 + i * 56..64 + (i + 1) * 56];
            ph.fill(0);
            ph[0..4].copy_from_slice(&kind.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[24..32].copy_from_slice(&paddr.to_le_bytes());
            ph[32..40].copy_from_slice(&filesz.to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        }
        let note = [4u32.to_le_bytes(), 4u32.to_le_bytes(), 18u32.to_le_bytes(), *b"Xen\0", 0x10_0400u32.to_le_bytes()];
        f[0x200..0x200 + 20].copy_from_slice(&note.concat());
        for (i, b) in f[0x1000..0x2800].iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
        f[0x3000..0x3100].fill(0x5a);
        f
    }

    #[test]
    fn a_vmlinux_is_loaded_from_its_program_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, small_elf()).unwrap();
        let layout = MemoryLayout::new(16).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&layout.ram_ranges()).unwrap();
        let k = load_kernel(&mem, &layout, &path).unwrap();
        assert_eq!((k.format, k.entry, k.end, k.pvh_entry), (KernelFormat::Elf, 0x10_0123, 0x10_5000, Some(0x10_0400)));
        let elf = read_elf(&path, &mut File::open(&path).unwrap()).unwrap();
        assert_eq!(
            elf.loads,
            [
                Segment { offset: 0x1000, paddr: 0x10_0000, filesz: 0x1800, memsz: 0x1800 },
                Segment { offset: 0x3000, paddr: 0x10_3000, filesz: 0x100, memsz: 0x2000 },
            ]
        );
        let mut a = vec![0u8; 0x5000];
        mem.read_slice(&mut a, GuestAddress(0x10_0000)).unwrap();
        // The same bytes, entry and PVH note as linux-loader's ELF loader finds.
        let reference = GuestMemoryMmap::<()>::from_ranges(&layout.ram_ranges()).unwrap();
        let r = Elf::load(&reference, None, &mut File::open(&path).unwrap(), Some(GuestAddress(HIMEM_START))).unwrap();
        assert_eq!(r.kernel_load.0, k.entry);
        assert_eq!(r.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(GuestAddress(0x10_0400)));
        let mut b = vec![0u8; 0x5000];
        reference.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
        assert!(a == b);
        assert_eq!(a[0x17ff], (0x17ff % 253) as u8);
        assert!(a[0x1800..0x3000].iter().all(|b| *b == 0), "nothing between the segments");
        assert!(a[0x3000..0x3100].iter().all(|b| *b == 0x5a) && a[0x3100..].iter().all(|b| *b == 0), ".bss is zero");
        // A segment of several copy chunks (two threads share them), against linux-loader.
        let mut big = small_elf();
        big[56..58].copy_from_slice(&1u16.to_le_bytes());
        let size = 5 * MIB + 123;
        big[64 + 32..64 + 48].copy_from_slice(&[size.to_le_bytes(), size.to_le_bytes()].concat());
        big.resize(0x1000 + size as usize, 0);
        for (i, b) in big[0x1000..].iter_mut().enumerate() {
            *b = (i % 251) as u8 ^ (i >> 20) as u8;
        }
        std::fs::write(&path, &big).unwrap();
        let (ours, theirs) = (
            GuestMemoryMmap::<()>::from_ranges(&layout.ram_ranges()).unwrap(),
            GuestMemoryMmap::<()>::from_ranges(&layout.ram_ranges()).unwrap(),
        );
        assert_eq!(load_kernel(&ours, &layout, &path).unwrap().pvh_entry, None);
        Elf::load(&theirs, None, &mut File::open(&path).unwrap(), Some(GuestAddress(HIMEM_START))).unwrap();
        let (mut a, mut b) = (vec![0u8; size as usize + 4096], vec![0u8; size as usize + 4096]);
        ours.read_slice(&mut a, GuestAddress(0x10_0000)).unwrap();
        theirs.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
        assert!(a == b && a[..size as usize] == big[0x1000..]);
        // Entry points below 1 MiB are refused before anything is loaded.
        let mut low = small_elf();
        low[24..32].copy_from_slice(&0x8000u64.to_le_bytes());
        std::fs::write(&path, &low).unwrap();
        assert!(load_kernel(&mem, &layout, &path).unwrap_err().to_string().contains("below 1 MiB"));
    }

    fn big_src(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let p = dir.path().join("two-pages");
        std::fs::write(&p, vec![1u8; 2 * PAGE as usize]).unwrap();
        p
    }

    #[test]
    fn initrd_parts_land_back_to_back_and_aligned() {
        assert_eq!(initrd_layout(&[]), (vec![], 0));
        assert_eq!(initrd_layout(&[8, 3]), (vec![0, 8], 11));
        assert_eq!(initrd_layout(&[5, 3, 2]), (vec![0, 8, 12], 14));
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("base.cpio"), dir.path().join("plan.cpio"));
        std::fs::write(&a, b"BASE!").unwrap(); // 5 bytes: the next part starts at 8
        std::fs::write(&b, b"PLAN").unwrap();
        let layout = MemoryLayout::new(64).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&layout.ram_ranges()).unwrap();
        // Non-zero bytes where the padding goes: the loader must write the NULs itself.
        let top = layout.low_end & !(PAGE - 1);
        mem.write_slice(&[0xaa; 16], GuestAddress(top - PAGE)).unwrap();
        let placed = load_initrd(&mem, &layout, &bz_kernel(), &[&a, &b]).unwrap();
        assert_eq!(placed, InitrdPlacement { addr: top - PAGE, size: 12 });
        let mut got = [0u8; 12];
        mem.read_slice(&mut got, GuestAddress(placed.addr)).unwrap();
        assert_eq!(&got, b"BASE!\0\0\0PLAN");
        assert!(map_file(&mem, top - PAGE, &File::open(&a).unwrap(), 0, 5), "the mmap path is taken");
        assert!(!map_file(&mem, top - PAGE + 4, &File::open(&a).unwrap(), 0, 5), "unaligned");
        assert!(!map_file(&mem, top - PAGE, &File::open(&a).unwrap(), 4, 5), "unaligned in the file");
        assert!(!map_file(&mem, layout.low_end - PAGE, &File::open(big_src(&dir)).unwrap(), 0, 2 * PAGE), "past RAM");
        // The base is mapped copy-on-write: guest writes stay in the guest.
        mem.write_slice(b"GUEST", GuestAddress(placed.addr)).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"BASE!");
        let big = dir.path().join("big.cpio");
        let pattern: Vec<u8> = (0..3 * PAGE as usize + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &pattern).unwrap();
        let placed = load_initrd(&mem, &layout, &bz_kernel(), &[&big, &b]).unwrap();
        let mut back = vec![0u8; pattern.len() + 3 + 4];
        mem.read_slice(&mut back, GuestAddress(placed.addr)).unwrap();
        assert_eq!(&back[..pattern.len()], &pattern[..]);
        assert_eq!(&back[pattern.len()..], b"\0\0\0PLAN");
        let err = load_initrd(&mem, &layout, &bz_kernel(), &[&a, &dir.path().join("gone")]).unwrap_err();
        assert!(matches!(err, VmError::ReadFile { .. }) && err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn cmdline_limit_comes_from_the_header() {
        assert_eq!(bz_kernel().cmdline_max(), 2048);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_cmdline(&mem, "console=ttyS0", 2048).unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        let err = write_cmdline(&mem, &"x".repeat(2048), 2048).unwrap_err();
        assert!(err.to_string().contains("2049 bytes"), "{err}");
    }

    #[test]
    fn headers_without_the_64_bit_entry_are_refused() {
        let path = Path::new("k");
        let mut hdr = bz_header();
        assert!(check_bzimage_header(path, &hdr).is_ok());
        hdr.xloadflags = 0;
        assert!(check_bzimage_header(path, &hdr).unwrap_err().to_string().contains("64-bit"));
        hdr = bz_header();
        hdr.version = 0x0204;
        assert!(check_bzimage_header(path, &hdr).is_err());
    }

    #[test]
    fn non_kernels_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, b"hello, this is not a kernel").unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let layout = MemoryLayout::new(16).unwrap();
        let err = load_kernel(&mem, &layout, &path).unwrap_err().to_string();
        assert!(err.contains("notes.txt"), "{err}");
        assert!(err.contains("bzImage"), "{err}");
        let missing = load_kernel(&mem, &layout, &dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, VmError::ReadFile { .. }));
    }

    #[test]
    fn raw_segments_must_avoid_the_boot_tables() {
        let layout = MemoryLayout::new(16).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        assert!(load_raw(&mem, &layout, &[(0x10_0000, vec![0xf4])]).is_ok());
        assert!(load_raw(&mem, &layout, &[(0x7000, vec![0xf4])]).is_err());
        assert!(load_raw(&mem, &layout, &[(0x1000, vec![0xf4; 0x100])]).is_ok());
        assert!(load_raw(&mem, &layout, &[(0x6fff, vec![0xf4, 0xf4])]).is_err());
        assert!(load_raw(&mem, &layout, &[(0x500, vec![0xf4])]).is_err());
        assert!(load_raw(&mem, &layout, &[((16 << 20) - 1, vec![0, 0])]).is_err());
    }
}
