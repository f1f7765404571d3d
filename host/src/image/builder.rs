//! The initramfs builder: guest path -> entry, written as a deterministic newc archive.

use super::ImageError;
use super::elf::{self, ResolvedLib};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Result<T> = std::result::Result<T, ImageError>;

/// Bumped whenever the archive layout changes for the same entries, so cached bases made by an
/// older layout are not reused.
const HASH_DOMAIN: &[u8] = b"ktstr-initramfs-newc-v1\0";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
/// Mode of directories created implicitly as parents.
const IMPLICIT_DIR_MODE: u32 = 0o755;
/// Binaries and libraries: the kernel needs an x bit on the interpreter, and nothing needs less.
const EXEC_MODE: u32 = 0o755;

/// What a guest path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// Contents read from a host file when the archive is written or hashed.
    HostFile(PathBuf),
    Bytes(Arc<[u8]>),
    /// Target as stored in the link (absolute or relative).
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: EntryKind,
    /// Permission bits only (<= 0o7777); the file type comes from `kind`.
    mode: u32,
    /// A parent directory nobody asked for; an explicit `add_dir` may change its mode.
    implicit: bool,
}

/// Builds a newc initramfs. Entries are keyed by normalized guest path (no leading `/`), kept
/// sorted, so the archive bytes depend only on the set of entries, never on insertion order.
/// Owners are root (0:0), mtimes are 0 and inode numbers are 1.. in path order.
///
/// Adding a file or symlink at a path that already holds one replaces it (last wins);
/// turning a directory into a file, or a file into a directory, is an error.
#[derive(Debug, Clone, Default)]
pub struct InitramfsBuilder {
    entries: BTreeMap<String, Entry>,
}

impl InitramfsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries, implicit parent directories included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Archive names (guest paths without the leading `/`) with their kinds and permission bits,
    /// in archive order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &EntryKind, u32)> {
        self.entries.iter().map(|(name, e)| (name.as_str(), &e.kind, e.mode))
    }

    /// Whether `guest` (e.g. `/init`) has an entry.
    pub fn contains(&self, guest: &str) -> bool {
        normalize_guest(guest).is_ok_and(|name| self.entries.contains_key(&name))
    }

    /// A directory with permission bits `mode` (e.g. 0o755).
    pub fn add_dir(&mut self, guest: &str, mode: u32) -> Result<&mut Self> {
        self.insert(guest, EntryKind::Dir, mode)
    }

    /// A regular file whose contents are read from `host` (following symlinks) when the archive
    /// is written. `mode` is the permission bits, not taken from the host file so that the image
    /// does not depend on the umask of whoever built the input.
    pub fn add_file(&mut self, guest: &str, host: impl AsRef<Path>, mode: u32) -> Result<&mut Self> {
        let host = host.as_ref();
        let meta = std::fs::metadata(host).map_err(|source| read_err(host, source))?;
        if !meta.is_file() {
            return Err(ImageError::NotAFile { path: host.to_path_buf() });
        }
        self.insert(guest, EntryKind::HostFile(host.to_path_buf()), mode)
    }

    /// A regular file with the given contents.
    pub fn add_bytes(&mut self, guest: &str, bytes: impl Into<Arc<[u8]>>, mode: u32) -> Result<&mut Self> {
        self.insert(guest, EntryKind::Bytes(bytes.into()), mode)
    }

    /// A symlink at `guest` pointing to `target` (stored verbatim).
    pub fn add_symlink(&mut self, guest: &str, target: &str) -> Result<&mut Self> {
        if target.is_empty() || target.contains('\0') {
            return Err(ImageError::InvalidSymlinkTarget { path: guest.to_string(), target: target.to_string() });
        }
        self.insert(guest, EntryKind::Symlink(target.to_string()), 0o777)
    }

    /// The host file `host` at `guest` (mode 0o755) and, if it is a dynamically linked ELF, its
    /// interpreter and shared libraries at their host paths (see [`elf_closure`]). A symlinked
    /// library is stored once at its resolved path, with a symlink at the path ld.so asks for.
    /// Non-ELF files (scripts) are added as they are. On error the builder is unchanged.
    ///
    /// [`elf_closure`]: super::elf_closure
    pub fn add_binary(&mut self, host: impl AsRef<Path>, guest: &str) -> Result<Vec<ResolvedLib>> {
        let host = host.as_ref();
        let libs = elf::elf_closure(host)?;
        let mut staged = self.clone();
        staged.add_file(guest, host, EXEC_MODE)?;
        let guest_dir = parent_dir(&normalize_guest(guest)?);
        for lib in &libs {
            staged.add_lib(lib, host, &guest_dir)?;
        }
        *self = staged;
        Ok(libs)
    }

    fn add_lib(&mut self, lib: &ResolvedLib, root: &Path, root_guest_dir: &str) -> Result<()> {
        let real = utf8(&lib.real_path)?;
        self.add_file(real, &lib.real_path, EXEC_MODE)?;
        let requested = utf8(&lib.path)?;
        if requested != real {
            self.add_symlink(requested, real)?;
        }
        if let Some(alias) = elf::guest_alias(lib, root, root_guest_dir) {
            // Only fills a gap: never replaces what the closure or the caller put there.
            if !self.contains(&alias) {
                self.add_symlink(&alias, real)?;
            }
        }
        Ok(())
    }

    /// SHA-256 (lowercase hex) over every entry's path, type, mode and contents: equal hashes
    /// mean byte-identical archives. Reads every host file.
    pub fn content_hash(&self) -> Result<String> {
        Ok(hex::encode(combine(&self.emit(None)?)))
    }

    /// The archive as bytes; meant for small archives such as the per-run suffix.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.emit(Some(&mut Sink { w: &mut out, path: Path::new("<memory>") }))?;
        Ok(out)
    }

    /// Writes the archive to `out` and returns one digest per entry (see [`combine`]).
    /// `out_path` only names the destination in errors.
    pub(super) fn write_archive(&self, out: &mut dyn Write, out_path: &Path) -> Result<Vec<[u8; 32]>> {
        self.emit(Some(&mut Sink { w: out, path: out_path }))
    }

    /// The host file behind entry `index`, or its guest path: names an entry in errors.
    pub(super) fn describe_entry(&self, index: usize) -> PathBuf {
        match self.entries.iter().nth(index) {
            Some((_, Entry { kind: EntryKind::HostFile(p), .. })) => p.clone(),
            Some((name, _)) => PathBuf::from(format!("/{name}")),
            None => PathBuf::from("<unknown entry>"),
        }
    }

    /// Hashes every entry and, given a sink, writes the archive (entries, then the trailer).
    /// One pass does both so that what is hashed is exactly what is written.
    fn emit(&self, mut sink: Option<&mut Sink<'_>>) -> Result<Vec<[u8; 32]>> {
        let mut records = Vec::with_capacity(self.entries.len());
        for (index, (name, entry)) in self.entries.iter().enumerate() {
            // Inode numbers only matter for hard links (nlink > 1), which we never write.
            let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let content = emit_entry(sink.as_deref_mut(), ino, name, entry)?;
            records.push(record_digest(name, entry, &content));
        }
        if let Some(sink) = sink {
            cpio::newc::trailer(&mut *sink.w).map_err(|source| write_err(sink.path, source))?;
        }
        Ok(records)
    }

    fn insert(&mut self, guest: &str, kind: EntryKind, mode: u32) -> Result<&mut Self> {
        let name = normalize_guest(guest)?;
        if mode & !0o7777 != 0 {
            return Err(ImageError::InvalidMode { path: guest.to_string(), mode });
        }
        self.check_parents(&name)?;
        let is_dir = kind == EntryKind::Dir;
        if let Some(existing) = self.entries.get(&name) {
            check_replace(&name, &existing.kind, is_dir)?;
        }
        for parent in ancestors(&name) {
            self.entries.entry(parent.to_string()).or_insert(Entry {
                kind: EntryKind::Dir,
                mode: IMPLICIT_DIR_MODE,
                implicit: true,
            });
        }
        self.entries.insert(name, Entry { kind, mode, implicit: false });
        Ok(self)
    }

    fn check_parents(&self, name: &str) -> Result<()> {
        for parent in ancestors(name) {
            match self.entries.get(parent) {
                Some(e) if e.kind != EntryKind::Dir => {
                    return Err(ImageError::PathConflict {
                        path: format!("/{name}"),
                        existing: format!("/{parent}"),
                        reason: "is a file or symlink, so it cannot be a parent directory",
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn is_implicit(&self, guest: &str) -> bool {
        let name = normalize_guest(guest).unwrap();
        self.entries[&name].implicit
    }
}

fn check_replace(name: &str, existing: &EntryKind, new_is_dir: bool) -> Result<()> {
    let existing_is_dir = *existing == EntryKind::Dir;
    if existing_is_dir == new_is_dir {
        return Ok(());
    }
    Err(ImageError::PathConflict {
        path: format!("/{name}"),
        existing: format!("/{name}"),
        reason: if existing_is_dir { "is already a directory" } else { "is already a file or symlink" },
    })
}

/// `/usr//lib/` -> `usr/lib`. Rejects relative paths, `.`/`..` and the root itself.
pub(super) fn normalize_guest(path: &str) -> Result<String> {
    let invalid = |reason| ImageError::InvalidGuestPath { path: path.to_string(), reason };
    let rest = path.strip_prefix('/').ok_or_else(|| invalid("is not absolute"))?;
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in rest.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(invalid("contains . or .. components"));
        }
        parts.push(part);
    }
    if parts.is_empty() {
        return Err(invalid("is the root directory, which always exists"));
    }
    Ok(parts.join("/"))
}

/// Proper ancestors of a normalized name, outermost first: `a/b/c` -> `a`, `a/b`.
fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('/').map(move |(i, _)| &name[..i])
}

/// `/`-prefixed parent directory of a normalized name.
fn parent_dir(name: &str) -> String {
    match name.rfind('/') {
        Some(i) => format!("/{}", &name[..i]),
        None => "/".to_string(),
    }
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| ImageError::NotUtf8 { path: path.to_path_buf() })
}

pub(super) fn read_err(path: &Path, source: io::Error) -> ImageError {
    ImageError::Read { path: path.to_path_buf(), source }
}

pub(super) fn write_err(path: &Path, source: io::Error) -> ImageError {
    ImageError::Write { path: path.to_path_buf(), source }
}

/// Where an archive goes; `path` only names it in errors.
struct Sink<'a> {
    w: &'a mut dyn Write,
    path: &'a Path,
}

/// SHA-256 and length of an entry's data.
struct Content {
    digest: [u8; 32],
    len: u64,
}

/// Writes one entry (if `out` is given) and returns the digest of its data.
fn emit_entry(out: Option<&mut Sink<'_>>, ino: u32, name: &str, entry: &Entry) -> Result<Content> {
    let header = cpio::newc::Builder::new(name).ino(ino).uid(0).gid(0).mtime(0).nlink(1);
    match &entry.kind {
        EntryKind::Dir => emit_bytes(out, header.mode(S_IFDIR | entry.mode), b""),
        EntryKind::Bytes(data) => emit_bytes(out, header.mode(S_IFREG | entry.mode), data),
        EntryKind::Symlink(target) => emit_bytes(out, header.mode(S_IFLNK | entry.mode), target.as_bytes()),
        EntryKind::HostFile(path) => emit_host_file(out, header.mode(S_IFREG | entry.mode), path),
    }
}

fn emit_bytes(out: Option<&mut Sink<'_>>, header: cpio::newc::Builder, data: &[u8]) -> Result<Content> {
    let mut reader = data;
    let len = data.len() as u64;
    copy_entry(out, header, &mut reader, len, Path::new("<memory>"))
}

fn emit_host_file(out: Option<&mut Sink<'_>>, header: cpio::newc::Builder, path: &Path) -> Result<Content> {
    let mut file = File::open(path).map_err(|source| read_err(path, source))?;
    let len = file.metadata().map_err(|source| read_err(path, source))?.len();
    copy_entry(out, header, &mut file, len, path)
}

/// Streams `len` bytes of `data` into the hash and, if given, into a newc entry.
fn copy_entry(
    out: Option<&mut Sink<'_>>,
    header: cpio::newc::Builder,
    data: &mut dyn Read,
    len: u64,
    src: &Path,
) -> Result<Content> {
    let size = u32::try_from(len).map_err(|_| ImageError::FileTooLarge { path: src.to_path_buf(), size: len })?;
    let mut hasher = Sha256::new();
    let mut writer = out.map(|s| (header.write(&mut *s.w, size), s.path));
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = data.read(&mut buf[..want]).map_err(|source| read_err(src, source))?;
        if n == 0 {
            // Shrunk since we took its length: the header already promised `len` bytes.
            return Err(ImageError::InputChanged { path: src.to_path_buf() });
        }
        hasher.update(&buf[..n]);
        if let Some((w, p)) = writer.as_mut() {
            w.write_all(&buf[..n]).map_err(|source| write_err(p, source))?;
        }
        left -= n as u64;
    }
    if let Some((w, p)) = writer {
        w.finish().map_err(|source| write_err(p, source))?;
    }
    Ok(Content { digest: hasher.finalize().into(), len })
}

fn record_digest(name: &str, entry: &Entry, content: &Content) -> [u8; 32] {
    let type_tag: u8 = match entry.kind {
        EntryKind::Dir => b'd',
        EntryKind::HostFile(_) | EntryKind::Bytes(_) => b'f',
        EntryKind::Symlink(_) => b'l',
    };
    let mut h = Sha256::new();
    h.update([type_tag]);
    h.update(entry.mode.to_le_bytes());
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(content.len.to_le_bytes());
    h.update(content.digest);
    h.finalize().into()
}

/// The archive's content hash from its per-entry digests.
pub(super) fn combine(records: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    for r in records {
        h.update(r);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testutil::{parse_archives, resolve_in_archive};

    type Step = fn(&mut InitramfsBuilder) -> Result<&mut InitramfsBuilder>;

    const SAMPLE: [Step; 4] = [
        |b| b.add_bytes("/etc/hello", b"hi\n".to_vec(), 0o644),
        |b| b.add_symlink("/bin/sh", "tool"),
        |b| b.add_bytes("/bin/tool", b"#!tool\n".to_vec(), 0o755),
        |b| b.add_dir("/var/empty", 0o700),
    ];

    fn sample(order_reversed: bool) -> InitramfsBuilder {
        let mut b = InitramfsBuilder::new();
        let mut steps = SAMPLE;
        if order_reversed {
            steps.reverse();
        }
        for step in steps {
            step(&mut b).unwrap();
        }
        b
    }

    #[test]
    fn archive_parses_back_with_names_modes_contents_and_parents() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("data.bin");
        std::fs::write(&host, b"host file contents").unwrap();
        let mut b = sample(false);
        b.add_file("/usr/share/data.bin", &host, 0o600).unwrap();

        let bytes = b.to_bytes().unwrap();
        assert_eq!(bytes.len() % 4, 0, "a newc archive ends 4-byte aligned");
        let archives = parse_archives(&bytes);
        assert_eq!(archives.len(), 1);
        let entries = &archives[0];
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "bin/tool",
                "etc",
                "etc/hello",
                "usr",
                "usr/share",
                "usr/share/data.bin",
                "var",
                "var/empty"
            ]
        );
        assert!(b.entries().map(|(name, _, _)| name).eq(names.iter().copied()));
        assert!(b.entries().any(|e| e == ("var/empty", &EntryKind::Dir, 0o700)));
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("bin").mode, 0o040_755, "implicit parent dir");
        assert_eq!(get("var/empty").mode, 0o040_700);
        assert_eq!(get("etc/hello").mode, 0o100_644);
        assert_eq!(get("etc/hello").data, b"hi\n");
        assert_eq!(get("bin/sh").mode, 0o120_777);
        assert_eq!(get("bin/sh").data, b"tool");
        assert_eq!(get("usr/share/data.bin").mode, 0o100_600);
        assert_eq!(get("usr/share/data.bin").data, b"host file contents");
        for e in entries {
            assert_eq!((e.uid, e.gid, e.mtime, e.nlink), (0, 0, 0, 1), "{}", e.name);
        }
        let inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(inos, (1..=entries.len() as u32).collect::<Vec<_>>());
        assert_eq!(resolve_in_archive(entries, "bin/sh").unwrap().data, b"#!tool\n");
    }

    #[test]
    fn same_entries_in_any_order_give_identical_bytes_and_hash() {
        let (a, b) = (sample(false), sample(true));
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
        assert_eq!(a.content_hash().unwrap(), b.content_hash().unwrap());
        assert_eq!(a.content_hash().unwrap().len(), 64);
    }

    #[test]
    fn hash_changes_with_content_mode_path_and_kind() {
        let base = sample(false).content_hash().unwrap();
        let variants: [Step; 4] = [
            |b| b.add_bytes("/etc/hello", b"hj\n".to_vec(), 0o644),
            |b| b.add_bytes("/etc/hello", b"hi\n".to_vec(), 0o640),
            |b| b.add_symlink("/bin/sh", "tool2"),
            |b| b.add_dir("/var/empty2", 0o700),
        ];
        for change in variants {
            let mut b = sample(false);
            change(&mut b).unwrap();
            assert_ne!(b.content_hash().unwrap(), base);
        }
    }

    #[test]
    fn host_file_change_changes_hash() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("f");
        std::fs::write(&host, b"one").unwrap();
        let mut b = InitramfsBuilder::new();
        b.add_file("/f", &host, 0o644).unwrap();
        let before = b.content_hash().unwrap();
        assert_eq!(b.content_hash().unwrap(), before);
        std::fs::write(&host, b"two").unwrap();
        assert_ne!(b.content_hash().unwrap(), before);
    }

    #[test]
    fn guest_paths_are_normalized_and_validated() {
        assert_eq!(normalize_guest("//usr//lib/").unwrap(), "usr/lib");
        for bad in ["init", "/", "///", "/a/../b", "/a/./b", "/a\0b"] {
            let err = normalize_guest(bad).unwrap_err();
            assert!(matches!(err, ImageError::InvalidGuestPath { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("use an absolute path"), "{err}");
        }
    }

    #[test]
    fn conflicts_are_errors_and_leave_the_builder_unchanged() {
        let mut b = InitramfsBuilder::new();
        b.add_bytes("/a", b"x".to_vec(), 0o644).unwrap();
        let err = b.add_bytes("/a/b", b"y".to_vec(), 0o644).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"/a/b\"") && msg.contains("\"/a\""), "{msg}");
        assert_eq!(b.len(), 1);

        b.add_dir("/d", 0o755).unwrap();
        assert!(matches!(b.add_symlink("/d", "x"), Err(ImageError::PathConflict { .. })));
        assert!(matches!(b.add_dir("/a", 0o755), Err(ImageError::PathConflict { .. })));
        assert!(matches!(b.add_dir("/x", 0o100_755), Err(ImageError::InvalidMode { .. })));
        assert!(matches!(b.add_symlink("/l", ""), Err(ImageError::InvalidSymlinkTarget { .. })));
    }

    #[test]
    fn explicit_dir_overrides_implicit_parent_and_files_replace() {
        let mut b = InitramfsBuilder::new();
        b.add_bytes("/ktstr/plan", b"1".to_vec(), 0o644).unwrap();
        assert!(b.is_implicit("/ktstr"));
        b.add_dir("/ktstr", 0o700).unwrap();
        assert!(!b.is_implicit("/ktstr"));
        b.add_bytes("/ktstr/plan", b"2".to_vec(), 0o644).unwrap();
        let entries = &parse_archives(&b.to_bytes().unwrap())[0];
        assert_eq!(entries[0].mode, 0o040_700);
        assert_eq!(entries[1].data, b"2");
    }

    #[test]
    fn add_file_rejects_missing_and_non_regular_paths() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = InitramfsBuilder::new().add_file("/x", &missing, 0o644).unwrap_err();
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
        let err = InitramfsBuilder::new().add_file("/x", dir.path(), 0o644).unwrap_err();
        assert!(matches!(err, ImageError::NotAFile { .. }), "{err}");
    }
}
