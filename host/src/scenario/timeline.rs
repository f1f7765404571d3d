//! Where each worker of a scenario may run after each step: which cgroup it is in, that
//! cgroup's effective cpuset and the worker's affinity, replayed from the scenario's ops.
//!
//! Kernel semantics modelled (cgroup v2): a cgroup's effective cpuset is its own `cpuset.cpus`
//! intersected with its parent's effective one, or the parent's when that is empty or unset;
//! a task's CPUs are its affinity intersected with its cpuset, or the cpuset when that is empty.

use std::collections::BTreeMap;

use ktstr_shared::scenario::{CpuList, Op, Scenario};

/// The state before any step (`epochs[0]`) and after each step (`epochs[k + 1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub epochs: Vec<Epoch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// Scheduled start, ms after the workers' release.
    pub start_ms: u64,
    /// Per worker id; `None` while it does not exist (cgroup not added yet, or removed).
    pub workers: Vec<Option<Placement>>,
}

/// Where one worker is and may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Its cgroup (index in `Scenario::cgroup_defs` order).
    pub cgroup: u16,
    /// The cgroup's effective CPUs, ascending.
    pub cpuset: Vec<u32>,
    /// The CPUs it may run on (cpuset and affinity), ascending.
    pub allowed: Vec<u32>,
    /// True when a cpuset (its cgroup's or an ancestor's) restricts it.
    pub cpuset_restricted: bool,
    /// True when an affinity mask restricts it.
    pub affinity_restricted: bool,
}

/// The mutable state while replaying.
struct State<'a> {
    nr_cpus: u32,
    names: Vec<&'a str>,
    own: Vec<Option<Vec<u32>>>,
    alive: BTreeMap<&'a str, usize>,
    next_def: usize,
    /// Per worker: (initial def, current def when alive, affinity).
    workers: Vec<(usize, Option<usize>, Option<Vec<u32>>)>,
}

/// Replays `scn` on a machine of `nr_cpus` CPUs.
pub fn build(scn: &Scenario, nr_cpus: u32) -> Timeline {
    let defs: Vec<_> = scn.cgroup_defs().collect();
    let mut st = State {
        nr_cpus,
        names: defs.iter().map(|d| d.name.as_str()).collect(),
        own: defs.iter().map(|d| d.cpuset.as_ref().map(CpuList::normalized)).collect(),
        alive: BTreeMap::new(),
        next_def: 0,
        workers: scn
            .workers()
            .map(|w| (w.cgroup as usize, None, w.spec.affinity.as_ref().map(CpuList::normalized)))
            .collect(),
    };
    for _ in &scn.cgroups {
        st.add();
    }
    let mut epochs = vec![st.snapshot(0)];
    for (step, start) in scn.steps.iter().zip(scn.step_starts_ms()) {
        for op in &step.ops {
            st.apply(op);
        }
        epochs.push(st.snapshot(start));
    }
    Timeline { epochs }
}

impl<'a> State<'a> {
    fn add(&mut self) {
        let def = self.next_def;
        self.next_def += 1;
        if let Some(name) = self.names.get(def) {
            self.alive.insert(name, def);
        }
        for w in self.workers.iter_mut().filter(|w| w.0 == def) {
            w.1 = Some(def);
        }
    }

    fn members(&mut self, name: &str) -> impl Iterator<Item = &mut (usize, Option<usize>, Option<Vec<u32>>)> {
        let def = self.alive.get(name).copied();
        self.workers.iter_mut().filter(move |w| def.is_some() && w.1 == def)
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::AddCgroup(_) => self.add(),
            Op::RemoveCgroup { cgroup } => {
                self.members(cgroup).for_each(|w| w.1 = None);
                self.alive.remove(cgroup.as_str());
            }
            Op::SetCpuset { cgroup, cpus } => {
                if let Some(&def) = self.alive.get(cgroup.as_str()) {
                    self.own[def] = cpus.as_ref().map(CpuList::normalized);
                }
            }
            Op::SetAffinity { cgroup, cpus } => {
                let cpus = cpus.as_ref().map(CpuList::normalized);
                self.members(cgroup).for_each(|w| w.2 = cpus.clone());
            }
            Op::MoveTasks { from, to } => {
                let to = self.alive.get(to.as_str()).copied();
                self.members(from).for_each(|w| w.1 = to);
            }
            Op::SetWeight { .. } | Op::PauseWorkers { .. } | Op::ResumeWorkers { .. } => {}
        }
    }

    /// Effective CPUs of cgroup `def`, and whether any cpuset on its path restricts it.
    fn effective(&self, def: usize) -> (Vec<u32>, bool) {
        let name = self.names[def];
        let (base, restricted) = match name.rsplit_once('/').and_then(|(p, _)| self.alive.get(p)) {
            Some(&parent) => self.effective(parent),
            None => ((0..self.nr_cpus).collect(), false),
        };
        match &self.own[def] {
            Some(own) => {
                let mine: Vec<u32> = own.iter().copied().filter(|c| base.contains(c)).collect();
                if mine.is_empty() { (base, restricted) } else { (mine, true) }
            }
            None => (base, restricted),
        }
    }

    fn snapshot(&self, start_ms: u64) -> Epoch {
        let workers = self
            .workers
            .iter()
            .map(|(_, def, aff)| {
                let def = (*def)?;
                let (cpuset, cpuset_restricted) = self.effective(def);
                let narrowed: Option<Vec<u32>> =
                    aff.as_ref().map(|a| cpuset.iter().copied().filter(|c| a.contains(c)).collect());
                let allowed = narrowed.filter(|n| !n.is_empty()).unwrap_or_else(|| cpuset.clone());
                let affinity_restricted = aff.is_some() && allowed.len() < self.nr_cpus as usize;
                Some(Placement { cgroup: def as u16, cpuset, allowed, cpuset_restricted, affinity_restricted })
            })
            .collect();
        Epoch { start_ms, workers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_shared::scenario::{CgroupSpec, Step, WorkType};

    fn cg(name: &str, cpus: Option<&str>, workers: u32) -> CgroupSpec {
        let mut c = CgroupSpec::new(name);
        c.cpuset = cpus.map(|s| s.parse().unwrap());
        if workers > 0 {
            c = c.with_workers(workers, WorkType::CpuSpin);
        }
        c
    }

    fn allowed(t: &Timeline, epoch: usize, worker: usize) -> Option<Vec<u32>> {
        t.epochs[epoch].workers[worker].as_ref().map(|p| p.allowed.clone())
    }

    #[test]
    fn cpusets_nest_change_and_fall_back_like_the_kernel() {
        let mut scn =
            Scenario::new(vec![cg("p", Some("0-1"), 0), cg("p/a", Some("1-3"), 1), cg("p/b", Some("3"), 1)], 1000);
        scn.steps = vec![
            Step { ops: vec![Op::SetCpuset { cgroup: "p".into(), cpus: Some("1-3".parse().unwrap()) }], hold_ms: 100 },
            Step { ops: vec![Op::SetCpuset { cgroup: "p".into(), cpus: None }], hold_ms: 100 },
        ];
        let t = build(&scn, 4);
        assert_eq!(t.epochs.len(), 3);
        assert_eq!(allowed(&t, 0, 0).unwrap(), [1], "p/a = 1-3 within 0-1");
        assert_eq!(allowed(&t, 0, 1).unwrap(), [0, 1], "p/b's 3 is outside 0-1: the parent's CPUs");
        assert_eq!(allowed(&t, 1, 0).unwrap(), [1, 2, 3]);
        assert_eq!(allowed(&t, 1, 1).unwrap(), [3]);
        assert_eq!(allowed(&t, 2, 0).unwrap(), [1, 2, 3], "p cleared: p/a's own cpuset remains");
        assert_eq!(t.epochs[1].start_ms, 0);
        assert_eq!(t.epochs[2].start_ms, 100);
        assert!(t.epochs[0].workers[0].as_ref().unwrap().cpuset_restricted);
    }

    #[test]
    fn workers_appear_move_and_disappear() {
        let mut scn = Scenario::new(vec![cg("a", Some("0"), 1), cg("b", Some("2-3"), 0)], 1000);
        let mut late = cg("c", None, 1);
        late.workers[0].affinity = Some("1".parse().unwrap());
        scn.steps = vec![
            Step { ops: vec![Op::AddCgroup(late)], hold_ms: 100 },
            Step { ops: vec![Op::MoveTasks { from: "a".into(), to: "b".into() }], hold_ms: 100 },
            Step { ops: vec![Op::SetAffinity { cgroup: "b".into(), cpus: Some("3".parse().unwrap()) }], hold_ms: 100 },
            Step { ops: vec![Op::RemoveCgroup { cgroup: "c".into() }], hold_ms: 100 },
        ];
        let t = build(&scn, 4);
        assert_eq!(allowed(&t, 0, 1), None, "c's worker does not exist yet");
        let p = t.epochs[1].workers[1].as_ref().unwrap();
        assert_eq!(
            (p.cgroup, p.allowed.clone(), p.cpuset_restricted, p.affinity_restricted),
            (2, vec![1], false, true)
        );
        assert_eq!(allowed(&t, 2, 0).unwrap(), [2, 3], "moved into b");
        assert_eq!(t.epochs[2].workers[0].as_ref().unwrap().cgroup, 1);
        assert_eq!(allowed(&t, 3, 0).unwrap(), [3]);
        assert_eq!(allowed(&t, 4, 1), None, "removed");
    }

    #[test]
    fn affinity_outside_the_cpuset_falls_back_to_the_cpuset() {
        let mut a = cg("a", Some("0-1"), 1);
        a.workers[0].affinity = Some("3".parse().unwrap());
        let t = build(&Scenario::new(vec![a], 100), 4);
        assert_eq!(allowed(&t, 0, 0).unwrap(), [0, 1]);
    }
}
