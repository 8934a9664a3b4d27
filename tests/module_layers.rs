//! The top-level modules of `src/` form layers: domain ← db ← actors ← (chat pipeline,
//! providers) ← ws/http ← startup. This reads every source file, builds the graph of
//! `crate::<module>` references between top-level modules, and fails on any cycle or on an
//! arrow that points up the table below, so a new `use` that tangles the layers is caught
//! by `cargo test` rather than by the next person who tries to move a module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module with its layer; a module may use only modules of its own layer or
/// lower ones (and, within a layer, the graph must still be acyclic).
const LAYERS: &[(&str, u32)] = &[
    // Foundations: no I/O policy, usable from anywhere.
    ("domain", 0),
    ("error", 0),
    ("logging", 0),
    ("memory", 0),
    ("config", 1),
    ("db", 2),
    ("cluster", 2),
    ("auth", 2),
    ("actors", 3),
    ("chat", 4),
    ("providers", 4),
    ("app_state", 5),
    ("ws", 6),
    ("http", 7),
    ("startup", 8),
    // Clients of the running server, built on all of the above.
    ("loadtest", 9),
    ("cli", 10),
];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file relative to `src/`: `src/ws/chat_socket.rs` → `["ws",
/// "chat_socket"]`, `src/actors/mod.rs` → `["actors"]`, `src/lib.rs` → `[]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// Drops `//` comments (doc comments included), so prose naming a module is not an edge.
fn strip_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first segment of every item in a `{a, b::c, d::{e, f}}` group (text after the `{`).
fn group_heads(text: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 0 => {
                item_start = false;
                let ident = ident_at(&text[at..]);
                if !ident.is_empty() {
                    heads.push(ident.to_string());
                }
            }
            _ => {}
        }
    }
    heads
}

/// Top-level modules a file names, through `crate::x`, `crate::{x, y}` and `super::…` paths
/// that climb to the crate root.
fn referenced_tops(source: &str, own_path: &[String]) -> BTreeSet<String> {
    let source = strip_comments(source);
    let mut found = BTreeSet::new();
    let bytes = source.as_bytes();
    let mut at = 0;
    while at < source.len() {
        let rest = &source[at..];
        let boundary = at == 0
            || !(bytes[at - 1].is_ascii_alphanumeric()
                || bytes[at - 1] == b'_'
                || bytes[at - 1] == b':');
        if boundary && rest.starts_with("crate::") {
            let after = &rest["crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                found.extend(group_heads(group));
            } else {
                found.insert(ident_at(after).to_string());
            }
            at += "crate::".len();
            continue;
        }
        if boundary && rest.starts_with("super::") {
            let mut climbs = 0;
            let mut tail = rest;
            while let Some(next) = tail.strip_prefix("super::") {
                climbs += 1;
                tail = next;
            }
            // Inline `mod tests` blocks add a level we cannot see from the path; a `super`
            // that would climb past the root is one of those and stays in its own module.
            if climbs == own_path.len() {
                if let Some(group) = tail.strip_prefix('{') {
                    found.extend(group_heads(group));
                } else {
                    found.insert(ident_at(tail).to_string());
                }
            }
            at += "super::".len() * climbs;
            continue;
        }
        at += rest.chars().next().map_or(1, char::len_utf8);
    }
    found
}

fn crate_graph(src: &Path) -> Graph {
    let tops: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("file under src");
        let path = module_path(relative);
        let Some(own) = path.first() else { continue };
        let source = std::fs::read_to_string(&file).expect("read source");
        for target in referenced_tops(&source, &path) {
            if &target != own && tops.contains(&target) {
                graph
                    .entry(own.clone())
                    .or_default()
                    .entry(target)
                    .or_default()
                    .insert(relative.display().to_string());
            }
        }
    }
    graph
}

/// One cycle of the graph if it has any, as `a → b → … → a`.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|edges| edges.keys()) {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn describe(graph: &Graph, from: &str, to: &str) -> String {
    let files = graph[from][to]
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    format!("{from} → {to} (in {files})")
}

#[test]
fn top_level_modules_have_no_cycle() {
    let graph = crate_graph(&src_dir());
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|pair| describe(&graph, &pair[0], &pair[1]))
            .collect();
        panic!(
            "module cycle {}:\n  {}",
            cycle.join(" → "),
            steps.join("\n  ")
        );
    }
}

#[test]
fn no_module_uses_a_higher_layer() {
    let graph = crate_graph(&src_dir());
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut upward = Vec::new();
    for (from, edges) in &graph {
        for to in edges.keys() {
            match (layer.get(from.as_str()), layer.get(to.as_str())) {
                (Some(low), Some(high)) if low < high => upward.push(describe(&graph, from, to)),
                (None, _) => upward.push(format!("{from} has no layer in LAYERS")),
                _ => {}
            }
        }
    }
    assert!(
        upward.is_empty(),
        "arrows pointing up the layers:\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn every_top_level_module_has_a_layer() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("read lib.rs");
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    let tabled: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(
        declared, tabled,
        "src/lib.rs modules and the LAYERS table differ"
    );
}

#[test]
fn references_are_found_in_every_form() {
    let source = r#"
        use crate::alpha::Thing;
        use crate::{beta, gamma::{One, Two}, delta::*};
        // use crate::commented;
        fn f() { crate::epsilon::call(); notcrate::zeta(); }
        use super::eta::X;
    "#;
    let found = referenced_tops(source, &["own".to_string()]);
    let expected: BTreeSet<String> = ["alpha", "beta", "gamma", "delta", "epsilon", "eta"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
    // From src/own/inner.rs, `super::` is `own` itself, not the crate root.
    let nested = referenced_tops("use super::theta;", &["own".into(), "inner".into()]);
    assert!(nested.is_empty(), "{nested:?}");
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .insert("x.rs".into());
    }
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    graph.get_mut("c").map(|edges| edges.remove("a"));
    assert_eq!(find_cycle(&graph), None);
}
