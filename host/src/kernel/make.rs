//! Running kbuild: configure a flavour out of tree, compile, report progress, stop on Ctrl-C.

use super::kconfig::{Flavour, Mismatch};
use crate::interrupt;
use crate::progress::Progress;
use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MakeError {
    #[error("missing build dependencies: {}; on Debian: apt-get install {}", .0.iter().map(|d| d.what).collect::<Vec<_>>().join(", "), packages(.0))]
    MissingDeps(Vec<Dep>),
    #[error("`{cmd}` failed (exit {code}); last lines:\n{tail}\nfull log: {log}")]
    Failed { cmd: String, code: String, tail: String, log: PathBuf },
    #[error(
        "options of the fragment did not survive `make olddefconfig` (usually an unmet dependency on this kernel version): {}",
        .0.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")
    )]
    ConfigMismatch(Vec<Mismatch>),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Interrupted(#[from] interrupt::Interrupted),
}

/// A build tool or header and the Debian package that provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub what: &'static str,
    pub package: &'static str,
}

fn packages(deps: &[Dep]) -> String {
    let mut p: Vec<_> = deps.iter().map(|d| d.package).collect();
    p.dedup();
    p.join(" ")
}

const TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("pahole", "dwarves"),
    ("lz4", "lz4"),
    ("objcopy", "binutils"),
    ("perl", "perl"),
];
const HEADERS: &[(&str, &str)] = &[("/usr/include/gelf.h", "libelf-dev")];
const DEFCONFIG_HEADERS: &[(&str, &str)] = &[("/usr/include/openssl/opensslv.h", "libssl-dev")];

/// Checks the tools and headers kbuild needs for `flavour`, naming the packages missing.
pub fn check_deps(flavour: Flavour) -> Result<(), MakeError> {
    check_deps_in(flavour, &std::env::var_os("PATH").unwrap_or_default())
}

fn check_deps_in(flavour: Flavour, path: &std::ffi::OsStr) -> Result<(), MakeError> {
    let on_path = |tool: &str| std::env::split_paths(&path).any(|d| d.join(tool).is_file());
    let mut missing: Vec<Dep> =
        TOOLS.iter().filter(|(t, _)| !on_path(t)).map(|&(what, package)| Dep { what, package }).collect();
    let headers = HEADERS.iter().chain(if flavour == Flavour::Defconfig { DEFCONFIG_HEADERS } else { &[] });
    missing.extend(headers.filter(|(h, _)| !Path::new(h).exists()).map(|&(what, package)| Dep { what, package }));
    if missing.is_empty() { Ok(()) } else { Err(MakeError::MissingDeps(missing)) }
}

/// One out-of-tree build: kernel source `src`, build dir `out`.
pub struct Kbuild<'a> {
    pub src: &'a Path,
    pub out: &'a Path,
    pub jobs: usize,
}

const STAMP: &str = ".ktstr-config-hash";

impl Kbuild<'_> {
    pub fn log_path(&self) -> PathBuf {
        self.out.join("ktstr-build.log")
    }

    /// Writes `.config` for `flavour` unless the build dir already has it (incremental).
    pub fn configure(&self, flavour: Flavour, progress: &mut Progress) -> Result<(), MakeError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| MakeError::Io { path, source }
        };
        fs::create_dir_all(self.out).map_err(io_err(self.out))?;
        let stamp = self.out.join(STAMP);
        let hash = flavour.config_hash();
        let config = self.out.join(".config");
        if config.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
            progress.phase("configure: up to date");
            return Ok(());
        }
        progress.phase(&format!("configure {flavour}: {} + fragment", flavour.base_targets().join(" + ")));
        let _ = fs::remove_file(&stamp);
        self.make(flavour.base_targets(), progress)?;
        let mut f = fs::OpenOptions::new().append(true).open(&config).map_err(io_err(&config))?;
        f.write_all(flavour.fragment().to_config_text().as_bytes()).map_err(io_err(&config))?;
        self.make(&["olddefconfig"], progress)?;
        self.verify(flavour)?;
        fs::write(&stamp, &hash).map_err(io_err(&stamp))
    }

    /// Fails naming every fragment option that the final `.config` lacks.
    pub fn verify(&self, flavour: Flavour) -> Result<(), MakeError> {
        let config = self.out.join(".config");
        let text = fs::read_to_string(&config).map_err(|source| MakeError::Io { path: config, source })?;
        let missing = flavour.fragment().missing_in(&text);
        if missing.is_empty() { Ok(()) } else { Err(MakeError::ConfigMismatch(missing)) }
    }

    /// Builds bzImage (and vmlinux, its prerequisite).
    pub fn compile(&self, progress: &mut Progress) -> Result<(), MakeError> {
        progress.phase(&format!("compile (make -j{})", self.jobs));
        self.make(&["bzImage"], progress)
    }

    pub fn bzimage(&self) -> PathBuf {
        self.out.join("arch/x86/boot/bzImage")
    }

    pub fn vmlinux(&self) -> PathBuf {
        self.out.join("vmlinux")
    }

    fn make(&self, targets: &[&str], progress: &mut Progress) -> Result<(), MakeError> {
        let mut cmd = Command::new("make");
        cmd.arg("-C").arg(self.src).arg(format!("O={}", self.out.display())).arg(format!("-j{}", self.jobs));
        cmd.args(targets);
        // Reproducible-ish objects: ccache hits and identical rebuilds across machines.
        cmd.env("KBUILD_BUILD_TIMESTAMP", "@0").env("KBUILD_BUILD_USER", "ktstr").env("KBUILD_BUILD_HOST", "ktstr");
        run_logged(cmd, &self.log_path(), progress)
    }
}

/// Runs `cmd` in its own process group with output appended to `log`, streaming compile
/// lines into `progress`. On Ctrl-C the whole group is killed before returning.
pub(crate) fn run_logged(mut cmd: Command, log: &Path, progress: &mut Progress) -> Result<(), MakeError> {
    use std::os::unix::process::CommandExt;
    let shown = format!("{cmd:?}").replace('"', "");
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| MakeError::Io { path, source }
    };
    let mut logf = fs::OpenOptions::new().create(true).append(true).open(log).map_err(io_err(log))?;
    let (reader, writer) = io::pipe().map_err(io_err(log))?;
    let writer2 = writer.try_clone().map_err(io_err(log))?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2).process_group(0);
    let mut child = cmd.spawn().map_err(|source| MakeError::Io { path: "make".into(), source })?;
    drop(cmd); // closes our copies of the pipe's write end
    let (tx, rx) = mpsc::channel();
    let pump = std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut objects = 0u64;
    let status = loop {
        if interrupt::interrupted() {
            kill_group(&mut child);
            let _ = pump.join();
            return Err(interrupt::Interrupted.into());
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let _ = writeln!(logf, "{line}");
                if is_step(&line) {
                    objects += 1;
                    progress.detail(&format!("{objects} steps, {}", line.trim()));
                }
                tail.push_back(line);
                if tail.len() > 25 {
                    tail.pop_front();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break child.wait().map_err(io_err(log))?,
        }
    };
    let _ = pump.join();
    if status.success() {
        return Ok(());
    }
    let code = status.code().map_or_else(|| "signal".to_string(), |c| c.to_string());
    let tail = tail.into_iter().collect::<Vec<_>>().join("\n");
    Err(MakeError::Failed { cmd: shown, code, tail, log: log.to_owned() })
}

fn is_step(line: &str) -> bool {
    let t = line.trim_start();
    [
        "CC ",
        "AS ",
        "LD ",
        "AR ",
        "HOSTCC ",
        "BTF ",
        "GEN ",
        "OBJCOPY ",
        "LZ4 ",
        "CLNG-BPF ",
        "GEN-SKEL ",
        "LINK ",
        "INSTALL ",
    ]
    .iter()
    .any(|p| t.starts_with(p))
}

fn kill_group(child: &mut Child) {
    let pgid = child.id() as i32;
    // SAFETY: plain syscall on a process group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_named_with_their_packages() {
        let r = check_deps_in(Flavour::Minimal, "/nonexistent-ktstr".as_ref());
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("flex") && msg.contains("pahole") && msg.contains("dwarves"), "{msg}");
        assert!(msg.contains("apt-get install"), "{msg}");
    }

    #[test]
    fn failing_command_reports_tail_and_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo '  CC foo.o'; echo 'foo.c:1: error: boom' >&2; exit 3"]);
        let mut p = Progress::new("test");
        let e = run_logged(cmd, &log, &mut p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("exit 3") && msg.contains("error: boom"), "{msg}");
        assert!(fs::read_to_string(&log).unwrap().contains("CC foo.o"));
    }
}
