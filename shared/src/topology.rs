//! CPU topology specs: `NnLlCcTt` = N NUMA nodes, L LLCs in all, C cores per LLC, T threads
//! per core (e.g. `2n4l8c2t`). LLCs are spread evenly over nodes and never span one.

use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Serialize};

/// Largest CPU count a spec may ask for (the guest kernel's CONFIG_NR_CPUS).
pub const MAX_CPUS: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Topology {
    pub nodes: u32,
    pub llcs: u32,
    pub cores_per_llc: u32,
    pub threads_per_core: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyError {
    /// Not of the form `NnLlCcTt`.
    Syntax,
    /// A count of 0.
    Zero(&'static str),
    /// LLCs not divisible by nodes (an LLC would span two nodes).
    LlcsNotDivisible {
        llcs: u32,
        nodes: u32,
    },
    TooManyCpus {
        cpus: u64,
    },
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax => {
                f.write_str("expected NnLlCcTt, e.g. 1n2l4c2t (nodes, LLCs in all, cores per LLC, threads per core)")
            }
            Self::Zero(what) => write!(f, "{what} must be at least 1"),
            Self::LlcsNotDivisible { llcs, nodes } => {
                write!(f, "{llcs} LLCs cannot be spread evenly over {nodes} nodes (an LLC never spans nodes)")
            }
            Self::TooManyCpus { cpus } => write!(f, "{cpus} CPUs is more than the guest kernel supports ({MAX_CPUS})"),
        }
    }
}

impl core::error::Error for TopologyError {}

impl Topology {
    pub const fn new(nodes: u32, llcs: u32, cores_per_llc: u32, threads_per_core: u32) -> Self {
        Topology { nodes, llcs, cores_per_llc, threads_per_core }
    }

    pub fn validate(&self) -> Result<(), TopologyError> {
        for (v, what) in [
            (self.nodes, "nodes"),
            (self.llcs, "LLCs"),
            (self.cores_per_llc, "cores per LLC"),
            (self.threads_per_core, "threads per core"),
        ] {
            if v == 0 {
                return Err(TopologyError::Zero(what));
            }
        }
        if !self.llcs.is_multiple_of(self.nodes) {
            return Err(TopologyError::LlcsNotDivisible { llcs: self.llcs, nodes: self.nodes });
        }
        let cpus = u64::from(self.llcs) * u64::from(self.cores_per_llc) * u64::from(self.threads_per_core);
        if cpus > u64::from(MAX_CPUS) {
            return Err(TopologyError::TooManyCpus { cpus });
        }
        Ok(())
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
}

impl Default for Topology {
    /// One node, one LLC, two cores, no SMT: the smallest SMP machine.
    fn default() -> Self {
        Topology::new(1, 1, 2, 1)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}n{}l{}c{}t", self.nodes, self.llcs, self.cores_per_llc, self.threads_per_core)
    }
}

impl FromStr for Topology {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rest = s.trim();
        let mut take = |unit: char| -> Result<u32, TopologyError> {
            let end = rest.find(unit).ok_or(TopologyError::Syntax)?;
            let n = rest[..end].parse::<u32>().map_err(|_| TopologyError::Syntax)?;
            rest = &rest[end + 1..];
            Ok(n)
        };
        let t = Topology::new(take('n')?, take('l')?, take('c')?, take('t')?);
        if !rest.is_empty() {
            return Err(TopologyError::Syntax);
        }
        t.validate()?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parse_print_round_trip() {
        let t: Topology = "2n4l8c2t".parse().unwrap();
        assert_eq!(t, Topology::new(2, 4, 8, 2));
        assert_eq!(t.cpus(), 64);
        assert_eq!(t.llcs_per_node(), 2);
        assert_eq!(t.to_string(), "2n4l8c2t");
    }

    #[test]
    fn bad_specs_say_why() {
        assert_eq!("1n2l".parse::<Topology>(), Err(TopologyError::Syntax));
        assert_eq!("1n2l2c1tx".parse::<Topology>(), Err(TopologyError::Syntax));
        assert_eq!("0n1l1c1t".parse::<Topology>(), Err(TopologyError::Zero("nodes")));
        assert_eq!("2n3l1c1t".parse::<Topology>(), Err(TopologyError::LlcsNotDivisible { llcs: 3, nodes: 2 }));
        assert_eq!("1n64l8c2t".parse::<Topology>(), Err(TopologyError::TooManyCpus { cpus: 1024 }));
        assert!(TopologyError::Syntax.to_string().contains("NnLlCcTt"));
    }
}
