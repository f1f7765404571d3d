//! Guest kernels: build them from a source, cache them by content, and resolve what
//! `--kernel` / `$KTSTR_KERNEL` names into an image to boot.

pub mod cache;
pub mod download;
pub mod imagefile;
pub mod kconfig;
pub mod make;
pub mod source;
pub mod sums;

use crate::progress::Progress;
use cache::{BZIMAGE, CONFIG, Cache, Entry, EntryState, Metadata, SourceInfo, VMLINUX};
use imagefile::ImageKind;
use kconfig::Flavour;
use source::SourceSpec;
use std::path::{Path, PathBuf};

/// A kernel ready to boot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Kernel {
    pub image: PathBuf,
    pub kind: ImageKind,
    /// The matching vmlinux (symbols, BTF) when known.
    pub vmlinux: Option<PathBuf>,
    pub version: Option<String>,
    /// Cache key, when it came from (or went into) the cache.
    pub key: Option<String>,
    /// How it was found, for messages: "cache entry ...", "file ...".
    pub origin: String,
}

impl Kernel {
    fn from_entry(e: &Entry, how: &str) -> Self {
        let m = e.metadata().expect("valid entry");
        Kernel {
            image: e.bzimage(),
            kind: ImageKind::BzImage,
            vmlinux: Some(e.vmlinux()).filter(|p| p.is_file()),
            version: Some(m.version.clone()),
            key: Some(e.key.clone()),
            origin: format!("{how}: cache entry {}", e.key),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Download(#[from] download::DownloadError),
    #[error(transparent)]
    Make(#[from] make::MakeError),
    #[error(transparent)]
    Image(#[from] imagefile::ImageError),
    #[error("no kernel found for {wanted}; tried:\n{}\n{hint}", tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n"))]
    NotFound { wanted: String, tried: Vec<String>, hint: String },
}

/// What `kernel build` was asked for.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub source: SourceSpec,
    pub flavour: Flavour,
    pub jobs: usize,
    /// Rebuild even when the cache has the entry.
    pub force: bool,
}

pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Where the bytes to build come from, once located.
struct Prepared {
    src: PathBuf,
    out: PathBuf,
    info: Option<SourceInfo>,
    lock: String,
}

/// Builds (or finds in the cache) the kernel `req` describes.
pub fn build(cache: &Cache, req: &BuildRequest) -> Result<Kernel, KernelError> {
    make::check_deps(req.flavour)?;
    let mut progress = Progress::new("kernel build");
    let cfg = req.flavour.config_hash();
    let tarball = match &req.source {
        SourceSpec::Tree(_) => None,
        SourceSpec::Tarball(p) => Some((p.clone(), None)),
        SourceSpec::Distro => {
            let (dir, found) = source::distro_tarballs();
            let first = found.into_iter().next().ok_or(source::SourceError::NoDistroSource { dir })?;
            Some((first, None))
        }
        SourceSpec::Version(v) => {
            progress.phase(&format!("resolve {v} on kernel.org"));
            let (version, url) = download::resolve(v)?;
            // `version` passed download::is_release_version: digits, dots and `-rc`.
            let dest = cache.work_dir().join("downloads").join(format!("linux-{version}.tar.xz"));
            let published = download::published_sha256(&url)?;
            progress.phase(&format!("download {url}"));
            let sha =
                download::fetch(&url, &dest, published.as_ref(), |n| progress.detail(&format!("{} MiB", n >> 20)))?;
            Some((dest, Some((url, sha))))
        }
    };
    let prepared = match tarball {
        None => prepare_tree(cache, &req.source, req.flavour)?,
        Some((path, downloaded)) => {
            progress.phase(&format!("hash {}", path.display()));
            let info = match (&req.source, downloaded) {
                (SourceSpec::Distro, _) => source::distro_info(&path)?,
                (_, Some((origin, sha256))) => SourceInfo::Tarball { origin, sha256 },
                (_, None) => {
                    SourceInfo::Tarball { origin: path.display().to_string(), sha256: source::sha256_file(&path)? }
                }
            };
            if !req.force
                && let Some(hit) = cache.find(&info.identity(), req.flavour, &cfg)?
            {
                progress.finish(&format!("cached: {}", hit.key));
                return Ok(Kernel::from_entry(&hit, "already built"));
            }
            prepare_tarball(cache, &path, info, req.flavour, &mut progress)?
        }
    };
    let _lock = cache.lock(&prepared.lock)?;
    if let Some(info) = prepared.info.as_ref().filter(|_| !req.force) {
        // Another process may have finished the same build while we waited for the lock.
        if let Some(hit) = cache.find(&info.identity(), req.flavour, &cfg)? {
            progress.finish(&format!("cached: {}", hit.key));
            return Ok(Kernel::from_entry(&hit, "already built"));
        }
    }
    compile_and_store(cache, &prepared, req, &mut progress)
}

fn prepare_tree(cache: &Cache, spec: &SourceSpec, flavour: Flavour) -> Result<Prepared, KernelError> {
    let SourceSpec::Tree(dir) = spec else { unreachable!("called for trees only") };
    let src = std::fs::canonicalize(dir).map_err(|_| source::SourceError::NotATree { path: dir.clone() })?;
    source::tree_version(&src)?;
    let info = source::git_identity(&src).map(|commit| SourceInfo::Git { path: src.clone(), commit });
    let name = tree_build_dir_name(&src, flavour);
    Ok(Prepared { out: cache.work_dir().join(&name), src, info, lock: name })
}

/// The out-of-tree build dir of a source tree: stable per (path, flavour), so rebuilds are incremental.
pub fn tree_build_dir_name(src: &Path, flavour: Flavour) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(src.as_os_str().as_encoded_bytes());
    format!("tree-{}-{flavour}", &hex::encode(h)[..12])
}

fn prepare_tarball(
    cache: &Cache,
    path: &Path,
    info: SourceInfo,
    flavour: Flavour,
    progress: &mut Progress,
) -> Result<Prepared, KernelError> {
    let id = info.identity();
    let dest = cache.work_dir().join(format!("src-{id}"));
    let src = {
        let _lock = cache.lock(&format!("src-{id}"))?;
        if !dest.exists() {
            progress.phase(&format!("extract {}", path.display()));
        }
        source::extract(path, &dest)?
    };
    if crate::interrupt::interrupted() {
        return Err(make::MakeError::Interrupted(crate::interrupt::Interrupted).into());
    }
    source::tree_version(&src)?;
    let name = format!("out-{id}-{flavour}");
    Ok(Prepared { src, out: cache.work_dir().join(&name), info: Some(info), lock: name })
}

fn compile_and_store(
    cache: &Cache,
    p: &Prepared,
    req: &BuildRequest,
    progress: &mut Progress,
) -> Result<Kernel, KernelError> {
    let version = source::tree_version(&p.src)?;
    let kb = make::Kbuild { src: &p.src, out: &p.out, jobs: req.jobs.max(1) };
    kb.configure(req.flavour, progress)?;
    kb.compile(progress)?;
    kb.verify(req.flavour)?;
    let build_secs = progress.elapsed();
    let Some(info) = p.info.clone() else {
        progress.finish(&format!(
            "built {version} in {build_secs:.0}s (not cached: the tree has local changes or is not a git checkout)"
        ));
        return Ok(Kernel {
            image: kb.bzimage(),
            kind: ImageKind::BzImage,
            vmlinux: Some(kb.vmlinux()),
            version: Some(version),
            key: None,
            origin: format!("build dir {}", p.out.display()),
        });
    };
    progress.phase("store in cache");
    let cfg = req.flavour.config_hash();
    let key = cache::cache_key(&version, req.flavour, &info, &cfg);
    let meta = Metadata {
        key,
        version,
        flavour: req.flavour,
        source: info,
        config_hash: cfg,
        built_at: cache::now_rfc3339(),
        build_secs,
        files: Vec::new(),
        ktstr_version: env!("CARGO_PKG_VERSION").into(),
    };
    let config = p.out.join(".config");
    let files = [(BZIMAGE, kb.bzimage(), false), (VMLINUX, kb.vmlinux(), true), (CONFIG, config, false)];
    let files: Vec<(&str, &Path, bool)> = files.iter().map(|(n, p, s)| (*n, p.as_path(), *s)).collect();
    let entry = cache.store(&meta, &files)?;
    progress.finish(&format!("built {} in {build_secs:.0}s", entry.key));
    Ok(Kernel::from_entry(&entry, "built"))
}

/// How a `--kernel` argument is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelArg {
    Path(PathBuf),
    Version(String),
    Key(String),
}

impl KernelArg {
    pub fn parse(s: &str) -> Self {
        if s.contains('/') || s.starts_with('.') || s.starts_with('~') || Path::new(s).exists() {
            let expanded = match s.strip_prefix("~/") {
                Some(rest) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest),
                None => PathBuf::from(s),
            };
            KernelArg::Path(expanded)
        } else if source::is_version_like(s) {
            KernelArg::Version(s.into())
        } else {
            KernelArg::Key(s.into())
        }
    }
}

/// Whether an entry was built with the fragment this binary carries for its flavour.
fn is_current(m: &Metadata) -> bool {
    m.config_hash == m.flavour.config_hash()
}

/// Resolves `--kernel` / `$KTSTR_KERNEL` (`arg`), or picks the default kernel. With
/// `build_default`, a missing default is built from the distribution source package.
pub fn resolve(cache: &Cache, arg: Option<&str>, build_default: bool) -> Result<Kernel, KernelError> {
    match arg.map(KernelArg::parse) {
        Some(KernelArg::Path(p)) => resolve_path(cache, &p),
        Some(KernelArg::Version(v)) => resolve_version(cache, &v),
        Some(KernelArg::Key(k)) => resolve_key(cache, &k),
        None => resolve_default(cache, build_default),
    }
}

fn resolve_path(cache: &Cache, p: &Path) -> Result<Kernel, KernelError> {
    if p.is_file() {
        let kind = imagefile::detect(p)?;
        let vmlinux = p.parent().map(|d| d.join(VMLINUX)).filter(|v| v.is_file() && v != p);
        let version = (kind == ImageKind::BzImage).then(|| imagefile::bzimage_release(p)).flatten();
        return Ok(Kernel {
            image: p.into(),
            kind,
            vmlinux,
            version,
            key: None,
            origin: format!("file {}", p.display()),
        });
    }
    let mut tried = vec![format!("{}: a kernel image file", p.display())];
    if p.is_dir() {
        if p.join(cache::METADATA).is_file() {
            let key = p.file_name().unwrap_or_default().to_string_lossy().to_string();
            let dir = std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
            if let Some(e) = Cache::at(dir.parent().unwrap_or(Path::new("/")).into()).get(&key) {
                return entry_or_corrupt(e, "path");
            }
        }
        if let Ok(version) = source::tree_version(p) {
            let src = std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
            for flavour in [Flavour::Minimal, Flavour::Defconfig, Flavour::KvmHost] {
                let out = cache.work_dir().join(tree_build_dir_name(&src, flavour));
                let image = out.join("arch/x86/boot/bzImage");
                tried.push(format!("{}: ktstr's {flavour} build of the tree", image.display()));
                if image.is_file() {
                    return Ok(tree_kernel(image, out.join(VMLINUX), version, &out));
                }
            }
            let in_tree = p.join("arch/x86/boot/bzImage");
            tried.push(format!("{}: an in-tree build", in_tree.display()));
            if in_tree.is_file() {
                return Ok(tree_kernel(in_tree, p.join(VMLINUX), version, p));
            }
        } else {
            tried.push(format!("{}: a kernel source tree (it is not one)", p.display()));
        }
    }
    Err(KernelError::NotFound {
        wanted: p.display().to_string(),
        tried,
        hint: format!("build it first: ktstr-host kernel build --source {}", p.display()),
    })
}

fn tree_kernel(image: PathBuf, vmlinux: PathBuf, version: String, dir: &Path) -> Kernel {
    Kernel {
        image,
        kind: ImageKind::BzImage,
        vmlinux: Some(vmlinux).filter(|v| v.is_file()),
        version: Some(version),
        key: None,
        origin: format!("build of tree {}", dir.display()),
    }
}

fn entry_or_corrupt(e: Entry, how: &str) -> Result<Kernel, KernelError> {
    match &e.state {
        EntryState::Valid(_) => Ok(Kernel::from_entry(&e, how)),
        EntryState::Corrupt(why) => Err(KernelError::NotFound {
            wanted: e.key.clone(),
            tried: vec![format!("cache entry {} is corrupt: {why}", e.dir.display())],
            hint: "remove it with `ktstr-host kernel clean --corrupt-only` and build again".into(),
        }),
    }
}

fn resolve_version(cache: &Cache, v: &str) -> Result<Kernel, KernelError> {
    let entries = cache.entries()?;
    let matching: Vec<&Entry> =
        entries.iter().filter(|e| e.metadata().is_some_and(|m| source::version_matches(v, &m.version))).collect();
    let newest = |pred: &dyn Fn(&Metadata) -> bool| {
        matching
            .iter()
            .filter(|e| e.metadata().is_some_and(pred))
            .max_by_key(|e| source::version_key(&e.metadata().expect("valid").version))
            .copied()
    };
    if let Some(e) = newest(&|m| is_current(m) && m.flavour == Flavour::Minimal).or_else(|| newest(&is_current)) {
        return Ok(Kernel::from_entry(e, &format!("version {v}")));
    }
    let stale: Vec<String> = matching.iter().map(|e| e.key.clone()).collect();
    let mut tried =
        vec![format!("cache {}: entries for {v} built with the current ktstr.kconfig", cache.root.display())];
    if !stale.is_empty() {
        tried.push(format!("entries built with an older fragment (not used): {}", stale.join(", ")));
    }
    Err(KernelError::NotFound {
        wanted: format!("version {v}"),
        tried,
        hint: format!("build it: ktstr-host kernel build {v}"),
    })
}

fn resolve_key(cache: &Cache, k: &str) -> Result<Kernel, KernelError> {
    match cache.get(k) {
        Some(e) => entry_or_corrupt(e, "key"),
        None => Err(KernelError::NotFound {
            wanted: format!("`{k}`"),
            tried: vec![
                format!("{k}: not an existing path"),
                format!("{k}: not a version (MAJOR.MINOR[.PATCH])"),
                format!("cache {}: no entry with key {k}", cache.root.display()),
            ],
            hint: "list cached kernels with `ktstr-host kernel list`".into(),
        }),
    }
}

fn resolve_default(cache: &Cache, build_default: bool) -> Result<Kernel, KernelError> {
    let entries = cache.entries()?;
    let current = |f: Flavour| entries.iter().find(|e| e.metadata().is_some_and(|m| m.flavour == f && is_current(m)));
    if let Some(e) = current(Flavour::Minimal).or_else(|| current(Flavour::Defconfig)) {
        return Ok(Kernel::from_entry(e, "default"));
    }
    let (dir, distro) = source::distro_tarballs();
    let mut tried = vec![format!("cache {}: no entry built with the current ktstr.kconfig", cache.root.display())];
    match distro.first() {
        Some(t) if build_default => {
            eprintln!("no cached kernel yet: building one from {} (once; later runs reuse it)", t.display());
            let req = BuildRequest {
                source: SourceSpec::Distro,
                flavour: Flavour::Minimal,
                jobs: default_jobs(),
                force: false,
            };
            return build(cache, &req);
        }
        Some(t) => tried.push(format!("{}: present, but building was not allowed here", t.display())),
        None => tried.push(format!("{}: no linux-source-*.tar.xz", dir.display())),
    }
    Err(KernelError::NotFound {
        wanted: "a default kernel".into(),
        tried,
        hint: "build one: `ktstr-host kernel build` (needs linux-source-6.12 on Debian) or `ktstr-host kernel build 6.12`, or pass --kernel".into(),
    })
}
