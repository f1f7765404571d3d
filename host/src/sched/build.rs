//! The sched_ext schedulers that ship in the kernel tree (tools/sched_ext), built against a
//! cached kernel's BTF with the distro's clang, and cached like kernels: one entry per
//! (kernel, tools/sched_ext sources, clang), written to a temp dir and renamed into place,
//! under `<kernel cache root>/.schedulers/` and removed with the kernel they were built for
//! (see [`prune`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::kernel::Kernel;
use crate::kernel::cache::{Cache, Entry, FileInfo, SourceInfo};
use crate::kernel::{make, source};
use crate::progress::Progress;

/// The in-tree schedulers, in the order they are listed.
pub const IN_TREE: [&str; 4] = ["scx_simple", "scx_qmap", "scx_central", "scx_flatcg"];
/// Bumped when the build recipe changes, so old entries are not reused.
const RECIPE: &str = "1";
const METADATA: &str = "metadata.json";
/// clang binaries tried, newest first: BPF CO-RE needs a recent one.
const CLANGS: [&str; 6] = ["clang-19", "clang-18", "clang-17", "clang-16", "clang-20", "clang"];

/// One cache entry: the schedulers built for one kernel.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SchedMeta {
    pub key: String,
    pub kernel_key: String,
    pub clang: String,
    pub built_at: String,
    pub build_secs: f64,
    pub schedulers: Vec<FileInfo>,
}

#[derive(Debug, Clone)]
pub struct Built {
    pub dir: PathBuf,
    pub meta: SchedMeta,
}

impl Built {
    /// The binary of in-tree scheduler `name`.
    pub fn binary(&self, name: &str) -> Option<PathBuf> {
        let p = self.dir.join("bin").join(name);
        p.is_file().then_some(p)
    }
}

/// Where scheduler entries live: inside the kernel cache root, hidden (a dot name) so that
/// `kernel list` does not take it for a kernel entry.
pub fn root(cache: &Cache) -> PathBuf {
    cache.root.join(".schedulers")
}

/// Where older versions kept them: beside the cache root (`~/.cache/ktstr/schedulers`).
fn legacy_root(cache: &Cache) -> Option<PathBuf> {
    cache.root.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| p.join("schedulers"))
}

/// Moves entry `key` from the legacy place into [`root`], if it is there (no rebuild after
/// an upgrade); best effort.
fn adopt_legacy(cache: &Cache, key: &str) -> Option<Built> {
    let old = legacy_root(cache)?.join(key);
    load(&old)?;
    let new = root(cache).join(key);
    fs::create_dir_all(root(cache)).ok()?;
    fs::rename(&old, &new).ok()?;
    load(&new)
}

/// Removes the scheduler builds whose kernel entry is gone or corrupt, unreadable ones, and
/// leftovers of interrupted stores; returns what it removed.
pub fn prune(cache: &Cache) -> Result<Vec<PathBuf>> {
    let kernels: Vec<String> = cache.entries()?.into_iter().filter(|e| e.metadata().is_some()).map(|e| e.key).collect();
    let dir = root(cache);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut removed = Vec::new();
    for e in rd {
        let path = e.with_context(|| format!("reading {}", dir.display()))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let stale = match name.strip_prefix(".tmp-") {
            Some(_) => !crate::kernel::cache::pid_alive(&name),
            None => load(&path).is_none_or(|b| !kernels.contains(&b.meta.kernel_key)),
        };
        if stale {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The clang to compile BPF with, and its version line.
fn find_clang() -> Result<(String, String)> {
    for clang in CLANGS {
        if let Ok(out) = Command::new(clang).arg("--version").output()
            && out.status.success()
        {
            let version = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
            return Ok((clang.to_string(), version));
        }
    }
    bail!("no clang found (tried {}): BPF schedulers need it; on Debian: apt-get install clang-19", CLANGS.join(", "))
}

fn check_deps() -> Result<()> {
    let needs = [("/usr/include/gelf.h", "libelf-dev"), ("/usr/include/zlib.h", "zlib1g-dev")];
    let missing: Vec<_> = needs.iter().filter(|(h, _)| !Path::new(h).exists()).collect();
    if !missing.is_empty() {
        let what: Vec<_> = missing.iter().map(|(h, _)| *h).collect();
        let pkgs: Vec<_> = missing.iter().map(|(_, p)| *p).collect();
        bail!("missing {} to build schedulers; on Debian: apt-get install {}", what.join(", "), pkgs.join(" "));
    }
    make::check_deps(crate::kernel::kconfig::Flavour::Minimal)?;
    Ok(())
}

/// The cache entry of a kernel, or why in-tree schedulers cannot be built for it.
fn kernel_entry(cache: &Cache, kernel: &Kernel) -> Result<Entry> {
    let Some(key) = &entry_key(cache, kernel) else {
        bail!(
            "kernel {} is not a cache entry: in-tree schedulers are built against a cached kernel's BTF; \
             use a cached kernel (ktstr-host kernel list) or give --scheduler PATH",
            kernel.image.display()
        );
    };
    let entry = cache.get(key).with_context(|| format!("kernel cache entry {key} is gone"))?;
    if entry.metadata().is_none() {
        bail!("kernel cache entry {key} is corrupt; rebuild it (ktstr-host kernel build --force)");
    }
    Ok(entry)
}

/// The cache key of a kernel: its own, or the entry its image file lives in (`--kernel
/// ~/.cache/ktstr/kernels/<key>/bzImage`).
fn entry_key(cache: &Cache, kernel: &Kernel) -> Option<String> {
    if let Some(key) = &kernel.key {
        return Some(key.clone());
    }
    let dir = kernel.image.parent()?;
    let (root, name) = (std::fs::canonicalize(dir.parent()?).ok()?, dir.file_name()?.to_str()?);
    let in_cache = std::fs::canonicalize(&cache.root).is_ok_and(|r| r == root);
    (in_cache && cache.get(name).is_some_and(|e| e.metadata().is_some())).then(|| name.to_string())
}

/// The kernel's source tree (extracted again from its tarball when the work dir was cleaned).
fn kernel_source(cache: &Cache, entry: &Entry) -> Result<PathBuf> {
    let meta = entry.metadata().expect("checked");
    let tarball = match &meta.source {
        SourceInfo::Git { path, .. } => return Ok(path.clone()),
        SourceInfo::Distro { tarball, .. } => tarball.clone(),
        SourceInfo::Tarball { origin, .. } if Path::new(origin).is_file() => PathBuf::from(origin),
        SourceInfo::Tarball { .. } => cache.work_dir().join("downloads").join(format!("linux-{}.tar.xz", meta.version)),
    };
    let dest = cache.work_dir().join(format!("src-{}", meta.source.identity()));
    if !dest.exists() && !tarball.is_file() {
        bail!(
            "the source of kernel {} is gone ({} missing); rebuild the kernel (ktstr-host kernel build)",
            entry.key,
            tarball.display()
        );
    }
    let _lock = cache.lock(&format!("src-{}", meta.source.identity()))?;
    Ok(source::extract(&tarball, &dest)?)
}

/// Content hash of tools/sched_ext (schedulers and their headers), the clang and the recipe.
fn sources_hash(src: &Path, clang_version: &str) -> Result<String> {
    let dir = src.join("tools/sched_ext");
    if !dir.join("Makefile").is_file() {
        bail!("{} has no tools/sched_ext/Makefile: this kernel version ships no sched_ext schedulers", src.display());
    }
    let mut files = Vec::new();
    collect_files(&dir, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    h.update(format!("recipe {RECIPE}\n{clang_version}\n"));
    for f in files {
        h.update(f.strip_prefix(&dir).unwrap_or(&f).to_string_lossy().as_bytes());
        h.update(fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
    }
    Ok(hex::encode(h.finalize())[..12].to_string())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "build") {
                collect_files(&p, out)?;
            }
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn load(dir: &Path) -> Option<Built> {
    let meta: SchedMeta = serde_json::from_slice(&fs::read(dir.join(METADATA)).ok()?).ok()?;
    Some(Built { dir: dir.to_path_buf(), meta })
}

/// All scheduler entries, newest first.
pub fn list(cache: &Cache) -> Vec<Built> {
    let Ok(rd) = fs::read_dir(root(cache)) else { return Vec::new() };
    let mut all: Vec<Built> = rd
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| load(&e.path()))
        .collect();
    all.sort_by(|a, b| b.meta.built_at.cmp(&a.meta.built_at));
    all
}

/// The newest entry built for `kernel`, if any (no build).
pub fn find(cache: &Cache, kernel: &Kernel) -> Option<Built> {
    let key = entry_key(cache, kernel)?;
    list(cache).into_iter().find(|b| b.meta.kernel_key == key)
}

/// Builds (or finds cached) the in-tree schedulers for `kernel`.
pub fn build(cache: &Cache, kernel: &Kernel, force: bool) -> Result<Built> {
    let entry = kernel_entry(cache, kernel)?;
    let mut progress = Progress::new("sched build");
    let (clang, clang_version) = find_clang()?;
    let src = kernel_source(cache, &entry)?;
    let key = format!("{}-s{}", entry.key, sources_hash(&src, &clang_version)?);
    let dir = root(cache).join(&key);
    if !force && let Some(hit) = load(&dir).or_else(|| adopt_legacy(cache, &key)) {
        progress.finish(&format!("cached: {key}"));
        return Ok(hit);
    }
    check_deps()?;
    let _lock = cache.lock(&format!("sched-{key}"))?;
    if !force && let Some(hit) = load(&dir) {
        progress.finish(&format!("cached: {key} (built by another process)"));
        return Ok(hit);
    }
    let out = cache.work_dir().join(format!("sched-out-{key}"));
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    progress.phase(&format!("build {} with {clang} against {}", IN_TREE.join(" "), entry.vmlinux().display()));
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(src.join("tools/sched_ext"))
        .arg(format!("O={}", out.display()))
        .arg(format!("VMLINUX_BTF={}", entry.vmlinux().display()))
        .arg(format!("CLANG={clang}"))
        .arg(format!("-j{}", crate::kernel::default_jobs()))
        .args(IN_TREE);
    make::run_logged(cmd, &out.join("ktstr-build.log"), &mut progress)?;
    let meta = SchedMeta {
        key: key.clone(),
        kernel_key: entry.key.clone(),
        clang: clang_version,
        built_at: crate::kernel::cache::now_rfc3339(),
        build_secs: progress.elapsed(),
        schedulers: Vec::new(),
    };
    let built = store(&root(cache), meta, &out.join("build/bin"))?;
    progress.finish(&format!("built {} in {:.1} s: {}", IN_TREE.len(), built.meta.build_secs, built.dir.display()));
    Ok(built)
}

/// Copies the binaries into `.tmp-<key>-<pid>/bin` with the metadata and renames it into place.
fn store(root: &Path, mut meta: SchedMeta, bin: &Path) -> Result<Built> {
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = root.join(format!(".tmp-{}-{}", meta.key, std::process::id()));
    let mut fill = || -> Result<()> {
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("bin")).with_context(|| format!("creating {}", tmp.display()))?;
        for name in IN_TREE {
            let from = bin.join(name);
            let to = tmp.join("bin").join(name);
            fs::copy(&from, &to).with_context(|| format!("copying {} (did the build make it?)", from.display()))?;
            meta.schedulers.push(FileInfo { name: name.into(), size: fs::metadata(&to)?.len() });
        }
        fs::write(tmp.join(METADATA), serde_json::to_vec_pretty(&meta)?)?;
        let dst = root.join(&meta.key);
        if dst.exists() {
            fs::remove_dir_all(&dst).with_context(|| format!("replacing {}", dst.display()))?;
        }
        fs::rename(&tmp, &dst).with_context(|| format!("renaming into {}", dst.display()))?;
        Ok(())
    };
    if let Err(e) = fill() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(Built { dir: root.join(&meta.key), meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_hash_follows_scheduler_sources_and_clang() {
        let d = tempfile::tempdir().unwrap();
        let scx = d.path().join("tools/sched_ext");
        fs::create_dir_all(scx.join("include/scx")).unwrap();
        fs::write(scx.join("Makefile"), "all:\n").unwrap();
        fs::write(scx.join("scx_simple.bpf.c"), "int x;\n").unwrap();
        fs::write(scx.join("include/scx/common.h"), "#pragma once\n").unwrap();
        let a = sources_hash(d.path(), "clang 19").unwrap();
        assert_eq!(a, sources_hash(d.path(), "clang 19").unwrap());
        assert_ne!(a, sources_hash(d.path(), "clang 18").unwrap());
        fs::write(scx.join("include/scx/common.h"), "#pragma once\n// edited\n").unwrap();
        let b = sources_hash(d.path(), "clang 19").unwrap();
        assert_ne!(a, b);
        // Build output inside the tree does not count.
        fs::create_dir_all(scx.join("build")).unwrap();
        fs::write(scx.join("build/x.o"), "obj").unwrap();
        assert_eq!(b, sources_hash(d.path(), "clang 19").unwrap());
        let none = tempfile::tempdir().unwrap();
        assert!(sources_hash(none.path(), "c").unwrap_err().to_string().contains("ships no sched_ext schedulers"));
    }

    #[test]
    fn store_is_atomic_and_lists_the_entry() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::at(d.path().join("kernels"));
        let bin = d.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        let meta = |key: &str| SchedMeta {
            key: key.into(),
            kernel_key: "k1".into(),
            clang: "clang 19".into(),
            built_at: "2026-01-01T00:00:00Z".into(),
            build_secs: 1.0,
            schedulers: Vec::new(),
        };
        // A missing binary fails and leaves nothing behind.
        let e = store(&root(&cache), meta("k1-sa"), &bin).unwrap_err();
        assert!(format!("{e:#}").contains("scx_simple"), "{e:#}");
        assert!(fs::read_dir(root(&cache)).unwrap().next().is_none());
        for n in IN_TREE {
            fs::write(bin.join(n), n).unwrap();
        }
        let built = store(&root(&cache), meta("k1-sa"), &bin).unwrap();
        assert_eq!(built.binary("scx_qmap").unwrap(), root(&cache).join("k1-sa/bin/scx_qmap"));
        assert_eq!(built.meta.schedulers.len(), 4);
        assert_eq!(list(&cache).len(), 1);
        let k = Kernel {
            image: "/x".into(),
            kind: crate::kernel::imagefile::ImageKind::BzImage,
            vmlinux: None,
            version: None,
            key: Some("k1".into()),
            origin: String::new(),
        };
        assert!(find(&cache, &k).is_some());
        assert!(kernel_entry(&cache, &Kernel { key: None, ..k }).unwrap_err().to_string().contains("--scheduler PATH"));
    }

    /// Scheduler builds live inside the cache root the user named, where `kernel list` does
    /// not take them for a kernel.
    #[test]
    fn scheduler_builds_live_under_the_named_cache_root() {
        for root in ["/x/k", "k", "/"] {
            let cache = Cache::at(root.into());
            assert!(super::root(&cache).starts_with(root), "{root}: {}", super::root(&cache).display());
        }
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::at(d.path().into());
        fs::create_dir_all(super::root(&cache).join("k1-sa/bin")).unwrap();
        assert!(cache.entries().unwrap().is_empty(), "listed as a kernel entry");
    }
}
