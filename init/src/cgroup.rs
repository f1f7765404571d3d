//! The cgroup v2 side of a scenario: a root directory for the run, the scenario's cgroups
//! below it with cpusets and weights, moving workers in, removing it all at the end.
//!
//! A root that is not on a cgroup2 filesystem (a test directory in host mode) is driven the
//! same way, with the control files written as plain files, so the sequence of writes can be
//! checked without privileges.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ktstr_shared::scenario::CgroupSpec;

/// The run's cgroup in a guest.
pub const GUEST_ROOT: &str = "/sys/fs/cgroup/ktstr";
const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;
/// rmdir of a cgroup whose last task has just been reaped can briefly fail with EBUSY.
const RMDIR_TRIES: u32 = 50;

/// A failed cgroup operation: what was done to which file, and the error.
#[derive(Debug)]
pub struct CgError {
    pub op: &'static str,
    pub path: PathBuf,
    pub value: Option<String>,
    pub err: io::Error,
}

impl fmt::Display for CgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{} {v:?} to {}: {}", self.op, self.path.display(), self.err),
            None => write!(f, "{} {}: {}", self.op, self.path.display(), self.err),
        }
    }
}

/// Controllers the scenario relies on; enabling one it does not need may fail harmlessly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub cpuset: bool,
    pub cpu: bool,
}

pub struct Cgroups {
    root: PathBuf,
    /// Not a cgroup2 filesystem: control files are created and appended to.
    plain: bool,
    /// Whether we made `root` (then we remove it too).
    own_root: bool,
    /// Cgroups made, in creation order.
    created: Vec<String>,
    /// Problems that did not stop the run (a controller it does not need).
    pub warnings: Vec<String>,
}

impl Cgroups {
    /// Makes the root (if missing) and enables cpuset and cpu from the cgroup2 mount down to it.
    pub fn open(root: &Path, needs: Needs) -> Result<Cgroups, CgError> {
        let own_root = match std::fs::create_dir(root) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(err) => return Err(CgError { op: "mkdir", path: root.into(), value: None, err }),
        };
        let plain = !is_cgroup2(root);
        let mut cg = Cgroups { root: root.into(), plain, own_root, created: Vec::new(), warnings: Vec::new() };
        let mut dirs: Vec<PathBuf> =
            root.ancestors().skip(1).take_while(|d| !plain && is_cgroup2(d)).map(Into::into).collect();
        dirs.reverse();
        dirs.push(root.into());
        for dir in dirs {
            cg.enable_controllers(&dir, needs)?;
        }
        Ok(cg)
    }

    /// True when the root is a plain directory, not a cgroup2 filesystem.
    pub fn is_plain(&self) -> bool {
        self.plain
    }

    fn enable_controllers(&mut self, dir: &Path, needs: Needs) -> Result<(), CgError> {
        for (controller, needed) in [("+cpuset", needs.cpuset), ("+cpu", needs.cpu)] {
            match self.write_path(&dir.join("cgroup.subtree_control"), controller) {
                Ok(()) => {}
                Err(e) if needed => return Err(e),
                Err(e) => self.warnings.push(format!("{e} (not needed by this scenario)")),
            }
        }
        Ok(())
    }

    /// Creates a scenario cgroup and applies its cpuset and weight.
    pub fn create(&mut self, spec: &CgroupSpec, needs: Needs) -> Result<(), CgError> {
        if let Some((parent, _)) = spec.name.rsplit_once('/') {
            // The parent becomes an inner node: its children get the controllers.
            self.enable_controllers(&self.root.join(parent), needs)?;
        }
        let dir = self.root.join(&spec.name);
        match std::fs::create_dir(&dir) {
            Ok(()) => self.created.push(spec.name.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.created.push(spec.name.clone()),
            Err(err) => return Err(CgError { op: "mkdir", path: dir, value: None, err }),
        }
        if let Some(cpus) = &spec.cpuset {
            self.write(&spec.name, "cpuset.cpus", &cpus.to_string())?;
        }
        if let Some(w) = spec.weight {
            self.write(&spec.name, "cpu.weight", &w.to_string())?;
        }
        Ok(())
    }

    /// Writes `value` to control file `file` of cgroup `name`.
    pub fn write(&self, name: &str, file: &str, value: &str) -> Result<(), CgError> {
        self.write_path(&self.root.join(name).join(file), value)
    }

    /// Moves a process into cgroup `name`.
    pub fn place(&self, name: &str, pid: libc::pid_t) -> Result<(), CgError> {
        self.write(name, "cgroup.procs", &pid.to_string())
    }

    fn write_path(&self, path: &Path, value: &str) -> Result<(), CgError> {
        let err = |err| CgError { op: "write", path: path.into(), value: Some(value.into()), err };
        let mut opts = OpenOptions::new();
        opts.write(true);
        if self.plain {
            opts.create(true).append(true);
        }
        let mut file = opts.open(path).map_err(err)?;
        // One write call: the kernel takes a control file's value from a single write.
        let line = if self.plain { format!("{value}\n") } else { value.to_owned() };
        file.write_all(line.as_bytes()).map_err(err)
    }

    /// Removes cgroup `name` (its processes must be gone).
    pub fn remove(&mut self, name: &str) -> Result<(), CgError> {
        self.created.retain(|c| c != name);
        self.remove_dir(&self.root.join(name))
    }

    fn remove_dir(&self, dir: &Path) -> Result<(), CgError> {
        if self.plain {
            return std::fs::remove_dir_all(dir).map_err(|err| CgError {
                op: "rmdir",
                path: dir.into(),
                value: None,
                err,
            });
        }
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < RMDIR_TRIES => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => return Err(CgError { op: "rmdir", path: dir.into(), value: None, err }),
            }
        }
    }

    /// Removes every cgroup made (children first), then the root if we made it.
    pub fn teardown(&mut self) -> Vec<CgError> {
        let mut errors = Vec::new();
        while let Some(name) = self.created.pop() {
            if let Err(e) = self.remove_dir(&self.root.join(&name)) {
                errors.push(e);
            }
        }
        if self.own_root
            && let Err(e) = self.remove_dir(&self.root)
        {
            errors.push(e);
        }
        errors
    }
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = crate::sys::cstring(&path.to_string_lossy()) else { return false };
    // SAFETY: all-zero is a valid statfs; `st` is a valid out pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and a valid out pointer.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    ok && st.f_type as libc::c_long == CGROUP2_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_shared::scenario::CpuList;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ktstr-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn plain_directory_records_every_write() {
        let root = tmpdir("plain");
        let needs = Needs { cpuset: true, cpu: true };
        let mut cg = Cgroups::open(&root, needs).unwrap();
        assert!(cg.is_plain());
        let mut outer = CgroupSpec::new("a");
        outer.cpuset = Some(CpuList::new([0, 1, 2]));
        let mut inner = CgroupSpec::new("a/b");
        inner.weight = Some(300);
        cg.create(&outer, needs).unwrap();
        cg.create(&inner, needs).unwrap();
        cg.place("a/b", 42).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpuset\n+cpu\n");
        assert_eq!(read("a/cgroup.subtree_control"), "+cpuset\n+cpu\n");
        assert_eq!(read("a/cpuset.cpus"), "0-2\n");
        assert_eq!(read("a/b/cpu.weight"), "300\n");
        assert_eq!(read("a/b/cgroup.procs"), "42\n");
        assert!(cg.teardown().is_empty());
        assert!(!root.exists());
    }

    #[test]
    fn errors_name_the_file_and_value() {
        let root = tmpdir("err");
        let cg = Cgroups::open(&root, Needs::default()).unwrap();
        let e = cg.write("missing/dir", "cpu.weight", "7").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("write \"7\" to "), "{msg}");
        assert!(msg.contains("missing/dir/cpu.weight"), "{msg}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
