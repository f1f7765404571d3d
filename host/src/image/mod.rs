//! Initramfs images (cpio newc).
//!
//! A run boots with two concatenated newc archives:
//! - a **base** holding `/init`, the scheduler and other binaries with the closure of their shared
//!   libraries. It is a pure function of its inputs, so it is cached by content hash
//!   ([`cache_base`]) and reused across runs; [`cached_base`] finds it again from a manifest of
//!   its inputs' metadata without building or hashing anything;
//! - a small per-run **suffix** (e.g. `/ktstr/plan`), appended after the base
//!   ([`write_concat`], [`suffix_offset`]). The kernel unpacks concatenated archives in order, and
//!   a later entry replaces an earlier one at the same path. A loader that places files in
//!   guest memory itself can skip the concatenation (the micro-VMM does).
//!
//! ```no_run
//! use ktstr_host::image::{InitramfsBuilder, cache_base, write_concat};
//! # fn main() -> Result<(), ktstr_host::image::ImageError> {
//! let mut base = InitramfsBuilder::new();
//! base.add_binary("target/release/ktstr-init", "/init")?;
//! base.add_binary("/usr/bin/scx_simple", "/bin/scx_simple")?;
//! let base_path = cache_base(&base, "/tmp/ktstr/images".as_ref())?;
//!
//! let mut suffix = InitramfsBuilder::new();
//! suffix.add_bytes("/ktstr/plan", b"postcard bytes".to_vec(), 0o644)?;
//! write_concat(&base_path, &suffix, "/tmp/run-1.cpio".as_ref())?;
//! # Ok(()) }
//! ```

mod builder;
mod cache;
mod elf;
mod ldcache;
mod manifest;
#[cfg(test)]
mod testutil;

pub use builder::{EntryKind, InitramfsBuilder};
pub use cache::{cache_base, concat_files, suffix_offset, write_concat};
pub use elf::{DEFAULT_LIB_DIRS, FoundVia, ResolvedLib, elf_closure};
pub use manifest::{Lookup, RACY_WINDOW, cached_base, executable_identity};

use std::path::PathBuf;

/// Errors of this module. Each names the input it is about and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {}: {source}; check that it exists and is readable", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    #[error("cannot write {}: {source}; check that the directory is writable and has free space",
        path.display())]
    Write { path: PathBuf, source: std::io::Error },

    #[error("{} is not a regular file; give the path of a file (symlinks to files are fine)",
        path.display())]
    NotAFile { path: PathBuf },

    #[error("guest path {path:?} {reason}; use an absolute path such as /init or /bin/tool")]
    InvalidGuestPath { path: String, reason: &'static str },

    #[error(
        "symlink {path:?} has target {target:?}, which is empty or contains NUL; give the path \
        it should point to"
    )]
    InvalidSymlinkTarget { path: String, target: String },

    #[error("guest path {path:?} conflicts with {existing:?}, which {reason}; pick another path")]
    PathConflict { path: String, existing: String, reason: &'static str },

    #[error(
        "mode {mode:#o} for guest path {path:?} has bits outside 0o7777; pass permission bits \
        only (e.g. 0o755), the file type is implied"
    )]
    InvalidMode { path: String, mode: u32 },

    #[error("{} is not valid UTF-8, which cpio names must be; rename it or copy it to a UTF-8 path",
        path.display())]
    NotUtf8 { path: PathBuf },

    #[error("{} is {size} bytes, over the 4 GiB limit of a newc archive entry; strip it \
        (e.g. `strip --strip-debug`)", path.display())]
    FileTooLarge { path: PathBuf, size: u64 },

    #[error("{} changed while the initramfs was being written; rerun when it is no longer \
        being modified (e.g. after the build that writes it finishes)", path.display())]
    InputChanged { path: PathBuf },

    #[error("{} looks like an ELF file but cannot be parsed ({detail}); rebuild it or check that \
        it is not truncated", path.display())]
    MalformedElf { path: PathBuf, detail: String },

    #[error("{} is a {class} ELF for {machine}, but the guest is x86_64; build it for \
        x86_64-unknown-linux-gnu", path.display())]
    WrongArch { path: PathBuf, machine: String, class: &'static str },

    #[error("interpreter {interp} of {} not found or not an x86_64 ELF; install the C library \
        it was linked against, or link the binary statically", binary.display())]
    MissingInterpreter { interp: String, binary: PathBuf },

    #[error("shared library {library} needed by {} not found (searched: {}){}; install the \
        package that provides it, give the binary a RUNPATH to its directory \
        (-Wl,-rpath,DIR), or link it statically", needed_by.display(), show_paths(searched),
        show_rejected(rejected))]
    MissingLibrary {
        library: String,
        needed_by: PathBuf,
        /// Directories (or the exact path) that were looked at, in search order.
        searched: Vec<PathBuf>,
        /// Files with the right name that were skipped: not x86_64 ELF, or unreadable.
        rejected: Vec<PathBuf>,
    },
}

fn show_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

fn show_rejected(rejected: &[PathBuf]) -> String {
    if rejected.is_empty() {
        String::new()
    } else {
        format!("; skipped as not x86_64 or unreadable: {}", show_paths(rejected))
    }
}
