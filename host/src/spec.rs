//! Types only: what to run, as the layers below the orchestration agree on it (the scheduler
//! under test, files carried into the guest). No behaviour beyond parsing and constructors, and
//! no imports from the rest of the crate, so every layer can use it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The scheduler under test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerInfo {
    /// `eevdf`, or the sched_ext scheduler's name.
    pub name: String,
    pub kind: SchedulerKind,
    /// Its command-line arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// The kernel's own fair scheduler; nothing to attach.
    Eevdf,
    /// A BPF scheduler that must stay attached for the whole run.
    SchedExt,
}

impl SchedulerInfo {
    pub fn eevdf() -> Self {
        SchedulerInfo { name: "eevdf".into(), kind: SchedulerKind::Eevdf, args: Vec::new() }
    }
}

/// A host file (or directory, recursively) and where it goes in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    pub host: PathBuf,
    pub guest: String,
}

impl GuestFile {
    /// The file at the same path in the guest.
    pub fn same_path(host: PathBuf) -> Result<Self> {
        let guest = host.to_str().with_context(|| format!("{}: not a UTF-8 path", host.display()))?.to_string();
        Ok(GuestFile { host, guest })
    }

    /// `HOST[:GUEST]`; GUEST defaults to `/include/<file name>`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (host, guest) = match spec.split_once(':') {
            Some((h, g)) => (h, g.to_string()),
            None => {
                let name = Path::new(spec).file_name().with_context(|| format!("--include {spec}: no file name"))?;
                (spec, format!("/include/{}", name.to_string_lossy()))
            }
        };
        if !guest.starts_with('/') {
            bail!("--include {spec}: the guest path {guest} must be absolute");
        }
        let host = PathBuf::from(host);
        if !host.exists() {
            bail!("--include {spec}: {} does not exist on the host", host.display());
        }
        Ok(GuestFile { host, guest })
    }
}
