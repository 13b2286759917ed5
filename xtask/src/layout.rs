//! The shape of `monitor/src`, read from the code's own `crate::` paths: which top-level
//! module uses which. `cargo xtask layout` prints it in layers; the tests below fail when a
//! circle appears between top-level modules, when the fleet side reaches capture or kernel
//! types, when `monitor/src` grows more than 8 loose files, or when a source file of the
//! userspace or the kernel programs passes 600 lines.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Top-level module -> the top-level modules its files name through `crate::`.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file below `dir`, sorted.
pub fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The top-level module a file of `src` belongs to (`None` for `main.rs` and `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "main" | "lib")).then(|| name.to_owned())
}

/// The first path segment of every `crate::` path in `code` (comments left out):
/// `crate::a::b`, `crate::{a::b, c}` give `a` (and `c`).
pub fn crate_paths(code: &str) -> BTreeSet<String> {
    let text: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `$crate::` in macros, or an identifier ending in "crate".
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    if let Some(name) = first_segment(&item) {
                        out.insert(name);
                    }
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else if depth == 1 {
                    item.push(c);
                } else if depth > 1 && !item.contains('{') {
                    item.push('{');
                }
            }
        } else if let Some(name) = first_segment(rest) {
            out.insert(name);
        }
    }
    out
}

fn first_segment(s: &str) -> Option<String> {
    let name: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// The module graph of a `src` folder: only names that are its top-level modules count.
pub fn graph(src: &Path) -> Result<Graph> {
    let files = rust_files(src)?;
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut g: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for f in &files {
        let Some(m) = module_of(src, f) else {
            continue;
        };
        let code = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
        let uses: Vec<String> = crate_paths(&code)
            .into_iter()
            .filter(|u| *u != m && modules.contains(u))
            .collect();
        g.entry(m).or_default().extend(uses);
    }
    Ok(g)
}

/// The circles of a graph: each set of two or more modules that reach one another.
pub fn cycles(g: &Graph) -> Vec<BTreeSet<String>> {
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        g.keys().map(|m| (m, reached(g, m))).collect();
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for (m, r) in &reaches {
        if !r.contains(*m) {
            continue;
        }
        let circle: BTreeSet<String> = r
            .iter()
            .filter(|n| reaches.get(n).is_some_and(|back| back.contains(*m)))
            .cloned()
            .collect();
        if !out.contains(&circle) {
            out.push(circle);
        }
    }
    out
}

/// Everything `from` reaches.
pub fn reached(g: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(m) = todo.pop() {
        for n in g.get(&m).into_iter().flatten() {
            if seen.insert(n.clone()) {
                todo.push(n.clone());
            }
        }
    }
    seen
}

/// The graph in layers, lowest first: a module sits one layer above the highest it uses.
pub fn layers(g: &Graph) -> Vec<Vec<String>> {
    let mut level: BTreeMap<String, usize> = BTreeMap::new();
    // Bounded: a circle would never settle, so stop after as many rounds as modules.
    for _ in 0..=g.len() {
        let mut changed = false;
        for (m, uses) in g {
            let l = uses
                .iter()
                .map(|u| level.get(u).map_or(1, |l| l + 1))
                .max()
                .unwrap_or(0);
            if level.get(m) != Some(&l) {
                level.insert(m.clone(), l);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let top = level.values().copied().max().unwrap_or(0);
    (0..=top)
        .map(|l| {
            level
                .iter()
                .filter(|(_, v)| **v == l)
                .map(|(m, _)| m.clone())
                .collect()
        })
        .collect()
}

/// `cargo xtask layout`: the layers and each module's uses.
pub fn report(root: &Path) -> Result<String> {
    let src = root.join("monitor/src");
    let g = graph(&src)?;
    let mut out = String::from("monitor/src, top-level modules from the lowest layer up:\n");
    for (i, layer) in layers(&g).iter().enumerate() {
        for m in layer {
            let uses: Vec<&str> = g[m].iter().map(String::as_str).collect();
            out.push_str(&format!("  {i:>2}  {m:<10} uses {}\n", uses.join(", ")));
        }
    }
    let circles = cycles(&g);
    out.push_str(&format!(
        "circles: {}\n",
        if circles.is_empty() {
            "none".to_owned()
        } else {
            format!("{circles:?}")
        }
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        crate::root()
    }

    fn src() -> PathBuf {
        root().join("monitor/src")
    }

    #[test]
    fn crate_paths_read_plain_grouped_and_nested_imports() {
        let code = "use crate::{\n    alert::{self, Update},\n    capture::Capture,\n    config,\n};\n\
                    use crate::flow::Role;\n// crate::commented::out\nlet x = crate::clock::now_ms();\n\
                    macro_rules! m { () => { $crate::hidden } }";
        let got: Vec<String> = crate_paths(code).into_iter().collect();
        assert_eq!(got, ["alert", "capture", "clock", "config", "flow"]);
    }

    #[test]
    fn circles_are_found_and_a_chain_is_not_one() {
        let mut g = Graph::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("c".into());
        g.entry("c".into()).or_default();
        assert!(cycles(&g).is_empty());
        assert_eq!(layers(&g), [vec!["c"], vec!["b"], vec!["a"]]);
        g.entry("c".into()).or_default().insert("a".into());
        let c = cycles(&g);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].len(), 3);
    }

    #[test]
    fn top_level_modules_form_no_circle() {
        let g = graph(&src()).expect("graph");
        assert!(g.len() >= 10, "{g:?}");
        let circles = cycles(&g);
        assert!(
            circles.is_empty(),
            "circles among monitor/src modules (`cargo xtask layout` draws them): {circles:?}"
        );
    }

    #[test]
    fn the_fleet_side_never_reaches_capture_or_kernel_types() {
        let g = graph(&src()).expect("graph");
        let reached = reached(&g, "fleet");
        for forbidden in ["capture", "flow", "judge", "state", "daemon", "publish"] {
            assert!(
                !reached.contains(forbidden),
                "fleet reaches {forbidden}: {reached:?}"
            );
        }
        for f in rust_files(&src().join("fleet")).expect("fleet files") {
            let code = std::fs::read_to_string(&f).expect("read");
            for kernel in ["monitor_common", "aya::"] {
                assert!(!code.contains(kernel), "{} uses {kernel}", f.display());
            }
        }
    }

    #[test]
    fn monitor_src_has_at_most_eight_loose_files() {
        let loose: Vec<String> = std::fs::read_dir(src())
            .expect("monitor/src")
            .filter_map(|e| {
                let p = e.ok()?.path();
                p.is_file()
                    .then(|| p.file_name()?.to_str().map(str::to_owned))?
            })
            .collect();
        assert!(loose.len() <= 8, "{loose:?}");
    }

    #[test]
    fn no_source_file_passes_600_lines() {
        for dir in ["monitor/src", "monitor-ebpf/src", "monitor-common/src"] {
            for f in rust_files(&root().join(dir)).expect("files") {
                let lines = std::fs::read_to_string(&f).expect("read").lines().count();
                assert!(lines <= 600, "{} has {lines} lines", f.display());
            }
        }
    }
}
