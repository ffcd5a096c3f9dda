//! The test command's preflight list (`scripts/test-all.sh`) names every program the tests
//! spawn and every Python module they import, so a fresh machine fails with one line naming
//! what is missing instead of a test panicking half-way. These tests read the sources and the
//! script and fail when a newly spawned program or imported module is not in the list.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lockbroker_tests::plugins::repo_root;

/// The entries of the bash array `name=( … )` in `scripts/test-all.sh`: the word before the
/// first `:` of each line (comments dropped, quotes removed).
fn preflight_list(name: &str) -> BTreeSet<String> {
    let script = std::fs::read_to_string(repo_root().join("scripts/test-all.sh"))
        .expect("read scripts/test-all.sh");
    let start = format!("{name}=(");
    let body = script
        .split_once(&start)
        .unwrap_or_else(|| panic!("scripts/test-all.sh has no `{start}`"))
        .1;
    let body = body.split_once("\n)").expect("the array is closed").0;
    body.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().trim_matches('"'))
        .filter(|l| !l.is_empty())
        .map(|l| l.split(':').next().unwrap_or(l).to_string())
        .collect()
}

/// Every `.rs` file of the workspace that a test run builds (build outputs left out).
fn rust_sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            if path.is_dir() {
                if name != "target" && name != ".git" && name != "corpus" && name != "artifacts" {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo_root(), &mut out);
    out
}

/// The programs a file spawns by name: a string literal given to `Command::new`, or a constant
/// so given whose `const NAME: &str` literal is in the same file.
fn spawned_programs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (_, rest) in text
        .match_indices("Command::new(")
        .map(|(i, _)| text.split_at(i + 13))
    {
        let arg = rest.split(')').next().unwrap_or("").trim();
        if let Some(lit) = arg.strip_prefix('"') {
            let lit = lit.trim_end_matches('"');
            if !lit.is_empty() {
                out.push(lit.to_string());
            }
        } else if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            let decl = format!("const {arg}: &str = \"");
            if let Some((_, after)) = text.split_once(&decl) {
                out.push(after.split('"').next().unwrap_or("").to_string());
            }
        }
    }
    out
}

/// The modules of `import a, b` at the start of a Rust string literal (the Python programs the
/// interop tests run).
fn python_imports(text: &str) -> Vec<String> {
    text.match_indices("\"import ")
        .flat_map(|(i, _)| {
            let line = text[i + 8..]
                .split(['\\', '"', '\n', ';'])
                .next()
                .unwrap_or("");
            line.split(',')
                .map(|m| m.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

/// What `scan` finds in every workspace source that `known` does not accept, as
/// "`name` (file)"; and how many it found in all.
fn unknown_in_sources(
    scan: fn(&str) -> Vec<String>,
    known: impl Fn(&str) -> bool,
) -> (BTreeSet<String>, usize) {
    let (mut unknown, mut seen) = (BTreeSet::new(), 0);
    for file in rust_sources() {
        let text = std::fs::read_to_string(&file).expect("read source");
        for name in scan(&text) {
            seen += 1;
            if !known(&name) {
                unknown.insert(format!("{name} ({})", file.display()));
            }
        }
    }
    (unknown, seen)
}

/// A user adding a test that spawns a new program must add it to the preflight list.
#[test]
fn every_spawned_program_is_in_the_preflight() {
    let listed = preflight_list("preflight_programs");
    let (unlisted, seen) = unknown_in_sources(spawned_programs, |program| {
        let bare = program.rsplit('/').next().unwrap_or(program);
        // Scripts of the repository itself (`plugins/build.sh`) run under bash.
        program == "bash"
            || program.ends_with(".sh")
            || listed
                .iter()
                .any(|l| l == program || l.rsplit('/').next() == Some(bare))
    });
    assert!(seen >= 5, "the scan found only {seen} spawned programs");
    assert!(
        unlisted.is_empty(),
        "spawned by tests but missing from preflight_programs in scripts/test-all.sh: {unlisted:?}"
    );
}

/// The same for the Python modules the interop tests import (the standard library aside).
#[test]
fn every_imported_python_module_is_in_the_preflight() {
    let listed = preflight_list("preflight_python");
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(' '.join(sys.stdlib_module_names))"])
        .output()
        .expect("run python3");
    let stdlib = String::from_utf8_lossy(&out.stdout).to_string();
    let stdlib: BTreeSet<&str> = stdlib.split_whitespace().collect();
    let (unlisted, seen) = unknown_in_sources(python_imports, |module| {
        stdlib.contains(module) || listed.contains(module)
    });
    assert!(seen >= 1, "the scan found no Python imports");
    assert!(
        unlisted.is_empty(),
        "imported by tests but missing from preflight_python in scripts/test-all.sh: {unlisted:?}"
    );
}

/// The scanners themselves, on text naming programs the list does not hold.
#[test]
fn the_scanners_see_literals_and_constants() {
    let text = "const TOOL: &str = \"/usr/bin/frob\";\nCommand::new(\"etcdctl\").arg(1);\n\
                Command::new(TOOL);\nCommand::new(program);\nlet p = \"import redis, sys\\n\";";
    assert_eq!(spawned_programs(text), ["etcdctl", "/usr/bin/frob"]);
    assert_eq!(python_imports(text), ["redis", "sys"]);
    assert!(!preflight_list("preflight_programs").contains("etcdctl"));
}
