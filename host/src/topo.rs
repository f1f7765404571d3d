//! Topology on the host side: the check of a guest's reported view against the spec, the
//! host's own topology from sysfs, and `ktstr-host topo` (trees and JSON).
//!
//! The check compares partitions, not raw IDs: guest package/core IDs legitimately differ
//! from the spec's numbering (and AMD guests number dies differently), but which CPUs share a
//! node, a package, an LLC and a core must be exactly the spec's.

use ktstr_shared::topology::{PRESETS, Topology, parse_cpu_list};
use ktstr_shared::wire::{CpuMask, CpuTopo, Domains, cpu_mask, mask_cpus};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// Mismatch lines kept in a verdict (the rest are counted).
const MAX_MISMATCHES: usize = 16;

/// The guest's view against the spec.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopologyVerdict {
    pub matches: bool,
    pub cpus_reported: u32,
    pub cpus_expected: u32,
    /// One line per mismatch (CPU and level named), at most `MAX_MISMATCHES`.
    pub mismatches: Vec<String>,
    pub mismatches_total: usize,
    /// Sched domain names of CPU 0, lowest level first (empty without debugfs).
    pub cpu0_sched_domains: Vec<String>,
}

/// A CPU set, printed as a kernel CPU list.
fn list(cpus: &BTreeSet<u32>) -> String {
    let mut out = String::new();
    let v: Vec<u32> = cpus.iter().copied().collect();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        let sep = if out.is_empty() { "" } else { "," };
        let _ = if j > i { write!(out, "{sep}{}-{}", v[i], v[j]) } else { write!(out, "{sep}{}", v[i]) };
        i = j + 1;
    }
    out
}

/// For each CPU, the set of CPUs in its group at one level.
type Groups = BTreeMap<u32, BTreeSet<u32>>;

/// CPUs sharing `key` with each CPU (by key value).
fn groups_by<K: Ord + Copy>(cpus: &[u32], key: impl Fn(u32) -> K) -> Groups {
    let mut by_key: BTreeMap<K, BTreeSet<u32>> = BTreeMap::new();
    for &c in cpus {
        by_key.entry(key(c)).or_default().insert(c);
    }
    cpus.iter().map(|&c| (c, by_key[&key(c)].clone())).collect()
}

fn mask_set(m: &CpuMask) -> BTreeSet<u32> {
    mask_cpus(m).collect()
}

/// Compares the guest's report with `spec`.
pub fn check(spec: &Topology, observed: &[CpuTopo]) -> TopologyVerdict {
    let mut problems = Vec::new();
    let reported: Vec<u32> = observed.iter().map(|c| c.cpu).collect();
    let expected: Vec<u32> = (0..spec.cpus()).collect();
    if reported != expected {
        problems.push(format!(
            "the guest reported CPUs {} but the spec has {}",
            list(&reported.iter().copied().collect()),
            list(&expected.iter().copied().collect())
        ));
    } else {
        compare_levels(spec, observed, &mut problems);
    }
    let total = problems.len();
    problems.truncate(MAX_MISMATCHES);
    TopologyVerdict {
        matches: total == 0,
        cpus_reported: observed.len() as u32,
        cpus_expected: spec.cpus(),
        mismatches: problems,
        mismatches_total: total,
        cpu0_sched_domains: observed.first().map(|c| domain_names(&c.domains)).unwrap_or_default(),
    }
}

fn domain_names(d: &Domains) -> Vec<String> {
    d.iter().map(|n| n.as_str().to_owned()).collect()
}

/// Node, package, LLC and core partitions, CPU by CPU (CPU numbers already equal the spec's).
fn compare_levels(spec: &Topology, observed: &[CpuTopo], problems: &mut Vec<String>) {
    let cpus: Vec<u32> = observed.iter().map(|c| c.cpu).collect();
    let by_cpu = |c: u32| &observed[c as usize];
    let levels: [(&str, Groups, Groups); 4] = [
        ("NUMA node", groups_by(&cpus, |c| by_cpu(c).node), groups_by(&cpus, |c| spec.place(c).node)),
        ("package", groups_by(&cpus, |c| by_cpu(c).package), groups_by(&cpus, |c| spec.place(c).socket)),
        ("LLC", cpus.iter().map(|&c| (c, mask_set(&by_cpu(c).llc))).collect(), groups_by(&cpus, |c| spec.place(c).llc)),
        (
            "core (SMT siblings)",
            cpus.iter().map(|&c| (c, mask_set(&by_cpu(c).siblings))).collect(),
            groups_by(&cpus, |c| spec.place(c).core_global(spec)),
        ),
    ];
    for (level, got, want) in levels {
        for &c in &cpus {
            if got[&c] != want[&c] {
                problems.push(format!(
                    "cpu {c}: {level} holds CPUs {{{}}} in the guest but {{{}}} in the spec {spec}",
                    list(&got[&c]),
                    list(&want[&c])
                ));
            }
        }
    }
}

/// The host's topology from a sysfs root (normally `/sys`): one entry per online CPU.
pub fn read_sysfs(root: &Path) -> std::io::Result<Vec<CpuTopo>> {
    let cpu_root = root.join("devices/system/cpu");
    let online = std::fs::read_to_string(cpu_root.join("online"))?;
    let cpus = parse_cpu_list(&online)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad CPU list {online:?}")))?;
    let nodes = node_of_cpus(root);
    Ok(cpus
        .into_iter()
        .map(|cpu| {
            let t = cpu_root.join(format!("cpu{cpu}/topology"));
            let num = |f: &str| read_num(&t.join(f));
            CpuTopo {
                cpu,
                node: nodes.get(&cpu).copied().unwrap_or(CpuTopo::UNKNOWN),
                package: num("physical_package_id"),
                die: num("die_id"),
                core: num("core_id"),
                llc: host_llc(&cpu_root.join(format!("cpu{cpu}/cache"))),
                siblings: read_mask(&t.join("thread_siblings_list")),
                domains: Domains::new(),
            }
        })
        .collect())
}

fn read_num(p: &Path) -> u32 {
    std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<i64>().ok()).map_or(CpuTopo::UNKNOWN, |v| v as u32)
}

fn read_mask(p: &Path) -> CpuMask {
    cpu_mask(std::fs::read_to_string(p).ok().and_then(|s| parse_cpu_list(&s)).unwrap_or_default())
}

/// cpu -> node from /sys/devices/system/node/nodeK/cpulist.
fn node_of_cpus(root: &Path) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root.join("devices/system/node")) else { return out };
    for e in entries.flatten() {
        let Some(node) = e.file_name().to_str().and_then(|n| n.strip_prefix("node")?.parse::<u32>().ok()) else {
            continue;
        };
        let list = std::fs::read_to_string(e.path().join("cpulist")).unwrap_or_default();
        for cpu in parse_cpu_list(&list).unwrap_or_default() {
            out.insert(cpu, node);
        }
    }
    out
}

fn host_llc(cache: &Path) -> CpuMask {
    let Ok(entries) = std::fs::read_dir(cache) else { return CpuMask::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("index")))
        .max_by_key(|e| read_num(&e.path().join("level")))
        .map_or_else(CpuMask::new, |e| read_mask(&e.path().join("shared_cpu_list")))
}

/// node -> package -> LLC (first CPU) -> core (first sibling) -> CPUs.
type Tree = BTreeMap<u32, BTreeMap<u32, BTreeMap<u32, BTreeMap<u32, Vec<String>>>>>;

fn first(m: &CpuMask, cpu: u32) -> u32 {
    mask_cpus(m).next().unwrap_or(cpu)
}

fn render(tree: &Tree, llc_word: &str) -> String {
    let mut out = String::new();
    for (node, packages) in tree {
        let node = if *node == CpuTopo::UNKNOWN { "?".to_string() } else { node.to_string() };
        let _ = writeln!(out, "node {node}");
        for (pkg, llcs) in packages {
            let _ = writeln!(out, "  package {pkg}");
            for (i, cores) in llcs.values().enumerate() {
                let _ = writeln!(out, "    {llc_word} {i}");
                for (j, threads) in cores.values().enumerate() {
                    let _ = writeln!(out, "      core {j}: {}", threads.join(" "));
                }
            }
        }
    }
    out
}

/// The tree of a CPU list as read from sysfs.
pub fn host_tree(cpus: &[CpuTopo]) -> String {
    let mut tree = Tree::new();
    for c in cpus {
        tree.entry(c.node)
            .or_default()
            .entry(c.package)
            .or_default()
            .entry(first(&c.llc, c.cpu))
            .or_default()
            .entry(first(&c.siblings, c.cpu))
            .or_default()
            .push(format!("cpu{}", c.cpu));
    }
    render(&tree, "LLC")
}

/// The tree of a spec, each CPU with its APIC ID.
pub fn spec_tree(t: &Topology) -> String {
    let mut tree = Tree::new();
    for p in t.places() {
        tree.entry(p.node)
            .or_default()
            .entry(p.socket)
            .or_default()
            .entry(p.llc)
            .or_default()
            .entry(p.core_global(t))
            .or_default()
            .push(format!("cpu{}(apic {:#x})", p.cpu, p.apic_id));
    }
    format!("{t}: {} CPUs\n{}", t.cpus(), render(&tree, "die/LLC"))
}

/// `ktstr-host topo list`: the presets.
pub fn preset_lines() -> Vec<String> {
    PRESETS
        .iter()
        .map(|p| format!("{:<20} {:<12} {:>3} CPUs", p.name, p.topology.to_string(), p.topology.cpus()))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    /// What a guest faithful to `t` reports (made in code, no guest).
    pub(crate) fn fake(t: &Topology) -> Vec<CpuTopo> {
        t.places()
            .map(|p| {
                let same = |f: &dyn Fn(u32) -> bool| cpu_mask((0..t.cpus()).filter(|&c| f(c)));
                CpuTopo {
                    cpu: p.cpu,
                    node: p.node,
                    package: p.socket + 7, // IDs may differ; partitions may not
                    die: 0,
                    core: p.core,
                    llc: same(&|c| t.place(c).llc == p.llc),
                    siblings: same(&|c| t.place(c).core_global(t) == p.core_global(t)),
                    domains: Domains::new(),
                }
            })
            .collect()
    }

    #[test]
    fn a_faithful_guest_matches() {
        for spec in ["1n1l2c1t", "1n2l2c2t", "2n4l2c1t", "1n3l3c1t", "1n4l2c1t2s"] {
            let t: Topology = spec.parse().unwrap();
            let v = check(&t, &fake(&t));
            assert!(v.matches, "{spec}: {:?}", v.mismatches);
        }
    }

    #[test]
    fn mismatches_name_the_cpu_and_the_level() {
        let t: Topology = "1n2l2c1t".parse().unwrap();
        let mut seen = fake(&t);
        for c in &mut seen {
            c.llc = cpu_mask(0..4); // one LLC for all: what an AMD model under QEMU would show
        }
        let v = check(&t, &seen);
        assert!(!v.matches);
        assert!(
            v.mismatches[0].starts_with("cpu 0: LLC holds CPUs {0-3} in the guest but {0-1}"),
            "{:?}",
            v.mismatches
        );
        let fewer = check(&t, &seen[..3]);
        assert!(fewer.mismatches[0].contains("reported CPUs 0-2 but the spec has 0-3"));
        let two_nodes: Topology = "2n2l2c1t".parse().unwrap();
        let mut one_node = fake(&two_nodes);
        one_node.iter_mut().for_each(|c| c.node = 0);
        let v = check(&two_nodes, &one_node);
        assert!(v.mismatches.iter().all(|m| m.contains("NUMA node")), "{:?}", v.mismatches);
        assert_eq!(v.mismatches_total, 4);
    }

    /// A 2-socket, 2-node host with 2 cores x 2 threads per socket and one L3 per socket.
    #[test]
    fn host_reader_on_a_fake_two_socket_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let p = root.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        w("devices/system/cpu/online", "0-7\n");
        w("devices/system/node/node0/cpulist", "0-3\n");
        w("devices/system/node/node1/cpulist", "4-7\n");
        for cpu in 0..8u32 {
            let (socket, core) = (cpu / 4, cpu / 2 % 2);
            let d = format!("devices/system/cpu/cpu{cpu}");
            w(&format!("{d}/topology/physical_package_id"), &format!("{socket}\n"));
            w(&format!("{d}/topology/die_id"), "0\n");
            w(&format!("{d}/topology/core_id"), &format!("{core}\n"));
            let first = cpu / 2 * 2;
            w(&format!("{d}/topology/thread_siblings_list"), &format!("{first}-{}\n", first + 1));
            w(&format!("{d}/cache/index0/level"), "1\n");
            w(&format!("{d}/cache/index0/shared_cpu_list"), &format!("{first}-{}\n", first + 1));
            w(&format!("{d}/cache/index3/level"), "3\n");
            w(&format!("{d}/cache/index3/shared_cpu_list"), &format!("{}-{}\n", socket * 4, socket * 4 + 3));
        }
        let cpus = read_sysfs(root.path()).unwrap();
        assert_eq!(cpus.len(), 8);
        assert_eq!((cpus[5].node, cpus[5].package, cpus[5].core), (1, 1, 0));
        assert_eq!(mask_cpus(&cpus[5].llc).collect::<Vec<_>>(), [4, 5, 6, 7]);
        // It is exactly the shape 2n2l2c2t.
        assert!(check(&"2n2l2c2t".parse().unwrap(), &cpus).matches);
        let tree = host_tree(&cpus);
        assert!(tree.contains("node 1\n  package 1\n    LLC 0\n      core 0: cpu4 cpu5\n"), "{tree}");
    }

    #[test]
    fn spec_tree_shows_apic_ids_and_presets_list() {
        let tree = spec_tree(&"1n2l2c2t".parse().unwrap());
        assert!(tree.contains("core 1: cpu6(apic 0x6) cpu7(apic 0x7)"), "{tree}");
        assert!(tree.contains("die/LLC 1"), "{tree}");
        assert!(preset_lines().iter().any(|l| l.starts_with("numa4-12llc") && l.contains("192 CPUs")));
    }
}

/// `ktstr-host topo [SPEC|PRESET|list] [--json]`.
#[derive(Debug, clap::Args)]
pub struct TopoArgs {
    /// A spec (NnLlCcTt[Ss]), a preset name, or `list`; without it, this host's topology
    pub what: Option<String>,
    /// Print JSON instead of a tree
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PresetJson {
    name: &'static str,
    spec: String,
    cpus: u32,
}

pub fn command(args: &TopoArgs) -> anyhow::Result<i32> {
    match args.what.as_deref() {
        Some("list") if args.json => {
            let list: Vec<PresetJson> = PRESETS
                .iter()
                .map(|p| PresetJson { name: p.name, spec: p.topology.to_string(), cpus: p.topology.cpus() })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Some("list") => preset_lines().iter().for_each(|l| println!("{l}")),
        Some(spec) => {
            let t: Topology = spec.parse().map_err(|e| anyhow::anyhow!("topology {spec:?}: {e}"))?;
            if args.json {
                let places: Vec<_> = t.places().collect();
                println!("{}", serde_json::to_string_pretty(&places)?);
            } else {
                print!("{}", spec_tree(&t));
            }
        }
        None => {
            let cpus = read_sysfs(Path::new("/sys")).map_err(|e| anyhow::anyhow!("reading /sys: {e}"))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&cpus)?);
            } else {
                print!("{}", host_tree(&cpus));
            }
        }
    }
    Ok(0)
}
