//! The crate's layers run one way: a module may import from a lower layer, or
//! from an earlier entry of its own layer, never upward. Fails on any
//! `crate::…` path (in `use` lines or inline) that points the wrong way.

use std::path::Path;

/// Top-level modules, lowest first; a module may use those before it.
const ORDER: &[&str] = &[
    "names",
    "backoff",
    "secret",
    "tls",
    "metrics",
    "config", // leaves
    "etcd",
    "pgbackrest",
    "patroni",
    "docker", // adapters
    "cell",
    "router",
    "backup",
    "broker", // logic
    "actors",
    "http",
    "daemon",
    "ops",
    "cli",
];

fn rank(module: &str) -> Option<usize> {
    ORDER.iter().position(|m| *m == module)
}

/// The top-level modules a source text names through `crate::`.
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e}}`: the first identifier of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[j..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        let id: String = group[j..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        out.push(id);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn imports_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut wrong = vec![];
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_str().unwrap().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = rank(&top) else {
            wrong.push(format!("{}: module {top} is not in the layer list (tests/layers.rs)", rel.display()));
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for used in crate_refs(&text) {
            match rank(&used) {
                Some(r) if r <= own => {}
                Some(_) => wrong.push(format!("{}: {top} uses {used}, a higher layer", rel.display())),
                None => {} // a crate-root item such as a macro
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn the_parser_sees_grouped_and_inline_paths() {
    let refs = crate_refs("use crate::{etcd::keys, http::{self, x}};\nlet a = crate::actors::y();");
    assert_eq!(refs, ["etcd", "http", "actors"]);
}
