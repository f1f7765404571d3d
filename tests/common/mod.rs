//! Helpers shared by the integration tests: run the real `ktstr-host` binary, get the real
//! default kernel (built from the distro source once and cached), make temp caches.
#![allow(dead_code, unused_imports)]

mod known_bugs;
mod skip;
mod verdicts;
pub use known_bugs::*;
pub use skip::*;
pub use verdicts::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ktstr-host")
}

/// `ktstr-host` with a clean environment for ktstr variables.
pub fn host() -> Command {
    let mut c = Command::new(bin());
    for var in ["KTSTR_KERNEL", "KTSTR_CACHE_DIR", "KTSTR_KERNEL_MIRROR", "RUST_LOG"] {
        c.env_remove(var);
    }
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn ktstr-host");
    eprintln!(
        "$ {cmd:?}\n-- exit {:?}\n-- stdout:\n{}\n-- stderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "command failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// The default kernel from the user's cache (a real kernel built from the distro source);
/// built on first use. `None` only where no distro source exists: then the calling test is
/// logged as skipped (see `skip`), so its early return shows up in the summary.
pub fn default_kernel() -> Option<&'static serde_json::Value> {
    static K: OnceLock<Result<serde_json::Value, &'static str>> = OnceLock::new();
    let k = K.get_or_init(|| {
        let out = run(host().args(["kernel", "resolve", "--json"]));
        if out.status.success() {
            return Ok(json(&out));
        }
        if !Path::new("/usr/src")
            .read_dir()
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("linux-source-"))))
        {
            return Err("no kernel cached and no /usr/src/linux-source-* (apt-get install linux-source-6.12)");
        }
        Ok(json(&run(host().args(["kernel", "build", "--json"]))))
    });
    k.as_ref().map_err(skip).ok()
}

/// The cache entry dir of the default kernel.
pub fn default_entry_dir() -> Option<PathBuf> {
    let k = default_kernel()?;
    let image = PathBuf::from(k["image"].as_str().expect("image path"));
    Some(image.parent().expect("entry dir").to_path_buf())
}

/// Copies a cache entry into `root` under `key`, rewriting its metadata with `edit`.
pub fn copy_entry(src: &Path, root: &Path, key: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dst = root.join(key);
    std::fs::create_dir_all(&dst).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("metadata.json")).unwrap()).unwrap();
    for f in meta["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        // Hard links: same bytes, no copy of a 30 MB vmlinux per test.
        std::fs::hard_link(src.join(name), dst.join(name))
            .or_else(|_| std::fs::copy(src.join(name), dst.join(name)).map(|_| ()))
            .unwrap();
    }
    meta["key"] = key.into();
    edit(&mut meta);
    std::fs::write(dst.join("metadata.json"), serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    dst
}
