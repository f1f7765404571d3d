//! Test helpers: read archives back with the cpio crate's reader, craft ELF fixtures.

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

/// One entry as read back from an archive.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub data: Vec<u8>,
}

/// Every archive in `bytes`, in order. Like the kernel, skips NUL padding between archives and
/// requires each to start 4-byte aligned.
pub fn parse_archives(bytes: &[u8]) -> Vec<Vec<Parsed>> {
    let mut archives = Vec::new();
    let mut rest = bytes;
    loop {
        let skipped = rest.iter().take_while(|&&b| b == 0).count();
        rest = &rest[skipped..];
        if rest.is_empty() {
            return archives;
        }
        let offset = bytes.len() - rest.len();
        assert_eq!(offset % 4, 0, "archive at unaligned offset {offset}");
        let (entries, after) = parse_one(rest);
        archives.push(entries);
        rest = after;
    }
}

/// The first archive (through its trailer) and whatever follows it.
pub fn split_archives(bytes: &[u8]) -> (&[u8], &[u8]) {
    let (_, rest) = parse_one(bytes);
    let first_len = bytes.len() - rest.len();
    let skipped = rest.iter().take_while(|&&b| b == 0).count();
    (&bytes[..first_len], &rest[skipped..])
}

fn parse_one(mut rest: &[u8]) -> (Vec<Parsed>, &[u8]) {
    let mut entries = Vec::new();
    loop {
        let mut reader = cpio::NewcReader::new(rest).expect("valid newc header");
        if reader.entry().is_trailer() {
            return (entries, reader.finish().unwrap());
        }
        let e = reader.entry();
        let mut parsed = Parsed {
            name: e.name().to_string(),
            ino: e.ino(),
            mode: e.mode(),
            uid: e.uid(),
            gid: e.gid(),
            nlink: e.nlink(),
            mtime: e.mtime(),
            data: Vec::new(),
        };
        reader.read_to_end(&mut parsed.data).unwrap();
        entries.push(parsed);
        rest = reader.finish().unwrap();
    }
}

/// The regular file at archive name `name`, following symlinks (absolute or relative) inside
/// the archive, including symlinked directories along the way.
pub fn resolve_in_archive<'a>(entries: &'a [Parsed], name: &str) -> Option<&'a Parsed> {
    let mut path = name.to_string();
    for _ in 0..40 {
        let (prefix, entry) = longest_link_or_match(entries, &path)?;
        if entry.mode & 0o170_000 != 0o120_000 {
            return (prefix == path).then_some(entry);
        }
        let target = String::from_utf8(entry.data.clone()).ok()?;
        let base = match target.strip_prefix('/') {
            Some(abs) => abs.to_string(),
            None => match prefix.rfind('/') {
                Some(i) => format!("{}/{target}", &prefix[..i]),
                None => target,
            },
        };
        path = format!("{base}{}", &path[prefix.len()..]);
        path = normalize(&path);
    }
    None
}

/// The entry at `path`, or at the first proper prefix of `path` that is a symlink.
fn longest_link_or_match<'a>(entries: &'a [Parsed], path: &str) -> Option<(String, &'a Parsed)> {
    let find = |n: &str| entries.iter().find(|e| e.name == n);
    for (i, _) in path.match_indices('/') {
        let prefix = &path[..i];
        if let Some(e) = find(prefix).filter(|e| e.mode & 0o170_000 == 0o120_000) {
            return Some((prefix.to_string(), e));
        }
    }
    find(path).map(|e| (path.to_string(), e))
}

fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// A 64-byte ELF64 little-endian header of an AArch64 executable, with no program headers.
pub fn aarch64_elf() -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // ELFCLASS64
    h[5] = 1; // little endian
    h[6] = 1; // EV_CURRENT
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    h[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    h
}

/// `prog` linked against `lib_dir/libktstrfix.so`, built with `cc` and `link_args`.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub prog: PathBuf,
    pub lib_dir: PathBuf,
}

/// `None` (after printing why) if there is no C compiler.
pub fn compile_fixture(link_args: &[&str]) -> Option<Fixture> {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipped: `cc` not found, cannot build the test ELF");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = dir.path().join("lib");
    std::fs::create_dir(&lib_dir).unwrap();
    let lib_c = dir.path().join("fix.c");
    let main_c = dir.path().join("main.c");
    std::fs::write(&lib_c, "int ktstr_fix(void) { return 42; }\n").unwrap();
    std::fs::write(&main_c, "int ktstr_fix(void);\nint main(void) { return ktstr_fix() != 42; }\n").unwrap();
    let so = lib_dir.join("libktstrfix.so");
    cc(&["-shared", "-fPIC", "-o", so.to_str().unwrap(), lib_c.to_str().unwrap()]);
    let prog = dir.path().join("prog");
    let mut args = vec!["-o", prog.to_str().unwrap(), main_c.to_str().unwrap()];
    let lib_flag = format!("-L{}", lib_dir.display());
    args.extend([lib_flag.as_str(), "-lktstrfix"]);
    args.extend(link_args);
    cc(&args);
    Some(Fixture { _dir: dir, prog, lib_dir })
}

fn cc(args: &[&str]) {
    let out = Command::new("cc").args(args).output().unwrap();
    assert!(out.status.success(), "cc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
