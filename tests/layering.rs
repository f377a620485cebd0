//! The modules of `src/` form levels, and a level only reaches down.
//!
//! ARCHITECTURE.md draws the levels; this test holds the code to the
//! drawing. Every `crate::<module>` path outside a module's unit tests must
//! name a module listed *after* it in [`LEVELS`]: no circle, no call back up
//! (an mcentral that takes the heap, a heap that takes the global
//! allocator). A new module must be placed in the list.

use std::collections::BTreeSet;
use std::path::Path;

/// Top to bottom. A module may use only those below it.
const LEVELS: &[&str] = &[
    "lib",        // the public surface
    "global",     // the #[global_allocator]
    "raw",        // the C entry points' core
    "stack",      // coroutine stacks (registers thread hooks)
    "thread",     // the calling thread's cache, exit and fork
    "scavenger",  // the global heap's background releaser
    "audit",      // whole-heap consistency checks
    "mcache",     // per-thread small objects
    "largecache", // per-thread large spans
    "profile",    // sampling, stack walks, pprof
    "index",      // process-wide cache indices
    "heap",       // what the caches share: mcentrals + mheap
    "mcentral",   // per-class span lists
    "mheap",      // pages and spans
    "fixalloc",   // span records
    "arena",      // address space and side tables
    "mspan",      // one span's state
    "stats",      // counters
    "report",     // misuse reports
    "sizeclass",  // the class table
    "sync",       // locks and modelled atomics
    "os",         // system calls
];

/// The module's text without its unit tests and line comments.
fn production_text(text: &str) -> String {
    let end = ["#[cfg(test)]\nmod tests", "#[cfg(all(test, not(loom)))]\nmod tests"]
        .iter()
        .filter_map(|marker| text.find(marker))
        .min()
        .unwrap_or(text.len());
    text[..end].lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The module names a text reaches through `crate::`.
fn references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        found.insert(name);
    }
    found
}

/// Every module of `src/` (a file, or a directory of files) and its text.
fn modules() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = if path.is_dir() {
            let mut text = String::new();
            for file in std::fs::read_dir(&path).unwrap() {
                let file = file.unwrap().path();
                if file.extension().is_some_and(|e| e == "rs") {
                    text += &production_text(&std::fs::read_to_string(file).unwrap());
                }
            }
            text
        } else if path.extension().is_some_and(|e| e == "rs") {
            production_text(&std::fs::read_to_string(&path).unwrap())
        } else {
            continue;
        };
        out.push((name, text));
    }
    out
}

#[test]
fn every_module_reaches_only_below_itself() {
    let level = |name: &str| LEVELS.iter().position(|l| *l == name);
    let mut wrong = Vec::new();
    for (name, text) in modules() {
        let Some(mine) = level(&name) else {
            wrong.push(format!("src/{name} is not placed in LEVELS"));
            continue;
        };
        for used in references(&text) {
            // Items re-exported at the crate root (`crate::release`) are not modules.
            if let Some(theirs) = level(&used)
                && theirs <= mine
                && used != name
            {
                wrong.push(format!("{name} uses {used}, which is not below it"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_an_upward_reference() {
    let text = production_text(
        "use crate::heap::Heap;\n// crate::global in a comment\n#[cfg(test)]\nmod tests { use crate::thread; }",
    );
    assert_eq!(references(&text), BTreeSet::from(["heap".to_string()]));
}
