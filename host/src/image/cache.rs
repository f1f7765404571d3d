//! Content-addressed base archives and base + suffix concatenation.

use super::ImageError;
use super::builder::{InitramfsBuilder, combine, read_err, write_err};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

type Result<T> = std::result::Result<T, ImageError>;

/// The kernel only looks for the next archive's magic at a 4-byte aligned offset from the start
/// of the initrd, and skips NUL bytes before it.
const ARCHIVE_ALIGN: u64 = 4;

/// `<cache_dir>/initramfs-<content hash>.cpio`, written only if absent. The archive is written
/// to a temp file in `cache_dir`, synced and renamed into place, so the path never names a
/// partial file; concurrent callers with the same inputs write identical bytes and the last
/// rename wins harmlessly. Errors if a host file changes while it is being written.
pub fn cache_base(builder: &InitramfsBuilder, cache_dir: &Path) -> Result<PathBuf> {
    let expected = builder.write_archive(&mut io::sink(), Path::new("<hash>"))?;
    let target = cache_dir.join(format!("initramfs-{}.cpio", hex::encode(combine(&expected))));
    if target.is_file() {
        return Ok(target);
    }
    fs::create_dir_all(cache_dir).map_err(|e| write_err(cache_dir, e))?;
    let tmp = temp_in(cache_dir)?;
    let written = {
        let mut out = BufWriter::new(tmp.as_file());
        let records = builder.write_archive(&mut out, tmp.path())?;
        out.flush().map_err(|e| write_err(tmp.path(), e))?;
        records
    };
    if let Some(i) = expected.iter().zip(&written).position(|(a, b)| a != b) {
        return Err(ImageError::InputChanged { path: builder.describe_entry(i) });
    }
    publish(tmp, &target)?;
    Ok(target)
}

/// Offset of the suffix archive in `base ++ padding ++ suffix`: `base_len` rounded up to 4.
/// For callers that place the two archives in guest memory themselves.
pub fn suffix_offset(base_len: u64) -> u64 {
    base_len.div_ceil(ARCHIVE_ALIGN) * ARCHIVE_ALIGN
}

/// Writes `out` = the archive file `base`, NUL padding to [`suffix_offset`], then `suffix` as a
/// second archive. Atomic like [`cache_base`].
pub fn write_concat(base: &Path, suffix: &InitramfsBuilder, out: &Path) -> Result<()> {
    let suffix_bytes = suffix.to_bytes()?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = temp_in(dir)?;
    let tmp_path = tmp.path().to_path_buf();
    let mut base_file = File::open(base).map_err(|e| read_err(base, e))?;
    // File to file: io::copy uses copy_file_range, so a large base is not read into memory.
    let base_len = io::copy(&mut base_file, tmp.as_file_mut()).map_err(|e| match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::PermissionDenied => write_err(&tmp_path, e),
        _ => read_err(base, e),
    })?;
    let pad = usize::try_from(suffix_offset(base_len) - base_len).unwrap_or(0);
    let file = tmp.as_file_mut();
    file.write_all(&[0u8; ARCHIVE_ALIGN as usize][..pad])
        .and_then(|()| file.write_all(&suffix_bytes))
        .map_err(|e| write_err(&tmp_path, e))?;
    publish(tmp, out)
}

/// Writes `out` = the files `parts` back to back, each after the first starting at a 4-byte
/// aligned offset (NUL padding), i.e. the bytes a loader that places the parts in memory itself
/// produces (`vmm::boot::load_initrd`). For a backend that needs one initrd file (QEMU).
/// The file appears atomically (temp file + rename) but is not synced: it is a per-run file.
pub fn concat_files(parts: &[impl AsRef<Path>], out: &Path) -> Result<u64> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = temp_in(dir)?;
    let tmp_path = tmp.path().to_path_buf();
    let mut len = 0u64;
    for part in parts {
        let part = part.as_ref();
        let pad = usize::try_from(suffix_offset(len) - len).unwrap_or(0);
        let file = tmp.as_file_mut();
        file.write_all(&[0u8; ARCHIVE_ALIGN as usize][..pad]).map_err(|e| write_err(&tmp_path, e))?;
        len += pad as u64;
        let mut src = File::open(part).map_err(|e| read_err(part, e))?;
        len += io::copy(&mut src, tmp.as_file_mut()).map_err(|e| match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::PermissionDenied => write_err(&tmp_path, e),
            _ => read_err(part, e),
        })?;
    }
    tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(|e| write_err(&tmp_path, e))?;
    tmp.persist(out).map_err(|e| write_err(out, e.error))?;
    Ok(len)
}

fn temp_in(dir: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new().prefix(".initramfs-").suffix(".tmp").tempfile_in(dir).map_err(|e| write_err(dir, e))
}

/// Syncs the temp file, makes it world-readable (the temp file is 0600) and renames it to
/// `target`.
fn publish(tmp: NamedTempFile, target: &Path) -> Result<()> {
    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .map_err(|e| write_err(tmp.path(), e))?;
    tmp.persist(target).map_err(|e| write_err(target, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testutil::{parse_archives, split_archives};
    use std::os::unix::fs::MetadataExt;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Barrier};

    fn base_builder(dir: &Path) -> InitramfsBuilder {
        let init = dir.join("init-src");
        fs::write(&init, b"\x7fnot really an ELF, just bytes").unwrap();
        let mut b = InitramfsBuilder::new();
        b.add_file("/init", &init, 0o755).unwrap();
        b.add_bytes("/etc/motd", b"hello\n".to_vec(), 0o644).unwrap();
        b.add_symlink("/bin/init", "/init").unwrap();
        b
    }

    fn plan_suffix(plan: &[u8]) -> InitramfsBuilder {
        let mut s = InitramfsBuilder::new();
        s.add_bytes("/ktstr/plan", plan.to_vec(), 0o644).unwrap();
        s
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn cache_base_writes_once_and_returns_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("images");
        let b = base_builder(dir.path());
        let first = cache_base(&b, &cache).unwrap();
        let expected = format!("initramfs-{}.cpio", b.content_hash().unwrap());
        assert_eq!(first, cache.join(&expected));
        assert_eq!(fs::read(&first).unwrap(), b.to_bytes().unwrap());
        let ino = fs::metadata(&first).unwrap().ino();

        let second = cache_base(&b, &cache).unwrap();
        assert_eq!(second, first);
        assert_eq!(fs::metadata(&second).unwrap().ino(), ino, "not rewritten");
        assert_eq!(dir_names(&cache), [expected], "no temp files left behind");
        assert_eq!(fs::metadata(&first).unwrap().mode() & 0o777, 0o644);
    }

    #[test]
    fn cache_base_concurrent_callers_agree() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(dir.path().join("images"));
        let b = Arc::new(base_builder(dir.path()));
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (cache, b, barrier) = (cache.clone(), b.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cache_base(&b, &cache).unwrap()
                })
            })
            .collect();
        let paths: Vec<PathBuf> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(paths.windows(2).all(|w| w[0] == w[1]), "{paths:?}");
        assert_eq!(fs::read(&paths[0]).unwrap(), b.to_bytes().unwrap());
        assert_eq!(dir_names(&cache).len(), 1);
    }

    #[test]
    fn changed_content_gets_a_new_cache_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("images");
        let mut b = base_builder(dir.path());
        let first = cache_base(&b, &cache).unwrap();
        b.add_bytes("/etc/motd", b"changed\n".to_vec(), 0o644).unwrap();
        let second = cache_base(&b, &cache).unwrap();
        assert_ne!(first, second);
        assert_eq!(dir_names(&cache).len(), 2);
    }

    #[test]
    fn input_changed_between_hash_and_write_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let b = base_builder(dir.path());
        let expected = b.write_archive(&mut io::sink(), Path::new("<hash>")).unwrap();
        fs::write(dir.path().join("init-src"), b"\x7fnot really an ELF, just BYTES").unwrap();
        let written = b.write_archive(&mut io::sink(), Path::new("<hash>")).unwrap();
        let i = expected.iter().zip(&written).position(|(a, b)| a != b).unwrap();
        assert_eq!(b.describe_entry(i), dir.path().join("init-src"));
    }

    #[test]
    fn cache_dir_that_is_a_file_is_a_write_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let not_dir = dir.path().join("file");
        fs::write(&not_dir, b"").unwrap();
        let err = cache_base(&base_builder(dir.path()), &not_dir).unwrap_err();
        assert!(matches!(err, ImageError::Write { .. }), "{err:?}");
        assert!(err.to_string().contains(not_dir.to_str().unwrap()), "{err}");
    }

    #[test]
    fn concat_parses_as_base_then_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let b = base_builder(dir.path());
        let base = cache_base(&b, &dir.path().join("images")).unwrap();
        let out = dir.path().join("run.cpio");
        write_concat(&base, &plan_suffix(b"PLAN"), &out).unwrap();

        let bytes = fs::read(&out).unwrap();
        let archives = parse_archives(&bytes);
        let names = |i: usize| archives[i].iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        assert_eq!(archives.len(), 2);
        assert_eq!(names(0), ["bin", "bin/init", "etc", "etc/motd", "init"]);
        assert_eq!(names(1), ["ktstr", "ktstr/plan"]);
        assert_eq!(archives[1][1].data, b"PLAN");
    }

    #[test]
    fn unaligned_base_is_padded_to_four_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.cpio");
        let mut base_bytes = base_builder(dir.path()).to_bytes().unwrap();
        base_bytes.extend([0, 0]); // e.g. a base written by another tool
        fs::write(&base, &base_bytes).unwrap();
        let out = dir.path().join("run.cpio");
        write_concat(&base, &plan_suffix(b"P"), &out).unwrap();
        let bytes = fs::read(&out).unwrap();
        let at = suffix_offset(base_bytes.len() as u64) as usize;
        assert_eq!(at % 4, 0);
        assert_eq!(bytes.len(), at + plan_suffix(b"P").to_bytes().unwrap().len());
        assert_eq!(&bytes[at..at + 6], b"070701");
        assert_eq!(parse_archives(&bytes).len(), 2);
        assert_eq!((suffix_offset(0), suffix_offset(5), suffix_offset(8)), (0, 8, 8));
    }

    #[test]
    fn concat_files_equals_write_concat() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.cpio");
        let mut base_bytes = base_builder(dir.path()).to_bytes().unwrap();
        base_bytes.extend([0, 0]); // unaligned, so padding is needed
        fs::write(&base, &base_bytes).unwrap();
        let suffix = dir.path().join("suffix.cpio");
        fs::write(&suffix, plan_suffix(b"PLAN").to_bytes().unwrap()).unwrap();
        let (a, b) = (dir.path().join("a.cpio"), dir.path().join("b.cpio"));
        write_concat(&base, &plan_suffix(b"PLAN"), &a).unwrap();
        let len = concat_files(&[&base, &suffix], &b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert_eq!(len, fs::metadata(&b).unwrap().len());
        assert_eq!(fs::metadata(&b).unwrap().mode() & 0o777, 0o644);
        let missing = dir.path().join("missing");
        let err = concat_files(&[&base, &missing], &b).unwrap_err();
        assert!(matches!(err, ImageError::Read { .. }) && err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn gnu_cpio_lists_both_archives() {
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("skipped: the cpio tool is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let b = base_builder(dir.path());
        let base = cache_base(&b, &dir.path().join("images")).unwrap();
        let out = dir.path().join("run.cpio");
        write_concat(&base, &plan_suffix(b"PLAN"), &out).unwrap();
        let bytes = fs::read(&out).unwrap();
        // GNU cpio stops at the first trailer: list each archive on its own.
        let (first, second) = split_archives(&bytes);
        assert_eq!(cpio_list(first), "bin\nbin/init\netc\netc/motd\ninit\n");
        assert_eq!(cpio_list(second), "ktstr\nktstr/plan\n");
        let verbose = cpio_run(first, &["-itv", "--quiet"]);
        assert!(verbose.contains("bin/init -> /init"), "{verbose}");
    }

    fn cpio_list(archive: &[u8]) -> String {
        cpio_run(archive, &["-it", "--quiet"])
    }

    fn cpio_run(archive: &[u8], args: &[&str]) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }
}
