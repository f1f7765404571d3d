//! The kernel cache: one directory per built kernel, complete or absent.
//!
//! Layout under the cache root:
//! - `<key>/` an entry: `bzImage`, `vmlinux` (debug info stripped, BTF and symbols kept),
//!   `config`, `metadata.json`;
//! - `.tmp-*` entries being written (renamed into place when complete);
//! - `.locks/` flock files, so two builds of one key do one build;
//! - `.work/` extracted sources, out-of-tree build dirs and downloads (incremental rebuilds);
//! - `.schedulers/` the in-tree sched_ext schedulers built per kernel (`sched::build`).
//!
//! Names starting with `.` are never entries.

use super::kconfig::Flavour;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

pub const METADATA: &str = "metadata.json";
pub const BZIMAGE: &str = "bzImage";
pub const VMLINUX: &str = "vmlinux";
pub const CONFIG: &str = "config";

/// Where a cached kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SourceInfo {
    /// A distribution source package, e.g. Debian's linux-source-6.12.
    Distro { package: String, tarball: PathBuf, sha256: String },
    /// A release tarball given as a file or downloaded.
    Tarball { origin: String, sha256: String },
    /// A clean git tree at a commit.
    Git { path: PathBuf, commit: String },
}

impl SourceInfo {
    /// The content identity used in cache keys (short).
    pub fn identity(&self) -> String {
        match self {
            SourceInfo::Distro { sha256, .. } | SourceInfo::Tarball { sha256, .. } => short(sha256),
            SourceInfo::Git { commit, .. } => short(commit),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SourceInfo::Distro { package, .. } => format!("distro package {package}"),
            SourceInfo::Tarball { origin, .. } => format!("tarball {origin}"),
            SourceInfo::Git { path, commit } => format!("git {} @ {}", path.display(), short(commit)),
        }
    }
}

fn short(hex: &str) -> String {
    hex.chars().take(12).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
}

/// `metadata.json` of an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub key: String,
    pub version: String,
    pub flavour: Flavour,
    pub source: SourceInfo,
    /// Hash of flavour + effective fragment (see `Flavour::config_hash`).
    pub config_hash: String,
    pub built_at: String,
    pub build_secs: f64,
    pub files: Vec<FileInfo>,
    pub ktstr_version: String,
}

/// The cache key: readable, and unique per (source identity, flavour, fragment).
pub fn cache_key(version: &str, flavour: Flavour, source: &SourceInfo, config_hash: &str) -> String {
    format!("{version}-{}-{}-kc{config_hash}", flavour.name(), source.identity())
}

/// One entry as found on disk.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub dir: PathBuf,
    pub state: EntryState,
}

#[derive(Debug, Clone)]
pub enum EntryState {
    Valid(Box<Metadata>),
    Corrupt(String),
}

impl Entry {
    pub fn metadata(&self) -> Option<&Metadata> {
        match &self.state {
            EntryState::Valid(m) => Some(m),
            EntryState::Corrupt(_) => None,
        }
    }

    pub fn bzimage(&self) -> PathBuf {
        self.dir.join(BZIMAGE)
    }

    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join(VMLINUX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("kernel cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no home directory: set KTSTR_CACHE_DIR to choose where kernels are cached")]
    NoHome,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_owned(), source }
}

/// The cache root and operations on it.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    /// `$KTSTR_CACHE_DIR`, else `$XDG_CACHE_HOME/ktstr/kernels`, else `~/.cache/ktstr/kernels`.
    pub fn default_root() -> Result<PathBuf, CacheError> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = var("KTSTR_CACHE_DIR") {
            return Ok(dir);
        }
        if let Some(xdg) = var("XDG_CACHE_HOME") {
            return Ok(xdg.join("ktstr/kernels"));
        }
        var("HOME").map(|h| h.join(".cache/ktstr/kernels")).ok_or(CacheError::NoHome)
    }

    pub fn open_default() -> Result<Self, CacheError> {
        Ok(Self::at(Self::default_root()?))
    }

    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// Scratch space for sources, build dirs and downloads.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join(".work")
    }

    /// Takes (blocking) the lock named `name`; released when the file is dropped,
    /// including on panic or process death.
    pub fn lock(&self, name: &str) -> Result<File, CacheError> {
        let dir = self.root.join(".locks");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{name}.lock"));
        let file = File::create(&path).map_err(io_err(&path))?;
        if file.try_lock().is_err() {
            tracing::info!("waiting for another ktstr process holding {}", path.display());
            eprintln!("waiting for another ktstr build holding {} ...", path.display());
            file.lock().map_err(io_err(&path))?;
        }
        Ok(file)
    }

    /// All entries, newest build first; corrupt ones included (and marked).
    pub fn entries(&self) -> Result<Vec<Entry>, CacheError> {
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut out: Vec<Entry> = rd
            .filter_map(Result::ok)
            .filter(|d| d.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|d| {
                let key = d.file_name().into_string().ok()?;
                (!key.starts_with('.')).then(|| load_entry(key, d.path()))
            })
            .collect();
        out.sort_by(|a, b| built_at(b).cmp(&built_at(a)).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        let dir = self.root.join(key);
        (dir.is_dir() && !key.starts_with('.') && !key.contains('/')).then(|| load_entry(key.into(), dir))
    }

    /// Finds a valid entry by what it was built from, whatever its version label.
    pub fn find(&self, identity: &str, flavour: Flavour, config_hash: &str) -> Result<Option<Entry>, CacheError> {
        Ok(self.entries()?.into_iter().find(|e| {
            e.metadata().is_some_and(|m| {
                m.source.identity() == identity && m.flavour == flavour && m.config_hash == config_hash
            })
        }))
    }

    /// Stores a new entry atomically: files are copied into `.tmp-<key>-<pid>` and the
    /// directory is renamed into place. `files` are (name in entry, source path, strip debug).
    pub fn store(&self, meta: &Metadata, files: &[(&str, &Path, bool)]) -> Result<Entry, CacheError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let tmp = self.root.join(format!(".tmp-{}-{}", meta.key, std::process::id()));
        let result = self.fill_and_rename(&tmp, meta, files);
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    fn fill_and_rename(&self, tmp: &Path, meta: &Metadata, files: &[(&str, &Path, bool)]) -> Result<Entry, CacheError> {
        let _ = fs::remove_dir_all(tmp);
        fs::create_dir_all(tmp).map_err(io_err(tmp))?;
        let mut meta = meta.clone();
        meta.files.clear();
        for (name, src, strip) in files {
            let dst = tmp.join(name);
            copy_file(src, &dst, *strip)?;
            let size = fs::metadata(&dst).map_err(io_err(&dst))?.len();
            meta.files.push(FileInfo { name: (*name).into(), size });
        }
        let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        let mpath = tmp.join(METADATA);
        fs::write(&mpath, json).map_err(io_err(&mpath))?;
        let dst = self.root.join(&meta.key);
        if dst.exists() {
            // Same key = same inputs: replace the old entry (e.g. `--force`).
            let old = self.root.join(format!(".tmp-old-{}-{}", meta.key, std::process::id()));
            fs::rename(&dst, &old).map_err(io_err(&dst))?;
            let _ = fs::remove_dir_all(&old);
        }
        fs::rename(tmp, &dst).map_err(io_err(&dst))?;
        Ok(load_entry(meta.key.clone(), dst))
    }

    /// Removes an entry (valid or corrupt).
    pub fn remove(&self, entry: &Entry) -> Result<(), CacheError> {
        fs::remove_dir_all(&entry.dir).map_err(io_err(&entry.dir))
    }

    /// Leftover `.tmp-*` dirs of processes that died mid-store.
    pub fn stale_temps(&self) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(&self.root) else { return Vec::new() };
        rd.filter_map(Result::ok)
            .filter(|d| d.file_name().to_string_lossy().starts_with(".tmp-"))
            .filter(|d| !pid_alive(&d.file_name().to_string_lossy()))
            .map(|d| d.path())
            .collect()
    }
}

/// Whether the process named by the `-<pid>` suffix of a temp dir name still runs.
pub(crate) fn pid_alive(tmp_name: &str) -> bool {
    let pid = tmp_name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
}

fn built_at(e: &Entry) -> String {
    e.metadata().map(|m| m.built_at.clone()).unwrap_or_default()
}

fn copy_file(src: &Path, dst: &Path, strip_debug: bool) -> Result<(), CacheError> {
    if strip_debug {
        // Keeps .symtab and .BTF (what BPF tooling needs), drops DWARF (most of the size).
        let status = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(src)
            .arg(dst)
            .status()
            .map_err(io_err(src))?;
        if status.success() {
            return Ok(());
        }
        tracing::warn!("objcopy --strip-debug {} failed; storing it unstripped", src.display());
    }
    fs::copy(src, dst).map(|_| ()).map_err(io_err(src))
}

fn load_entry(key: String, dir: PathBuf) -> Entry {
    let state = match validate(&key, &dir) {
        Ok(m) => EntryState::Valid(Box::new(m)),
        Err(why) => EntryState::Corrupt(why),
    };
    Entry { key, dir, state }
}

fn validate(key: &str, dir: &Path) -> Result<Metadata, String> {
    let text = fs::read(dir.join(METADATA)).map_err(|e| format!("{METADATA}: {e}"))?;
    let meta: Metadata = serde_json::from_slice(&text).map_err(|e| format!("{METADATA}: {e}"))?;
    if meta.key != key {
        return Err(format!("{METADATA} names key {} but the directory is {key}", meta.key));
    }
    if !meta.files.iter().any(|f| f.name == BZIMAGE) {
        return Err(format!("{METADATA} lists no {BZIMAGE}"));
    }
    for f in &meta.files {
        match fs::metadata(dir.join(&f.name)) {
            Ok(m) if m.len() == f.size => {}
            Ok(m) => return Err(format!("{} is {} bytes, metadata says {}", f.name, m.len(), f.size)),
            Err(e) => return Err(format!("{}: {e}", f.name)),
        }
    }
    Ok(meta)
}

/// Seconds since the epoch as RFC 3339 (UTC), for `built_at`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, built_at: &str) -> Metadata {
        Metadata {
            key: key.into(),
            version: "6.12.1".into(),
            flavour: Flavour::Minimal,
            source: SourceInfo::Tarball { origin: "t".into(), sha256: "ab".repeat(32) },
            config_hash: "c0ffee".into(),
            built_at: built_at.into(),
            build_secs: 1.0,
            files: vec![],
            ktstr_version: "test".into(),
        }
    }

    fn store(cache: &Cache, key: &str, at: &str) -> Entry {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        fs::write(&img, b"kernel bytes").unwrap();
        cache.store(&meta(key, at), &[(BZIMAGE, &img, false)]).unwrap()
    }

    #[test]
    fn key_changes_with_each_input() {
        let s = SourceInfo::Git { path: "/k".into(), commit: "0123456789abcdef".into() };
        let t = SourceInfo::Git { path: "/k".into(), commit: "fedcba9876543210".into() };
        let k = cache_key("6.12.1", Flavour::Minimal, &s, "aa");
        assert_eq!(k, "6.12.1-minimal-0123456789ab-kcaa");
        assert_eq!(k, cache_key("6.12.1", Flavour::Minimal, &s, "aa"));
        assert_ne!(k, cache_key("6.12.1", Flavour::Minimal, &t, "aa"));
        assert_ne!(k, cache_key("6.12.1", Flavour::Defconfig, &s, "aa"));
        assert_ne!(k, cache_key("6.12.1", Flavour::Minimal, &s, "bb"));
    }

    #[test]
    fn store_is_atomic_and_listed_newest_first() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::at(root.path().into());
        store(&cache, "a", "2026-01-01T00:00:00Z");
        store(&cache, "b", "2026-02-01T00:00:00Z");
        let keys: Vec<_> = cache.entries().unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["b", "a"]);
        let leftovers: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|d| d.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        assert!(cache.find(&"ab".repeat(6), Flavour::Minimal, "c0ffee").unwrap().is_some());
        assert!(cache.find(&"ab".repeat(6), Flavour::Defconfig, "c0ffee").unwrap().is_none());
    }

    #[test]
    fn corrupt_entries_are_detected() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::at(root.path().into());
        let e = store(&cache, "gone", "2026-01-01T00:00:00Z");
        fs::remove_file(e.bzimage()).unwrap();
        let e2 = store(&cache, "badjson", "2026-01-01T00:00:00Z");
        fs::write(e2.dir.join(METADATA), b"{not json").unwrap();
        let e3 = store(&cache, "short", "2026-01-01T00:00:00Z");
        fs::write(e3.bzimage(), b"x").unwrap();
        for key in ["gone", "badjson", "short"] {
            let got = cache.get(key).unwrap();
            assert!(matches!(got.state, EntryState::Corrupt(_)), "{key}: {:?}", got.state);
        }
        assert!(cache.find(&"ab".repeat(6), Flavour::Minimal, "c0ffee").unwrap().is_none());
    }

    #[test]
    fn get_rejects_hidden_and_nested_names() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::at(root.path().into());
        fs::create_dir_all(root.path().join(".work/x")).unwrap();
        assert!(cache.get(".work").is_none());
        assert!(cache.get(".work/x").is_none());
        assert!(cache.entries().unwrap().is_empty());
    }

    #[test]
    fn lock_is_exclusive_across_handles() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::at(root.path().into());
        let held = cache.lock("k").unwrap();
        let other = File::create(root.path().join(".locks/k.lock")).unwrap();
        assert!(other.try_lock().is_err());
        drop(held);
        assert!(other.try_lock().is_ok());
    }
}
