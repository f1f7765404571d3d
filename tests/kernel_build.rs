//! Real kernel builds from a git source tree (Debian's linux-source-6.12 committed into a
//! fresh repository): two concurrent builds of one key do one build; touching one file
//! rebuilds incrementally (and, the tree now being dirty, is not cached); a compile error
//! and Ctrl-C leave no cache entry behind. One test, sequential steps: it is the slow one.

mod common;

use common::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn git(tree: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(tree)
        .args(["-c", "user.name=ktstr-test", "-c", "user.email=test@ktstr.invalid"])
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// Extracts the distro kernel source and commits it into a new git repository.
fn git_tree(dir: &Path) -> Option<PathBuf> {
    let tarball = fs::read_dir("/usr/src").ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        p.file_name().unwrap().to_string_lossy().starts_with("linux-source-")
            && p.to_string_lossy().ends_with(".tar.xz")
    });
    let Some(tarball) = tarball else {
        skip("no /usr/src/linux-source-*.tar.xz (apt-get install linux-source-6.12)");
        return None;
    };
    assert!(Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(dir).status().unwrap().success());
    let tree = fs::read_dir(dir).unwrap().next().unwrap().unwrap().path();
    git(&tree, &["init", "-q"]);
    // Debian's tarball ignores everything at the top level in its .gitignore: force-add.
    git(&tree, &["add", "-f", "-A"]);
    git(&tree, &["commit", "-qm", "linux-source"]);
    Some(tree)
}

fn build_cmd(cache: &Path, tree: &Path) -> Command {
    let mut c = host();
    c.env("KTSTR_CACHE_DIR", cache).args(["kernel", "build", "--json", "--source"]).arg(tree);
    c
}

fn entries(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".locks") && !n.starts_with(".work"))
        .collect();
    v.sort();
    v
}

#[test]
fn tree_builds_concurrently_once_incrementally_and_fails_cleanly() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(tree) = git_tree(scratch.path()) else { return };
    let cache = scratch.path().join("cache");

    // 1. Two concurrent builds of one key: one builds, the other waits and reuses it.
    let t = Instant::now();
    let a = build_cmd(&cache, &tree).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let b = build_cmd(&cache, &tree).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let first_secs = t.elapsed().as_secs_f64();
    for o in [&a, &b] {
        eprintln!("{}", text(&o.stderr));
    }
    let (ka, kb) = (json(&a), json(&b));
    assert_eq!(ka["key"], kb["key"], "both name the same entry");
    let built = [&a, &b].iter().filter(|o| text(&o.stderr).contains("] built ")).count();
    let reused = [&a, &b].iter().filter(|o| text(&o.stderr).contains("cached: ")).count();
    assert_eq!((built, reused), (1, 1), "exactly one build happened");
    let key = ka["key"].as_str().unwrap().to_string();
    assert_eq!(entries(&cache), std::slice::from_ref(&key));
    assert!(key.contains("-minimal-"), "{key}");

    // 2. Touch one file: an incremental rebuild in the same build dir, faster than the first;
    //    the tree is dirty now, so the result is not cached.
    let file = tree.join("kernel/sched/ext.c");
    let pristine = fs::read_to_string(&file).unwrap();
    fs::write(&file, format!("{pristine}\n/* ktstr incremental-build test */\n")).unwrap();
    let t = Instant::now();
    let inc = run(&mut build_cmd(&cache, &tree));
    let incremental_secs = t.elapsed().as_secs_f64();
    let k = json(&inc);
    assert!(k["key"].is_null(), "a dirty tree is never cached: {k}");
    assert!(text(&inc.stderr).contains("not cached"));
    assert!(Path::new(k["image"].as_str().unwrap()).is_file());
    assert_eq!(entries(&cache), std::slice::from_ref(&key));
    eprintln!(
        "TIMING first build (two concurrent requests): {first_secs:.1} s; incremental after touching one file: {incremental_secs:.1} s"
    );
    assert!(incremental_secs < first_secs, "incremental {incremental_secs:.1}s vs first {first_secs:.1}s");

    // 3. A compile error: reported with the compiler's message and the log; nothing cached.
    fs::write(&file, format!("{pristine}\n#error ktstr-injected-error\n")).unwrap();
    let bad = run(&mut build_cmd(&cache, &tree));
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    assert!(err.contains("ktstr-injected-error") && err.contains("full log:"), "{err}");
    assert_eq!(entries(&cache), std::slice::from_ref(&key));

    // 4. Ctrl-C in the middle of a long rebuild (a widely included header changed):
    //    exit 130, make stopped, no entry, no temp dir, the lock released.
    fs::write(&file, &pristine).unwrap();
    let header = tree.join("include/linux/sched.h");
    let h = fs::read_to_string(&header).unwrap();
    fs::write(&header, format!("{h}\n/* ktstr interrupt test */\n")).unwrap();
    let mut child = build_cmd(&cache, &tree).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let saw_compile = lines.by_ref().map_while(Result::ok).any(|l| l.contains("compile (make"));
    assert!(saw_compile, "the build reached the compile phase");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(entries(&cache), std::slice::from_ref(&key));
    let makes = Command::new("pgrep").args(["-f", &format!("make -C {}", tree.display())]).output().unwrap();
    assert!(text(&makes.stdout).trim().is_empty(), "make was stopped: {}", text(&makes.stdout));
    let locks = cache.join(".locks");
    for l in fs::read_dir(&locks).unwrap() {
        let f = fs::File::open(l.unwrap().path()).unwrap();
        assert!(f.try_lock().is_ok(), "lock released");
    }
    // Back to the committed state: the cached build is found again without building.
    fs::write(&header, &h).unwrap();
    let again = run(&mut build_cmd(&cache, &tree));
    assert_eq!(json(&again)["key"], key.as_str());
    assert!(text(&again.stderr).contains("cached: "));
}
