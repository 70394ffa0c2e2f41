//! Embeds the shipped configuration (routes.toml, examples/, templates/, contracts/, and the
//! connector docs) in the
//! binary, so `lbx-relay init` writes a working setup wherever the binary alone was copied.

use std::fmt::Write as _;
use std::path::Path;

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk(&p, out);
        } else if let Some(s) = p.to_str() {
            out.push(s.replace('\\', "/"));
        }
    }
}

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&root);
    let mut files = vec!["routes.toml".to_string()];
    for dir in ["examples", "templates", "contracts", "docs/connectors"] {
        println!("cargo:rerun-if-changed={dir}");
        let mut found = Vec::new();
        walk(&root.join(dir), &mut found);
        let prefix = format!("{}/", root.display());
        files.extend(found.into_iter().map(|f| f.trim_start_matches(&prefix).to_string()));
    }
    println!("cargo:rerun-if-changed=routes.toml");
    let mut code = String::from("/// The shipped configuration files: (path from the repository root, content).\npub static FILES: &[(&str, &str)] = &[\n");
    for f in &files {
        let abs = root.join(f);
        let _ = writeln!(code, "    ({f:?}, include_str!({:?})),", abs.display().to_string());
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("embedded.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
