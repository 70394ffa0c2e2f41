//! The shape of the source tree, checked: the module import graph has no cycle, and only
//! `clock.rs` reads the system time. `LBX_WRITE_DOCS_MODULES=1 cargo test --test it architecture`
//! redraws `docs/modules.md` from the imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from a file's path under `src/` (`store/sqlite/writer.rs` → `store::sqlite::writer`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and string literals (a path in a doc line is not an import).
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && !prev_ident(b, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // a char literal such as '"'
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn prev_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn ident_at(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    (end > 0).then(|| (&s[..end], &s[end..]))
}

/// Every module path a `crate::…` / `super::…` path in `code` names, as far as it names modules
/// (`crate::store::sqlite::SqliteStore` → `store::sqlite`), braces expanded.
fn named_paths(code: &str, here: &[String], modules: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    for (anchor, base) in [("crate::", Vec::new()), ("super::", here[..here.len().saturating_sub(1)].to_vec())] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let before = &rest[..at];
            rest = &rest[at + anchor.len()..];
            if before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            expand(rest, base.clone(), modules, &mut found);
        }
    }
    found
}

fn expand(s: &str, prefix: Vec<String>, modules: &BTreeSet<Vec<String>>, found: &mut BTreeSet<Vec<String>>) {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&inner[start..i], prefix.clone(), modules, found);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], prefix.clone(), modules, found);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let Some((name, after)) = ident_at(s) else {
        if !prefix.is_empty() {
            found.insert(prefix);
        }
        return;
    };
    let mut path = prefix.clone();
    path.push(name.to_string());
    if modules.contains(&path) {
        match after.strip_prefix("::") {
            Some(more) => expand(more, path, modules, found),
            None => {
                found.insert(path);
            }
        }
    } else if !prefix.is_empty() {
        found.insert(prefix);
    }
}

struct Graph {
    /// Module → the modules its code names.
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn read_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeSet::new();
    let mut code = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        if rel == Path::new("main.rs") || rel.starts_with("bin") {
            continue; // the binary is not a module of the library
        }
        let m = module_of(rel);
        modules.insert(m.clone());
        code.insert(m, code_only(&std::fs::read_to_string(f).unwrap()));
    }
    let mut edges = BTreeMap::new();
    for (m, c) in &code {
        let named = named_paths(c, m, &modules);
        edges.insert(m.clone(), named);
    }
    Graph { edges }
}

/// The graph at one depth: `depth` 1 is the crate's top modules; deeper levels add the child
/// modules of one parent, drawn among siblings only.
fn level_edges(graph: &Graph, parent: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let depth = parent.len() + 1;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &graph.edges {
        if from.len() < depth || from[..parent.len()] != *parent {
            continue;
        }
        let a = from[depth - 1].clone();
        out.entry(a.clone()).or_default();
        for to in tos {
            if to.len() < depth || to[..parent.len()] != *parent {
                continue;
            }
            let b = to[depth - 1].clone();
            if a != b {
                out.entry(a.clone()).or_default().insert(b);
            }
        }
    }
    out
}

/// Every cycle's modules (strongly connected components of more than one module), by Tarjan.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let edges = t.edges;
        for w in edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w.as_str()) {
                visit(t, w);
                let l = t.low[v].min(t.low[w.as_str()]);
                t.low.insert(v, l);
            } else if t.on.contains(w.as_str()) {
                let l = t.low[v].min(t.index[w.as_str()]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn parents(graph: &Graph) -> BTreeSet<Vec<String>> {
    let mut ps = BTreeSet::new();
    for m in graph.edges.keys() {
        for i in 0..m.len() {
            ps.insert(m[..i].to_vec());
        }
    }
    ps
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let graph = read_graph();
    assert!(graph.edges.len() > 20, "the source tree was read: {} modules", graph.edges.len());
    let mut found = Vec::new();
    for parent in parents(&graph) {
        let edges = level_edges(&graph, &parent);
        for cycle in cycles(&edges) {
            let at = if parent.is_empty() { "crate".to_string() } else { parent.join("::") };
            let arrows: Vec<String> = cycle
                .iter()
                .flat_map(|a| {
                    edges[a].iter().filter(|b| cycle.contains(b)).map(move |b| format!("{a} → {b}")).collect::<Vec<_>>()
                })
                .collect();
            found.push(format!("in {at}: {}", arrows.join(", ")));
        }
    }
    if std::env::var_os("LBX_WRITE_DOCS_MODULES").is_some() {
        write_drawing(&graph);
    }
    assert!(found.is_empty(), "module import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_and_ignores_paths_in_comments_and_strings() {
    let modules: BTreeSet<Vec<String>> =
        [vec!["a".to_string()], vec!["b".to_string()], vec!["b".to_string(), "c".to_string()]].into_iter().collect();
    let code =
        code_only("use crate::{b::c::{X, Y}, a};\n// crate::b\nlet s = \"crate::b\"; let c = '\"'; super::a::f();");
    let named = named_paths(&code, &["b".to_string(), "c".to_string()], &modules);
    let named: Vec<String> = named.iter().map(|p| p.join("::")).collect();
    assert_eq!(named, ["a", "b", "b::c"]);
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["c".to_string()].into()),
        ("c".to_string(), ["a".to_string()].into()),
        ("d".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(cycles(&edges), vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]);
}

#[test]
fn only_the_clock_reads_the_system_time() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if rel == "clock.rs" {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        for needle in ["SystemTime::now", "now_utc(", "now_local(", "Utc::now", "Local::now", "fn now_ms() ->"] {
            if code.contains(needle) {
                found.push(format!("{rel}: {needle}"));
            }
        }
    }
    assert!(found.is_empty(), "system time read outside clock.rs:\n{}", found.join("\n"));
}

/// `docs/modules.md`: the top-level import graph as a Mermaid drawing, and each parent's children.
fn write_drawing(graph: &Graph) {
    let mut out = String::from(
        "# Module imports\n\nDrawn from the `crate::` and `super::` paths in `src/` by \
         `tests/it/architecture.rs` (`LBX_WRITE_DOCS_MODULES=1 cargo test --test it architecture`), \
         which also fails on any cycle. An arrow is \"uses\".\n",
    );
    for parent in parents(graph) {
        let edges = level_edges(graph, &parent);
        if edges.len() < 2 || edges.values().all(BTreeSet::is_empty) {
            continue;
        }
        let title = if parent.is_empty() { "The crate".to_string() } else { format!("Inside `{}`", parent.join("::")) };
        out.push_str(&format!("\n## {title}\n\n```mermaid\ngraph LR\n"));
        for (a, bs) in &edges {
            if bs.is_empty() {
                out.push_str(&format!("  {a}\n"));
            }
            for b in bs {
                out.push_str(&format!("  {a} --> {b}\n"));
            }
        }
        out.push_str("```\n");
    }
    std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/modules.md"), out).unwrap();
}
