//! `libspanalloc.so` from the outside: C and C++ programs (in `tests/c/`)
//! built here with the system compiler and run with and without
//! `LD_PRELOAD`. glibc is the reference: every conformance program must pass
//! under both. The preload is set on each child command only.

use std::path::{Path, PathBuf};

// This test binary is itself a Rust program on spanalloc: see
// `a_rust_program_using_spanalloc_exports_no_malloc`.
#[global_allocator]
static A: spanalloc_core::SpanAlloc = spanalloc_core::SpanAlloc;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The library as users build it (`--release`), built once per test run.
/// Cargo does not build a `cdylib` for a package's own integration tests,
/// so the test asks for it, in a target directory of its own so that it
/// never waits for the lock of the `cargo test` that runs it.
fn library() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target = root.join("target/capi-test");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "spanalloc-c", "--target-dir"])
            .arg(&target)
            .current_dir(root)
            .env_remove("LD_PRELOAD")
            .status()
            .expect("running cargo");
        assert!(status.success(), "building libspanalloc.so failed");
        let lib = target.join("release/libspanalloc.so");
        assert!(lib.exists(), "{} not built", lib.display());
        lib
    })
    .clone()
}

fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(name)
}

/// Compiles `tests/c/<src>` with `compiler` and `flags` into the test's
/// scratch directory.
fn build(src: &str, compiler: &str, flags: &[&str]) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(src.replace('.', "_"));
    let status = Command::new(compiler)
        .args(["-O2", "-g", "-pthread", "-o"])
        .arg(&out)
        .arg(source(src))
        .args(flags)
        .status()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(status.success(), "{compiler} failed on {src}");
    out
}

/// Runs `prog args`, under the preload if `preload`, with `env` added.
fn run(prog: &Path, args: &[&str], preload: bool, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(prog);
    cmd.args(args).env_remove("LD_PRELOAD");
    if preload {
        cmd.env("LD_PRELOAD", library());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Runs a conformance program and checks its "N passed, 0 failed" line.
fn conformance(prog: &Path, preload: bool) -> usize {
    let o = run(prog, &[], preload, &[]);
    let (out, err) = text(&o);
    let who = if preload { "libspanalloc.so" } else { "glibc" };
    assert!(o.status.success(), "{} under {who}: {}\n{out}\n{err}", prog.display(), o.status);
    let line = out.lines().rev().find(|l| l.ends_with(" failed")).expect("no summary line");
    let passed: usize = line.split(' ').next().unwrap().parse().unwrap();
    assert!(line.ends_with(" 0 failed"), "{who}: {line}");
    println!("{who}: {line}");
    passed
}

/// The value printed after `key` in `out`.
fn value(out: &str, key: &str) -> Option<usize> {
    out.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().parse().unwrap())
}

#[test]
fn c_conformance_passes_under_glibc_and_under_spanalloc() {
    let prog = build("conformance.c", "cc", &["-fno-builtin", "-Wno-alloc-size-larger-than", "-ldl"]);
    let glibc = conformance(&prog, false);
    let ours = conformance(&prog, true);
    // The preload also has free_sized, free_aligned_sized, cfree and
    // __posix_memalign, which glibc 2.36 does not export.
    assert!(ours >= glibc, "fewer checks ran under the preload ({ours} < {glibc})");
}

#[test]
fn cxx_operators_pass_under_glibc_and_under_spanalloc() {
    let prog = build("conformance_cxx.cc", "c++", &["-std=c++17", "-fsized-deallocation"]);
    conformance(&prog, false);
    conformance(&prog, true);
}

#[test]
fn dlopen_of_modules_with_tls_does_not_reenter_malloc() {
    let module = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tlsmod.so");
    let status = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&module)
        .arg(source("tlsmod.c"))
        .status()
        .unwrap();
    assert!(status.success());
    let prog = build("tls_dlopen.c", "cc", &["-ldl"]);
    for preload in [false, true] {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tlsmods-{preload}"));
        std::fs::create_dir_all(&dir).unwrap();
        let o = run(&prog, &[module.to_str().unwrap(), dir.to_str().unwrap(), "64", "4", "3"], preload, &[]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "preload {preload}: {}\n{out}\n{err}", o.status);
        assert!(out.contains("tls_dlopen: ok"), "{out}");
        if preload {
            // glibc grows the old threads' TLS vectors (and frees stale
            // entries) lazily, from inside `__tls_get_addr`, with malloc.
            // spanalloc reaches its thread state in the initial-exec model,
            // with no such call, so none of those mallocs comes from inside
            // one of its own: no call arrives nested.
            let nested = value(&out, "nested calls:").expect("no nested count");
            assert_eq!(nested, 0, "a malloc re-entered spanalloc from inside itself\n{out}");
        }
    }
}

#[test]
fn signal_handlers_that_allocate_while_the_thread_allocates() {
    let prog = build("signal_malloc.c", "cc", &["-ldl"]);
    for _ in 0..2 {
        let o = run(&prog, &["2"], true, &[]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{}\n{out}\n{err}", o.status);
        assert!(out.contains("signal_malloc: ok"), "{out}");
        assert!(value(&out, "handler runs:").unwrap() > 0);
    }
}

#[test]
fn foreign_pointers_abort_with_a_report_by_default() {
    let prog = build("foreign.c", "cc", &["-ldl"]);
    let o = run(&prog, &["all"], false, &[]);
    assert!(o.status.success(), "glibc alone: {:?}", text(&o));
    for what in ["free", "realloc", "usable"] {
        let o = run(&prog, &[what], true, &[]);
        let (out, err) = text(&o);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(libc::SIGABRT), "{what}: {}\n{out}\n{err}", o.status);
        assert!(err.contains("spanalloc: fatal: free of 0x"), "{what}: {err}");
        assert!(err.contains("spanalloc did not allocate this pointer"), "{what}: {err}");
    }
}

#[test]
fn foreign_pointers_go_to_glibc_when_asked() {
    let prog = build("foreign.c", "cc", &["-ldl"]);
    let o = run(&prog, &["all"], true, &[("SPANALLOC_FOREIGN_FREE", "glibc")]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{}\n{out}\n{err}", o.status);
    assert!(out.contains("foreign: ok"), "{out}");
}

/// Defined dynamic symbols of an ELF file.
fn defined_symbols(path: &Path) -> Vec<String> {
    let o = Command::new("nm").args(["-D", "--defined-only"]).arg(path).output().expect("nm");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.split_whitespace().nth(2)).map(str::to_owned).collect()
}

const EXPORTS: &[&str] = &[
    "malloc",
    "free",
    "calloc",
    "realloc",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "malloc_usable_size",
    "cfree",
    "malloc_trim",
    "free_sized",
    "free_aligned_sized",
    "__libc_malloc",
    "__libc_calloc",
    "__libc_realloc",
    "__libc_free",
    "__libc_memalign",
    "__libc_valloc",
    "__libc_pvalloc",
    "__posix_memalign",
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
    "_ZdlPv",
    "_ZdaPv",
    "_ZdlPvm",
    "_ZdaPvm",
    "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t",
    "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
];

#[test]
fn the_library_exports_the_whole_malloc_family_and_nothing_else_of_ours() {
    let syms = defined_symbols(&library());
    for name in EXPORTS {
        assert!(syms.iter().any(|s| s == name), "{name} is not exported");
    }
    let extra: Vec<_> =
        syms.iter().filter(|s| !EXPORTS.contains(&s.as_str()) && s.as_str() != "spanalloc_nested_calls").collect();
    assert!(extra.is_empty(), "unexpected exports: {extra:?}");
}

#[test]
fn a_rust_program_using_spanalloc_exports_no_malloc() {
    // This test binary uses the `spanalloc` crate as its global allocator;
    // the crate must not define the C names (only libspanalloc.so does).
    let syms = defined_symbols(&std::env::current_exe().unwrap());
    for name in EXPORTS {
        assert!(!syms.iter().any(|s| s == name), "the spanalloc crate exports {name}");
    }
}
