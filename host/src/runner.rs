//! One VM run: initramfs (cached base + per-run plan), boot on the chosen backend,
//! supervise, and hand back what was collected.

use crate::backend::{self, Backend, Machine, VmSpec};
use crate::collect::End;
use crate::collect::{self, Collected};
use crate::image::{self, InitramfsBuilder};
use crate::init_binary::KTSTR_INIT;
use crate::kernel::{Kernel, cache::Cache};
pub use crate::spec::GuestFile;
use crate::vmm::phases::Marks;
use ktstr_shared::wire::EXIT_TIMED_OUT;

/// Exit code when the guest kernel or init panicked, or the VM died without a result.
pub const EXIT_GUEST_DIED: i32 = 255;
/// Exit code when the run was interrupted (Ctrl-C).
pub const EXIT_INTERRUPTED: i32 = crate::interrupt::EXIT_INTERRUPTED;

use anyhow::{Context, Result, bail};
use ktstr_shared::plan::RunPlan;
use ktstr_shared::topology::Topology;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything needed to boot one VM.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub kernel: Kernel,
    pub backend: Backend,
    pub topology: Topology,
    pub memory_mib: u32,
    pub plan: RunPlan,
    /// Host files to carry into the guest, ELF ones with their library closures.
    pub files: Vec<GuestFile>,
    pub console: bool,
    /// Extra kernel command-line parameters, after ktstr's own.
    pub append: Option<String>,
    pub stream_output: bool,
    /// Overrides the VM's hard timeout (plan deadline + boot allowance).
    pub vm_timeout: Option<Duration>,
    /// Instants the caller marked before asking for the VM (e.g. `cli_parsed`).
    pub marks: Marks,
}

/// Adds `f` (a directory recursively); pushes every directory walked onto `walked`, since what
/// it holds is an input of the base archive too.
fn add_file(base: &mut InitramfsBuilder, f: &GuestFile, walked: &mut Vec<PathBuf>) -> Result<()> {
    if f.host.is_dir() {
        walked.push(f.host.clone());
        for entry in std::fs::read_dir(&f.host).with_context(|| format!("reading {}", f.host.display()))? {
            let entry = entry?;
            let guest = format!("{}/{}", f.guest.trim_end_matches('/'), entry.file_name().to_string_lossy());
            add_file(base, &GuestFile { host: entry.path(), guest }, walked)?;
        }
        return Ok(());
    }
    base.add_binary(&f.host, &f.guest)?;
    Ok(())
}

/// The outcome of one VM run.
#[derive(Debug)]
pub struct RunOutput {
    pub backend: Backend,
    pub collected: Collected,
    /// Host-side setup before the machine started (initramfs, spawn).
    pub setup: Duration,
    pub initrd_bytes: u64,
    /// The hard timeout that applied to the whole VM.
    pub timeout: Duration,
}

impl RunOutput {
    /// What went wrong with a VM run, if anything, before looking at the command's own status.
    pub fn failure(&self) -> Option<(i32, String)> {
        let c = &self.collected;
        let console_tail = || c.console.last_lines(15);
        if matches!(c.end, End::Interrupted) {
            return Some((EXIT_INTERRUPTED, "interrupted; the VM was torn down".into()));
        }
        if let Some(p) = &c.init_panic {
            return Some((EXIT_GUEST_DIED, format!("guest init failed: {p}")));
        }
        // After Bye the run is complete: a panic then is shutdown noise (a guest without an
        // ACPI power-off turns the init's exit into "Attempted to kill init").
        if let Some(p) = c.console.kernel_panic().filter(|_| c.bye.is_none()) {
            return Some((EXIT_GUEST_DIED, format!("guest kernel panic:\n{p}")));
        }
        if let End::Timeout(t) = c.end
            && c.result.is_none()
        {
            let msg = format!(
                "timed out: the VM did not finish within {:.0} s; last console lines:\n{}",
                t.as_secs_f64(),
                console_tail()
            );
            return Some((EXIT_TIMED_OUT, msg));
        }
        if c.result.is_none() {
            let how = match &c.end {
                End::Exited(e) => format!(
                    "{}{}",
                    e.detail,
                    if e.stderr.is_empty() { String::new() } else { format!(": {}", e.stderr.trim()) }
                ),
                _ => String::new(),
            };
            let hello = if c.hello.is_some() { "after the init started" } else { "before the init said Hello" };
            return Some((
                EXIT_GUEST_DIED,
                format!("the VM stopped {hello} without a result ({how}); last console lines:\n{}", console_tail()),
            ));
        }
        None
    }

    /// Why a VM run failed before its plan could finish (interrupt, panic, timeout, VM died).
    pub fn vm_problem(&self) -> Option<String> {
        self.failure().map(|(_, msg)| msg)
    }
}

/// Time the guest gets beyond the plan's own deadline: boot and teardown under emulation.
fn boot_allowance(t: &Topology, backend: Backend) -> Duration {
    let per_cpu = match backend {
        Backend::Qemu(backend::Accel::Tcg) => 250,
        _ => 20,
    };
    Duration::from_secs(30) + Duration::from_millis(u64::from(t.cpus()) * per_cpu)
}

/// The kernel command line for a run.
pub fn cmdline(console: bool) -> String {
    let verbosity = if console { "loglevel=7" } else { "quiet loglevel=1" };
    // oops=panic: a kernel oops leaves the guest in an undefined state (often hung); end the
    // run at once with the oops text instead of waiting for the watchdog.
    format!("console=ttyS0 rdinit=/init panic=-1 oops=panic {verbosity} random.trust_cpu=on")
}

/// Where a basic userland (busybox applets) lives in the guest; appended to the command's PATH.
pub const USERLAND_BIN: &str = "/ktstr/bin";
/// Where a static busybox is looked for: the distro's, else our own userland (nested runs).
const BUSYBOX: [&str; 2] = ["/bin/busybox", "/ktstr/bin/busybox"];

/// The static busybox to use: the first candidate that is a file (a stat, no process).
fn busybox() -> Option<&'static str> {
    BUSYBOX.into_iter().find(|b| Path::new(b).is_file())
}

/// Adds the host's static busybox and its applet links under [`USERLAND_BIN`], so shell
/// one-liners find `head`, `nproc`, `grep`... Skipped (with a debug log) when it is absent.
fn add_userland(base: &mut InitramfsBuilder, busybox: Option<&str>) -> Result<()> {
    let found = busybox.and_then(|b| Some((b, std::process::Command::new(b).arg("--list").output().ok()?)));
    let Some((busybox, list)) = found else {
        tracing::debug!("no static busybox: the guest has no basic userland (apt-get install busybox-static)");
        return Ok(());
    };
    let target = format!("{USERLAND_BIN}/busybox");
    base.add_binary(busybox, &target)?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && !a.contains('/')) {
        if applet != "busybox" {
            base.add_symlink(&format!("{USERLAND_BIN}/{applet}"), &target)?;
        }
    }
    Ok(())
}

/// What the base archive is made of, as the key of its manifest ([`image::cached_base`]): the
/// running executable (it embeds the init and the layout below; the init's bytes are hashed
/// only if the executable cannot be stat'ed), the busybox path and each requested file.
/// The metadata of every file behind these is checked by the manifest itself.
fn base_key(files: &[GuestFile], busybox: Option<&str>) -> String {
    use sha2::Digest;
    let exe = image::executable_identity()
        .unwrap_or_else(|| format!("init-sha256:{}", hex::encode(sha2::Sha256::digest(KTSTR_INIT))));
    let mut key = format!("ktstr-base v1\nexe {exe}\nbusybox {}\n", busybox.unwrap_or("-"));
    for f in files {
        key.push_str(&format!("file {}\0{}\n", f.host.display(), f.guest));
    }
    key
}

/// The base archive: init, the guest's directories, busybox and `files`, from the cache
/// when its manifest matches (no build, no hashing), else built and recorded.
fn base_archive(cache: &Cache, files: &[GuestFile]) -> Result<PathBuf> {
    let busybox = busybox();
    let dir = cache.work_dir().join("initramfs");
    let (path, lookup) = image::cached_base(&dir, &base_key(files, busybox), |walked| -> Result<_> {
        let mut base = InitramfsBuilder::new();
        base.add_bytes("/init", KTSTR_INIT.to_vec(), 0o755)?;
        for dir in ["/dev", "/proc", "/sys", "/tmp", "/ktstr"] {
            base.add_dir(dir, 0o755)?;
        }
        add_userland(&mut base, busybox)?;
        for f in files {
            add_file(&mut base, f, walked)?;
        }
        Ok(base)
    })?;
    tracing::debug!("base initramfs {} ({lookup:?})", path.display());
    Ok(path)
}

/// The run's initrd as parts: the cached base archive, then the plan as a small suffix archive
/// written into `dir`. Loaded back to back (4-byte aligned) they form one initramfs.
pub fn initramfs(cache: &Cache, plan: &RunPlan, files: &[GuestFile], dir: &Path) -> Result<Vec<PathBuf>> {
    let base = base_archive(cache, files)?;
    let mut suffix = InitramfsBuilder::new();
    suffix.add_bytes(
        ktstr_shared::plan::PLAN_PATH,
        plan.to_bytes().map_err(|e| anyhow::anyhow!("run plan: {e}"))?,
        0o644,
    )?;
    let out = dir.join("plan.cpio");
    std::fs::write(&out, suffix.to_bytes()?).with_context(|| format!("writing {}", out.display()))?;
    Ok(vec![base, out])
}

/// `KTSTR_KVM_KERNEL=bzimage|vmlinux`: which image of a kernel the micro-VMM boots when a
/// kernel has both (cache entries do: the bzImage and a stripped ELF vmlinux). Unset: PVM
/// boots the vmlinux (a bzImage's decompressor takes minutes under its emulator), every other
/// KVM [`DEFAULT_KVM_FORMAT`].
pub const KVM_KERNEL_ENV: &str = "KTSTR_KVM_KERNEL";

/// Which image the micro-VMM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKernelFormat {
    BzImage,
    Vmlinux,
}

/// The faster of the two to the guest's Hello, measured under nested KVM (bench/README.md,
/// "bzImage vs vmlinux").
pub const DEFAULT_KVM_FORMAT: KvmKernelFormat = KvmKernelFormat::Vmlinux;

fn kvm_format(env: Option<&str>, pvm: bool) -> Result<KvmKernelFormat> {
    match env.map(str::trim) {
        None | Some("") => Ok(if pvm { KvmKernelFormat::Vmlinux } else { DEFAULT_KVM_FORMAT }),
        Some(v) if v.eq_ignore_ascii_case("bzimage") => Ok(KvmKernelFormat::BzImage),
        Some(v) if v.eq_ignore_ascii_case("vmlinux") || v.eq_ignore_ascii_case("elf") => Ok(KvmKernelFormat::Vmlinux),
        Some(v) => bail!("{KVM_KERNEL_ENV}={v}: expected bzimage or vmlinux (or unset for the default)"),
    }
}

/// The micro-VMM variant of a spec: the kernel image in the chosen format when the kernel has
/// both (otherwise the one it has); on PVM, a command line that avoids the instructions PVM's
/// emulator cannot run.
fn kvm_spec(mut spec: VmSpec, kernel: &Kernel) -> Result<VmSpec> {
    let pvm = matches!(crate::vmm::detect(), crate::vmm::KvmFlavour::Pvm);
    let format = kvm_format(std::env::var(KVM_KERNEL_ENV).ok().as_deref(), pvm)?;
    if let (KvmKernelFormat::Vmlinux, Some(v)) = (format, &kernel.vmlinux) {
        spec.kernel = v.clone();
    }
    tracing::debug!("micro-VMM kernel ({format:?} preferred): {}", spec.kernel.display());
    if pvm {
        spec.cmdline.push_str(" noxsave clearcpuid=popcnt,smap,smep,cx16");
    }
    Ok(spec)
}

/// Boots, supervises and tears down one VM.
pub fn run(cache: &Cache, req: &RunRequest) -> Result<RunOutput> {
    let t0 = Instant::now();
    let mut marks = req.marks.with("run_start");
    let dir = tempfile::Builder::new().prefix("ktstr-run-").tempdir().context("creating a temp dir for the run")?;
    let initrd = initramfs(cache, &req.plan, &req.files, dir.path())?;
    marks.mark("initramfs_ready");
    let sizes = initrd.iter().map(|p| Ok(std::fs::metadata(p)?.len())).collect::<Result<Vec<u64>>>()?;
    let initrd_bytes = crate::vmm::boot::initrd_layout(&sizes).1;
    let timeout = req.vm_timeout.unwrap_or_else(|| {
        Duration::from_millis(u64::from(req.plan.deadline_ms)) + boot_allowance(&req.topology, req.backend)
    });
    let spec = VmSpec {
        kernel: req.kernel.image.clone(),
        initrd,
        cmdline: match req.append.as_deref().filter(|a| !a.is_empty()) {
            Some(extra) => format!("{} {extra}", cmdline(req.console)),
            None => cmdline(req.console),
        },
        topology: req.topology,
        memory_mib: req.memory_mib,
        timeout,
        marks,
    };
    let mut machine: Box<dyn Machine> = match req.backend {
        Backend::Qemu(accel) => Box::new(backend::qemu::Qemu::start(&spec, accel, dir.path())?),
        Backend::Kvm => Box::new(backend::kvm::KvmMachine::start(&kvm_spec(spec.clone(), &req.kernel)?)?),
    };
    let setup = t0.elapsed();
    let opts = collect::Options { echo_console: req.console, stream_output: req.stream_output };
    let collected = collect::supervise(machine.as_mut(), timeout, opts);
    machine.kill();
    Ok(RunOutput { backend: req.backend, collected, setup, initrd_bytes, timeout })
}

/// Finds `cmd` the way a shell would: a path as given, else on the host's PATH.
pub fn find_program(cmd: &str) -> Result<PathBuf> {
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        let abs = std::fs::canonicalize(&p).with_context(|| format!("{cmd}: no such file on the host"))?;
        return Ok(if p.is_absolute() { p } else { abs });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .with_context(|| format!("{cmd}: not found on the host PATH; the guest holds only what ktstr copies into it"))
}

/// The host files a command needs in the guest: the program and, for a `#!` script, its interpreter.
pub fn program_files(program: &Path) -> Result<Vec<GuestFile>> {
    let mut files = vec![GuestFile::same_path(program.to_path_buf())?];
    let head = std::fs::read(program).with_context(|| format!("reading {}", program.display()))?;
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = String::from_utf8_lossy(line.split(|&b| b == b'\n').next().unwrap_or_default()).into_owned();
        if let Some(interp) = line.split_whitespace().next() {
            files.push(GuestFile::same_path(PathBuf::from(interp))?);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_and_script_interpreters_are_found() {
        let sh = find_program("sh").unwrap();
        assert!(sh.is_absolute());
        assert!(find_program("no-such-program-ktstr").unwrap_err().to_string().contains("not found on the host PATH"));
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("s");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        let files: Vec<PathBuf> = program_files(&script).unwrap().into_iter().map(|f| f.host).collect();
        assert_eq!(files, [script.clone(), PathBuf::from("/bin/sh")]);
    }

    #[test]
    fn kvm_kernel_format_choice() {
        assert_eq!(kvm_format(None, false).unwrap(), DEFAULT_KVM_FORMAT);
        assert_eq!(kvm_format(Some(""), true).unwrap(), KvmKernelFormat::Vmlinux);
        assert_eq!(kvm_format(Some("vmlinux"), false).unwrap(), KvmKernelFormat::Vmlinux);
        assert_eq!(kvm_format(Some("bzImage"), true).unwrap(), KvmKernelFormat::BzImage, "explicit wins on PVM");
        let e = kvm_format(Some("zimage"), false).unwrap_err().to_string();
        assert!(e.contains(KVM_KERNEL_ENV) && e.contains("bzimage or vmlinux"), "{e}");
    }

    #[test]
    fn include_specs() {
        let f = GuestFile::parse("/bin/sh").unwrap();
        assert_eq!(f.guest, "/include/sh");
        assert_eq!(GuestFile::parse("/bin/sh:/x/y").unwrap().guest, "/x/y");
        assert!(GuestFile::parse("/bin/sh:relative").unwrap_err().to_string().contains("absolute"));
        assert!(GuestFile::parse("/no/such/file").unwrap_err().to_string().contains("does not exist"));
    }

    #[test]
    fn initramfs_holds_init_and_plan() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(cache_dir.path().into());
        let d = tempfile::tempdir().unwrap();
        let plan = RunPlan::new(1000);
        let inc = d.path().join("data");
        std::fs::create_dir_all(inc.join("sub")).unwrap();
        std::fs::write(inc.join("sub/file.txt"), "x").unwrap();
        let files = [
            GuestFile::same_path(PathBuf::from("/bin/true")).unwrap(),
            GuestFile::parse(&format!("{}:/opt/data", inc.display())).unwrap(),
        ];
        let parts = initramfs(&cache, &plan, &files, d.path()).unwrap();
        assert_eq!(parts.len(), 2, "base, then the plan");
        let base = std::fs::read(&parts[0]).unwrap();
        let suffix = std::fs::read(&parts[1]).unwrap();
        let has = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(has(&base, b"bin/true") && has(&base, b"libc.so.6") && has(&base, b"opt/data/sub/file.txt"));
        assert!(has(&suffix, b"ktstr/plan"));
        // The same request again finds the same base (from its manifest once the inputs are
        // older than the racy window; by content hash before that).
        let again = initramfs(&cache, &plan, &files, d.path()).unwrap();
        assert_eq!(again[0], parts[0]);
        // The init is the embedded static binary.
        assert!(KTSTR_INIT.starts_with(b"\x7fELF"));
    }
}
