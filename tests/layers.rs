//! The host crate is layered one way: each top-level module imports only modules of lower
//! layers (ARCHITECTURE.md has the map). This test reads the sources and fails on an upward or
//! sideways import, on a module missing from the map, and on any import cycle between the
//! top-level modules of the init and shared crates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The host crate's layers, lowest first. A module may import modules of strictly lower layers.
const HOST_LAYERS: &[&[&str]] = &[
    &["interrupt", "progress", "init_binary"],
    &["spec", "topo"],
    &["scenario"],
    &["kernel", "image", "vmm"],
    &["backend", "sched"],
    &["collect"],
    &["runner"],
    &["record"],
    &["verdict"],
    &["report"],
    &["junit"],
    &["app"],
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The top-level module a source file belongs to (`None` for the crate root files).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// Top-level modules named by `crate::` paths in `code` (comments left out).
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    out.insert(ident(item.trim()));
                }
            } else {
                out.insert(ident(rest));
            }
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// (importer, imported, file) for every cross-module import of the crate at `src`.
fn edges(src: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    for file in sources(src) {
        let Some(m) = module_of(src, &file) else { continue };
        let code = std::fs::read_to_string(&file).unwrap();
        for dep in crate_imports(&code) {
            if dep != m {
                out.push((m.clone(), dep, file.clone()));
            }
        }
    }
    out
}

/// Imports that break the layering, and modules the map does not name.
fn layer_violations(src: &Path, layers: &[&[&str]]) -> Vec<String> {
    let rank: BTreeMap<&str, usize> =
        layers.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |m| (*m, i))).collect();
    let mut bad = Vec::new();
    for (from, to, file) in edges(src) {
        match (rank.get(from.as_str()), rank.get(to.as_str())) {
            (Some(a), Some(b)) if b < a => {}
            (Some(_), Some(_)) => {
                bad.push(format!("{}: `{from}` imports `{to}`, which is not below it", file.display()))
            }
            (None, _) => bad.push(format!("{}: module `{from}` is in no layer", file.display())),
            (_, None) => bad.push(format!("{}: `{from}` imports `{to}`, which is in no layer", file.display())),
        }
    }
    bad
}

/// A cycle among the top-level modules of the crate at `src`, if any.
fn find_cycle(src: &Path) -> Option<Vec<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to, _) in edges(src) {
        graph.entry(from).or_default().insert(to);
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if !done.insert(n.to_string()) {
            return None;
        }
        path.push(n.to_string());
        for next in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, &graph, &mut Vec::new(), &mut done))
}

#[test]
fn host_modules_import_only_lower_layers() {
    let src = root().join("host/src");
    let bad = layer_violations(&src, HOST_LAYERS);
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
    // Every top-level module of the crate is in the map.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for m in lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';')) {
        assert!(HOST_LAYERS.iter().any(|l| l.contains(&m)), "lib.rs declares `{m}`, which is in no layer");
    }
    assert_eq!(find_cycle(&src), None);
}

#[test]
fn init_and_shared_have_no_import_cycles() {
    for krate in ["init/src", "shared/src"] {
        assert_eq!(find_cycle(&root().join(krate)), None, "{krate}");
    }
}

/// Text files of the repository (tracked by git), for the self-containment check.
fn tracked_files() -> Vec<PathBuf> {
    let out = std::process::Command::new("git").arg("-C").arg(root()).args(["ls-files", "-z"]).output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else { return Vec::new() };
    out.stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| root().join(String::from_utf8_lossy(p).as_ref()))
        .collect()
}

#[test]
fn the_repository_points_at_nothing_outside_it() {
    let files = tracked_files();
    assert!(files.len() > 50, "git ls-files found {} files; is this a git checkout?", files.len());
    // Notes that live beside a checkout, not in it.
    let outside = ["../shared", "DESIGN.md", "notes/environment.md"];
    let mut bad = Vec::new();
    for f in files.iter().filter(|f| !f.ends_with("tests/layers.rs")) {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        for (n, line) in text.lines().enumerate() {
            if let Some(o) = outside.iter().find(|o| line.contains(*o)) {
                bad.push(format!("{}:{}: refers to {o}", f.display(), n + 1));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_checker_catches_an_upward_import_and_a_cycle() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    std::fs::create_dir_all(src.join("verdict")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod record;\npub mod verdict;\n").unwrap();
    std::fs::write(src.join("record.rs"), "use crate::verdict::Verdict; // upward\n").unwrap();
    std::fs::write(src.join("verdict/mod.rs"), "use crate::{record::RunRecord, self};\n").unwrap();
    let bad = layer_violations(src, &[&["record"], &["verdict"]]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("`record` imports `verdict`, which is not below it"), "{bad:?}");
    assert_eq!(find_cycle(src), Some(vec!["record".into(), "verdict".into(), "record".into()]));
    // Comments do not count.
    std::fs::write(src.join("record.rs"), "// use crate::verdict::Verdict;\n").unwrap();
    assert!(layer_violations(src, &[&["record"], &["verdict"]]).is_empty());
    assert_eq!(find_cycle(src), None);
}
