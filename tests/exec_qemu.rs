//! `ktstr-host exec` and `run` end to end: a real kernel under QEMU (TCG here), the real
//! static init, real host binaries carried into the guest.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `ktstr-host exec` on the default kernel; `None` (skip printed) only without a kernel.
fn exec(extra: &[&str], cmd: &[&str]) -> Option<std::process::Output> {
    let k = default_kernel()?;
    let mut c = host();
    c.args(["exec", "--backend", "qemu", "--kernel", k["image"].as_str().unwrap()]).args(extra).arg("--").args(cmd);
    Some(run(&mut c))
}

#[test]
fn exit_codes_and_output_propagate() {
    for (code, cmd) in [(0, "echo to-stdout; echo to-stderr >&2"), (1, "exit 1"), (42, "echo partial; exit 42")] {
        let Some(out) = exec(&[], &["sh", "-c", cmd]) else { return };
        assert_eq!(out.status.code(), Some(code), "{cmd}");
        if code == 0 {
            assert_eq!(text(&out.stdout), "to-stdout\n");
            assert!(text(&out.stderr).contains("to-stderr\n"));
        }
        if code == 42 {
            assert_eq!(text(&out.stdout), "partial\n");
        }
    }
}

#[test]
fn uname_reports_the_guest_kernel() {
    let Some(out) = exec(&[], &["uname", "-r"]) else { return };
    assert!(out.status.success());
    let version = default_kernel().unwrap()["version"].as_str().unwrap().to_string();
    assert_eq!(text(&out.stdout).trim(), version);
    // Not the host's kernel: the guest really booted the image we built.
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(text(&out.stdout).trim(), host_release.trim());
}

#[test]
fn host_binary_with_shared_libraries_runs() {
    let Some(out) = exec(&[], &["ls", "/lib64", "/proc/1/comm"]) else { return };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(listing.contains("ld-linux-x86-64.so.2"), "the interpreter was carried in: {listing}");
}

#[test]
fn command_past_its_deadline_times_out() {
    let t = Instant::now();
    let Some(out) = exec(&["--timeout", "2"], &["sleep", "600"]) else { return };
    assert_eq!(out.status.code(), Some(124));
    assert!(text(&out.stderr).contains("timed out"), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(120), "the deadline, not the sleep, ended it");
}

#[test]
fn guest_kernel_panic_is_reported() {
    let Some(out) = exec(&[], &["sh", "-c", "echo c > /proc/sysrq-trigger"]) else { return };
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(err.contains("guest kernel panic") && err.contains("sysrq triggered crash"), "{err}");
}

#[test]
fn missing_program_fails_before_boot() {
    let Some(out) = exec(&[], &["no-such-program-ktstr"]) else { return };
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not found on the host PATH"));
}

#[test]
fn missing_qemu_is_a_clear_error() {
    let Some(k) = default_kernel() else { return };
    let empty = tempfile::tempdir().unwrap();
    // PATH holds only `true`, so the command resolves but QEMU does not.
    std::os::unix::fs::symlink("/bin/true", empty.path().join("true")).unwrap();
    let out = run(host().env("PATH", empty.path()).args([
        "exec",
        "--backend",
        "qemu",
        "--kernel",
        k["image"].as_str().unwrap(),
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("qemu-system-x86_64 not found") && err.contains("apt-get install qemu-system-x86"), "{err}");
}

#[test]
fn run_main_job_reports_hello_and_topology() {
    let Some(k) = default_kernel() else { return };
    let out = run(host()
        .args(["run", "--json", "--backend", "qemu", "--topology", "1n2l2c1t", "--kernel"])
        .arg(k["image"].as_str().unwrap()));
    let s = json(&out);
    assert_eq!(s["passed"], true, "{s}");
    assert_eq!(s["guest_cpus"], 4);
    assert_eq!(s["protocol_version"], ktstr_shared::wire::PROTOCOL_VERSION);
    assert_eq!(s["kernel_version"], k["version"], "read from the bzImage header");
    assert_eq!(s["frames_rejected"], 0);
    assert!(s["hello_s"].as_f64().unwrap() > 0.0);
    assert_eq!(s["guest_release"], k["version"]);
}

#[test]
fn bad_topology_is_rejected_with_the_reason() {
    let out = run(host().args(["exec", "--topology", "2n3l1c1t", "--", "true"]));
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(text(&out.stderr).contains("cannot be spread evenly"), "{}", text(&out.stderr));
}

/// QEMU processes whose command line mentions `marker`.
fn qemu_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains("qemu-system") && String::from_utf8_lossy(&c).contains(marker)
            })
        })
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50)); // polling /proc: there is nothing to block on
    }
}

/// Kills ktstr-host mid-run with `signal`; QEMU must not outlive it.
fn teardown_with(signal: i32, memory: &str) -> Option<std::process::ExitStatus> {
    let k = default_kernel()?;
    // A memory size no other test uses marks this test's QEMU.
    let marker = format!("-m\0{memory}M");
    let mut child = host()
        .args([
            "exec",
            "--backend",
            "qemu",
            "--memory",
            memory,
            "--kernel",
            k["image"].as_str().unwrap(),
            "--",
            "sleep",
            "600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("QEMU to start", Duration::from_secs(60), || !qemu_with(&marker).is_empty());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    wait_until("QEMU to go away", Duration::from_secs(15), || qemu_with(&marker).is_empty());
    Some(status)
}

#[test]
fn killing_the_host_leaves_no_qemu_behind() {
    let Some(status) = teardown_with(libc::SIGKILL, "333") else { return };
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
}

#[test]
fn ctrl_c_tears_the_vm_down_and_exits_130() {
    let Some(status) = teardown_with(libc::SIGINT, "334") else { return };
    assert_eq!(status.code(), Some(130));
}

#[test]
fn completions_are_generated() {
    let out = Command::new(bin()).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = text(&out.stdout);
    assert!(script.contains("ktstr-host") && script.contains("exec") && script.contains("--topology"));
}

#[test]
fn include_env_and_busybox_userland() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.txt"), "line one\nline two\n").unwrap();
    let inc = format!("{}:/opt/in", d.path().display());
    let Some(out) = exec(
        &["-i", &inc, "-e", "GREETING=hi there"],
        &["sh", "-c", "tail -1 /opt/in/data.txt; echo \"$GREETING\"; nproc"],
    ) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line two\nhi there\n2\n");
}

/// `exec` with its output captured but not echoed (it may be megabytes); `None` without a kernel.
fn exec_quiet(extra: &[&str], cmd: &[&str]) -> Option<std::process::Output> {
    let k = default_kernel()?;
    let mut c = host();
    c.args(["exec", "--backend", "qemu", "--kernel", k["image"].as_str().unwrap()]).args(extra).arg("--").args(cmd);
    let out = c.output().expect("spawn ktstr-host");
    let err = text(&out.stderr);
    let err_tail = &err[err.len().saturating_sub(2000)..];
    eprintln!("$ {c:?}\n-- exit {:?}, {} stdout bytes; stderr tail:\n{err_tail}", out.status.code(), out.stdout.len());
    Some(out)
}

/// What `seq 1 N` prints.
fn seq(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

/// Equal, or where they first differ (not megabytes of both).
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        let around = |b: &[u8]| text(&b[at.saturating_sub(40)..(at + 40).min(b.len())]);
        panic!(
            "{what}: {} bytes, want {}; first difference at {at}: got {:?}, want {:?}",
            got.len(),
            want.len(),
            around(got),
            around(want)
        );
    }
}

#[test]
fn host_binary_under_tmp_runs_with_its_libraries() {
    // A unique dir under the host's /tmp, so the guest path is under /tmp too.
    let dir = tempfile::Builder::new().prefix("ktstr-exec-").tempdir_in("/tmp").unwrap();
    let src = dir.path().join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(int c, char **v) { printf(\"hello from %s: %s\\n\", v[0], c > 1 ? v[1] : \"\");\n\
         fprintf(stderr, \"to-stderr\\n\"); return 7; }\n",
    )
    .unwrap();
    let prog = dir.path().join("hello");
    match Command::new("gcc").arg("-o").arg(&prog).arg(&src).status() {
        Err(e) => return skip(format!("cannot run gcc ({e}); apt-get install gcc")),
        Ok(s) => assert!(s.success(), "gcc failed"),
    }
    let elf = std::fs::read(&prog).unwrap();
    assert!(elf.windows(9).any(|w| w == b"libc.so.6"), "dynamically linked: it needs its libraries carried in");
    let prog = prog.to_str().unwrap();
    let Some(out) = exec(&[], &[prog, "arg one"]) else { return };
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("hello from {prog}: arg one\n"));
    assert!(text(&out.stderr).contains("to-stderr\n"), "{}", text(&out.stderr));
}

#[test]
fn include_under_tmp_is_visible_and_tmp_stays_writable() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.txt"), "carried in\n").unwrap();
    let inc = format!("{}:/tmp/in/data.txt", d.path().join("data.txt").display());
    let script = "cat /tmp/in/data.txt && echo written > /tmp/new && cat /tmp/new && ls -ld /tmp";
    let Some(out) = exec(&["-i", &inc], &["sh", "-c", script]) else { return };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("carried in\nwritten\n"), "{stdout}");
    assert!(stdout.lines().nth(2).is_some_and(|l| l.starts_with("drwxrwxrwt")), "world-writable, sticky: {stdout}");
}

#[test]
fn all_output_arrives_in_order() {
    // seq writes far faster than the serial channel carries: the command must wait, not lose.
    let Some(out) = exec_quiet(&[], &["sh", "-c", "seq 1 200000; echo END"]) else { return };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_same(&out.stdout, format!("{}END\n", seq(200_000)).as_bytes(), "stdout");
    assert!(!text(&out.stderr).contains("dropped"), "{}", text(&out.stderr));
}

#[test]
fn stderr_goes_to_stderr_whole() {
    let Some(out) = exec_quiet(&[], &["sh", "-c", "seq 1 30000 >&2; echo out"]) else { return };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    let err = text(&out.stderr);
    assert!(err.contains(&seq(30_000)), "all of stderr, in order ({} bytes)", err.len());
}

#[test]
fn output_limit_keeps_the_tail_and_says_what_it_dropped() {
    let bad = run(host().args(["exec", "--output-limit", "99999999999", "--", "true"]));
    assert_eq!(bad.status.code(), Some(2), "clap usage error");
    assert!(text(&bad.stderr).contains("--output-limit"), "{}", text(&bad.stderr));

    let Some(out) = exec_quiet(&["--output-limit", "1000"], &["sh", "-c", "seq 1 200000; echo END"]) else { return };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = format!("{}END\n", seq(200_000));
    assert_same(&out.stdout, &all.as_bytes()[all.len() - 1000..], "the last 1000 bytes");
    let err = text(&out.stderr);
    let dropped = all.len() - 1000;
    assert!(err.contains(&format!("stdout: {dropped} bytes dropped by --output-limit")), "{err}");
}
