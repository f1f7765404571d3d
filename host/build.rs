//! Builds the guest init (`ktstr-init`) as a static binary and embeds it, so `ktstr-host`
//! is self-contained: every initramfs gets the init that matches this host's protocol.
//! `KTSTR_INIT_BIN=/path/to/ktstr-init` embeds a prebuilt binary instead.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KTSTR_INIT_BIN");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let bin = match std::env::var_os("KTSTR_INIT_BIN") {
        Some(p) => PathBuf::from(p),
        None => build_init(&out),
    };
    let dest = out.join("ktstr-init");
    std::fs::copy(&bin, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", bin.display()));
    println!("cargo:rustc-env=KTSTR_INIT_EMBED={}", dest.display());
}

fn build_init(out: &Path) -> PathBuf {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root");
    for dir in ["init", "shared"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    // <target>/<profile>/build/<pkg>/out -> <target>/ktstr-init: its own target dir, so the
    // nested cargo never waits on the lock the outer cargo holds.
    let target_dir = out.ancestors().nth(4).expect("target dir").join("ktstr-init");
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "--locked", "-p", "ktstr-init", "--target", triple])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings (clippy wrapper, coverage flags, target dir) are not ours.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k.starts_with("RUSTC") || k == "RUSTFLAGS" {
            cmd.env_remove(&*k);
        }
    }
    // A static, non-PIE executable: runs as PID 1 with nothing else in the initramfs.
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static -C relocation-model=static");
    let status = cmd.status().expect("running cargo to build ktstr-init");
    assert!(status.success(), "building ktstr-init failed (see the output above)");
    target_dir.join(triple).join("release/ktstr-init")
}
