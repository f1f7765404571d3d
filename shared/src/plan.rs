//! The run plan: what the init does in one run. The host writes it (postcard) to [`PLAN_PATH`]
//! in the initramfs; the init reads it at boot.
//!
//! Compatibility: postcard is positional. New fields go at the end of a struct and bump
//! [`PLAN_VERSION`]; host and init normally come from the same build, the version catches an
//! initramfs cached from another one.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::scenario::{Scenario, ScenarioError};

/// Where the init finds the plan.
pub const PLAN_PATH: &str = "/ktstr/plan";
/// The guest end of the protocol channel (COM2).
pub const PROTOCOL_TTY: &str = "/dev/ttyS1";
/// Version of the [`RunPlan`] layout; the first field of every plan.
/// v2: [`RunPlan::scenario`]. v3: [`RunPlan::scheduler`]. v4: [`ExecPlan::output_limit`] is
/// optional and keeps the tail.
pub const PLAN_VERSION: u16 = 4;
/// Largest plan file the init accepts.
pub const MAX_PLAN_BYTES: usize = 1 << 20;
/// Largest [`ExecPlan::output_limit`]: the kept tail of each stream lives in guest memory
/// until the command ends and is sent after it; two full tails take some 18 s over a serial
/// line under TCG (~115 KB/s), within the host's allowance past the deadline.
pub const MAX_OUTPUT_LIMIT: u32 = 1 << 20;
/// `PATH` given to the command when its plan sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the init does in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPlan {
    /// [`PLAN_VERSION`]. Must stay the first field.
    pub version: u16,
    /// Hard deadline in ms from the init's start: the command is killed then, and a watchdog
    /// powers the guest off shortly after even if the init is stuck. Must be > 0.
    pub deadline_ms: u32,
    /// Keep the serial console quiet (kernel console loglevel lowered, init logs only as frames):
    /// console bytes are expensive under nested virtualization.
    pub console_quiet: bool,
    /// Wait for [`crate::wire::HostMsg::Start`] before running (bounded by the deadline).
    pub wait_for_start: bool,
    /// A command to run, if any.
    pub exec: Option<ExecPlan>,
    /// Cgroups and workers to run and report on, if any (not together with `exec`).
    pub scenario: Option<Scenario>,
    /// A sched_ext scheduler to start, see attach, and watch around the command or scenario;
    /// `None` runs on the kernel's default scheduler (EEVDF).
    pub scheduler: Option<SchedPlan>,
}

/// A sched_ext scheduler for the init to run: the process, how long it may take to attach,
/// how long it gets to detach at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedPlan {
    /// Name shown in reports (e.g. `scx_qmap`).
    pub name: String,
    /// Program (absolute guest path) and arguments.
    pub argv: Vec<String>,
    /// Its whole environment; [`DEFAULT_PATH`] when it has no `PATH`.
    pub env: Vec<(String, String)>,
    /// From spawn until /sys/kernel/sched_ext/state must read `enabled` with a new enable_seq.
    pub attach_timeout_ms: u32,
    /// From SIGINT at the end until the kernel must be back on EEVDF (then SIGKILL).
    pub stop_timeout_ms: u32,
}

impl SchedPlan {
    fn validate(&self) -> Result<(), PlanError> {
        match self.argv.first() {
            Some(p) if p.starts_with('/') => {}
            _ => return Err(PlanError::SchedulerPath),
        }
        if self.attach_timeout_ms == 0 {
            return Err(PlanError::ZeroAttachTimeout);
        }
        let env = self.env.iter().flat_map(|(k, v)| [k, v]);
        if self.argv.iter().chain(env).chain([&self.name]).any(|s| s.contains('\0')) {
            return Err(PlanError::NulByte);
        }
        Ok(())
    }
}

/// A command for the init to run and watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecPlan {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// The command's whole environment (the init's own is not inherited). Without a `PATH`
    /// entry, [`DEFAULT_PATH`] is used.
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// `None`: all output is streamed to the host as it comes. `Some(n)`: only the last `n`
    /// bytes of each stream (stdout, stderr) are kept and sent when the command has ended;
    /// the bytes before them are counted as dropped. At most [`MAX_OUTPUT_LIMIT`].
    pub output_limit: Option<u32>,
}

impl RunPlan {
    /// A plan that does nothing but report, with the given deadline.
    pub fn new(deadline_ms: u32) -> Self {
        RunPlan {
            version: PLAN_VERSION,
            deadline_ms,
            console_quiet: false,
            wait_for_start: false,
            exec: None,
            scenario: None,
            scheduler: None,
        }
    }

    /// The postcard bytes to store at [`PLAN_PATH`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, PlanError> {
        postcard::to_allocvec(self).map_err(|_| PlanError::Encode)
    }

    /// Decodes and [validates](Self::validate) a plan file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PlanError> {
        if bytes.len() > MAX_PLAN_BYTES {
            return Err(PlanError::TooLarge { len: bytes.len() });
        }
        // Check the version alone first: another layout would only give a vague decode error.
        let (version, _) = postcard::take_from_bytes::<u16>(bytes).map_err(|_| PlanError::Decode)?;
        if version != PLAN_VERSION {
            return Err(PlanError::Version { found: version });
        }
        let plan = match postcard::take_from_bytes::<RunPlan>(bytes) {
            Ok((plan, [])) => plan,
            Ok((_, rest)) => return Err(PlanError::TrailingBytes { len: rest.len() }),
            Err(_) => return Err(PlanError::Decode),
        };
        plan.validate()?;
        Ok(plan)
    }

    /// Checks what the init relies on: a deadline, a command it can actually exec, a scenario
    /// it can run.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.version != PLAN_VERSION {
            return Err(PlanError::Version { found: self.version });
        }
        if self.deadline_ms == 0 {
            return Err(PlanError::ZeroDeadline);
        }
        if let Some(exec) = &self.exec {
            exec.validate()?;
        }
        if let Some(sched) = &self.scheduler {
            sched.validate()?;
        }
        match &self.scenario {
            Some(_) if self.exec.is_some() => Err(PlanError::ExecAndScenario),
            Some(scenario) => scenario.validate().map_err(PlanError::Scenario),
            None => Ok(()),
        }
    }
}

impl ExecPlan {
    /// A command with an empty environment, no cwd and no output limit.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        ExecPlan { argv: argv.into_iter().map(Into::into).collect(), env: Vec::new(), cwd: None, output_limit: None }
    }

    fn validate(&self) -> Result<(), PlanError> {
        let Some(program) = self.argv.first() else {
            return Err(PlanError::EmptyArgv);
        };
        if program.is_empty() {
            return Err(PlanError::EmptyArgv);
        }
        let strings = self.argv.iter().chain(self.cwd.iter());
        let env = self.env.iter().flat_map(|(k, v)| [k, v]);
        if strings.chain(env).any(|s| s.contains('\0')) {
            return Err(PlanError::NulByte);
        }
        if let Some((name, _)) = self.env.iter().find(|(k, _)| k.is_empty() || k.contains('=')) {
            return Err(PlanError::BadEnvName { name: name.clone() });
        }
        match self.output_limit {
            Some(limit) if limit > MAX_OUTPUT_LIMIT => Err(PlanError::OutputLimit { limit }),
            _ => Ok(()),
        }
    }
}

/// Why a plan was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    Encode,
    TooLarge { len: usize },
    Decode,
    TrailingBytes { len: usize },
    Version { found: u16 },
    ZeroDeadline,
    EmptyArgv,
    NulByte,
    BadEnvName { name: String },
    ExecAndScenario,
    Scenario(ScenarioError),
    SchedulerPath,
    ZeroAttachTimeout,
    OutputLimit { limit: u32 },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Encode => write!(f, "run plan could not be encoded"),
            PlanError::TooLarge { len } => {
                write!(f, "run plan is {len} bytes, more than the {MAX_PLAN_BYTES} allowed")
            }
            PlanError::Decode => write!(
                f,
                "run plan is not a postcard RunPlan v{PLAN_VERSION}; rebuild the image with a matching ktstr-host"
            ),
            PlanError::TrailingBytes { len } => {
                write!(f, "run plan has {len} unexpected trailing bytes; rebuild the image with a matching ktstr-host")
            }
            PlanError::Version { found } => write!(
                f,
                "run plan version {found}, this init expects {PLAN_VERSION}; rebuild the image with a matching ktstr-host"
            ),
            PlanError::ZeroDeadline => write!(f, "run plan deadline_ms is 0; give a deadline > 0"),
            PlanError::EmptyArgv => write!(f, "run plan exec.argv is empty; name a program"),
            PlanError::NulByte => write!(f, "run plan exec has a string with a NUL byte"),
            PlanError::BadEnvName { name } => {
                write!(f, "run plan exec.env name {name:?} is empty or contains '='")
            }
            PlanError::ExecAndScenario => write!(f, "run plan has both exec and scenario; give one of them"),
            PlanError::Scenario(e) => write!(f, "run plan {e}"),
            PlanError::SchedulerPath => write!(f, "run plan scheduler.argv[0] must be an absolute guest path"),
            PlanError::ZeroAttachTimeout => write!(f, "run plan scheduler.attach_timeout_ms is 0; give a timeout > 0"),
            PlanError::OutputLimit { limit } => {
                write!(f, "run plan exec.output_limit {limit} is over the {MAX_OUTPUT_LIMIT} bytes allowed")
            }
        }
    }
}

impl core::error::Error for PlanError {}
