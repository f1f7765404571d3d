//! The micro-VMM end to end on a real KVM: QEMU TCG (`-cpu max` emulates AMD SVM) boots our
//! `kvm-host` kernel flavour, and inside it `ktstr-host --backend kvm` boots the minimal
//! kernel with our VMM. One outer boot runs every case through a shell script; each case's
//! output and exit status come back over the outer VM's protocol channel.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The outer kernel (built and cached on first use, like the default kernel).
fn kvm_host_kernel() -> Option<serde_json::Value> {
    default_kernel()?; // same source; skips with a reason where there is none
    Some(json(&run(host().args(["kernel", "build", "--flavour", "kvm-host", "--json"]))))
}

/// The ktstr-host to run inside: the release build when present (much faster under
/// emulation), with debug info stripped so the outer initramfs stays small.
fn inner_host(dir: &Path) -> PathBuf {
    let debug = PathBuf::from(bin());
    let release = debug.parent().and_then(Path::parent).map(|t| t.join("release/ktstr-host"));
    let src = release.filter(|r| r.is_file()).unwrap_or(debug);
    eprintln!("inner ktstr-host: {}", src.display());
    let dst = dir.join("ktstr-host");
    assert!(Command::new("objcopy").arg("--strip-debug").arg(&src).arg(&dst).status().unwrap().success());
    dst
}

/// The outer VM: two vCPUs on QEMU's multi-threaded TCG. Measured alternatives were worse:
/// with one vCPU the whole outer VM hung (100 % CPU, silent, no inner timeout ever fired) in 1
/// of 5 tier runs, in topo_1n3l3c1t (9 inner vCPUs); with `-accel tcg,thread=single` inner
/// boots timed out from the first case on.
const OUTER_TOPOLOGY: &str = "1n1l2c1t";
/// A normal tier takes 90 to 120 s here; an outer VM that hangs is cut off well before the
/// CI budget is gone.
const OUTER_TIMEOUT_S: &str = "600";

/// QEMU's multi-threaded TCG, emulating AMD SVM for the outer guest's KVM, now and then loses
/// the inner guest's address translation right after a VMRUN: the inner kernel faults fetching
/// code it was running and triple-faults, or hangs before its init says a word (5 to 14 of 30
/// boots with the inner console on, QEMU 7.2; 3 of 30 with QEMU 10.0). So a case that ends in
/// exactly one of those ways is run again, at most twice, each retry printed and counted by the
/// test: a triple fault with reset-state registers (how KVM on SVM reports the first), the
/// micro-VMM's watchdog, or the run's timeout with not one byte from the inner init on the
/// protocol channel (no `first_com2_byte` phase: the inner kernel never got that far).
const SCRIPT: &str = r#"
H=/nest/ktstr-host
K=/nest/k/bzImage
kvm() { $H "$@" 2>&1; }
retry() {
  n=0
  while :; do
    "$@" > /tmp/case.out 2>&1; rc=$?
    why=$(grep -Eo 'vCPU [0-9]+ triple fault \(its registers are lost|micro-VMM: Timeout|timed out after [0-9]+ s; micro-VMM: Interrupted \([^;]*; phases: [^;"]*' /tmp/case.out | head -1)
    case $why in *first_com2_byte*) why= ;; esac
    if [ $rc -ne 0 ] && [ $n -lt 2 ] && [ -n "$why" ]; then
      n=$((n+1)); echo "RETRY $n: $why"
      continue
    fi
    cat /tmp/case.out; return $rc
  done
}
case_() { name=$1; shift; echo "=== CASE $name"; "$@"; echo "=== END $name exit=$?"; }
case_ exit0  retry $H exec --backend kvm --kernel $K -- /ktstr/bin/true
case_ exit1  retry $H exec --backend kvm --kernel $K -- /ktstr/bin/false
case_ exit42 retry $H exec --backend kvm --kernel $K -- /ktstr/bin/sh -c 'echo hello-from-inner; exit 42'
case_ smp2   retry $H run --json --backend kvm --kernel $K --topology 1n1l2c1t
case_ smp4   retry $H run --json --backend kvm --kernel $K --topology 1n1l4c1t --memory 384
case_ topo_1n2l2c1t retry $H run --json --backend kvm --kernel $K --topology 1n2l2c1t --memory 512
case_ topo_2n4l2c1t retry $H run --json --backend kvm --kernel $K --topology 2n4l2c1t --memory 512
case_ topo_1n2l2c2t retry $H run --json --backend kvm --kernel $K --topology 1n2l2c2t --memory 512
case_ topo_1n3l3c1t retry $H run --json --backend kvm --kernel $K --topology 1n3l3c1t --memory 512
case_ panic  kvm exec --backend kvm --kernel $K -- /ktstr/bin/sh -c 'echo c > /proc/sysrq-trigger'
case_ acpi   retry $H exec --backend kvm --kernel $K -- /ktstr/bin/sh -c 'dmesg | grep -E "ACPI|pnp"'
case_ bzimage retry env KTSTR_KVM_KERNEL=bzimage $H run --json --backend kvm --kernel $K --topology 1n1l2c1t
case_ hang   kvm exec --backend kvm --kernel $K --timeout 600 --vm-timeout 8 -- /ktstr/bin/sleep 600
"#;

/// `=== CASE name` ... `=== END name exit=N` sections: name -> (output, exit).
fn cases(out: &str) -> BTreeMap<String, (String, i32)> {
    let mut map = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("=== CASE ") {
            current = Some((name.to_string(), String::new()));
        } else if let Some(rest) = line.strip_prefix("=== END ") {
            let (name, code) = rest.split_once(" exit=").expect("END line");
            let (cname, body) = current.take().expect("END after CASE");
            assert_eq!(cname, name);
            map.insert(cname, (body, code.trim().parse().unwrap()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    map
}

fn summary(body: &str) -> serde_json::Value {
    let start = body.find('{').expect("JSON summary");
    serde_json::from_str(&body[start..=body.rfind('}').unwrap()]).expect("valid JSON")
}

#[test]
fn micro_vmm_runs_real_guests_on_nested_kvm() {
    let Some(outer) = kvm_host_kernel() else { return };
    let inner = default_kernel().unwrap();
    let inner_kernel = inner["image"].as_str().unwrap().to_string();
    // Both images side by side, as in a cache entry: the micro-VMM picks one (KTSTR_KVM_KERNEL).
    let inner_vmlinux = inner["vmlinux"].as_str().expect("the default kernel's cache entry has a vmlinux").to_string();
    let dir = tempfile::tempdir().unwrap();
    let inner = inner_host(dir.path());
    let script = dir.path().join("cases.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let t = std::time::Instant::now();
    let out = run(host()
        .args([
            "exec",
            "--backend",
            "qemu",
            "--topology",
            OUTER_TOPOLOGY,
            "--memory",
            "2048",
            "--timeout",
            OUTER_TIMEOUT_S,
        ])
        .arg("--kernel")
        .arg(outer["image"].as_str().unwrap())
        .args(["-i", &format!("{}:/nest/ktstr-host", inner.display())])
        .args(["-i", &format!("{inner_kernel}:/nest/k/bzImage")])
        .args(["-i", &format!("{inner_vmlinux}:/nest/k/vmlinux")])
        .args(["-i", &format!("{}:/nest/cases.sh", script.display())])
        .args(["-e", "KTSTR_CACHE_DIR=/tmp/ktstr-cache", "--", "sh", "/nest/cases.sh"]));
    eprintln!("TIMING kvm_in_tcg: whole tier {:.1} s", t.elapsed().as_secs_f64());
    assert!(out.status.success(), "the outer run failed: {}", text(&out.stderr));
    let got = cases(&text(&out.stdout));
    // The known QEMU TCG flake (see SCRIPT): reported, and bounded so a real regression with
    // the same look (every boot failing) still fails the test.
    let retries: Vec<String> = got
        .iter()
        .flat_map(|(case, (body, _))| {
            body.lines().filter(|l| l.starts_with("RETRY")).map(move |l| format!("{case}: {l}"))
        })
        .collect();
    eprintln!("TIMING kvm_in_tcg: {} retried boot(s) {retries:?}", retries.len());
    assert!(retries.len() <= 4, "too many nested boots failed the known way: {retries:?}");

    assert_eq!(got["exit0"].1, 0, "{}", got["exit0"].0);
    assert_eq!(got["exit1"].1, 1, "{}", got["exit1"].0);
    assert_eq!(got["exit42"].1, 42, "{}", got["exit42"].0);
    assert!(got["exit42"].0.contains("hello-from-inner"), "stdout over COM2: {}", got["exit42"].0);

    for (case, cpus) in [("smp2", 2), ("smp4", 4)] {
        let (body, code) = &got[case];
        assert_eq!(*code, 0, "{body}");
        let s = summary(body);
        assert_eq!(s["backend"], "kvm", "{s}");
        assert_eq!(s["guest_cpus"], cpus, "APs brought up by INIT/SIPI: {s}");
        assert!(s["frames"].as_u64().unwrap() >= 3 && s["frames_rejected"] == 0, "protocol channel: {s}");
        assert_eq!(s["topology_check"]["matches"], true, "{case}: {s}");
        let exit = s["vm_exit"].as_str().unwrap();
        assert!(exit.contains("guest reset"), "the init ends the VM with an i8042 reset: {exit}");
        eprintln!("TIMING {case}: hello {:.2} s, host setup {:.0} ms; {exit}", s["hello_s"], s["host_setup_ms"]);
    }

    // Our CPUID (0xB, 0x8000001D/1E under AMD SVM) and ACPI (MADT, SRAT, SLIT) as the inner
    // kernel reads them: its sysfs view must be the spec's nodes, packages, LLCs and cores.
    for spec in ["1n2l2c1t", "2n4l2c1t", "1n2l2c2t", "1n3l3c1t"] {
        let (body, code) = &got[&format!("topo_{spec}")];
        let s = summary(body);
        let check = &s["topology_check"];
        assert_eq!(check["matches"], true, "{spec}: {check}");
        assert_eq!(s["backend"], "kvm", "{s}");
        assert_eq!(*code, 0, "{body}");
    }

    // The FADT's PM1a blocks let ACPICA enable ACPI mode without a single error.
    let (body, code) = &got["acpi"];
    assert_eq!(*code, 0, "{body}");
    assert!(body.contains("ACPI: Interpreter enabled"), "{body}");
    assert!(!body.contains("ACPI Error") && !body.contains("ACPI BIOS Error"), "{body}");

    // With both images side by side the micro-VMM boots the vmlinux (measured faster to
    // Hello); the bzImage still boots when asked for.
    for case in ["smp2", "smp4"] {
        let exit = summary(&got[case].0)["vm_exit"].as_str().unwrap().to_string();
        assert!(exit.contains("(ELF vmlinux;"), "{case}: the default image is the vmlinux: {exit}");
    }
    let (body, code) = &got["bzimage"];
    assert_eq!(*code, 0, "{body}");
    let s = summary(body);
    assert_eq!(s["passed"], true, "{body}");
    assert!(s["vm_exit"].as_str().unwrap().contains("(bzImage;"), "the bzImage was booted: {s}");

    let (body, code) = &got["panic"];
    assert_eq!(*code, 255, "{body}");
    assert!(body.contains("sysrq triggered crash"), "{body}");

    let (body, code) = &got["hang"];
    assert_eq!(*code, 124, "{body}");
    assert!(body.contains("did not finish within 8 s"), "{body}");
}
