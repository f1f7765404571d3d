//! CPU selections of scenario files, resolved against the run's topology into the explicit
//! CPU lists the guest takes.
//!
//! Numbering follows the topology spec (and QEMU's CPU order): LLC `l` holds CPUs
//! `l * C * T ..`, node `n` holds LLCs `n * L/N ..`. A selection is a base (all CPUs, some
//! LLCs or a node) optionally narrowed to a disjoint part, an overlapping fraction, or the
//! first CPUs of each LLC.
//!
//! In TOML:
//! ```toml
//! cpuset = "0-3,6"                      # explicit
//! cpuset = "all"
//! cpuset = { llc = 1 }                  # or llcs = [0, 2], or node = 0
//! cpuset = { part = 0, of = 2 }         # disjoint: CPUs split into `of` parts, part `part`
//! cpuset = { from = 0.25, to = 1.0 }    # overlapping: a fraction of the (base) CPU list
//! cpuset = { node = 0, per_llc = 1 }    # the first CPU of every LLC of node 0
//! ```

use std::fmt;

use ktstr_shared::scenario::CpuList;
use ktstr_shared::topology::Topology;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A CPU set as written in a scenario file.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuSpec {
    /// `"all"`: every CPU of the topology.
    All,
    /// `"0-3,6"`.
    List(Vec<u32>),
    /// `{ llc = 1, part = 0, of = 2 }` and the like.
    Select(CpuSel),
}

/// A base set and an optional narrowing of it; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSel {
    pub llc: Option<u32>,
    pub llcs: Option<Vec<u32>>,
    pub node: Option<u32>,
    pub part: Option<u32>,
    pub of: Option<u32>,
    pub from: Option<f64>,
    pub to: Option<f64>,
    pub per_llc: Option<u32>,
}

/// Why a selection does not fit the topology.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CpuSpecError {
    #[error("CPU {cpu} is not in topology {topo} (CPUs 0-{last})", last = .topo.cpus() - 1)]
    CpuOutOfRange { cpu: u32, topo: Topology },
    #[error("LLC {llc} is not in topology {topo} (LLCs 0-{last})", last = .topo.llcs - 1)]
    NoSuchLlc { llc: u32, topo: Topology },
    #[error("node {node} is not in topology {topo} (nodes 0-{last})", last = .topo.nodes - 1)]
    NoSuchNode { node: u32, topo: Topology },
    #[error("give one base of llc, llcs and node, not several")]
    SeveralBases,
    #[error("give one narrowing of part/of, from/to and per_llc, not several")]
    SeveralNarrowings,
    #[error("part and of go together: part = K, of = N with K < N")]
    PartWithoutOf,
    #[error("part {part} of {of}: parts are numbered 0..{of}")]
    PartOutOfRange { part: u32, of: u32 },
    #[error("of = {of} parts but the base has only {cpus} CPUs")]
    TooManyParts { of: u32, cpus: usize },
    #[error("from and to go together, with 0 <= from < to <= 1 (got from {from:?}, to {to:?})")]
    BadFraction { from: Option<f64>, to: Option<f64> },
    #[error("per_llc must be at least 1")]
    ZeroPerLlc,
    #[error("the selection is empty")]
    Empty,
}

impl CpuSpec {
    /// The CPUs this selects on `topo`, ascending.
    pub fn resolve(&self, topo: &Topology) -> Result<CpuList, CpuSpecError> {
        let cpus = match self {
            CpuSpec::All => (0..topo.cpus()).collect(),
            CpuSpec::List(cpus) => {
                if let Some(&cpu) = cpus.iter().find(|&&c| c >= topo.cpus()) {
                    return Err(CpuSpecError::CpuOutOfRange { cpu, topo: *topo });
                }
                CpuList(cpus.clone()).normalized()
            }
            CpuSpec::Select(sel) => sel.resolve(topo)?,
        };
        if cpus.is_empty() {
            return Err(CpuSpecError::Empty);
        }
        Ok(CpuList(cpus))
    }
}

impl CpuSel {
    fn resolve(&self, topo: &Topology) -> Result<Vec<u32>, CpuSpecError> {
        let base = self.base(topo)?;
        let narrowings = [self.part.is_some() || self.of.is_some(), self.from.is_some() || self.to.is_some()];
        if narrowings.iter().filter(|&&n| n).count() + usize::from(self.per_llc.is_some()) > 1 {
            return Err(CpuSpecError::SeveralNarrowings);
        }
        if self.part.is_some() || self.of.is_some() {
            return disjoint_part(&base, self.part, self.of);
        }
        if self.from.is_some() || self.to.is_some() {
            return fraction(&base, self.from, self.to);
        }
        match self.per_llc {
            Some(0) => Err(CpuSpecError::ZeroPerLlc),
            Some(n) => Ok(first_per_llc(&base, topo, n)),
            None => Ok(base),
        }
    }

    fn base(&self, topo: &Topology) -> Result<Vec<u32>, CpuSpecError> {
        let given = [self.llc.is_some(), self.llcs.is_some(), self.node.is_some()];
        if given.iter().filter(|&&g| g).count() > 1 {
            return Err(CpuSpecError::SeveralBases);
        }
        let llcs: Vec<u32> = match (self.llc, &self.llcs, self.node) {
            (Some(l), _, _) => vec![l],
            (_, Some(ls), _) => ls.clone(),
            (_, _, Some(n)) if n >= topo.nodes => return Err(CpuSpecError::NoSuchNode { node: n, topo: *topo }),
            (_, _, Some(n)) => (n * topo.llcs_per_node()..(n + 1) * topo.llcs_per_node()).collect(),
            _ => (0..topo.llcs).collect(),
        };
        let mut cpus = Vec::new();
        for l in llcs {
            cpus.extend(llc_cpus(topo, l)?);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(cpus)
    }
}

/// CPUs of LLC `llc`.
pub fn llc_cpus(topo: &Topology, llc: u32) -> Result<std::ops::Range<u32>, CpuSpecError> {
    if llc >= topo.llcs {
        return Err(CpuSpecError::NoSuchLlc { llc, topo: *topo });
    }
    let per = topo.cores_per_llc * topo.threads_per_core;
    Ok(llc * per..(llc + 1) * per)
}

/// Part `part` of `of` contiguous parts whose sizes differ by at most one.
fn disjoint_part(base: &[u32], part: Option<u32>, of: Option<u32>) -> Result<Vec<u32>, CpuSpecError> {
    let (Some(part), Some(of)) = (part, of) else { return Err(CpuSpecError::PartWithoutOf) };
    if part >= of {
        return Err(CpuSpecError::PartOutOfRange { part, of });
    }
    if of as usize > base.len() {
        return Err(CpuSpecError::TooManyParts { of, cpus: base.len() });
    }
    let (n, of, part) = (base.len(), of as usize, part as usize);
    Ok(base[part * n / of..(part + 1) * n / of].to_vec())
}

/// CPUs `floor(from * n) .. ceil(to * n)` of the base list.
fn fraction(base: &[u32], from: Option<f64>, to: Option<f64>) -> Result<Vec<u32>, CpuSpecError> {
    let bad = || CpuSpecError::BadFraction { from, to };
    let (Some(f), Some(t)) = (from, to) else { return Err(bad()) };
    if !((0.0..1.0).contains(&f) && f < t && t <= 1.0) {
        return Err(bad());
    }
    let n = base.len() as f64;
    let (start, end) = ((f * n).floor() as usize, ((t * n).ceil() as usize).min(base.len()));
    if start >= end {
        return Err(CpuSpecError::Empty);
    }
    Ok(base[start..end].to_vec())
}

/// The first `n` CPUs of every LLC that has CPUs in `base`.
fn first_per_llc(base: &[u32], topo: &Topology, n: u32) -> Vec<u32> {
    let per = topo.cores_per_llc * topo.threads_per_core;
    let mut taken = vec![0u32; topo.llcs as usize];
    let mut out = Vec::new();
    for &cpu in base {
        let llc = (cpu / per) as usize;
        if let Some(t) = taken.get_mut(llc)
            && *t < n
        {
            *t += 1;
            out.push(cpu);
        }
    }
    out
}

impl<'de> Deserialize<'de> for CpuSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SpecVisitor)
    }
}

struct SpecVisitor;

impl<'de> Visitor<'de> for SpecVisitor {
    type Value = CpuSpec;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a CPU list ("0-3,6"), "all", or a table such as { llc = 0 } or { part = 0, of = 2 }"#)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<CpuSpec, E> {
        if s.trim() == "all" {
            return Ok(CpuSpec::All);
        }
        let list: CpuList = s.parse().map_err(E::custom)?;
        if list.0.is_empty() {
            return Err(E::custom("empty CPU list; leave the key out instead"));
        }
        Ok(CpuSpec::List(list.0))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CpuSpec, A::Error> {
        CpuSel::deserialize(de::value::MapAccessDeserializer::new(map)).map(CpuSpec::Select)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(s: &str) -> Topology {
        s.parse().unwrap()
    }

    fn sel(toml_value: &str, t: &str) -> Result<Vec<u32>, CpuSpecError> {
        #[derive(Deserialize)]
        struct W {
            c: CpuSpec,
        }
        let w: W = toml::from_str(&format!("c = {toml_value}")).unwrap();
        w.c.resolve(&topo(t)).map(|l| l.0)
    }

    #[test]
    fn bases_follow_the_topology() {
        assert_eq!(sel(r#""all""#, "1n2l2c1t").unwrap(), [0, 1, 2, 3]);
        assert_eq!(sel(r#""3,0-1""#, "1n2l2c1t").unwrap(), [0, 1, 3]);
        assert_eq!(sel("{ llc = 1 }", "1n2l2c1t").unwrap(), [2, 3]);
        assert_eq!(sel("{ llc = 1 }", "1n2l2c2t").unwrap(), [4, 5, 6, 7]);
        assert_eq!(sel("{ llcs = [0, 2] }", "2n4l1c1t").unwrap(), [0, 2]);
        assert_eq!(sel("{ node = 1 }", "2n4l2c1t").unwrap(), [4, 5, 6, 7]);
    }

    #[test]
    fn narrowings_split_and_overlap() {
        assert_eq!(sel("{ part = 0, of = 2 }", "1n2l2c1t").unwrap(), [0, 1]);
        assert_eq!(sel("{ part = 2, of = 3 }", "1n1l8c1t").unwrap(), [5, 6, 7]);
        // Disjoint parts cover the base exactly once.
        let parts: Vec<u32> =
            (0..3).flat_map(|p| sel(&format!("{{ part = {p}, of = 3 }}"), "1n1l8c1t").unwrap()).collect();
        assert_eq!(parts, (0..8).collect::<Vec<_>>());
        assert_eq!(sel("{ from = 0.0, to = 0.75 }", "1n2l2c1t").unwrap(), [0, 1, 2]);
        assert_eq!(sel("{ from = 0.25, to = 1.0 }", "1n2l2c1t").unwrap(), [1, 2, 3]);
        assert_eq!(sel("{ per_llc = 1 }", "1n2l2c1t").unwrap(), [0, 2]);
        assert_eq!(sel("{ node = 1, per_llc = 1 }", "2n4l2c1t").unwrap(), [4, 6]);
        assert_eq!(sel("{ llc = 1, part = 1, of = 2 }", "1n2l2c1t").unwrap(), [3]);
    }

    #[test]
    fn bad_selections_say_why() {
        let t = "1n2l2c1t";
        assert!(sel(r#""4""#, t).unwrap_err().to_string().contains("CPU 4 is not in topology 1n2l2c1t (CPUs 0-3)"));
        assert!(sel("{ llc = 2 }", t).unwrap_err().to_string().contains("LLCs 0-1"));
        assert!(sel("{ node = 1 }", t).unwrap_err().to_string().contains("nodes 0-0"));
        assert_eq!(sel("{ llc = 0, node = 0 }", t), Err(CpuSpecError::SeveralBases));
        assert_eq!(sel("{ part = 0, of = 2, per_llc = 1 }", t), Err(CpuSpecError::SeveralNarrowings));
        assert_eq!(sel("{ part = 0 }", t), Err(CpuSpecError::PartWithoutOf));
        assert_eq!(sel("{ part = 2, of = 2 }", t), Err(CpuSpecError::PartOutOfRange { part: 2, of: 2 }));
        assert_eq!(sel("{ part = 0, of = 5 }", t), Err(CpuSpecError::TooManyParts { of: 5, cpus: 4 }));
        assert!(matches!(sel("{ from = 0.5, to = 0.5 }", t), Err(CpuSpecError::BadFraction { .. })));
        assert!(matches!(sel("{ from = 0.5 }", t), Err(CpuSpecError::BadFraction { .. })));
        assert_eq!(sel("{ per_llc = 0 }", t), Err(CpuSpecError::ZeroPerLlc));
    }

    #[test]
    fn syntax_errors_are_toml_errors() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct W {
            c: CpuSpec,
        }
        let e = toml::from_str::<W>("c = { lcc = 1 }").unwrap_err();
        assert!(e.message().contains("unknown field `lcc`"), "{e}");
        assert!(toml::from_str::<W>(r#"c = "0-x""#).unwrap_err().message().contains("bad CPU list item"));
        assert!(toml::from_str::<W>("c = 3").unwrap_err().message().contains("a CPU list"));
    }
}
