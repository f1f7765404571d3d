//! The guest kernel's view of the CPU topology, one [`CpuTopo`] per online CPU, from sysfs
//! (node, package, die, core, SMT siblings, LLC = the highest cache index) and the sched
//! debugfs (domain names per level). The host compares it with the spec it asked for.

use ktstr_shared::topology::parse_cpu_list;
use ktstr_shared::wire::{CpuMask, CpuTopo, DomainName, Domains, MAX_DOMAINS, cpu_mask};
use std::fs;
use std::path::Path;

const CPU_DIR: &str = "/sys/devices/system/cpu";
const DOMAINS_DIR: &str = "/sys/kernel/debug/sched/domains";

fn read_u32(path: &Path) -> u32 {
    fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<i64>().ok()).map_or(CpuTopo::UNKNOWN, |v| v as u32)
}

fn read_mask(path: &Path) -> CpuMask {
    let list = fs::read_to_string(path).ok().and_then(|s| parse_cpu_list(&s)).unwrap_or_default();
    cpu_mask(list)
}

/// The `nodeN` link in the CPU's sysfs directory (present with CONFIG_NUMA).
fn node(cpu_dir: &Path) -> u32 {
    let Ok(entries) = fs::read_dir(cpu_dir) else { return CpuTopo::UNKNOWN };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
        .next()
        .unwrap_or(CpuTopo::UNKNOWN)
}

/// shared_cpu_list of the cache index with the highest level (the LLC).
fn llc(cpu_dir: &Path) -> CpuMask {
    let Ok(entries) = fs::read_dir(cpu_dir.join("cache")) else { return CpuMask::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("index")))
        .max_by_key(|e| read_u32(&e.path().join("level")))
        .map_or_else(CpuMask::new, |e| read_mask(&e.path().join("shared_cpu_list")))
}

/// Sched domain names, lowest level first.
fn domains(cpu: u32) -> Domains {
    let mut out = Domains::new();
    let dir = Path::new(DOMAINS_DIR).join(format!("cpu{cpu}"));
    for level in 0..MAX_DOMAINS {
        let Ok(name) = fs::read_to_string(dir.join(format!("domain{level}/name"))) else { break };
        let mut n = DomainName::new();
        for c in name.trim().chars().take(n.capacity()) {
            let _ = n.push(c);
        }
        let _ = out.push(n);
    }
    out
}

fn online_cpus() -> Vec<u32> {
    fs::read_to_string(Path::new(CPU_DIR).join("online")).ok().and_then(|s| parse_cpu_list(&s)).unwrap_or_default()
}

/// Writing Y here makes the kernel (6.x) create the per-CPU `domains` directories.
const SCHED_VERBOSE: &str = "/sys/kernel/debug/sched/verbose";

/// One entry per online CPU.
pub fn read() -> Vec<CpuTopo> {
    let verbose = fs::write(SCHED_VERBOSE, "Y").is_ok();
    let cpus = read_cpus();
    if verbose {
        let _ = fs::write(SCHED_VERBOSE, "N");
    }
    cpus
}

fn read_cpus() -> Vec<CpuTopo> {
    online_cpus()
        .into_iter()
        .map(|cpu| {
            let dir = Path::new(CPU_DIR).join(format!("cpu{cpu}"));
            let t = dir.join("topology");
            CpuTopo {
                cpu,
                node: node(&dir),
                package: read_u32(&t.join("physical_package_id")),
                die: read_u32(&t.join("die_id")),
                core: read_u32(&t.join("core_id")),
                llc: llc(&dir),
                siblings: read_mask(&t.join("thread_siblings_list")),
                domains: domains(cpu),
            }
        })
        .collect()
}
