//! A cheap front for [`cache_base`]: the base archive found again from a manifest of its inputs'
//! file metadata, so a hit neither builds the [`InitramfsBuilder`] (no ELF parsing, no helper
//! processes) nor reads or hashes any contents.
//!
//! The caller names what it asked for in a `key` (e.g. the identity of the running executable,
//! which embeds the init, plus each requested host path and guest path); the key selects
//! `<cache_dir>/manifest-<hash of key>.txt`. That file names the base archive (by content hash,
//! as [`cache_base`] wrote it) and lists every host file and directory the archive was built
//! from — the requested files, the shared libraries their closures resolved to, the ld.so cache
//! that resolution read, and any directories the caller walked — with device, inode, size,
//! mtime and ctime (nanoseconds). A lookup is a hit only if every one of them still has exactly
//! that metadata; any difference (a rebuilt binary, an upgraded library, a file added to an
//! included directory) is a miss, which rebuilds and rewrites the manifest.
//!
//! Two races are closed on the write side: the metadata is taken before the archive is written
//! and checked again after, and no manifest is written while any input's mtime is within
//! [`RACY_WINDOW`] of now (a second write inside the same timestamp tick would keep size and
//! mtime; git calls this "racily clean"). Such a run just builds the base the slow way.

use super::ImageError;
use super::builder::{EntryKind, InitramfsBuilder, read_err, write_err};
use super::cache::cache_base;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &str = "ktstr-initramfs-manifest v1";
/// Read by the ELF closure resolution; part of every manifest that resolves libraries.
const LD_SO_CACHE: &str = "/etc/ld.so.cache";
/// Inputs modified more recently than this are not trusted to show a later change in their
/// mtime (timestamps advance in ticks of a few milliseconds on most file systems).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What `cached_base` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The manifest matched: nothing was built.
    Hit,
    /// Built (or found by content hash) and the manifest (re)written.
    Built,
    /// Built, but an input changed too recently (or during the build) to record a manifest.
    BuiltUnrecorded,
}

/// Metadata that changes whenever a file's contents (or identity) do.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    /// Follows symlinks, as the builder does when it reads a host file.
    fn of(path: &Path) -> Option<Stamp> {
        let m = fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }

    fn line(&self, path: &str) -> String {
        format!("dep {} {} {} {} {} {path}\n", self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
    }

    fn parse(rest: &str) -> Option<(Stamp, &str)> {
        let mut it = rest.splitn(6, ' ');
        let mut num = || it.next()?.parse::<i128>().ok();
        let (dev, ino, size, mtime_ns, ctime_ns) = (num()?, num()?, num()?, num()?, num()?);
        let stamp = Stamp {
            dev: u64::try_from(dev).ok()?,
            ino: u64::try_from(ino).ok()?,
            size: u64::try_from(size).ok()?,
            mtime_ns,
            ctime_ns,
        };
        Some((stamp, it.next()?))
    }
}

/// Identity of the running executable (device, inode, size, mtime): a build-specific constant
/// for everything compiled into it, such as the embedded init, at the cost of one stat.
pub fn executable_identity() -> Option<String> {
    let s = Stamp::of(Path::new("/proc/self/exe"))?;
    Some(format!("{}:{}:{}:{}", s.dev, s.ino, s.size, s.mtime_ns))
}

fn manifest_path(cache_dir: &Path, key: &str) -> PathBuf {
    let digest = Sha256::digest(key.as_bytes());
    cache_dir.join(format!("manifest-{}.txt", &hex::encode(digest)[..32]))
}

/// The base archive the manifest for `key` names, if the manifest exists and every input it
/// lists still has the recorded metadata.
pub fn lookup(cache_dir: &Path, key: &str) -> Option<PathBuf> {
    let text = fs::read_to_string(manifest_path(cache_dir, key)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != MAGIC || lines.next()?.strip_prefix("key ")? != hex::encode(Sha256::digest(key)) {
        return None;
    }
    let (name, size) = lines.next()?.strip_prefix("base ")?.split_once(' ')?;
    let base = cache_dir.join(name);
    if fs::metadata(&base).ok()?.len() != size.parse::<u64>().ok()? {
        return None;
    }
    for line in lines {
        if line == "end" {
            return Some(base);
        }
        let (stamp, path) = Stamp::parse(line.strip_prefix("dep ")?)?;
        if Stamp::of(Path::new(path))? != stamp {
            return None;
        }
    }
    None // no end line: a torn or truncated manifest
}

/// Every host path the archive of `builder` depends on: its host files and, if it holds any
/// (hence may have resolved libraries), the ld.so cache; plus `extra` (e.g. walked directories).
fn dependencies(builder: &InitramfsBuilder, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut deps: Vec<PathBuf> = builder
        .entries()
        .filter_map(|(_, kind, _)| match kind {
            EntryKind::HostFile(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    if !deps.is_empty() && Path::new(LD_SO_CACHE).exists() {
        deps.push(PathBuf::from(LD_SO_CACHE));
    }
    deps.extend(extra.iter().cloned());
    deps.sort();
    deps.dedup();
    deps
}

/// Stamps of `deps`, or None if one is missing, has a path a manifest line cannot hold, or was
/// modified within [`RACY_WINDOW`] of `now`.
fn stamps(deps: &[PathBuf], now: SystemTime) -> Option<Vec<(Stamp, String)>> {
    let now_ns = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    let racy_ns = RACY_WINDOW.as_nanos() as i128;
    deps.iter()
        .map(|p| {
            let path = p.to_str().filter(|s| !s.contains('\n') && !s.contains('\r'))?;
            let stamp = Stamp::of(p)?;
            (stamp.mtime_ns < now_ns - racy_ns).then(|| (stamp, path.to_string()))
        })
        .collect()
}

/// The base archive for `key`: from its manifest when every recorded input is unchanged;
/// otherwise `build` makes the builder (pushing any extra inputs, such as directories it
/// walked, onto its argument), [`cache_base`] writes the archive and the manifest is rewritten.
/// Writes are atomic (temp file + rename).
pub fn cached_base<E: From<ImageError>>(
    cache_dir: &Path,
    key: &str,
    build: impl FnOnce(&mut Vec<PathBuf>) -> Result<InitramfsBuilder, E>,
) -> Result<(PathBuf, Lookup), E> {
    if let Some(base) = lookup(cache_dir, key) {
        return Ok((base, Lookup::Hit));
    }
    let mut extra = Vec::new();
    let builder = build(&mut extra)?;
    let deps = dependencies(&builder, &extra);
    let before = stamps(&deps, SystemTime::now());
    let base = cache_base(&builder, cache_dir)?;
    let after = stamps(&deps, SystemTime::now());
    let (Some(before), Some(after)) = (before, after) else {
        return Ok((base, Lookup::BuiltUnrecorded));
    };
    if before != after {
        return Ok((base, Lookup::BuiltUnrecorded));
    }
    write_manifest(cache_dir, key, &base, &before)?;
    Ok((base, Lookup::Built))
}

fn write_manifest(cache_dir: &Path, key: &str, base: &Path, deps: &[(Stamp, String)]) -> Result<(), ImageError> {
    let size = fs::metadata(base).map_err(|e| read_err(base, e))?.len();
    let name = base.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let mut text = format!("{MAGIC}\nkey {}\nbase {name} {size}\n", hex::encode(Sha256::digest(key)));
    for (stamp, path) in deps {
        text.push_str(&stamp.line(path));
    }
    let _ = writeln!(text, "end");
    let target = manifest_path(cache_dir, key);
    let mut tmp = tempfile::Builder::new()
        .prefix(".manifest-")
        .suffix(".tmp")
        .tempfile_in(cache_dir)
        .map_err(|e| write_err(cache_dir, e))?;
    tmp.write_all(text.as_bytes()).map_err(|e| write_err(&target, e))?;
    tmp.persist(&target).map_err(|e| write_err(&target, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::fs::File;

    /// Files older than the racy window, as inputs of a real build are.
    fn old_file(path: &Path, contents: &[u8]) {
        fs::write(path, contents).unwrap();
        backdate(path);
    }

    fn backdate(path: &Path) {
        let past = SystemTime::now() - Duration::from_secs(3600);
        File::open(path).unwrap().set_modified(past).unwrap();
    }

    struct Setup {
        dir: tempfile::TempDir,
        builds: Cell<u32>,
    }

    impl Setup {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            old_file(&dir.path().join("tool"), b"#!/bin/sh\necho tool\n");
            fs::create_dir(dir.path().join("data")).unwrap();
            old_file(&dir.path().join("data/a.txt"), b"a");
            backdate(&dir.path().join("data"));
            Setup { dir, builds: Cell::new(0) }
        }

        fn path(&self, p: &str) -> PathBuf {
            self.dir.path().join(p)
        }

        fn cache(&self) -> PathBuf {
            self.path("cache")
        }

        /// What the runner does: a script and a walked directory.
        fn get(&self, key: &str) -> (PathBuf, Lookup) {
            cached_base::<ImageError>(&self.cache(), key, |extra| {
                self.builds.set(self.builds.get() + 1);
                let mut b = InitramfsBuilder::new();
                b.add_bytes("/init", b"init".to_vec(), 0o755)?;
                b.add_binary(self.path("tool"), "/bin/tool")?;
                let data = self.path("data");
                extra.push(data.clone());
                for e in fs::read_dir(&data).unwrap() {
                    let e = e.unwrap();
                    b.add_file(&format!("/data/{}", e.file_name().to_str().unwrap()), e.path(), 0o644)?;
                }
                Ok(b)
            })
            .unwrap()
        }
    }

    #[test]
    fn second_lookup_is_a_hit_that_builds_nothing() {
        let s = Setup::new();
        let (first, how) = s.get("k1");
        assert_eq!(how, Lookup::Built);
        let (second, how) = s.get("k1");
        assert_eq!((second.clone(), how), (first.clone(), Lookup::Hit));
        assert_eq!(s.builds.get(), 1, "a hit does not build");
        // Another key is another manifest, for the same content-addressed archive.
        assert_eq!(s.get("k2"), (first, Lookup::Built));
        assert_eq!(s.builds.get(), 2);
    }

    #[test]
    fn any_input_change_is_a_miss_and_rebuilds() {
        let s = Setup::new();
        let (first, _) = s.get("k");
        type Change = (&'static str, fn(&Setup));
        let changes: [Change; 4] = [
            ("same size, new mtime", |s| old_file(&s.path("tool"), b"#!/bin/sh\necho TOOL\n")),
            ("file added to an included directory", |s| old_file(&s.path("data/b.txt"), b"b")),
            ("file replaced by another inode", |s| {
                old_file(&s.path("data/a.new"), b"a");
                fs::rename(s.path("data/a.new"), s.path("data/a.txt")).unwrap();
            }),
            ("file grew", |s| old_file(&s.path("data/a.txt"), b"aa")),
        ];
        let mut previous = first;
        for (what, change) in changes {
            change(&s);
            backdate(&s.path("data"));
            let builds = s.builds.get();
            let (path, how) = s.get("k");
            assert_eq!(how, Lookup::Built, "{what}");
            assert_eq!(s.builds.get(), builds + 1, "{what}");
            assert_eq!(s.get("k").1, Lookup::Hit, "{what}: recorded again");
            if what != "file replaced by another inode" {
                assert_ne!(path, previous, "{what}: new content, new archive");
            }
            previous = path;
        }
    }

    #[test]
    fn recently_modified_inputs_are_not_recorded() {
        let s = Setup::new();
        fs::write(s.path("tool"), b"#!/bin/sh\necho fresh\n").unwrap();
        assert_eq!(s.get("k").1, Lookup::BuiltUnrecorded);
        assert_eq!(s.get("k").1, Lookup::BuiltUnrecorded);
        backdate(&s.path("tool"));
        assert_eq!(s.get("k").1, Lookup::Built);
        assert_eq!(s.get("k").1, Lookup::Hit);
    }

    #[test]
    fn damaged_manifests_and_missing_bases_are_misses() {
        let s = Setup::new();
        let (base, _) = s.get("k");
        let manifest = manifest_path(&s.cache(), "k");
        let text = fs::read_to_string(&manifest).unwrap();
        assert!(text.starts_with(MAGIC) && text.ends_with("end\n"), "{text}");
        assert!(text.contains(LD_SO_CACHE) == Path::new(LD_SO_CACHE).exists(), "{text}");
        // Torn (no end line), or written for another key: not trusted.
        fs::write(&manifest, text.trim_end_matches("end\n")).unwrap();
        assert_eq!(lookup(&s.cache(), "k"), None);
        fs::write(&manifest, &text).unwrap();
        assert_eq!(lookup(&s.cache(), "k"), Some(base.clone()));
        assert_eq!(lookup(&s.cache(), "other"), None);
        fs::remove_file(&base).unwrap();
        assert_eq!(lookup(&s.cache(), "k"), None);
        assert_eq!(s.get("k"), (base, Lookup::Built));
    }

    #[test]
    fn executable_identity_is_stable() {
        let id = executable_identity().expect("/proc/self/exe");
        assert_eq!(executable_identity(), Some(id));
    }
}
