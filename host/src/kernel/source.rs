//! Kernel sources: a tree on disk, a release tarball, a kernel.org version, or the
//! distribution's source package. Each yields a source directory to build from and, when
//! its content is known exactly, an identity for the cache key.

use super::cache::SourceInfo;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the user asked to build from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Tree(PathBuf),
    Tarball(PathBuf),
    Version(String),
    Distro,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "{path}: not a Linux kernel source tree (no Makefile with VERSION/PATCHLEVEL, Kconfig and arch/x86); pass the top directory of a kernel checkout"
    )]
    NotATree { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: could not extract the tarball ({detail}); is it a kernel release .tar.xz/.tar.gz?")]
    Extract { path: PathBuf, detail: String },
    #[error(
        "no distribution kernel source found in {dir} (looked for linux-source-*.tar.xz); on Debian/Ubuntu: apt-get install linux-source-6.12, or pass --source DIR, --tarball FILE or a VERSION"
    )]
    NoDistroSource { dir: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io { path: path.to_owned(), source }
}

/// `VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]` from a tree's top Makefile.
pub fn tree_version(dir: &Path) -> Result<String, SourceError> {
    let not_tree = || SourceError::NotATree { path: dir.to_owned() };
    let makefile = fs::read_to_string(dir.join("Makefile")).map_err(|_| not_tree())?;
    if !dir.join("Kconfig").is_file() || !dir.join("arch/x86").is_dir() {
        return Err(not_tree());
    }
    let var = |name: &str| {
        makefile.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let (Some(v), Some(p)) = (var("VERSION"), var("PATCHLEVEL")) else { return Err(not_tree()) };
    let s = var("SUBLEVEL").unwrap_or_else(|| "0".into());
    let extra = var("EXTRAVERSION").unwrap_or_default();
    Ok(format!("{v}.{p}.{s}{extra}"))
}

/// A git tree's identity: `Some(commit)` when clean, `None` for dirty or non-git trees
/// (those are built, but never cached: their content has no name).
pub fn git_identity(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"])?;
    if fs::canonicalize(&top).ok()? != fs::canonicalize(dir).ok()? {
        return None; // a tree nested in some other repository
    }
    let commit = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])?;
    dirty.is_empty().then_some(commit)
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, SourceError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Distribution source packages, newest first: `/usr/src/linux-source-X.Y.tar.xz`.
/// `KTSTR_DISTRO_SOURCE_DIR` overrides `/usr/src`.
pub fn distro_tarballs() -> (PathBuf, Vec<PathBuf>) {
    let dir = std::env::var_os("KTSTR_DISTRO_SOURCE_DIR").map(PathBuf::from).unwrap_or_else(|| "/usr/src".into());
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|d| d.path())
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with("linux-source-") && (n.ends_with(".tar.xz") || n.ends_with(".tar.gz"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| std::cmp::Reverse(version_key(&p.file_name().unwrap_or_default().to_string_lossy())));
    (dir, found)
}

/// Debian package name and identity of a distro tarball.
pub fn distro_info(tarball: &Path) -> Result<SourceInfo, SourceError> {
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let package = name.trim_end_matches(".tar.xz").trim_end_matches(".tar.gz").to_string();
    Ok(SourceInfo::Distro { package, tarball: tarball.to_owned(), sha256: sha256_file(tarball)? })
}

/// Extracts `tarball` into `dest` (which must not exist yet) atomically: into a temp dir
/// next to it, then renamed. Returns the kernel tree inside (`dest/<top dir>`).
pub fn extract(tarball: &Path, dest: &Path) -> Result<PathBuf, SourceError> {
    if !dest.exists() {
        let parent = dest.parent().expect("dest has a parent");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp = tempfile::Builder::new().prefix(".extract-").tempdir_in(parent).map_err(io_err(parent))?;
        let out = Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(tmp.path())
            .output()
            .map_err(|e| SourceError::Extract { path: tarball.into(), detail: format!("running tar: {e}") })?;
        if !out.status.success() {
            let detail = String::from_utf8_lossy(&out.stderr).lines().take(3).collect::<Vec<_>>().join("; ");
            return Err(SourceError::Extract { path: tarball.into(), detail });
        }
        fs::rename(tmp.keep(), dest).map_err(io_err(dest))?;
    }
    single_subdir(dest)
        .ok_or_else(|| SourceError::Extract { path: tarball.into(), detail: "expected one top-level directory".into() })
}

fn single_subdir(dir: &Path) -> Option<PathBuf> {
    let mut dirs = fs::read_dir(dir).ok()?.filter_map(Result::ok).filter(|d| d.path().is_dir());
    let first = dirs.next()?.path();
    dirs.next().is_none().then_some(first)
}

/// Sort key for version-ish strings: numeric components, so 6.12.117 > 6.12.9.
pub fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).filter_map(|p| p.parse().ok()).collect()
}

/// Whether `version` is `prefix` or a patch release of it (`6.12` matches `6.12.3`, not `6.120`).
pub fn version_matches(prefix: &str, version: &str) -> bool {
    version == prefix || version.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'))
}

/// Looks like a kernel version or prefix: `6`, `6.12`, `6.12.3`, `6.15-rc3`.
pub fn is_version_like(s: &str) -> bool {
    let (main, rc) = match s.split_once("-rc") {
        Some((m, rc)) => (m, Some(rc)),
        None => (s, None),
    };
    let parts_ok = !main.is_empty()
        && main.split('.').count() <= 3
        && main.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    parts_ok && rc.is_none_or(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree(dir: &Path, sub: &str) {
        fs::create_dir_all(dir.join("arch/x86")).unwrap();
        fs::write(dir.join("Kconfig"), "").unwrap();
        fs::write(
            dir.join("Makefile"),
            format!(
                "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = {sub}\nEXTRAVERSION =\nNAME = Baby Opossum Posse\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn version_of_a_tree_skeleton() {
        let d = tempfile::tempdir().unwrap();
        fake_tree(d.path(), "117");
        assert_eq!(tree_version(d.path()).unwrap(), "6.12.117");
    }

    #[test]
    fn non_trees_are_rejected_by_name() {
        let d = tempfile::tempdir().unwrap();
        let e = tree_version(d.path()).unwrap_err();
        assert!(matches!(e, SourceError::NotATree { .. }));
        assert!(e.to_string().contains(&d.path().display().to_string()));
        fs::write(d.path().join("Makefile"), "all:\n").unwrap();
        assert!(tree_version(d.path()).is_err());
    }

    #[test]
    fn git_identity_clean_dirty_and_untracked() {
        if Command::new("git").arg("--version").output().is_err() {
            eprintln!("skipped: git not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        fake_tree(d.path(), "1");
        assert_eq!(git_identity(d.path()), None, "not a git tree");
        let git = |args: &[&str]| {
            let ok = Command::new("git").arg("-C").arg(d.path()).args(args).output().unwrap().status.success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]);
        let id = git_identity(d.path()).expect("clean tree has an identity");
        assert_eq!(id.len(), 40);
        fs::write(d.path().join("untracked"), "x").unwrap();
        assert_eq!(git_identity(d.path()), Some(id), "untracked files do not make a tree dirty");
        fs::write(d.path().join("Kconfig"), "changed").unwrap();
        assert_eq!(git_identity(d.path()), None, "dirty tree has no identity");
    }

    #[test]
    fn version_helpers() {
        assert!(version_matches("6.12", "6.12.3"));
        assert!(version_matches("6.12", "6.12"));
        assert!(!version_matches("6.1", "6.12.3"));
        assert!(version_matches("6.15", "6.15-rc3"));
        assert!(version_key("6.12.117") > version_key("6.12.9"));
        for ok in ["6", "6.12", "6.12.3", "6.15-rc3"] {
            assert!(is_version_like(ok), "{ok}");
        }
        for bad in ["", "6.", "abc", "6.12.3.4", "6.x", "./6.12", "6.15-rc"] {
            assert!(!is_version_like(bad), "{bad}");
        }
    }

    #[test]
    fn extract_bad_tarball_names_it_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("linux-6.12.tar.xz");
        fs::write(&bad, "this is not a tarball").unwrap();
        let dest = d.path().join("work/src-x");
        let e = extract(&bad, &dest).unwrap_err();
        assert!(e.to_string().contains("linux-6.12.tar.xz"), "{e}");
        assert!(!dest.exists());
        let leftovers = fs::read_dir(d.path().join("work")).unwrap().count();
        assert_eq!(leftovers, 0);
    }
}
