//! The scheduler under test: `eevdf` (the kernel's own, nothing to start), an in-tree
//! sched_ext scheduler by name (built and cached per kernel, see [`build`]), or any binary
//! by path. Binaries are checked on the host before a VM boots: an ELF for x86_64 whose
//! shared libraries are all found (they go into the guest with it).

pub mod build;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ktstr_shared::plan::SchedPlan;

use crate::kernel::Kernel;
use crate::kernel::cache::Cache;
use crate::spec::GuestFile;
use crate::spec::{SchedulerInfo, SchedulerKind};

/// Where scheduler binaries go in the guest.
pub const GUEST_DIR: &str = "/ktstr/sched";
/// Default time a scheduler gets to attach (BPF load and verification run emulated under TCG).
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// Time it gets at the end to detach after SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// What the init may add after a failure (the kernel's report, the scheduler's exit) and the
/// stop; part of the plan deadline.
const REPORT_MS: u32 = 5_000;

/// One scheduler of a run (one column of the matrix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerUnderTest {
    /// `eevdf`, the in-tree name, or the binary's file name.
    pub name: String,
    /// The host binary; `None` for EEVDF.
    pub binary: Option<PathBuf>,
    pub args: Vec<String>,
}

impl SchedulerUnderTest {
    pub fn eevdf() -> Self {
        SchedulerUnderTest { name: "eevdf".into(), binary: None, args: Vec::new() }
    }

    pub fn info(&self) -> SchedulerInfo {
        let kind = if self.binary.is_some() { SchedulerKind::SchedExt } else { SchedulerKind::Eevdf };
        SchedulerInfo { name: self.name.clone(), kind, args: self.args.clone() }
    }

    /// Name and arguments, for tables and run ids.
    pub fn label(&self) -> String {
        std::iter::once(self.name.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }

    fn guest_path(&self) -> Option<String> {
        let b = self.binary.as_ref()?;
        Some(format!("{GUEST_DIR}/{}", b.file_name()?.to_string_lossy()))
    }

    /// The binary (with its libraries) to carry into the guest.
    pub fn guest_file(&self) -> Option<GuestFile> {
        Some(GuestFile { host: self.binary.clone()?, guest: self.guest_path()? })
    }

    /// What the init runs; `None` for EEVDF.
    pub fn plan(&self, attach_timeout: Duration) -> Option<SchedPlan> {
        let mut argv = vec![self.guest_path()?];
        argv.extend(self.args.iter().cloned());
        Some(SchedPlan {
            name: self.name.clone(),
            argv,
            env: Vec::new(),
            attach_timeout_ms: attach_timeout.as_millis().clamp(1, u32::MAX.into()) as u32,
            stop_timeout_ms: STOP_TIMEOUT.as_millis() as u32,
        })
    }

    /// Plan deadline added for this scheduler: attach, stop and failure report.
    pub fn extra_deadline_ms(&self, attach_timeout: Duration) -> u32 {
        match self.binary {
            None => 0,
            Some(_) => {
                let ms = attach_timeout.as_millis() + STOP_TIMEOUT.as_millis() + u128::from(REPORT_MS);
                ms.min(u32::MAX.into()) as u32
            }
        }
    }
}

/// Resolves `--scheduler SPEC` (`eevdf`, `NAME|PATH`, optionally followed by arguments
/// separated by spaces) with `extra` arguments (those after `--`) appended.
pub fn resolve(spec: &str, extra: &[String], cache: &Cache, kernel: &Kernel) -> Result<SchedulerUnderTest> {
    let mut words = spec.split_whitespace();
    let Some(first) = words.next() else { bail!("--scheduler is empty: give eevdf, an in-tree name or a path") };
    let args: Vec<String> = words.map(String::from).chain(extra.iter().cloned()).collect();
    if first == "eevdf" {
        if !args.is_empty() {
            bail!("--scheduler eevdf takes no arguments (got {})", args.join(" "));
        }
        return Ok(SchedulerUnderTest::eevdf());
    }
    if let Some(name) = in_tree_name(first) {
        let built = build::build(cache, kernel, false)
            .with_context(|| format!("--scheduler {first}: building the in-tree schedulers"))?;
        let binary = built.binary(name).with_context(|| format!("{name} missing in {}", built.dir.display()))?;
        return Ok(SchedulerUnderTest { name: name.into(), binary: Some(binary), args });
    }
    let path = Path::new(first);
    if !first.contains('/') && !path.exists() {
        bail!(
            "--scheduler {first}: not eevdf, not an in-tree scheduler ({}) and no such file; give a path such as \
             ./target/release/scx_mine",
            build::IN_TREE.join(", ")
        );
    }
    check_binary(path).with_context(|| format!("--scheduler {first}"))?;
    let binary = std::fs::canonicalize(path).with_context(|| format!("--scheduler {first}: no such file"))?;
    let name = binary.file_name().map_or_else(|| first.to_string(), |n| n.to_string_lossy().into_owned());
    Ok(SchedulerUnderTest { name, binary: Some(binary), args })
}

/// `scx_qmap` or `qmap` -> `scx_qmap`, for the in-tree schedulers.
fn in_tree_name(s: &str) -> Option<&'static str> {
    build::IN_TREE.iter().copied().find(|n| *n == s || n.strip_prefix("scx_") == Some(s))
}

/// An x86_64 ELF executable whose shared libraries are all on this host.
fn check_binary(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        let kind = if bytes.starts_with(b"#!") { "a script" } else { "not an ELF file" };
        bail!("{} is {kind}; give a sched_ext scheduler binary (an x86_64 ELF executable)", path.display());
    }
    let elf = goblin::elf::Elf::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is a malformed ELF file: {e}", path.display()))?;
    if elf.header.e_machine != goblin::elf::header::EM_X86_64 {
        bail!("{} is an ELF for machine {}, not x86_64; the guest is x86_64", path.display(), elf.header.e_machine);
    }
    let exec = matches!(elf.header.e_type, goblin::elf::header::ET_EXEC | goblin::elf::header::ET_DYN);
    if !exec || elf.entry == 0 {
        bail!("{} is an ELF object or library, not an executable", path.display());
    }
    crate::image::elf_closure(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Kernel {
        Kernel {
            image: "/nonexistent/bzImage".into(),
            kind: crate::kernel::imagefile::ImageKind::BzImage,
            vmlinux: None,
            version: None,
            key: None,
            origin: String::new(),
        }
    }

    fn resolve_here(spec: &str, extra: &[&str]) -> Result<SchedulerUnderTest> {
        let d = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        resolve(spec, &extra, &Cache::at(d.path().join("kernels")), &kernel())
    }

    #[test]
    fn eevdf_paths_and_arguments() {
        assert_eq!(resolve_here("eevdf", &[]).unwrap(), SchedulerUnderTest::eevdf());
        assert!(resolve_here("eevdf -x", &[]).unwrap_err().to_string().contains("takes no arguments"));
        let s = resolve_here("/bin/true -a b", &["-c"]).unwrap();
        assert_eq!((s.name.as_str(), s.args.clone()), ("true", vec!["-a".to_string(), "b".into(), "-c".into()]));
        let plan = s.plan(Duration::from_secs(3)).unwrap();
        assert_eq!(plan.argv, ["/ktstr/sched/true", "-a", "b", "-c"]);
        assert_eq!(plan.attach_timeout_ms, 3000);
        assert_eq!(s.guest_file().unwrap().guest, "/ktstr/sched/true");
        assert_eq!(s.info().kind, SchedulerKind::SchedExt);
        assert!(SchedulerUnderTest::eevdf().plan(Duration::from_secs(1)).is_none());
        assert_eq!(SchedulerUnderTest::eevdf().extra_deadline_ms(Duration::from_secs(1)), 0);
    }

    #[test]
    fn bad_schedulers_are_refused_before_boot() {
        let e = resolve_here("scx_nonesuch", &[]).unwrap_err().to_string();
        assert!(e.contains("not an in-tree scheduler (scx_simple, scx_qmap") && e.contains("give a path"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("sched.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let e = format!("{:#}", resolve_here(script.to_str().unwrap(), &[]).unwrap_err());
        assert!(e.contains("is a script; give a sched_ext scheduler binary"), "{e}");
        let text = d.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        let e = format!("{:#}", resolve_here(text.to_str().unwrap(), &[]).unwrap_err());
        assert!(e.contains("not an ELF file"), "{e}");
        // An in-tree name needs a cached kernel to build against.
        let e = format!("{:#}", resolve_here("qmap", &[]).unwrap_err());
        assert!(e.contains("not a cache entry") && e.contains("--scheduler PATH"), "{e}");
    }

    /// A real program linked against a real library that is then deleted: refused on the
    /// host, naming the library, before any VM boots.
    #[test]
    fn a_missing_shared_library_is_named_before_boot() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n).to_str().unwrap().to_string();
        std::fs::write(p("lib.c"), "int ktstr_answer(void) { return 42; }\n").unwrap();
        std::fs::write(p("main.c"), "int ktstr_answer(void);\nint main(void) { return ktstr_answer(); }\n").unwrap();
        let gcc = |args: &[&str]| std::process::Command::new("gcc").args(args).status();
        if !gcc(&["-shared", "-fPIC", "-o", &p("libktstrgone.so"), &p("lib.c")]).is_ok_and(|s| s.success()) {
            eprintln!("skipped: gcc cannot build a shared library here");
            return;
        }
        let rpath = format!("-Wl,-rpath,{}", d.path().display());
        let linked = gcc(&["-o", &p("scx_gone"), &p("main.c"), "-L", &p(""), "-lktstrgone", &rpath]);
        assert!(linked.unwrap().success());
        assert!(resolve_here(&p("scx_gone"), &[]).is_ok(), "links while the library exists");
        std::fs::remove_file(p("libktstrgone.so")).unwrap();
        let e = format!("{:#}", resolve_here(&p("scx_gone"), &[]).unwrap_err());
        assert!(e.contains("libktstrgone.so") && e.contains("not found") && e.contains("scx_gone"), "{e}");
    }
}
