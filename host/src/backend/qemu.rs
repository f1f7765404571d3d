//! `Backend::Qemu`: runs `qemu-system-x86_64` with our kernel, initramfs and cmdline.
//! COM1 (console) is QEMU's stdout; COM2 (protocol) is a unix socket we listen on.
//! QEMU dies with us: its own process group, PR_SET_PDEATHSIG, and kill on drop.

use super::{Accel, Machine, MachineExit, VmSpec};
use ktstr_shared::topology::Topology;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "{QEMU} not found on PATH: install QEMU (Debian/Ubuntu: apt-get install qemu-system-x86; Fedora: dnf install qemu-system-x86-core)"
    )]
    NotInstalled,
    #[error("starting {QEMU}: {0}")]
    Spawn(io::Error),
    #[error("protocol socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("initrd for {QEMU}: {0}")]
    Initrd(crate::image::ImageError),
    #[error("{QEMU} exited before connecting the protocol channel ({status}); its output:\n{output}")]
    EarlyExit { status: String, output: String },
}

/// A running QEMU.
pub struct Qemu {
    child: Child,
    console: Option<ChildStdout>,
    channel: Option<UnixStream>,
}

/// The QEMU argument list for `spec` (without the protocol socket and program name).
pub fn args(spec: &VmSpec, accel: Accel, socket: &Path) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    match accel {
        Accel::Kvm => push(&["-accel", "kvm"]),
        Accel::Tcg => push(&["-accel", "tcg"]),
    }
    push(&["-cpu", cpu_model(&spec.topology, accel)]);
    push(&["-M", "pc", "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-no-reboot"]);
    push(&["-m", &format!("{}M", spec.memory_mib)]);
    a.extend(topology_args(&spec.topology, spec.memory_mib));
    a.extend(["-kernel".into(), spec.kernel.display().to_string()]);
    if let [initrd] = spec.initrd.as_slice() {
        a.extend(["-initrd".into(), initrd.display().to_string()]);
    }
    a.extend(["-append".into(), spec.cmdline.clone()]);
    a.extend(["-chardev".into(), "stdio,id=con,signal=off".into(), "-serial".into(), "chardev:con".into()]);
    a.extend(["-chardev".into(), format!("socket,id=proto,path={}", socket.display())]);
    a.extend(["-serial".into(), "chardev:proto".into()]);
    a
}

/// The CPU model for a topology. On TCG: `max` (every feature TCG emulates, AMD SVM included,
/// for the nested KVM tests) when each socket has one LLC; an Intel model when a socket has
/// several, because QEMU's AMD models tie L3 to the socket while Intel ones give each die its
/// own L3 (QEMU 7.2). On KVM: `host`, whose vendor decides (AMD hosts then share L3 per socket).
pub fn cpu_model(t: &Topology, accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "host",
        Accel::Tcg if t.llcs_per_socket() > 1 => "Skylake-Server",
        Accel::Tcg => "max",
    }
}

/// `-smp` (sockets, dies = LLCs per socket, cores per LLC, threads) and, with several nodes,
/// `-numa` nodes (RAM split evenly, CPUs in index order, which is the spec's CPU order) and
/// SLIT distances (10 local, 20 remote).
pub fn topology_args(t: &Topology, memory_mib: u32) -> Vec<String> {
    let smp = format!(
        "{},sockets={},dies={},cores={},threads={}",
        t.cpus(),
        t.sockets,
        t.llcs_per_socket(),
        t.cores_per_llc,
        t.threads_per_core
    );
    let mut a = vec!["-smp".to_string(), smp];
    if t.nodes > 1 {
        let per_node = t.cpus_per_node();
        let mem = memory_mib / t.nodes;
        for n in 0..t.nodes {
            // The last node takes the remainder so the sizes add up to -m.
            let size = if n + 1 == t.nodes { memory_mib - mem * (t.nodes - 1) } else { mem };
            a.push("-object".into());
            a.push(format!("memory-backend-ram,id=mem{n},size={size}M"));
            let (first, last) = (n * per_node, (n + 1) * per_node - 1);
            a.push("-numa".into());
            a.push(format!("node,nodeid={n},cpus={first}-{last},memdev=mem{n}"));
        }
        for (src, dst) in (0..t.nodes).flat_map(|s| (0..t.nodes).map(move |d| (s, d))).filter(|(s, d)| s != d) {
            a.push("-numa".into());
            a.push(format!("dist,src={src},dst={dst},val=20"));
        }
    }
    a
}

impl Qemu {
    /// Starts QEMU and waits until it connected COM2 to our socket in `dir`.
    /// Several initrd parts are first concatenated into one file in `dir` (QEMU takes one).
    pub fn start(spec: &VmSpec, accel: Accel, dir: &Path) -> Result<Self, QemuError> {
        let single;
        let spec = if spec.initrd.len() > 1 {
            let out = dir.join("initrd.cpio");
            crate::image::concat_files(&spec.initrd, &out).map_err(QemuError::Initrd)?;
            single = VmSpec { initrd: vec![out], ..spec.clone() };
            &single
        } else {
            spec
        };
        let socket = dir.join("proto.sock");
        let listener =
            UnixListener::bind(&socket).map_err(|source| QemuError::Socket { path: socket.clone(), source })?;
        let mut cmd = Command::new(QEMU);
        cmd.args(args(spec, accel, &socket)).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        tracing::debug!("{QEMU} {}", args(spec, accel, &socket).join(" "));
        let child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => QemuError::NotInstalled,
            _ => QemuError::Spawn(e),
        })?;
        let mut q = Qemu { console: None, channel: None, child };
        q.channel = Some(q.accept(&listener, &socket)?);
        q.console = q.child.stdout.take();
        Ok(q)
    }

    /// Accepts QEMU's connection, giving up if QEMU exits first (bad arguments, no KVM...).
    fn accept(&mut self, listener: &UnixListener, socket: &Path) -> Result<UnixStream, QemuError> {
        let sock_err = |source| QemuError::Socket { path: socket.to_owned(), source };
        listener.set_nonblocking(true).map_err(sock_err)?;
        let start = Instant::now();
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(sock_err)?;
                    return Ok(s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(sock_err(e)),
            }
            if let Some(status) = self.child.try_wait().map_err(QemuError::Spawn)? {
                let mut output = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut output);
                }
                return Err(QemuError::EarlyExit { status: status.to_string(), output });
            }
            if start.elapsed() > Duration::from_secs(30) {
                self.kill();
                return Err(sock_err(io::Error::new(io::ErrorKind::TimedOut, "QEMU did not connect within 30 s")));
            }
            std::thread::sleep(Duration::from_millis(5)); // polling a child that has no fd to wait on
        }
    }
}

impl Machine for Qemu {
    fn take_console(&mut self) -> Option<Box<dyn Read + Send>> {
        self.console.take().map(|c| Box::new(c) as Box<dyn Read + Send>)
    }

    fn take_channel(&mut self) -> Option<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let s = self.channel.take()?;
        let w = s.try_clone().ok()?;
        Some((Box::new(s), Box::new(w)))
    }

    fn try_wait(&mut self) -> io::Result<Option<MachineExit>> {
        Ok(self.child.try_wait()?.map(|st| {
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            MachineExit { success: st.success(), detail: format!("{QEMU} {st}"), stderr }
        }))
    }

    fn kill(&mut self) -> Option<String> {
        // SAFETY: signalling the process group we created for QEMU.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_becomes_smp_and_numa() {
        let t: Topology = "2n4l2c2t".parse().unwrap();
        let a = topology_args(&t, 1024);
        assert_eq!(a[..2], ["-smp", "16,sockets=2,dies=2,cores=2,threads=2"]);
        let numa: Vec<&String> = a.iter().filter(|s| s.starts_with("node,")).collect();
        assert_eq!(numa, ["node,nodeid=0,cpus=0-7,memdev=mem0", "node,nodeid=1,cpus=8-15,memdev=mem1"]);
        assert!(a.contains(&"memory-backend-ram,id=mem1,size=512M".to_string()));
        assert!(a.contains(&"dist,src=1,dst=0,val=20".to_string()));
        assert_eq!(a.iter().filter(|s| s.starts_with("dist,")).count(), 2);
        let single = topology_args(&Topology::default(), 512);
        assert_eq!(single, ["-smp", "2,sockets=1,dies=1,cores=2,threads=1"]);
        let two_sockets: Topology = "1n2l2c1t2s".parse().unwrap();
        assert_eq!(topology_args(&two_sockets, 512)[1], "4,sockets=2,dies=1,cores=2,threads=1");
    }

    #[test]
    fn several_llcs_per_socket_need_an_intel_model_on_tcg() {
        let one: Topology = "2n2l2c1t".parse().unwrap();
        let many: Topology = "1n3l3c1t".parse().unwrap();
        assert_eq!(cpu_model(&one, Accel::Tcg), "max");
        assert_eq!(cpu_model(&many, Accel::Tcg), "Skylake-Server");
        assert_eq!(cpu_model(&many, Accel::Kvm), "host");
    }

    #[test]
    fn odd_memory_split_adds_up() {
        let t: Topology = "3n3l1c1t".parse().unwrap();
        let a = topology_args(&t, 1000);
        let sizes: Vec<u32> = a
            .iter()
            .filter_map(|s| s.split("size=").nth(1))
            .map(|s| s.trim_end_matches('M').parse().unwrap())
            .collect();
        assert_eq!(sizes.iter().sum::<u32>(), 1000);
    }
}
