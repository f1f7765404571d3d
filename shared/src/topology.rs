//! CPU topology specs: `NnLlCcTt[Ss]` = N NUMA nodes, L LLCs in all, C cores per LLC, T threads
//! per core, and optionally S sockets (e.g. `2n4l8c2t`, `1n4l2c1t2s`). LLCs are spread evenly
//! over nodes and sockets and never span either. Without `Ss` there is one socket per node;
//! the LLCs of a socket are its dies (AMD CCX / Intel die), as on real multi-LLC parts.
//!
//! [`Topology::place`] is the one mapping from a logical CPU to its place in the machine and
//! its APIC ID; CPUID, ACPI, QEMU arguments and the guest-view check all derive from it.
//! Logical CPU numbers go socket by socket, die by die, core by core, thread by thread, which
//! is ascending APIC ID order (the order Linux numbers CPUs in when the MADT lists them so).

use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Serialize};

/// Largest CPU count a spec may ask for (the guest kernel's CONFIG_NR_CPUS).
pub const MAX_CPUS: u32 = 512;
/// Largest APIC ID usable without x2APIC (0xff is the xAPIC broadcast ID; the MP table and
/// MADT type-0 entries are 8-bit).
pub const MAX_XAPIC_ID: u32 = 254;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Topology {
    pub nodes: u32,
    pub llcs: u32,
    pub cores_per_llc: u32,
    pub threads_per_core: u32,
    pub sockets: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyError {
    /// Not of the form `NnLlCcTt[Ss]`.
    Syntax,
    /// A count of 0.
    Zero(&'static str),
    /// LLCs not divisible by nodes (an LLC would span two nodes).
    LlcsNotDivisible {
        llcs: u32,
        nodes: u32,
    },
    /// LLCs not divisible by sockets (an LLC would span two sockets).
    LlcsNotDivisibleBySockets {
        llcs: u32,
        sockets: u32,
    },
    /// Neither nodes nor sockets divide the other: a node would straddle a socket boundary.
    NodesAcrossSockets {
        nodes: u32,
        sockets: u32,
    },
    TooManyCpus {
        cpus: u64,
    },
    /// The highest APIC ID is above what xAPIC (MP table, 8-bit MADT entries) can address.
    ApicIdBeyondXapic {
        max_apic_id: u32,
    },
    /// Not a preset name and not a spec.
    UnknownPreset,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax => f.write_str(
                "expected NnLlCcTt[Ss], e.g. 1n2l4c2t or 2n4l2c1t2s (nodes, LLCs in all, cores per LLC, threads per core, optional sockets), or a preset name (`ktstr-host topo list`)",
            ),
            Self::Zero(what) => write!(f, "{what} must be at least 1"),
            Self::LlcsNotDivisible { llcs, nodes } => {
                write!(f, "{llcs} LLCs cannot be spread evenly over {nodes} nodes (an LLC never spans nodes)")
            }
            Self::LlcsNotDivisibleBySockets { llcs, sockets } => {
                write!(f, "{llcs} LLCs cannot be spread evenly over {sockets} sockets (an LLC never spans sockets)")
            }
            Self::NodesAcrossSockets { nodes, sockets } => write!(
                f,
                "{nodes} nodes and {sockets} sockets do not nest: one count must divide the other"
            ),
            Self::TooManyCpus { cpus } => write!(f, "{cpus} CPUs is more than the guest kernel supports ({MAX_CPUS})"),
            Self::ApicIdBeyondXapic { max_apic_id } => write!(
                f,
                "the highest APIC ID would be {max_apic_id}, above the xAPIC limit {MAX_XAPIC_ID}: use fewer or power-of-two sized LLCs/cores"
            ),
            Self::UnknownPreset => f.write_str("unknown topology preset (see `ktstr-host topo list`)"),
        }
    }
}

impl core::error::Error for TopologyError {}

/// Width in bits of a field holding `0..n` (hardware rounds every level up to a power of two).
pub const fn field_bits(n: u32) -> u32 {
    if n <= 1 { 0 } else { 32 - (n - 1).leading_zeros() }
}

/// The APIC ID bit fields: thread | core | die (LLC) | socket, low to high.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicLayout {
    pub smt_bits: u32,
    pub core_bits: u32,
    pub die_bits: u32,
}

impl ApicLayout {
    /// Shift of the core field = SMT level width.
    pub const fn core_shift(&self) -> u32 {
        self.smt_bits
    }

    /// Shift of the die field = width of everything inside one LLC.
    pub const fn die_shift(&self) -> u32 {
        self.smt_bits + self.core_bits
    }

    /// Shift of the socket field = width of everything inside one package.
    pub const fn socket_shift(&self) -> u32 {
        self.smt_bits + self.core_bits + self.die_bits
    }
}

/// Where one logical CPU sits. `die` and `core` count within their parent; `llc` is global.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuPlace {
    pub cpu: u32,
    pub node: u32,
    pub socket: u32,
    /// Die (= LLC) index within the socket.
    pub die: u32,
    /// Global LLC index.
    pub llc: u32,
    /// Core index within the LLC.
    pub core: u32,
    pub thread: u32,
    pub apic_id: u32,
}

impl CpuPlace {
    /// Global core index (what the SMT-sibling partition groups by).
    pub fn core_global(&self, t: &Topology) -> u32 {
        self.llc * t.cores_per_llc + self.core
    }
}

impl Topology {
    /// One socket per node.
    pub const fn new(nodes: u32, llcs: u32, cores_per_llc: u32, threads_per_core: u32) -> Self {
        Topology { nodes, llcs, cores_per_llc, threads_per_core, sockets: nodes }
    }

    pub const fn with_sockets(mut self, sockets: u32) -> Self {
        self.sockets = sockets;
        self
    }

    pub fn validate(&self) -> Result<(), TopologyError> {
        for (v, what) in [
            (self.nodes, "nodes"),
            (self.llcs, "LLCs"),
            (self.cores_per_llc, "cores per LLC"),
            (self.threads_per_core, "threads per core"),
            (self.sockets, "sockets"),
        ] {
            if v == 0 {
                return Err(TopologyError::Zero(what));
            }
        }
        let (llcs, nodes, sockets) = (self.llcs, self.nodes, self.sockets);
        if !llcs.is_multiple_of(nodes) {
            return Err(TopologyError::LlcsNotDivisible { llcs, nodes });
        }
        if !llcs.is_multiple_of(sockets) {
            return Err(TopologyError::LlcsNotDivisibleBySockets { llcs, sockets });
        }
        if !nodes.is_multiple_of(sockets) && !sockets.is_multiple_of(nodes) {
            return Err(TopologyError::NodesAcrossSockets { nodes, sockets });
        }
        let cpus = u64::from(llcs) * u64::from(self.cores_per_llc) * u64::from(self.threads_per_core);
        if cpus > u64::from(MAX_CPUS) {
            return Err(TopologyError::TooManyCpus { cpus });
        }
        Ok(())
    }

    /// Validation plus the xAPIC limit: what a VMM without x2APIC support can boot.
    pub fn validate_xapic(&self) -> Result<(), TopologyError> {
        self.validate()?;
        match self.max_apic_id() {
            max_apic_id if max_apic_id > MAX_XAPIC_ID => Err(TopologyError::ApicIdBeyondXapic { max_apic_id }),
            _ => Ok(()),
        }
    }

    /// Total logical CPUs (valid specs only).
    pub fn cpus(&self) -> u32 {
        self.llcs * self.cores_per_llc * self.threads_per_core
    }

    pub fn llcs_per_node(&self) -> u32 {
        self.llcs / self.nodes
    }

    pub fn cpus_per_node(&self) -> u32 {
        self.cpus() / self.nodes
    }

    /// Dies (LLCs) per socket.
    pub fn llcs_per_socket(&self) -> u32 {
        self.llcs / self.sockets
    }

    pub fn cpus_per_llc(&self) -> u32 {
        self.cores_per_llc * self.threads_per_core
    }

    pub fn cpus_per_socket(&self) -> u32 {
        self.cpus() / self.sockets
    }

    pub fn apic_layout(&self) -> ApicLayout {
        ApicLayout {
            smt_bits: field_bits(self.threads_per_core),
            core_bits: field_bits(self.cores_per_llc),
            die_bits: field_bits(self.llcs_per_socket()),
        }
    }

    /// The APIC ID of the last CPU, which is the highest (IDs ascend with CPU numbers).
    pub fn max_apic_id(&self) -> u32 {
        self.place(self.cpus() - 1).apic_id
    }

    /// The place of logical CPU `cpu` (< `cpus()`; valid specs only).
    pub fn place(&self, cpu: u32) -> CpuPlace {
        let thread = cpu % self.threads_per_core;
        let core = cpu / self.threads_per_core % self.cores_per_llc;
        let llc = cpu / self.cpus_per_llc();
        let socket = llc / self.llcs_per_socket();
        let die = llc % self.llcs_per_socket();
        let node = llc / self.llcs_per_node();
        let l = self.apic_layout();
        let apic_id = socket << l.socket_shift() | die << l.die_shift() | core << l.core_shift() | thread;
        CpuPlace { cpu, node, socket, die, llc, core, thread, apic_id }
    }

    /// Every CPU's place, in CPU order.
    pub fn places(&self) -> impl Iterator<Item = CpuPlace> + '_ {
        (0..self.cpus()).map(|c| self.place(c))
    }

    /// A spec or a preset name (what `FromStr` accepts too).
    pub fn from_spec_or_preset(s: &str) -> Result<Self, TopologyError> {
        s.parse()
    }
}

impl Default for Topology {
    /// One node, one LLC, two cores, no SMT: the smallest SMP machine.
    fn default() -> Self {
        Topology::new(1, 1, 2, 1)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}n{}l{}c{}t", self.nodes, self.llcs, self.cores_per_llc, self.threads_per_core)?;
        if self.sockets != self.nodes {
            write!(f, "{}s", self.sockets)?;
        }
        Ok(())
    }
}

impl FromStr for Topology {
    type Err = TopologyError;

    /// A spec, or a preset name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = preset(s.trim()) {
            return Ok(p.topology);
        }
        fn take(rest: &mut &str, unit: char) -> Result<u32, TopologyError> {
            let end = rest.find(unit).ok_or(TopologyError::Syntax)?;
            let n = rest[..end].parse::<u32>().map_err(|_| TopologyError::Syntax)?;
            *rest = &rest[end + 1..];
            Ok(n)
        }
        let r = &mut s.trim();
        let mut t = Topology::new(take(r, 'n')?, take(r, 'l')?, take(r, 'c')?, take(r, 't')?);
        if !r.is_empty() {
            t.sockets = take(r, 's')?;
        }
        if !r.is_empty() {
            return Err(TopologyError::Syntax);
        }
        t.validate()?;
        Ok(t)
    }
}

/// A named topology of the gauntlet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub topology: Topology,
}

const fn p(name: &'static str, n: u32, l: u32, c: u32, t: u32) -> Preset {
    Preset { name, topology: Topology::new(n, l, c, t) }
}

/// The gauntlet: small odd shapes, SMT and not, many LLCs per socket, several NUMA nodes, and
/// the biggest machines the guest kernel takes. (The same shapes as upstream ktstr's list,
/// plus two multi-socket single-node ones.)
pub const PRESETS: &[Preset] = &[
    p("tiny-1llc", 1, 1, 4, 1),
    p("tiny-2llc", 1, 2, 2, 1),
    p("odd-3llc", 1, 3, 3, 1),
    p("odd-5llc", 1, 5, 3, 1),
    p("odd-7llc", 1, 7, 2, 1),
    p("smt-2llc", 1, 2, 2, 2),
    p("smt-3llc", 1, 3, 2, 2),
    p("medium-4llc", 1, 4, 4, 2),
    p("medium-8llc", 1, 8, 4, 2),
    p("large-4llc", 1, 4, 16, 2),
    p("large-8llc", 1, 8, 8, 2),
    p("near-max-llc", 1, 15, 8, 2),
    p("max-cpu", 1, 14, 9, 2),
    p("medium-4llc-nosmt", 1, 4, 8, 1),
    p("medium-8llc-nosmt", 1, 8, 8, 1),
    p("large-4llc-nosmt", 1, 4, 32, 1),
    p("large-8llc-nosmt", 1, 8, 16, 1),
    p("near-max-llc-nosmt", 1, 15, 16, 1),
    p("max-cpu-nosmt", 1, 14, 18, 1),
    p("numa2-4llc", 2, 4, 4, 1),
    p("numa2-8llc", 2, 8, 8, 2),
    p("numa2-8llc-nosmt", 2, 8, 16, 1),
    p("numa4-8llc", 4, 8, 4, 1),
    p("numa4-12llc", 4, 12, 8, 2),
    Preset { name: "2socket-2llc", topology: Topology::new(1, 2, 2, 1).with_sockets(2) },
    Preset { name: "2socket-4llc-smt", topology: Topology::new(1, 4, 2, 2).with_sockets(2) },
];

pub fn preset(name: &str) -> Option<Preset> {
    PRESETS.iter().copied().find(|p| p.name == name)
}

/// Parses a kernel CPU list ("0-3,8,10-11"); None if malformed.
pub fn parse_cpu_list(s: &str) -> Option<alloc::vec::Vec<u32>> {
    let mut out = alloc::vec::Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        if b < a || b - a > MAX_CPUS * 8 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[test]
    fn parse_print_round_trip() {
        let t: Topology = "2n4l8c2t".parse().unwrap();
        assert_eq!(t, Topology::new(2, 4, 8, 2));
        assert_eq!(t.cpus(), 64);
        assert_eq!(t.llcs_per_node(), 2);
        assert_eq!(t.sockets, 2);
        assert_eq!(t.to_string(), "2n4l8c2t");
        let s: Topology = "1n4l2c1t2s".parse().unwrap();
        assert_eq!((s.sockets, s.llcs_per_socket()), (2, 2));
        assert_eq!(s.to_string(), "1n4l2c1t2s");
        assert_eq!("2n4l8c2t2s".parse::<Topology>().unwrap().to_string(), "2n4l8c2t");
    }

    #[test]
    fn bad_specs_say_why() {
        assert_eq!("1n2l".parse::<Topology>(), Err(TopologyError::Syntax));
        assert_eq!("1n2l2c1tx".parse::<Topology>(), Err(TopologyError::Syntax));
        assert_eq!("1n2l2c1t2s3".parse::<Topology>(), Err(TopologyError::Syntax));
        assert_eq!("0n1l1c1t".parse::<Topology>(), Err(TopologyError::Zero("nodes")));
        assert_eq!("1n1l1c1t0s".parse::<Topology>(), Err(TopologyError::Zero("sockets")));
        assert_eq!("2n3l1c1t".parse::<Topology>(), Err(TopologyError::LlcsNotDivisible { llcs: 3, nodes: 2 }));
        assert_eq!(
            "1n3l1c1t2s".parse::<Topology>(),
            Err(TopologyError::LlcsNotDivisibleBySockets { llcs: 3, sockets: 2 })
        );
        assert_eq!("2n6l1c1t3s".parse::<Topology>(), Err(TopologyError::NodesAcrossSockets { nodes: 2, sockets: 3 }));
        assert_eq!("1n64l8c2t".parse::<Topology>(), Err(TopologyError::TooManyCpus { cpus: 1024 }));
        assert!(TopologyError::Syntax.to_string().contains("NnLlCcTt"));
    }

    #[test]
    fn apic_ids_use_power_of_two_fields() {
        // 3 cores per LLC take 2 bits, 3 LLCs per socket 2 bits: IDs have holes, like hardware.
        let t: Topology = "1n3l3c2t".parse().unwrap();
        let l = t.apic_layout();
        assert_eq!((l.smt_bits, l.core_bits, l.die_bits), (1, 2, 2));
        let p = t.place(7); // LLC 1, core 0, thread 1
        assert_eq!((p.llc, p.die, p.core, p.thread), (1, 1, 0, 1));
        assert_eq!(p.apic_id, 1 << 3 | 1);
        let two_sockets: Topology = "2n4l2c1t".parse().unwrap();
        let last = two_sockets.place(7);
        assert_eq!((last.node, last.socket, last.die, last.core), (1, 1, 1, 1));
        assert_eq!(last.apic_id, 1 << 2 | 1 << 1 | 1);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n").unwrap(), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert!(parse_cpu_list("3-1").is_none());
        assert!(parse_cpu_list("a").is_none());
    }

    #[test]
    fn xapic_limit() {
        let max = preset("max-cpu").unwrap().topology;
        assert!(max.validate().is_ok());
        assert!(matches!(max.validate_xapic(), Err(TopologyError::ApicIdBeyondXapic { max_apic_id: 433 })));
        assert!(preset("numa2-8llc").unwrap().topology.validate_xapic().is_ok());
    }

    #[test]
    fn presets_are_valid_unique_and_resolvable() {
        let names: BTreeSet<&str> = PRESETS.iter().map(|p| p.name).collect();
        assert_eq!(names.len(), PRESETS.len());
        assert!(PRESETS.len() >= 20);
        for p in PRESETS {
            p.topology.validate().unwrap();
            assert_eq!(Topology::from_spec_or_preset(p.name), Ok(p.topology));
        }
        assert_eq!(preset("numa4-12llc").unwrap().topology.cpus(), 192);
        assert_eq!(Topology::from_spec_or_preset("1n2l2c1t").unwrap().cpus(), 4);
        assert_eq!(Topology::from_spec_or_preset("nope"), Err(TopologyError::Syntax));
    }

    fn valid_topology() -> impl Strategy<Value = Topology> {
        (1u32..=4, 1u32..=4, 1u32..=4, 1u32..=6, 1u32..=2, 1u32..=4).prop_filter_map(
            "invalid",
            |(sockets, per_socket_nodes, llcs_per_node, cores, threads, node_div)| {
                // Either several nodes per socket or several sockets per node.
                let (nodes, sockets) =
                    if node_div > 2 { (sockets * per_socket_nodes, sockets) } else { (sockets, sockets * node_div) };
                let llcs = nodes.max(sockets) * llcs_per_node;
                let t = Topology::new(nodes, llcs, cores, threads).with_sockets(sockets);
                t.validate().ok().map(|_| t)
            },
        )
    }

    proptest! {
        #[test]
        fn mapping_is_a_bijection_and_nests(t in valid_topology()) {
            let places: Vec<CpuPlace> = t.places().collect();
            let ids: BTreeSet<u32> = places.iter().map(|p| p.apic_id).collect();
            prop_assert_eq!(ids.len() as u32, t.cpus());
            // IDs ascend with CPU numbers.
            prop_assert!(places.windows(2).all(|w| w[0].apic_id < w[1].apic_id));
            let l = t.apic_layout();
            for p in &places {
                // The ID decodes back to the place through the fields.
                prop_assert_eq!(p.apic_id & ((1 << l.smt_bits) - 1), p.thread);
                prop_assert_eq!(p.apic_id >> l.core_shift() & ((1 << l.core_bits) - 1), p.core);
                prop_assert_eq!(p.apic_id >> l.die_shift() & ((1 << l.die_bits) - 1), p.die);
                prop_assert_eq!(p.apic_id >> l.socket_shift(), p.socket);
            }
            // An LLC never spans nodes or sockets; a core never spans LLCs.
            for a in &places {
                for b in &places {
                    if a.llc == b.llc {
                        prop_assert_eq!((a.node, a.socket), (b.node, b.socket));
                    }
                    if a.core_global(&t) == b.core_global(&t) {
                        prop_assert_eq!(a.llc, b.llc);
                    }
                }
            }
            let nodes: BTreeSet<u32> = places.iter().map(|p| p.node).collect();
            prop_assert_eq!(nodes.len() as u32, t.nodes);
        }

        #[test]
        fn specs_round_trip(t in valid_topology()) {
            prop_assert_eq!(t.to_string().parse::<Topology>(), Ok(t));
        }
    }
}
