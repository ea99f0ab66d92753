//! The code's shape, checked: no module of any crate imports, directly or through other
//! modules, one that imports it back. A module's imports are the `crate::name` paths in
//! its files (outside `#[cfg(test)]`), `crate::{a, b}` groups, and names the crate root
//! re-exports from a module (`pub use module::{Name}`), which count as that module.
//! And no function outside tests is longer than a screen ([`MAX_FN_LINES`]) unless the
//! comment above it says why ("Long on purpose").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level module a source file belongs to (`src/ops/exec.rs` → `ops`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let first = rel.components().next()?.as_os_str().to_string_lossy().to_string();
    (first != "lib" && first != "main" && first != "bin").then_some(first)
}

/// Identifiers at the start of each `crate::` path in `text`, braces expanded.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(group.split(',').map(|item| ident(item.trim())).filter(|s| !s.is_empty() && s != "self"));
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// `pub use module::{A, B}` and `pub use module::A;` in a crate root: name → module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in lib.lines().filter_map(|l| l.trim().strip_prefix("pub use ")) {
        let Some((module, items)) = line.split_once("::") else { continue };
        let items = items.trim_end_matches(';').trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',').map(|i| i.trim().rsplit(" as ").next().unwrap_or("").trim()).filter(|i| !i.is_empty()) {
            out.insert(item.to_string(), module.to_string());
        }
    }
    out
}

/// Each module's imports of the crate's other modules.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let reexported = reexports(&lib);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(src).into_iter().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "rs")) {
        let Some(module) = module_of(src, e.path()) else { continue };
        let text = std::fs::read_to_string(e.path()).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let code: String = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let deps = g.entry(module.clone()).or_default();
        for name in crate_paths(&code) {
            let target = reexported.get(&name).cloned().unwrap_or(name);
            if target != module {
                deps.insert(target);
            }
        }
    }
    let modules: BTreeSet<String> = g.keys().cloned().collect();
    for deps in g.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    g
}

/// A cycle through `start`, if there is one.
fn cycle_through(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in g.get(&at).into_iter().flatten() {
            if next == start {
                return Some([path.clone(), vec![start.to_string()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

fn crates() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| p.join("lib.rs").exists() && !p.starts_with(root.join("fuzz")))
        .collect();
    out.sort();
    out
}

/// About 80 lines: what can be read at once.
const MAX_FN_LINES: usize = 85;

/// Functions of rustfmt-formatted `code` longer than [`MAX_FN_LINES`] whose comments do
/// not say "Long on purpose": (first line, length, signature). A function ends at the
/// first `}` at its own indentation.
fn long_functions(code: &str) -> Vec<(usize, usize, String)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let head = ["pub(crate) ", "pub ", "const ", "async ", "unsafe "].iter().fold(body, |b, p| b.strip_prefix(p).unwrap_or(b));
        if !head.starts_with("fn ") || line.trim_end().ends_with(';') {
            continue;
        }
        let close = format!("{}}}", &line[..line.len() - body.len()]);
        let Some(end) = lines[i..].iter().position(|l| l.trim_end() == close) else { continue };
        let above = lines[..i].iter().rev().take_while(|l| l.trim_start().starts_with("//") || l.trim_start().starts_with("#["));
        if end + 1 > MAX_FN_LINES && !above.into_iter().any(|l| l.contains("Long on purpose")) {
            out.push((i + 1, end + 1, body.to_string()));
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_a_screen_without_a_reason() {
    let mut long = Vec::new();
    for src in crates() {
        for e in walkdir::WalkDir::new(&src).into_iter().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "rs")) {
            let text = std::fs::read_to_string(e.path()).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (line, len, sig) in long_functions(code) {
                long.push(format!("{}:{line}: {len} lines: {sig}", e.path().display()));
            }
        }
    }
    assert!(long.is_empty(), "functions over {MAX_FN_LINES} lines with no reason written above them:\n{}", long.join("\n"));
}

#[test]
fn the_length_check_sees_long_functions_and_reasons() {
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
    let code = format!("impl A {{\n    pub fn long(&self) {{\n{body}    }}\n    fn short() {{}}\n}}\n");
    let found = long_functions(&code);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (2, MAX_FN_LINES + 2));
    let reasoned = code.replace("    pub fn long", "    /// Long on purpose: one arm per operator.\n    #[inline]\n    pub fn long");
    assert!(long_functions(&reasoned).is_empty());
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let crates = crates();
    assert!(crates.len() >= 10, "found the crates: {crates:?}");
    let mut cycles = Vec::new();
    for src in &crates {
        let g = graph(src);
        for m in g.keys() {
            if let Some(c) = cycle_through(&g, m) {
                cycles.push(format!("{}: {}", src.parent().unwrap().file_name().unwrap().to_string_lossy(), c.join(" → ")));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_cycles_through_braces_and_reexports() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\npub use b::Thing;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::Thing;\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::{a, Other};\npub struct Thing;\n").unwrap();
    let g = graph(src);
    assert!(cycle_through(&g, "a").is_some(), "{g:?}");
    std::fs::write(src.join("b.rs"), "// use crate::a;\npub struct Thing;\n#[cfg(test)]\nmod t { use crate::a; }\n").unwrap();
    assert!(cycle_through(&graph(src), "a").is_none(), "comments and tests do not count");
}
