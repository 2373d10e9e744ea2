//! The layering rules, checked by reading the sources: a test, so `make test` fails on a change that breaks
//! them.
//!
//! - Layers, top to bottom: `lib.rs`, `host`, `proto`, `engine`, `catalog`, `duck`, then the leaves `alloc`
//!   and `panic`. A module names (`crate::...`, `super::...`) only modules of its own layer or of layers below.
//! - No import cycles between modules (a file is a module; a folder's `mod.rs` is the folder's module).
//! - The protocol adapters (`proto`) never use DuckDB: neither `crate::duck` nor the `duckdb` or
//!   `libduckdb_sys` crates.
//! - `unsafe` appears only in `duck` and `alloc`.
//!
//! Test modules (`#[cfg(test)] mod tests`) are left out: they may build what they test from any layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the top; a module may use its own layer and those after it.
const LAYERS: [&str; 8] = ["lib", "host", "proto", "engine", "catalog", "duck", "alloc", "panic"];

/// This file speaks of what it forbids; it is not checked.
const SELF: &str = "layering";

struct Source {
    module: String,
    text: String,
}

fn rank(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or(module);
    match top {
        "alloc" | "panic" => 6,
        other => LAYERS.iter().position(|l| *l == other).unwrap_or_else(|| panic!("module {module} is in no layer")),
    }
}

fn module_of(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments, string and char literals (their text becomes spaces), cut before its
/// test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
            i += end;
            out.push(' ');
        } else if rest.starts_with("r\"") || rest.starts_with("r#\"") {
            let hashes = rest[1..].chars().take_while(|c| *c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            let end = rest[body..].find(&close).map_or(rest.len(), |e| body + e + close.len());
            i += end;
            out.push_str("\"\"");
        } else if bytes[i] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            i = (j + 1).min(bytes.len());
            out.push_str("\"\"");
        } else if bytes[i] == b'\'' && rest.len() >= 3 && (rest.as_bytes()[2] == b'\'' || rest.starts_with("'\\")) {
            // A char literal ('x' or '\n'); a lifetime has no closing quote right after one character.
            let end = rest[1..].find('\'').map_or(1, |e| e + 2);
            i += end;
            out.push_str("' '");
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn sources() -> Vec<Source> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| Source { module: module_of(&root, &p), text: std::fs::read_to_string(&p).unwrap() })
        .filter(|s| s.module != SELF)
        .map(|s| Source { module: if s.module == "lib" { "lib".into() } else { s.module }, text: s.text })
        .collect()
}

/// Whether `word` occurs in `code` as a whole identifier.
fn has_word(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

/// The modules a module's code names: `crate::a::b` (the deepest existing module of the path) and `super::x`.
fn references(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let resolve = |mut parts: Vec<String>| -> Option<String> {
        while !parts.is_empty() {
            let candidate = parts.join("::");
            if known.contains(&candidate) {
                return Some(candidate);
            }
            parts.pop();
        }
        None
    };
    let path_at = |at: usize| -> Vec<String> {
        code[at..]
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .next()
            .unwrap_or("")
            .split("::")
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with('$') || code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let parts: Vec<String> = path_at(at + "crate::".len());
        // `use crate::x::{a, b}`: the braces name items or modules of `x`.
        let braced = code[at..].split([';', '\n']).next().unwrap_or("");
        if let Some(open) = braced.find('{') {
            let base = path_at(at + "crate::".len());
            for item in braced[open + 1..].trim_end_matches('}').split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim().to_string();
                let mut p = base.clone();
                p.push(name);
                if let Some(m) = resolve(p) {
                    out.insert(m);
                }
            }
        }
        if let Some(m) = resolve(parts) {
            out.insert(m);
        }
    }
    let parent: Vec<String> = module.split("::").map(str::to_string).collect();
    for (at, _) in code.match_indices("super::") {
        if code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut p: Vec<String> = parent[..parent.len().saturating_sub(1)].to_vec();
        p.extend(path_at(at + "super::".len()));
        if let Some(m) = resolve(p) {
            out.insert(m);
        }
    }
    out.remove(module);
    out
}

fn graph() -> (Vec<Source>, BTreeMap<String, BTreeSet<String>>) {
    let sources = sources();
    let known: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    let edges = sources.iter().map(|s| (s.module.clone(), references(&s.module, &code_of(&s.text), &known))).collect();
    (sources, edges)
}

#[test]
fn imports_go_down_the_layers() {
    let (_, edges) = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            if rank(to) < rank(from) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that go up a layer: {wrong:#?}");
}

#[test]
fn no_module_imports_in_a_circle() {
    let (_, edges) = graph();
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(1) => {
                let start = path.iter().position(|p| p == m).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for to in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(to, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
            panic!("an import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn protocol_adapters_never_touch_duckdb() {
    let (sources, edges) = graph();
    for s in sources.iter().filter(|s| s.module.starts_with("proto")) {
        let code = code_of(&s.text);
        for word in ["duckdb", "libduckdb_sys"] {
            assert!(!has_word(&code, word), "{} uses the {word} crate", s.module);
        }
        let duck: Vec<_> = edges[&s.module].iter().filter(|m| m.starts_with("duck")).collect();
        assert!(duck.is_empty(), "{} uses {duck:?}", s.module);
    }
}

#[test]
fn unsafe_lives_only_in_duck_and_alloc() {
    for s in sources() {
        let allowed = s.module == "alloc" || s.module == "duck" || s.module.starts_with("duck::");
        if !allowed {
            assert!(!has_word(&code_of(&s.text), "unsafe"), "{} has unsafe code", s.module);
        }
    }
}

#[test]
fn the_checks_see_what_they_should() {
    let known: BTreeSet<String> =
        ["engine", "engine::core", "engine::session", "duck", "duck::conn"].map(String::from).into();
    let code = code_of(
        "use crate::engine::{core::Core, session};\nuse super::conn::RawConn; // crate::duck\nlet s = \"crate::x\";",
    );
    let refs = references("duck::scan", &code, &known);
    assert_eq!(refs, ["duck::conn", "engine", "engine::core", "engine::session"].map(String::from).into());
    assert!(has_word("unsafe { x }", "unsafe") && !has_word("deny(unsafe_code)", "unsafe"));
    assert!(!has_word(&code_of("// unsafe\nlet a = \"unsafe\";"), "unsafe"));
    assert_eq!(rank("engine::ingest"), 3);
    assert!(rank("proto::flight") < rank("engine::core") && rank("duck::conn") < rank("alloc"));
}

#[test]
fn statements_from_the_network_are_read_in_one_place() {
    // DuckDB's parse of a client's statement is read by the statement checks only: the policy and the writer's
    // side of remote statements (duck_session::remote), never by landing, keys or the protocol adapters.
    let (_, edges) = graph();
    let readers: Vec<&str> =
        edges.iter().filter(|(_, to)| to.contains("engine::sql_tree")).map(|(m, _)| m.as_str()).collect();
    assert_eq!(readers, ["engine::duck_session::remote", "engine::policy"]);
}
