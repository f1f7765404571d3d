//! Recognising bootable kernel images: x86 bzImage or x86_64 ELF vmlinux.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    BzImage,
    Vmlinux,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a kernel image ({why}); pass a bzImage (arch/x86/boot/bzImage) or an x86_64 vmlinux")]
    NotAKernel { path: PathBuf, why: String },
    #[error(
        "{path}: truncated bzImage: the header announces {expected} bytes, the file has {actual}; rebuild or copy it again"
    )]
    Truncated { path: PathBuf, expected: u64, actual: u64 },
}

/// Checks that `path` is a complete x86 kernel image and says which kind.
pub fn detect(path: &Path) -> Result<ImageKind, ImageError> {
    let io_err = |source| ImageError::Io { path: path.into(), source };
    let mut head = vec![0u8; 4096];
    let mut f = fs::File::open(path).map_err(io_err)?;
    let n = read_up_to(&mut f, &mut head).map_err(io_err)?;
    head.truncate(n);
    let size = f.metadata().map_err(io_err)?.len();
    let not = |why: &str| ImageError::NotAKernel { path: path.into(), why: why.into() };
    if head.starts_with(b"\x7fELF") {
        return check_elf(&head).map(|_| ImageKind::Vmlinux).map_err(|w| not(&w));
    }
    if head.len() < 0x260 || head[0x1fe..0x200] != [0x55, 0xaa] || &head[0x202..0x206] != b"HdrS" {
        return Err(not("no x86 boot sector signature and no ELF header"));
    }
    let version = u16::from_le_bytes([head[0x206], head[0x207]]);
    if version < 0x020c {
        return Err(not(&format!(
            "boot protocol {}.{:02} is older than 2.12 (64-bit entry)",
            version >> 8,
            version & 0xff
        )));
    }
    let setup_sects = match head[0x1f1] {
        0 => 4,
        s => u64::from(s),
    };
    let syssize = u64::from(u32::from_le_bytes(head[0x1f4..0x1f8].try_into().expect("4 bytes")));
    let expected = (setup_sects + 1) * 512 + syssize * 16;
    if size < expected {
        return Err(ImageError::Truncated { path: path.into(), expected, actual: size });
    }
    Ok(ImageKind::BzImage)
}

/// The version string a bzImage carries in its setup header (`kernel_version` at 0x20e),
/// e.g. "6.12.117 (root@host) #1 SMP ..."; its first word is the release.
pub fn bzimage_release(path: &Path) -> Option<String> {
    let mut head = vec![0u8; 0x8000];
    let n = read_up_to(&mut fs::File::open(path).ok()?, &mut head).ok()?;
    head.truncate(n);
    let ptr = usize::from(u16::from_le_bytes(head.get(0x20e..0x210)?.try_into().ok()?));
    let s = head.get(ptr + 0x200..)?;
    let end = s.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&s[..end]).ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

fn read_up_to(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn check_elf(head: &[u8]) -> Result<(), String> {
    let hdr = goblin::elf::Elf::parse_header(head).map_err(|e| format!("bad ELF header: {e}"))?;
    if hdr.e_machine != goblin::elf::header::EM_X86_64 {
        let arch = goblin::elf::header::machine_to_str(hdr.e_machine);
        return Err(format!("ELF for {arch}, not x86_64"));
    }
    if hdr.e_type != goblin::elf::header::ET_EXEC {
        return Err("ELF is not an executable (a vmlinux is ET_EXEC)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bz(setup_sects: u8, syssize: u32, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        v[0x1f1] = setup_sects;
        v[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        v[0x1fe] = 0x55;
        v[0x1ff] = 0xaa;
        v[0x202..0x206].copy_from_slice(b"HdrS");
        v[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        v
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        fs::write(f.path(), bytes).unwrap();
        f
    }

    #[test]
    fn bzimage_complete_and_truncated() {
        let ok = write(&bz(3, 16, 4 * 512 + 256));
        assert_eq!(detect(ok.path()).unwrap(), ImageKind::BzImage);
        let short = write(&bz(3, 16, 4 * 512 + 100));
        let e = detect(short.path()).unwrap_err();
        assert!(matches!(e, ImageError::Truncated { expected: 2304, actual: 2148, .. }), "{e}");
    }

    #[test]
    fn text_and_foreign_elf_are_rejected_by_name() {
        let txt = write(b"hello, I am a text file\n");
        let e = detect(txt.path()).unwrap_err().to_string();
        assert!(e.contains("not a kernel image") && e.contains(&txt.path().display().to_string()), "{e}");
        // A minimal ELF64 header for AArch64 (e_machine 183).
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[16] = 2; // ET_EXEC
        elf[18] = 183;
        elf[20] = 1;
        elf[52] = 64;
        let f = write(&elf);
        let e = detect(f.path()).unwrap_err().to_string();
        assert!(e.contains("AARCH64") || e.contains("not x86_64"), "{e}");
        elf[18] = 62; // EM_X86_64
        let f = write(&elf);
        assert_eq!(detect(f.path()).unwrap(), ImageKind::Vmlinux);
    }

    #[test]
    fn release_from_the_setup_header() {
        let mut v = bz(3, 1, 4096);
        v[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        v[0x500..0x500 + 22].copy_from_slice(b"6.12.117 (x@y) #1 SMP\0");
        let f = write(&v);
        assert_eq!(bzimage_release(f.path()).as_deref(), Some("6.12.117"));
    }

    #[test]
    fn old_boot_protocol_is_rejected() {
        let mut v = bz(3, 1, 4096);
        v[0x206..0x208].copy_from_slice(&0x0205u16.to_le_bytes());
        let f = write(&v);
        assert!(detect(f.path()).unwrap_err().to_string().contains("2.05"));
    }
}
