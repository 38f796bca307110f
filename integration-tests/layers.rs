//! One-way layers (issue 29): no two top-level modules of `src/` may reach each other, directly or
//! through others.
//!
//! Rules of the check (the same as `.ci/layers.py`, which prints the whole graph):
//! - an edge `a -> b` is a `crate::b` path (a `use` line, a `crate::{b, c}` group, an inline path)
//!   in non-test code of module `a`: a file is read up to its first `#[cfg(test)]`, and `tests.rs`
//!   files and `tests/` folders are skipped, because tests are clients of every layer;
//! - `lib.rs` and `main.rs` are the top and are not modules;
//! - a cycle is a strongly connected group of more than one module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Edges = BTreeMap<(String, String), Vec<String>>;

fn modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .expect("src/ is readable")
        .map(|e| e.expect("src/ entry").path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|x| x == "rs"))
        .map(|p| {
            p.file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .filter(|m| m != "lib" && m != "main")
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable folder") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|x| x == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The module names a line of code reaches through `crate::`.
fn targets(line: &str) -> BTreeSet<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before_ok = at == 0 || {
            let c = rest.as_bytes()[at - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        rest = &rest[at + "crate::".len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    found.insert(name.to_owned());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn edges(src: &Path, mods: &BTreeSet<String>) -> Edges {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = Edges::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src/");
        let first = rel.components().next().expect("a component");
        let top = Path::new(first.as_os_str())
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if !mods.contains(&top) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for to in targets(line) {
                if to != top && mods.contains(&to) {
                    edges.entry((top.clone(), to)).or_default().push(format!(
                        "src/{}:{}",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    edges
}

/// Modules that reach each other: for every module, the set it reaches; a pair in each other's set
/// is in one cycle.
fn cycles(mods: &BTreeSet<String>, edges: &Edges) -> Vec<BTreeSet<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
    }
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(m) = todo.pop() {
            for &n in next.get(m).into_iter().flatten() {
                if seen.insert(n.to_owned()) {
                    todo.push(n);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<String>> =
        mods.iter().map(|m| (m.as_str(), reach(m))).collect();
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for m in mods {
        if !reaches[m.as_str()].contains(m) || groups.iter().any(|g| g.contains(m)) {
            continue;
        }
        let group = mods
            .iter()
            .filter(|o| reaches[m.as_str()].contains(*o) && reaches[o.as_str()].contains(m))
            .cloned()
            .collect();
        groups.push(group);
    }
    groups
}

#[test]
fn no_two_top_level_modules_reach_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let edges = edges(&src, &mods);
    let groups = cycles(&mods, &edges);
    let mut report = String::new();
    for group in &groups {
        report.push_str(&format!(
            "cycle: {}\n",
            Vec::from_iter(group.iter().cloned()).join(" ")
        ));
        for ((a, b), places) in &edges {
            if group.contains(a) && group.contains(b) {
                report.push_str(&format!("  {a} -> {b}: {}\n", places.join(", ")));
            }
        }
    }
    assert!(
        groups.is_empty(),
        "import cycles between src/ modules:\n{report}"
    );
}

#[test]
fn the_check_sees_a_cycle_when_there_is_one() {
    let mods: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    let mut edges = Edges::new();
    for (from, to) in [("a", "b"), ("b", "c")] {
        edges.insert((from.into(), to.into()), vec![]);
    }
    assert!(cycles(&mods, &edges).is_empty());
    edges.insert(("c".into(), "a".into()), vec![]);
    assert_eq!(cycles(&mods, &edges), vec![mods.clone()]);
    assert_eq!(
        targets(
            "use crate::{pool::Pools, util::glob}; let x = crate::spool::Spool::new(); // crate::admin"
        ),
        ["pool", "spool", "util"].map(String::from).into()
    );
    assert!(targets("mycrate::pool").is_empty());
}
