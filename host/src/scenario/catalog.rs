//! The built-in scenarios: TOML files in `catalog/`, embedded in the binary, so users see the
//! format they write. A name starts with its category (`cpuset_swap` is in `cpuset`).
//! Every entry resolves on any topology with at least 2 CPUs (selections are relative: halves,
//! fractions, one CPU per LLC), and says what it proves in its `description`.

macro_rules! catalog {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("catalog/", $name, ".toml")))),*]
    };
}

/// (name, TOML text), in the order `list` shows them.
const ENTRIES: &[(&str, &str)] = catalog![
    "basic_spin",
    "basic_work_types",
    "cpuset_apply",
    "cpuset_clear",
    "cpuset_resize",
    "cpuset_swap",
    "cpuset_overlap",
    "cpuset_sparse",
    "cgroup_add_remove",
    "cgroup_nested",
    "cgroup_weights_2to1",
    "cgroup_weight_change",
    "cgroup_move",
    "affinity_pinned",
    "affinity_churn",
    "affinity_change",
    "interaction_pipe_pairs",
    "interaction_futex_pairs",
    "interaction_fan_out",
    "stress_oversubscribe_4x",
    "stress_fork_churn",
    "stress_yield_storm",
    "latency_timer_idle",
    "latency_timer_under_load",
];

/// The categories, in order.
pub const CATEGORIES: &[&str] = &["basic", "cpuset", "cgroup", "affinity", "interaction", "stress", "latency"];

/// Every scenario name, in catalog order.
pub fn names() -> impl Iterator<Item = &'static str> {
    ENTRIES.iter().map(|(n, _)| *n)
}

/// The TOML text of scenario `name`.
pub fn get(name: &str) -> Option<&'static str> {
    ENTRIES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The category of a catalog name: its prefix.
pub fn category(name: &str) -> &str {
    name.split('_').next().unwrap_or(name)
}

/// How errors name a catalog file.
pub fn origin(name: &str) -> String {
    format!("host/src/scenario/catalog/{name}.toml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::from_toml;
    use ktstr_shared::topology::Topology;

    #[test]
    fn every_entry_resolves_on_small_and_large_topologies() {
        for topo in ["1n1l2c1t", "1n2l2c1t", "2n4l2c2t", "1n2l4c1t"] {
            let t: Topology = topo.parse().unwrap();
            for name in names() {
                let r = from_toml(get(name).unwrap(), &origin(name), "catalog", &t, 1.0)
                    .unwrap_or_else(|e| panic!("{name} on {topo}: {e}"));
                assert_eq!(r.info.name, name, "the file's name matches its file");
                assert_eq!(r.info.category, category(name), "{name}: category is the name's prefix");
                assert!(r.info.description.len() > 40, "{name}: says what it proves");
                assert!(r.scenario.workers().count() <= 64, "{name} on {topo}: keep the catalog light");
            }
        }
    }

    #[test]
    fn at_least_twenty_scenarios_cover_every_category() {
        assert!(names().count() >= 20);
        for c in CATEGORIES {
            assert!(names().any(|n| category(n) == *c), "no scenario in {c}");
        }
        assert!(names().all(|n| CATEGORIES.contains(&category(n))));
        assert!(names().all(|n| !CATEGORIES.contains(&n) && n != "all"), "names never shadow categories");
        let mut sorted: Vec<_> = names().collect();
        sorted.dedup();
        assert_eq!(sorted.len(), names().count());
    }

    #[test]
    fn the_weight_scenario_declares_its_ratio() {
        let t: Topology = "1n2l2c1t".parse().unwrap();
        let r = from_toml(get("cgroup_weights_2to1").unwrap(), "x", "catalog", &t, 1.0).unwrap();
        let ratio = r.expect.cpu_ratio.unwrap();
        assert_eq!((ratio.cgroups[0].as_str(), ratio.cgroups[1].as_str(), ratio.ratio), ("hi", "lo", 2.0));
        // No cpuset: both compete for every CPU, one spinner per CPU each.
        assert!(r.scenario.cgroups.iter().all(|c| c.cpuset.is_none()));
        assert_eq!(r.scenario.workers().count(), 2 * 4);
    }
}
