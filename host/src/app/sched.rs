//! `ktstr-host sched build|list`.

use anyhow::Result;

use crate::app::cli::KernelSel;
use crate::kernel::{self, cache::Cache};

use crate::sched::build;

#[derive(Debug, clap::Subcommand)]
pub enum SchedCmd {
    /// Build the in-tree sched_ext schedulers (scx_simple, scx_qmap, scx_central, scx_flatcg)
    /// against a cached kernel's BTF with the distro's clang, and cache them
    Build {
        #[command(flatten)]
        kernel: KernelSel,
        /// Rebuild even if cached
        #[arg(long)]
        force: bool,
    },
    /// List built schedulers, newest first
    List {
        /// JSON output
        #[arg(long)]
        json: bool,
    },
}

pub fn command(cache: &Cache, cmd: SchedCmd) -> Result<i32> {
    match cmd {
        SchedCmd::Build { kernel, force } => {
            let k = kernel::resolve(cache, kernel.kernel.as_deref(), true)?;
            let built = build::build(cache, &k, force)?;
            for name in build::IN_TREE {
                if let Some(b) = built.binary(name) {
                    println!("{name:<12} {}", b.display());
                }
            }
        }
        SchedCmd::List { json } => {
            let all = build::list(cache);
            if json {
                let metas: Vec<_> = all.iter().map(|b| &b.meta).collect();
                println!("{}", serde_json::to_string_pretty(&metas)?);
            } else if all.is_empty() {
                println!("no schedulers built; build them: ktstr-host sched build");
            } else {
                for b in &all {
                    let names: Vec<_> = b.meta.schedulers.iter().map(|s| s.name.as_str()).collect();
                    println!(
                        "{}  (kernel {}, {}, built {} in {:.0} s)",
                        b.meta.key, b.meta.kernel_key, b.meta.clang, b.meta.built_at, b.meta.build_secs
                    );
                    println!("  {}", names.join(" "));
                }
            }
        }
    }
    Ok(0)
}
