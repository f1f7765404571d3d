//! The `ktstr-host` command line.

use crate::app::scenario::{ExplainArgs, JudgeArgs, ListArgs, ScenarioArgs};
use crate::backend::{self, Backend, BackendChoice};
use crate::kernel::{self, cache::Cache, kconfig::Flavour, source::SourceSpec};
use crate::report;
use crate::runner::{self, GuestFile, RunRequest};
use crate::vmm::phases::Marks;
use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use ktstr_shared::plan::{ExecPlan, RunPlan};
use ktstr_shared::topology::Topology;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "ktstr-host",
    version,
    about = "Test Linux schedulers in small VMs with synthetic CPU topologies",
    long_about = "ktstr-host boots a real Linux kernel in a small VM, runs workloads under EEVDF or a \
sched_ext scheduler, and judges the run.\n\nFirst steps:\n  ktstr-host kernel build        # build the default guest kernel (cached)\n  ktstr-host run                 # the main job on defaults\n  ktstr-host kernel list         # what is cached",
    after_help = "Environment: KTSTR_KERNEL (default --kernel), KTSTR_CACHE_DIR (kernel cache root), \
KTSTR_KERNEL_MIRROR (kernel.org mirror base URL), RUST_LOG (log filter)."
)]
pub struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenarios (--scenario), each in its own VM, and judge them; without --scenario,
    /// boot the guest kernel and run the trivial default plan
    ///
    /// Prints a table (verdict and key numbers per scenario), writes
    /// <out-dir>/<run-id>/record.json and verdict.json per scenario, and exits 0 only if every
    /// verdict passed.
    Run(RunArgs),
    /// List the built-in scenarios and what each proves
    List(ListArgs),
    /// Print the verdict thresholds: the defaults, a scenario's, or those a recorded run used
    Explain(ExplainArgs),
    /// Judge a recorded run again (record.json), with other thresholds if given; exit 0 if it passes
    Judge(JudgeArgs),
    /// Run one command in a fresh VM and exit with its exit code (like `vng --exec`)
    ///
    /// The command (and, for scripts, its interpreter) is copied from the host with the
    /// closure of its shared libraries. Exit codes: the command's own; 124 when it (or the
    /// VM) timed out; 127 when it could not start; 255 on a guest panic; 130 on Ctrl-C.
    Exec(ExecArgs),
    /// Build, list and clean cached guest kernels
    #[command(subcommand)]
    Kernel(KernelCmd),
    /// Build and list the in-tree sched_ext schedulers (cached per kernel)
    #[command(subcommand)]
    Sched(crate::app::sched::SchedCmd),
    /// Print this host's CPU topology, a spec's or preset's mapping (with APIC IDs), or
    /// `topo list`: the presets
    Topo(crate::topo::TopoArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct KernelSel {
    /// Kernel: an image file (bzImage or vmlinux), a source tree, a version or prefix
    /// (6.12 = newest cached 6.12.x), or a cache key. Default: newest cached kernel
    /// built with the current fragment, else built from the distribution source package.
    #[arg(long, env = "KTSTR_KERNEL")]
    pub kernel: Option<String>,
}

/// Options shared by everything that boots a VM.
#[derive(Debug, Args)]
pub struct VmArgs {
    #[command(flatten)]
    pub kernel: KernelSel,
    /// CPU topology NnLlCcTt: NUMA nodes, LLCs in all, cores per LLC, threads per core
    #[arg(long, default_value = "1n1l2c1t")]
    pub topology: Topology,
    /// Which VM backend runs the guest
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..=1048576))]
    pub memory: u32,
    /// Show the guest console (kernel log) on stderr as it runs
    #[arg(long)]
    pub console: bool,
    /// Extra guest kernel command-line parameters, after ktstr's own (e.g. 'nohz_full=1-3')
    #[arg(long, value_name = "PARAMS", value_parser = parse_append)]
    pub append: Option<String>,
    /// Hard wall-clock limit for the whole VM in seconds (default: the plan's deadline plus a
    /// boot allowance); the VM is torn down when it passes (exit 124)
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub vm_timeout: Option<u32>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scenario: ScenarioArgs,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Seconds the command may run before it is killed (exit 124)
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub timeout: u32,
    /// Carry a host file or directory into the guest: HOST[:GUEST] (default /include/NAME);
    /// ELF binaries bring their shared libraries
    #[arg(short, long = "include", value_name = "HOST[:GUEST]")]
    pub include: Vec<String>,
    /// Set an environment variable for the command: KEY=VALUE
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run the command under a sched_ext scheduler: an in-tree name or a path, arguments in
    /// the same word ('scx_qmap -s 5000'). Exit 1 if it does not attach or fails meanwhile
    #[arg(long, value_name = "NAME|PATH")]
    pub scheduler: Option<String>,
    /// Seconds the scheduler gets to attach
    #[arg(long, default_value_t = 20, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub attach_timeout: u32,
    /// Keep only the last BYTES of stdout and of stderr, shown when the command ends (the
    /// count dropped is said on stderr). Default: all output, shown as it comes
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(0..=i64::from(ktstr_shared::plan::MAX_OUTPUT_LIMIT)))]
    pub output_limit: Option<u32>,
    /// Command and arguments to run in the guest
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum KernelCmd {
    /// Build a guest kernel and store it in the cache
    ///
    /// Without VERSION, --source or --tarball: the distribution's source package
    /// (Debian: /usr/src/linux-source-6.12.tar.xz from `apt-get install linux-source-6.12`).
    Build(BuildArgs),
    /// List cached kernels, newest first
    List {
        /// JSON output
        #[arg(long)]
        json: bool,
    },
    /// Remove cached kernels
    Clean(CleanArgs),
    /// Print the kernel that --kernel (or the default) resolves to
    Resolve {
        #[command(flatten)]
        kernel: KernelSel,
        /// JSON output
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// A kernel.org version: 6.12 (newest 6.12.x), 6.12.3, 6.15-rc3
    #[arg(conflicts_with_all = ["source", "tarball"])]
    pub version: Option<String>,
    /// A kernel source tree, built out of tree in its own incremental build dir
    #[arg(long, value_name = "DIR", conflicts_with = "tarball")]
    pub source: Option<PathBuf>,
    /// A release tarball (.tar.xz / .tar.gz)
    #[arg(long, value_name = "FILE")]
    pub tarball: Option<PathBuf>,
    /// Base config the ktstr fragment is applied to
    #[arg(long, value_enum, default_value_t = Flavour::Minimal)]
    pub flavour: Flavour,
    /// Parallel make jobs (default: all CPUs)
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Rebuild even if the cache already has this kernel
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Keep the N newest valid entries
    #[arg(long, value_name = "N", conflicts_with = "corrupt_only")]
    pub keep: Option<usize>,
    /// Only remove corrupt entries (and leftovers of interrupted builds)
    #[arg(long)]
    pub corrupt_only: bool,
    /// Also remove build dirs, extracted sources and downloads (next builds start cold)
    #[arg(long)]
    pub work: bool,
}

impl Cli {
    pub fn command() -> clap::Command {
        <Self as CommandFactory>::command()
    }
}

/// Runs the parsed command; returns the process exit code.
/// `marks`: instants marked before (e.g. `cli_parsed`), for the VM's timeline.
pub fn dispatch(cli: Cli, mut marks: Marks) -> Result<i32> {
    let marks = &mut marks;
    match cli.command {
        Command::Run(args) if !args.scenario.scenarios.is_empty() => super::matrix::run_scenarios(args, marks),
        Command::Run(args) => run(args, marks),
        Command::List(args) => crate::app::scenario::list(&args),
        Command::Explain(args) => crate::app::scenario::explain(&args),
        Command::Judge(args) => crate::app::scenario::judge(&args),
        Command::Exec(args) => exec(args, marks),
        Command::Kernel(cmd) => kernel_cmd(cmd),
        Command::Sched(cmd) => crate::app::sched::command(&cache()?, cmd),
        Command::Topo(args) => crate::topo::command(&args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ktstr-host", &mut std::io::stdout());
            Ok(0)
        }
    }
}

fn cache() -> Result<Cache> {
    Ok(Cache::open_default()?)
}

/// Resolves the kernel and the backend for a VM command, printing the backend notice.
pub(super) fn prepare(vm: &VmArgs, marks: &mut Marks) -> Result<(Cache, kernel::Kernel, Backend)> {
    let cache = cache()?;
    let k = kernel::resolve(&cache, vm.kernel.kernel.as_deref(), true)?;
    let (backend, notice) = backend::select(vm.backend)?;
    if let Some(n) = notice {
        eprintln!("ktstr-host: {n}");
    }
    marks.mark("kernel_resolved");
    Ok((cache, k, backend))
}

/// Kernel parameters must stay one line of printable text.
fn parse_append(s: &str) -> Result<String, String> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!("control character {c:?} in kernel parameters; give them on one line")),
        None => Ok(s.trim().to_string()),
    }
}

pub(super) fn request(
    vm: &VmArgs,
    k: kernel::Kernel,
    backend: Backend,
    plan: RunPlan,
    files: Vec<GuestFile>,
    marks: &Marks,
) -> RunRequest {
    RunRequest {
        marks: marks.clone(),
        append: vm.append.clone(),
        kernel: k,
        backend,
        topology: vm.topology,
        memory_mib: vm.memory,
        plan,
        files,
        console: vm.console,
        stream_output: false,
        vm_timeout: vm.vm_timeout.map(|s| std::time::Duration::from_secs(u64::from(s))),
    }
}

fn run(args: RunArgs, marks: &mut Marks) -> Result<i32> {
    let (cache, k, backend) = prepare(&args.vm, marks)?;
    let schedulers = args.scenario.resolve_schedulers(&cache, &k)?;
    let attach = args.scenario.attach_timeout();
    let mut all_passed = true;
    let mut summaries = Vec::new();
    for sched in &schedulers {
        let mut plan = RunPlan::new(30_000 + sched.extra_deadline_ms(attach));
        plan.console_quiet = !args.vm.console;
        plan.exec = Some(ExecPlan::new(["/init", "--version"]));
        plan.scheduler = sched.plan(attach);
        let files = sched.guest_file().into_iter().collect();
        let req = request(&args.vm, k.clone(), backend, plan, files, marks);
        let out = runner::run(&cache, &req)?;
        let summary = report::RunSummary::new(&k, &req, &out, sched);
        all_passed &= summary.passed;
        if !args.json {
            summary.print();
        }
        summaries.push(summary);
        if crate::interrupt::interrupted() {
            return Err(crate::interrupt::Interrupted.into());
        }
    }
    if args.json {
        let json = match summaries.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            many => serde_json::to_string_pretty(many)?,
        };
        println!("{json}");
    }
    Ok(if all_passed { 0 } else { 1 })
}

/// The command's PATH: the user's, else the default one, with the busybox applets last.
fn with_userland_path(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    if !env.iter().any(|(k, _)| k == "PATH") {
        let path = format!("{}:{}", ktstr_shared::plan::DEFAULT_PATH, runner::USERLAND_BIN);
        env.push(("PATH".into(), path));
    }
    env
}

fn exec(args: ExecArgs, marks: &mut Marks) -> Result<i32> {
    let includes = args.include.iter().map(|s| GuestFile::parse(s)).collect::<Result<Vec<_>>>()?;
    // A command given by the guest path of an --include runs as it is in the guest.
    let cmd = &args.command[0];
    let included = includes.iter().any(|f| cmd.starts_with('/') && Path::new(cmd).starts_with(&f.guest));
    let (program, mut files) = if included {
        (PathBuf::from(cmd), Vec::new())
    } else {
        let program = runner::find_program(cmd)?;
        let files = runner::program_files(&program)?;
        (program, files)
    };
    files.extend(includes);
    let env = args
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--env {kv}: expected KEY=VALUE"),
        })
        .collect::<Result<Vec<_>>>()?;
    let (cache, k, backend) = prepare(&args.vm, marks)?;
    let sched = match &args.scheduler {
        Some(spec) => crate::sched::resolve(spec, &[], &cache, &k)?,
        None => crate::sched::SchedulerUnderTest::eevdf(),
    };
    let attach = std::time::Duration::from_secs(args.attach_timeout.into());
    files.extend(sched.guest_file());
    let mut argv = args.command.clone();
    argv[0] = program.display().to_string();
    let mut plan = RunPlan::new(args.timeout.saturating_mul(1000).saturating_add(sched.extra_deadline_ms(attach)));
    plan.console_quiet = !args.vm.console;
    plan.scheduler = sched.plan(attach);
    let mut exec = ExecPlan::new(argv);
    exec.env = with_userland_path(env);
    exec.output_limit = args.output_limit;
    plan.exec = Some(exec);
    let mut req = request(&args.vm, k, backend, plan, files, marks);
    req.stream_output = true;
    let out = runner::run(&cache, &req)?;
    let (code, message) = report::exec_status(&out);
    if let Some(m) = message {
        eprintln!("ktstr-host: {m}");
    }
    Ok(code)
}

fn print_kernel(k: &kernel::Kernel, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(k)?);
    } else {
        println!("kernel: {} ({:?}, {})", k.image.display(), k.kind, k.origin);
        if let Some(v) = &k.version {
            println!("version: {v}");
        }
    }
    Ok(())
}

fn kernel_cmd(cmd: KernelCmd) -> Result<i32> {
    let cache = cache()?;
    match cmd {
        KernelCmd::Build(a) => {
            let source = match (a.version, a.source, a.tarball) {
                (Some(v), _, _) => SourceSpec::Version(v),
                (_, Some(dir), _) => SourceSpec::Tree(dir),
                (_, _, Some(t)) => SourceSpec::Tarball(t),
                _ => SourceSpec::Distro,
            };
            let req = kernel::BuildRequest {
                source,
                flavour: a.flavour,
                jobs: a.jobs.unwrap_or_else(kernel::default_jobs),
                force: a.force,
            };
            let k = kernel::build(&cache, &req)?;
            print_kernel(&k, a.json)?;
        }
        KernelCmd::List { json } => list(&cache, json)?,
        KernelCmd::Clean(a) => clean(&cache, &a)?,
        KernelCmd::Resolve { kernel, json } => {
            let k = kernel::resolve(&cache, kernel.kernel.as_deref(), false)?;
            print_kernel(&k, json)?;
        }
    }
    Ok(0)
}

#[derive(serde::Serialize)]
struct ListRow<'a> {
    key: &'a str,
    path: &'a std::path::Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a kernel::cache::Metadata>,
    /// Built with the fragment this ktstr-host carries.
    current: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    corrupt: Option<&'a str>,
}

fn list(cache: &Cache, json: bool) -> Result<()> {
    let entries = cache.entries()?;
    let rows: Vec<ListRow> = entries
        .iter()
        .map(|e| {
            let (metadata, corrupt) = match &e.state {
                kernel::cache::EntryState::Valid(m) => (Some(m.as_ref()), None),
                kernel::cache::EntryState::Corrupt(why) => (None, Some(why.as_str())),
            };
            let current = metadata.is_some_and(|m| m.config_hash == m.flavour.config_hash());
            ListRow { key: &e.key, path: &e.dir, metadata, current, corrupt }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no kernels cached in {} (build one: ktstr-host kernel build)", cache.root.display());
        return Ok(());
    }
    println!("{:<52} {:<10} {:<10} {:<21} SOURCE", "KEY", "VERSION", "FLAVOUR", "BUILT");
    for r in &rows {
        match (r.metadata, r.corrupt) {
            (Some(m), _) => {
                let stale = if r.current { "" } else { " (stale kconfig)" };
                println!(
                    "{:<52} {:<10} {:<10} {:<21} {}{stale}",
                    r.key,
                    m.version,
                    m.flavour,
                    m.built_at,
                    m.source.describe()
                );
            }
            (None, why) => println!("{:<52} (corrupt: {})", r.key, why.unwrap_or("?")),
        }
    }
    Ok(())
}

fn clean(cache: &Cache, a: &CleanArgs) -> Result<()> {
    let entries = cache.entries()?;
    let mut kept = 0usize;
    let mut removed = 0usize;
    for e in &entries {
        let valid = e.metadata().is_some();
        let keep = match (a.corrupt_only, a.keep) {
            (true, _) => valid,
            (false, Some(n)) => {
                valid && {
                    kept += 1;
                    kept <= n
                }
            }
            (false, None) => false,
        };
        if !keep {
            cache.remove(e).with_context(|| format!("removing {}", e.dir.display()))?;
            println!("removed {}", e.key);
            removed += 1;
        }
    }
    for tmp in cache.stale_temps() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        println!("removed leftover {}", tmp.display());
    }
    // Scheduler builds go with the kernels they were built for.
    for dir in crate::sched::build::prune(cache)? {
        println!("removed scheduler build {}", dir.display());
        removed += 1;
    }
    if a.work {
        let work = cache.work_dir();
        if work.exists() {
            let _lock = cache.lock("work")?;
            std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
            println!("removed {}", work.display());
        }
    }
    if removed == 0 && !a.work {
        println!("nothing to remove");
    }
    Ok(())
}

/// Refuses combinations clap cannot express.
pub fn validate(cli: &Cli) -> Result<()> {
    if let Command::Kernel(KernelCmd::Build(b)) = &cli.command
        && b.jobs == Some(0)
    {
        bail!("--jobs 0: give at least 1 (default: all CPUs)");
    }
    if let Command::Run(r) = &cli.command
        && r.scenario.scenarios.is_empty()
        && let Some(path) = &r.scenario.junit
    {
        bail!("--junit {}: JUnit reports scenario runs; add --scenario NAME (or all)", path.display());
    }
    Ok(())
}
