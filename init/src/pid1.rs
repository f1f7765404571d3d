//! What only PID 1 does: mount the API filesystems, set up the console and the protocol tty,
//! and power the machine off at the end.

use std::io;
use std::os::fd::RawFd;
use std::sync::mpsc;
use std::time::Duration;

use ktstr_shared::wire::LogLevel;

use crate::sys::cstring;

struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
    /// Without it the init cannot work: failing is fatal. Others are skipped when the kernel
    /// lacks the filesystem and only logged when mounting fails.
    required: bool,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

const MOUNTS: &[Mount] = &[
    Mount { fstype: "proc", target: "/proc", flags: NOSUID_NODEV_NOEXEC, data: "", required: true },
    Mount { fstype: "sysfs", target: "/sys", flags: NOSUID_NODEV_NOEXEC, data: "", required: true },
    Mount { fstype: "devtmpfs", target: "/dev", flags: libc::MS_NOSUID, data: "mode=0755", required: true },
    Mount { fstype: "cgroup2", target: "/sys/fs/cgroup", flags: NOSUID_NODEV_NOEXEC, data: "", required: false },
    Mount { fstype: "debugfs", target: "/sys/kernel/debug", flags: NOSUID_NODEV_NOEXEC, data: "", required: false },
    Mount { fstype: "tracefs", target: "/sys/kernel/tracing", flags: NOSUID_NODEV_NOEXEC, data: "", required: false },
];

/// Findings of the early boot, reported once the protocol channel is up.
#[derive(Default)]
pub struct EarlyReport {
    pub notes: Vec<(LogLevel, String)>,
    pub fatal: Option<String>,
}

/// /tmp is a directory of the root filesystem, not a mount of its own: the initramfs root is
/// already a writable tmpfs (or ramfs), and a mount over /tmp would hide what the host carried
/// there (`exec -- /tmp/prog`, `-i HOST:/tmp/x`). Made world-writable and sticky, as a /tmp is.
const TMP: &str = "/tmp";

pub fn mount_all(report: &mut EarlyReport) {
    if let Err(e) = prepare_tmp() {
        report.notes.push((LogLevel::Warn, format!("cannot prepare {TMP}: {e}")));
    }
    for m in MOUNTS {
        // /proc is mounted first, so later entries can ask the kernel what it supports.
        if !m.required && !fs_supported(m.fstype) {
            report.notes.push((LogLevel::Info, format!("{} not in this kernel; {} not mounted", m.fstype, m.target)));
            continue;
        }
        if let Err(e) = mount(m) {
            let msg = format!("mount {} on {}: {e}", m.fstype, m.target);
            if m.required {
                report.fatal.get_or_insert(msg);
            } else {
                report.notes.push((LogLevel::Warn, msg));
            }
        }
    }
}

fn prepare_tmp() -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(TMP)?;
    std::fs::set_permissions(TMP, std::fs::Permissions::from_mode(0o1777))
}

fn fs_supported(fstype: &str) -> bool {
    let list = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    list.lines().any(|l| l.split_whitespace().last() == Some(fstype))
}

fn mount(m: &Mount) -> io::Result<()> {
    std::fs::create_dir_all(m.target)?;
    let (src, target, fstype, data) = (cstring(m.fstype)?, cstring(m.target)?, cstring(m.fstype)?, cstring(m.data)?);
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let ret = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), m.flags, data.as_ptr().cast()) };
    let err = io::Error::last_os_error();
    // EBUSY: already mounted (e.g. by the kernel's devtmpfs automount).
    if ret == 0 || err.raw_os_error() == Some(libc::EBUSY) { Ok(()) } else { Err(err) }
}

/// The kernel opens /dev/console as fds 0-2 only if the initramfs has it; otherwise take it
/// from devtmpfs, so that our messages reach the console and the next fd we open is not 0-2.
pub fn ensure_console_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD on any integer is harmless.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: a constant NUL-terminated path.
        let c = unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if c >= 0 && c != fd {
            // SAFETY: both are fds we own.
            unsafe {
                libc::dup2(c, fd);
                libc::close(c);
            }
        }
    }
}

/// Opens the protocol tty raw (8 bit clean, no echo, no flow control), blocking.
pub fn open_tty(path: &str) -> io::Result<RawFd> {
    let c = cstring(path)?;
    // O_NONBLOCK: do not wait for a carrier that a virtual UART may never raise.
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `tio` is a valid pointer for all calls below.
    unsafe {
        if libc::tcgetattr(fd, &mut tio) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut tio);
        tio.c_cflag |= libc::CLOCAL | libc::CREAD;
        tio.c_cflag &= !libc::CRTSCTS;
        // Through c_cflag: libc links the cfset*speed functions by glibc symbol version, which a
        // static glibc does not provide.
        tio.c_cflag = (tio.c_cflag & !libc::CBAUD) | libc::B115200;
        if libc::tcsetattr(fd, libc::TCSANOW, &tio) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    Ok(fd)
}

/// Only emergency kernel messages on the console: every console byte is slow under nested
/// virtualization, and the data goes over the protocol channel anyway.
pub fn quiet_kernel_console() -> io::Result<()> {
    std::fs::write("/proc/sys/kernel/printk", "1")
}

/// Waits (boundedly: a stuck line must not keep the VM up) for the tty to send what it holds,
/// syncs, and ends the VM. Never returns: PID 1 exiting would panic the kernel.
///
/// A reboot, not a power-off: both VMMs treat a guest reset as the end (QEMU runs with
/// `-no-reboot`, the micro-VMM exits on the i8042 reset), while a power-off without ACPI
/// only halts the kernel ("Power off not available: System halted instead").
pub fn power_off(tty: Option<RawFd>) -> ! {
    if let Some(fd) = tty {
        bounded(Duration::from_secs(2), move || {
            // SAFETY: tcdrain on an fd we keep open.
            unsafe { libc::tcdrain(fd) };
        });
    }
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        // SAFETY: plain syscall.
        unsafe { libc::pause() };
    }
}

/// Runs `f` on a helper thread and waits for it at most `limit` (skipped if no thread starts).
pub fn bounded(limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let spawned = std::thread::Builder::new().spawn(move || {
        f();
        let _ = done.send(());
    });
    if spawned.is_ok() {
        let _ = finished.recv_timeout(limit);
    }
}
