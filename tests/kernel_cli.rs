//! `ktstr-host kernel ...` and `--kernel` resolution through the real binary, against the
//! real default kernel (built from Debian's linux-source-6.12 once, then cached).

mod common;

use common::*;
use std::fs;
use std::path::Path;

fn fail_with(cmd: &mut std::process::Command, needles: &[&str]) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "expected failure");
    let err = text(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`:\n{err}");
    }
    err
}

#[test]
fn distro_kernel_is_built_cached_and_listed() {
    let Some(k) = default_kernel() else { return };
    let key = k["key"].as_str().expect("the default kernel comes from the cache");
    assert!(k["version"].as_str().unwrap().starts_with("6.12."), "{k}");
    let list = json(&run(host().args(["kernel", "list", "--json"])));
    let row = list.as_array().unwrap().iter().find(|r| r["key"] == key).expect("entry listed");
    assert_eq!(row["current"], true);
    assert_eq!(row["metadata"]["flavour"], "minimal");
    let source = &row["metadata"]["source"];
    assert!(source["type"] == "distro" || source["type"] == "tarball", "{source}");
    let dir = Path::new(row["path"].as_str().unwrap());
    for f in ["bzImage", "vmlinux", "config", "metadata.json"] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    let config = fs::read_to_string(dir.join("config")).unwrap();
    for opt in ["CONFIG_SCHED_CLASS_EXT=y", "CONFIG_DEBUG_INFO_BTF=y", "CONFIG_NUMA=y", "CONFIG_CPUSETS=y"] {
        assert!(config.lines().any(|l| l == opt), "{opt} not in the built config");
    }
    // The stored vmlinux keeps BTF (sched_ext tooling needs it) though DWARF was stripped.
    let vmlinux = fs::read(dir.join("vmlinux")).unwrap();
    let elf = goblin::elf::Elf::parse(&vmlinux).expect("vmlinux is ELF");
    let names: Vec<&str> = elf.section_headers.iter().filter_map(|s| elf.shdr_strtab.get_at(s.sh_name)).collect();
    assert!(names.contains(&".BTF"), "sections: {names:?}");
    assert!(!names.contains(&".debug_info"), "debug info should be stripped");
}

#[test]
fn bad_kernel_paths_are_named() {
    let d = tempfile::tempdir().unwrap();
    let txt = d.path().join("notes.txt");
    fs::write(&txt, "not a kernel\n").unwrap();
    fail_with(host().args(["kernel", "resolve", "--kernel"]).arg(&txt), &["notes.txt", "not a kernel image"]);

    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[6] = 1;
    elf[16] = 2;
    elf[18] = 183; // AArch64
    let arm = d.path().join("Image");
    fs::write(&arm, &elf).unwrap();
    fail_with(host().args(["kernel", "resolve", "--kernel"]).arg(&arm), &["not x86_64"]);

    let Some(entry) = default_entry_dir() else { return };
    let real = fs::read(entry.join("bzImage")).unwrap();
    let cut = d.path().join("bzImage.cut");
    fs::write(&cut, &real[..real.len() / 2]).unwrap();
    fail_with(host().args(["kernel", "resolve", "--kernel"]).arg(&cut), &["truncated bzImage", "bzImage.cut"]);
    let ok = json(&run(host().args(["kernel", "resolve", "--json", "--kernel"]).arg(entry.join("bzImage"))));
    assert_eq!(ok["kind"], "bzimage");
}

#[test]
fn non_tree_source_and_missing_tools_fail_clearly() {
    let empty = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    fail_with(
        host().env("KTSTR_CACHE_DIR", cache.path()).args(["kernel", "build", "--source"]).arg(empty.path()),
        &["not a Linux kernel source tree"],
    );
    fail_with(
        host()
            .env("KTSTR_CACHE_DIR", cache.path())
            .env("PATH", "/nonexistent")
            .args(["kernel", "build", "--source"])
            .arg(empty.path()),
        &["missing build dependencies", "flex", "apt-get install"],
    );
    assert_eq!(fs::read_dir(cache.path()).map(|d| d.count()).unwrap_or(0), 0, "nothing written to the cache");
}

#[test]
fn resolution_order_versions_keys_and_env() {
    let Some(src) = default_entry_dir() else { return };
    let root = tempfile::tempdir().unwrap();
    copy_entry(&src, root.path(), "old-9", |m| {
        m["version"] = "6.12.9".into();
        m["built_at"] = "2030-01-01T00:00:00Z".into();
    });
    copy_entry(&src, root.path(), "new-117", |m| {
        m["version"] = "6.12.117".into();
        m["built_at"] = "2020-01-01T00:00:00Z".into();
    });
    copy_entry(&src, root.path(), "stale", |m| {
        m["version"] = "6.13.1".into();
        m["config_hash"] = "000000000000".into();
        m["built_at"] = "2031-01-01T00:00:00Z".into();
    });
    let resolve = |args: &[&str]| {
        let mut c = host();
        c.env("KTSTR_CACHE_DIR", root.path()).args(["kernel", "resolve", "--json"]).args(args);
        run(&mut c)
    };
    // Version prefix: highest patch release, not the newest build.
    assert_eq!(json(&resolve(&["--kernel", "6.12"]))["key"], "new-117");
    assert_eq!(json(&resolve(&["--kernel", "6.12.9"]))["key"], "old-9");
    // Default: newest build with the current fragment (the stale one is newer but skipped).
    assert_eq!(json(&resolve(&[]))["key"], "old-9");
    // A stale entry is not used for its version; the error says why.
    let out = resolve(&["--kernel", "6.13"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("older fragment") && text(&out.stderr).contains("stale"));
    // Exact cache key, and the same through $KTSTR_KERNEL.
    assert_eq!(json(&resolve(&["--kernel", "stale"]))["key"], "stale");
    let env = json(&run(host()
        .env("KTSTR_CACHE_DIR", root.path())
        .env("KTSTR_KERNEL", "old-9")
        .args(["kernel", "resolve", "--json"])));
    assert_eq!(env["key"], "old-9");
    // Unknown version / key: the error lists what was tried.
    let out = resolve(&["--kernel", "5.99"]);
    assert!(text(&out.stderr).contains("no kernel found for version 5.99"), "{}", text(&out.stderr));
    let out = resolve(&["--kernel", "no-such-key"]);
    let err = text(&out.stderr);
    assert!(err.contains("not an existing path") && err.contains("no entry with key"), "{err}");
}

#[test]
fn corrupt_entries_are_listed_skipped_and_cleaned() {
    let Some(src) = default_entry_dir() else { return };
    let root = tempfile::tempdir().unwrap();
    copy_entry(&src, root.path(), "good", |m| m["built_at"] = "2020-01-01T00:00:00Z".into());
    let gone = copy_entry(&src, root.path(), "no-image", |m| m["built_at"] = "2030-01-01T00:00:00Z".into());
    fs::remove_file(gone.join("bzImage")).unwrap();
    let bad = copy_entry(&src, root.path(), "bad-json", |_| {});
    fs::write(bad.join("metadata.json"), "{").unwrap();
    fs::create_dir_all(root.path().join(".tmp-half-99999999")).unwrap();

    let list = json(&run(host().env("KTSTR_CACHE_DIR", root.path()).args(["kernel", "list", "--json"])));
    let corrupt: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["corrupt"].is_string())
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(corrupt.len(), 2, "{list}");
    let resolved = json(&run(host().env("KTSTR_CACHE_DIR", root.path()).args(["kernel", "resolve", "--json"])));
    assert_eq!(resolved["key"], "good", "default resolution skips corrupt entries");
    fail_with(
        host().env("KTSTR_CACHE_DIR", root.path()).args(["kernel", "resolve", "--kernel", "no-image"]),
        &["corrupt"],
    );

    let out = run(host().env("KTSTR_CACHE_DIR", root.path()).args(["kernel", "clean", "--corrupt-only"]));
    assert!(out.status.success());
    assert!(root.path().join("good").is_dir());
    for gone in ["no-image", "bad-json", ".tmp-half-99999999"] {
        assert!(!root.path().join(gone).exists(), "{gone} should be removed");
    }

    copy_entry(&src, root.path(), "second", |m| m["built_at"] = "2021-01-01T00:00:00Z".into());
    assert!(run(host().env("KTSTR_CACHE_DIR", root.path()).args(["kernel", "clean", "--keep", "1"])).status.success());
    assert!(root.path().join("second").exists() && !root.path().join("good").exists());
}

/// What the local mirror serves as `v6.x/sha256sums.asc`.
enum Sums {
    /// The tarball's true sum, clearsigned as kernel.org publishes it.
    True,
    /// A well-formed but wrong sum for the tarball.
    Wrong,
    /// No sums file (404).
    Missing,
}

/// A local HTTP server standing in for kernel.org (unreachable here): releases.json, a real
/// release tarball (the distro's source tarball under the kernel.org file name) and its sums.
struct Mirror {
    url: String,
    version: String,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Mirror {
    /// `None` (test skipped) without a default kernel built from the distro tarball.
    fn start(src: &Path, sums: Sums) -> Option<Mirror> {
        let meta: serde_json::Value = serde_json::from_slice(&fs::read(src.join("metadata.json")).unwrap()).unwrap();
        let version = meta["version"].as_str().unwrap().to_string();
        let Some(tarball) = meta["source"]["tarball"].as_str().map(str::to_owned) else {
            skip("the default kernel was not built from the distro tarball");
            return None;
        };
        let sha = meta["source"]["sha256"].as_str().unwrap().to_string();
        let name = format!("linux-{version}.tar.xz");
        let sums_body = match sums {
            Sums::True => Some(sha),
            Sums::Wrong => Some("0".repeat(64)),
            Sums::Missing => None,
        }
        .map(|sum| {
            format!(
                "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{}  linux-6.6.70.tar.xz\n{sum}  {name}\n\
                 -----BEGIN PGP SIGNATURE-----\n\nnot checked\n-----END PGP SIGNATURE-----\n",
                "1".repeat(64)
            )
        });
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let releases = serde_json::json!({"releases": [
            {"moniker": "mainline", "version": "6.13-rc7", "source": null},
            {"moniker": "longterm", "version": version, "source": "https://cdn.kernel.org/should-not-be-used"},
            {"moniker": "longterm", "version": "6.6.70", "source": null},
            {"moniker": "linux-next", "version": "next-20250110", "source": null},
        ]});
        let tar_path = format!("/pub/linux/kernel/v6.x/{name}");
        let handle = std::thread::spawn(move || {
            let mut served = Vec::new();
            for req in server.incoming_requests() {
                let url = req.url().to_string();
                served.push(url.clone());
                let _ = match (url.as_str(), &sums_body) {
                    ("/releases.json", _) => req.respond(tiny_http::Response::from_string(releases.to_string())),
                    ("/pub/linux/kernel/v6.x/sha256sums.asc", Some(body)) => {
                        req.respond(tiny_http::Response::from_string(body.clone()))
                    }
                    (u, _) if u == tar_path => {
                        req.respond(tiny_http::Response::from_file(fs::File::open(&tarball).unwrap()))
                    }
                    ("/stop", _) => {
                        let _ = req.respond(tiny_http::Response::empty(200));
                        break;
                    }
                    _ => req.respond(tiny_http::Response::empty(404)),
                };
            }
            served
        });
        Some(Mirror { url: format!("http://127.0.0.1:{port}"), version, handle: Some(handle) })
    }

    /// `ktstr-host ARGS` with this mirror and cache `root`.
    fn cmd(&self, root: &Path, args: &[&str]) -> std::process::Command {
        let mut c = host();
        c.env("KTSTR_CACHE_DIR", root).env("KTSTR_KERNEL_MIRROR", &self.url).args(args);
        c
    }

    /// Stops the server; the URLs it served.
    fn stop(mut self) -> Vec<String> {
        let _ = ureq::get(&format!("{}/stop", self.url)).call();
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Files under the cache's downloads directory (none, or the tarball; never a temp file).
fn downloads(root: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(root.join(".work/downloads")) else { return Vec::new() };
    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn download_path_against_a_local_mirror() {
    let Some(src) = default_entry_dir() else { return };
    let Some(mirror) = Mirror::start(&src, Sums::True) else { return };
    let version = mirror.version.clone();
    let root = tempfile::tempdir().unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(src.join("metadata.json")).unwrap()).unwrap();
    let key = meta["key"].as_str().unwrap();
    copy_entry(&src, root.path(), key, |_| {});
    // "6.12" resolves to the newest 6.12.x listed, is downloaded, verified against the
    // published sum, and found in the cache by content (same bytes as the distro
    // tarball): no rebuild.
    let out = run(&mut mirror.cmd(root.path(), &["kernel", "build", "6.12", "--json"]));
    let k = json(&out);
    assert_eq!(k["key"], key);
    let err = text(&out.stderr);
    assert!(err.contains("download") && err.contains("cached"), "{err}");
    assert_eq!(downloads(root.path()), [format!("linux-{version}.tar.xz")]);
    // A version kernel.org does not have.
    fail_with(&mut mirror.cmd(root.path(), &["kernel", "build", "6.99"]), &["6.99", "not a release", &version]);
    // Not a version at all.
    fail_with(&mut mirror.cmd(root.path(), &["kernel", "build", "6.x"]), &["not a kernel version"]);
    let served = mirror.stop();
    assert!(served.iter().any(|u| u.ends_with(".tar.xz")), "{served:?}");
    assert!(served.iter().any(|u| u.ends_with("/v6.x/sha256sums.asc")), "{served:?}");
}

/// A tarball whose bytes do not match the published sum is refused, naming both sums, the
/// file and the URL, and nothing of it stays in the cache.
#[test]
fn a_download_with_a_wrong_published_sum_fails_and_leaves_nothing() {
    let Some(src) = default_entry_dir() else { return };
    let Some(mirror) = Mirror::start(&src, Sums::Wrong) else { return };
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(src.join("metadata.json")).unwrap()).unwrap();
    let (sha, version) = (meta["source"]["sha256"].as_str().unwrap(), mirror.version.clone());
    let root = tempfile::tempdir().unwrap();
    // The entry the bytes would be found as: whatever happens, no kernel build starts.
    copy_entry(&src, root.path(), meta["key"].as_str().unwrap(), |_| {});
    let tar_url = format!("{}/pub/linux/kernel/v6.x/linux-{version}.tar.xz", mirror.url);
    fail_with(
        &mut mirror.cmd(root.path(), &["kernel", "build", "6.12"]),
        &[&"0".repeat(64), sha, &tar_url, &format!("linux-{version}.tar.xz"), "sha256sums.asc"],
    );
    assert_eq!(downloads(root.path()), Vec::<String>::new(), "nothing left in the downloads");
    mirror.stop();
}

/// A mirror that publishes no sums: refused with what to do, unless explicitly allowed.
#[test]
fn a_mirror_without_sums_is_refused_unless_allowed() {
    let Some(src) = default_entry_dir() else { return };
    let Some(mirror) = Mirror::start(&src, Sums::Missing) else { return };
    let root = tempfile::tempdir().unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(src.join("metadata.json")).unwrap()).unwrap();
    let key = meta["key"].as_str().unwrap();
    copy_entry(&src, root.path(), key, |_| {});
    fail_with(
        &mut mirror.cmd(root.path(), &["kernel", "build", "6.12"]),
        &["no published sha256", "sha256sums.asc", "KTSTR_ALLOW_UNVERIFIED_DOWNLOAD=1"],
    );
    assert_eq!(downloads(root.path()), Vec::<String>::new(), "nothing downloaded");
    let mut allowed = mirror.cmd(root.path(), &["kernel", "build", "6.12", "--json"]);
    let out = run(allowed.env("KTSTR_ALLOW_UNVERIFIED_DOWNLOAD", "1"));
    assert_eq!(json(&out)["key"], key);
    assert!(text(&out.stderr).contains("not verified"), "{}", text(&out.stderr));
    mirror.stop();
}

/// A fake kernel entry (metadata and a 3-byte bzImage) and a fake scheduler build for it.
fn fake_kernel(root: &Path, key: &str, built_at: &str) {
    let dir = root.join(key);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("bzImage"), "img").unwrap();
    let meta = serde_json::json!({
        "key": key, "version": "6.12.1", "flavour": "minimal",
        "source": {"type": "tarball", "origin": "fake", "sha256": "ab".repeat(32)},
        "config_hash": "000000000000", "built_at": built_at, "build_secs": 1.0,
        "files": [{"name": "bzImage", "size": 3}], "ktstr_version": "fake",
    });
    fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
}

fn fake_sched_build(root: &Path, kernel_key: &str) -> std::path::PathBuf {
    let dir = root.join(".schedulers").join(format!("{kernel_key}-s0123"));
    fs::create_dir_all(dir.join("bin")).unwrap();
    let meta = serde_json::json!({
        "key": format!("{kernel_key}-s0123"), "kernel_key": kernel_key, "clang": "fake",
        "built_at": "2026-01-01T00:00:00Z", "build_secs": 1.0, "schedulers": [],
    });
    fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
    dir
}

/// Scheduler builds live in the cache root the user named, are not listed as kernels, and
/// `kernel clean` removes them with their kernels, and orphans.
#[test]
fn kernel_clean_removes_scheduler_builds_with_their_kernels_fake() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("k");
    fake_kernel(&root, "new", "2026-02-01T00:00:00Z");
    fake_kernel(&root, "old", "2026-01-01T00:00:00Z");
    let (new, old, orphan) =
        (fake_sched_build(&root, "new"), fake_sched_build(&root, "old"), fake_sched_build(&root, "gone"));
    let env = |c: &mut std::process::Command| {
        c.env("KTSTR_CACHE_DIR", &root);
    };
    let mut list = host();
    env(list.args(["kernel", "list", "--json"]));
    let keys: Vec<String> =
        json(&run(&mut list)).as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap().to_string()).collect();
    assert_eq!(keys, ["new", "old"], "the scheduler folder is not a kernel entry");
    let mut sched_list = host();
    env(sched_list.args(["sched", "list", "--json"]));
    assert_eq!(json(&run(&mut sched_list)).as_array().unwrap().len(), 3);

    let mut clean = host();
    env(clean.args(["kernel", "clean", "--keep", "1"]));
    let out = run(&mut clean);
    assert!(out.status.success());
    assert!(root.join("new").is_dir() && new.is_dir(), "the kept kernel keeps its schedulers");
    assert!(!root.join("old").exists() && !old.exists(), "schedulers go with their kernel");
    assert!(!orphan.exists(), "orphans go");
    assert!(text(&out.stdout).contains("removed scheduler build"), "{}", text(&out.stdout));
    assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 1, "nothing outside the named root");

    let mut all = host();
    env(all.args(["kernel", "clean"]));
    assert!(run(&mut all).status.success());
    assert!(!new.exists());
}
