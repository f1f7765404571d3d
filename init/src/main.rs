//! ktstr-init: PID 1 of a ktstr guest. Mounts what the run needs, reads the run plan, reports
//! over the protocol tty, runs the plan and powers off. With `--host-mode` the same plan logic
//! runs as a normal process speaking the protocol on stdout/stdin, for tests without a VM.
//! A scenario's workers are this binary again, started with `--worker` (see `worker.rs`).

mod cgroup;
mod control;
mod exec;
mod pid1;
mod procfs;
mod sampler;
mod scenario;
mod sched;
mod session;
mod shm;
mod sink;
mod sys;
mod tail;
mod topo;
mod watchdog;
mod worker;
mod workers;
mod workload;

use std::path::PathBuf;
use std::time::Instant;

use ktstr_shared::plan::{PLAN_PATH, PROTOCOL_TTY};

use crate::pid1::EarlyReport;
use crate::session::{Boot, Exit};

const USAGE: &str = "\
usage: ktstr-init                              (as PID 1 in a ktstr guest)
       ktstr-init --host-mode --plan FILE [--cgroup-root DIR]
                                               (frames on stdout, host messages on stdin)

Runs a postcard RunPlan and reports over the ktstr wire protocol. In host mode it does not
mount or power off, and exits with the command's exit code (0 without a command). A scenario's
cgroup operations are skipped in host mode unless --cgroup-root names a directory for them (a
cgroup2 directory, or any directory to record the writes as plain files). `--worker ...` is
internal: the init starts a scenario's worker processes that way.";

#[derive(Debug)]
enum Cli {
    Host { plan: PathBuf, cgroup_root: Option<PathBuf> },
    Worker(Vec<String>),
    Help,
    Version,
}

fn main() {
    let t0 = Instant::now();
    let init_start_ns = sys::boottime_ns();
    // Before any thread exists, so that all of them inherit the mask.
    if let Err(e) = sys::block_sigchld() {
        eprintln!("ktstr-init: cannot block SIGCHLD: {e}");
    }
    if std::process::id() == 1 {
        pid1_main(t0, init_start_ns);
    }
    match parse_args(std::env::args().skip(1)) {
        Ok(Cli::Host { plan, cgroup_root }) => {
            let early = EarlyReport::default();
            let boot = Boot { t0, init_start_ns, mounts_done_ns: init_start_ns, early, cgroup_root };
            session::run(boot, libc::STDOUT_FILENO, libc::STDIN_FILENO, Exit::Process, &plan)
        }
        Ok(Cli::Worker(args)) => worker::main(&args),
        Ok(Cli::Help) => println!("{USAGE}"),
        Ok(Cli::Version) => println!("ktstr-init {}", env!("CARGO_PKG_VERSION")),
        Err(e) => {
            eprintln!("ktstr-init: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn pid1_main(t0: Instant, init_start_ns: u64) -> ! {
    let mut early = EarlyReport::default();
    pid1::mount_all(&mut early);
    pid1::ensure_console_fds();
    let mounts_done_ns = sys::boottime_ns();
    let tty = match pid1::open_tty(PROTOCOL_TTY) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("ktstr-init: cannot open the protocol tty {PROTOCOL_TTY}: {e}; powering off");
            pid1::power_off(None)
        }
    };
    let boot = Boot { t0, init_start_ns, mounts_done_ns, early, cgroup_root: Some(cgroup::GUEST_ROOT.into()) };
    session::run(boot, tty, tty, Exit::PowerOff { tty }, PLAN_PATH.as_ref())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Cli, String> {
    let mut host_mode = false;
    let mut plan = None;
    let mut cgroup_root = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--worker" => return Ok(Cli::Worker(args.collect())),
            "--host-mode" => host_mode = true,
            "--plan" => plan = Some(args.next().ok_or("--plan needs a FILE")?),
            "--cgroup-root" => cgroup_root = Some(args.next().ok_or("--cgroup-root needs a DIR")?.into()),
            "-h" | "--help" => return Ok(Cli::Help),
            "-V" | "--version" => return Ok(Cli::Version),
            _ => match arg.strip_prefix("--plan=") {
                Some(file) => plan = Some(file.to_owned()),
                None => return Err(format!("unexpected argument {arg:?}")),
            },
        }
    }
    match (host_mode, plan) {
        (true, Some(plan)) => Ok(Cli::Host { plan: plan.into(), cgroup_root }),
        (true, None) => Err("--host-mode needs --plan FILE".into()),
        (false, _) => Err("not PID 1: pass --host-mode to run a plan on this machine".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn host_mode_needs_a_plan() {
        assert!(
            matches!(parse(&["--host-mode", "--plan", "p"]), Ok(Cli::Host { plan, cgroup_root: None }) if plan.as_os_str() == "p")
        );
        assert!(matches!(parse(&["--plan=q", "--host-mode"]), Ok(Cli::Host { plan, .. }) if plan.as_os_str() == "q"));
        assert!(matches!(
            parse(&["--host-mode", "--plan", "p", "--cgroup-root", "/x"]),
            Ok(Cli::Host { cgroup_root: Some(r), .. }) if r.as_os_str() == "/x"
        ));
        assert!(matches!(parse(&["--worker", "1", "2"]), Ok(Cli::Worker(a)) if a == ["1", "2"]));
        assert!(parse(&["--host-mode"]).unwrap_err().contains("--plan"));
        assert!(parse(&["--plan"]).is_err());
        assert!(parse(&[]).unwrap_err().contains("PID 1"));
        assert!(parse(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(matches!(parse(&["--help"]), Ok(Cli::Help)));
    }
}
