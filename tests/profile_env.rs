//! `SPANALLOC` from the environment, in child processes (the variable is
//! read once per process): good settings apply, malformed ones warn in one
//! line on stderr and are ignored, and the profile named by `profile_path`
//! is written. Also the main thread's stack bounds, which take a path of
//! their own.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

mod support;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use spanalloc::profile::{self, env};
use support::printed;

const CASE_VAR: &str = "SPANALLOC_PROFILE_ENV_CASE";

/// What the main thread found before `main`: its bounds held its stack
/// pointer (1) or not (2), their size, and the frames a walk found.
static MAIN_BOUNDS: [AtomicUsize; 3] = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];

/// Runs on the main thread before `main` (the test harness runs tests on
/// threads of its own).
extern "C" fn main_thread_probe() {
    let here = 0u8;
    let sp = &here as *const u8 as usize;
    if let Some(b) = profile::thread_stack_bounds() {
        MAIN_BOUNDS[0].store(if b.contains(sp) { 1 } else { 2 }, Ordering::SeqCst);
        MAIN_BOUNDS[1].store(b.high - b.low, Ordering::SeqCst);
        let mut frames = [0usize; 8];
        MAIN_BOUNDS[2].store(profile::walk(b, 0, &mut frames), Ordering::SeqCst);
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static PROBE: extern "C" fn() = main_thread_probe;

fn child(case: &str, setting: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CASE_VAR, case)
        .env("SPANALLOC", setting)
        .output()
        .expect("run the test binary as a child")
}

#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    match case.as_str() {
        "show" => {
            let c = env::config();
            profile::apply_env();
            let path = c.profile_path().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
            println!(
                "\nconfig={:?},{path},{},{:?},rate={}",
                c.profile_rate,
                c.stats_at_exit,
                c.decay_ms,
                profile::rate()
            );
            println!("\nwritten={}", profile::write_configured_profile().unwrap());
        }
        "bounds" => {
            // From a thread std starts and, in a process of its own, from
            // the main thread (the only one when a test runs alone).
            let here = 0u8;
            let sp = &here as *const u8 as usize;
            let b = profile::thread_stack_bounds().expect("bounds");
            // SAFETY: getpid/gettid have no preconditions.
            let main = unsafe { libc::getpid() as i64 == libc::syscall(libc::SYS_gettid) };
            println!("\nbounds={},{},{}", b.contains(sp), b.high - b.low, main);
        }
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn good_settings_apply_and_the_profile_is_written_at_the_path() {
    let path = std::env::temp_dir().join(format!("spanalloc-env-{}.pb.gz", std::process::id()));
    let setting = format!("profile_rate=4k,profile_path={},stats_at_exit=1,decay_ms=250", path.display());
    let out = child("show", &setting);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(printed(&out, "config="), format!("Some(4096),{},true,Some(250),rate=4096", path.display()));
    assert_eq!(printed(&out, "written="), "true");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("spanalloc:"), "no warning");
    let gz = std::fs::read(&path).unwrap();
    let raw = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
    assert!(raw.status.success() && gz.len() > 20);
    let d = profile::decode::decode(&raw.stdout).unwrap();
    assert_eq!(d.period, 4096);
    std::fs::remove_file(path).ok();
}

#[test]
fn malformed_settings_warn_once_each_and_are_ignored() {
    let out = child("show", "bogus=1,profile_rate=abc,decay_ms,stats_at_exit=1,profile_rate=99999999999999999999999,");
    assert!(out.status.success(), "never a crash: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(printed(&out, "config="), "None,,true,None,rate=0");
    assert_eq!(printed(&out, "written="), "false");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("spanalloc: ")).collect();
    assert_eq!(warnings.len(), 4, "{stderr}");
    assert!(warnings[0].contains("unknown key") && warnings[0].contains("'bogus=1'"), "{stderr}");
    assert!(warnings[1].contains("not a number") && warnings[1].contains("'profile_rate=abc'"), "{stderr}");
    assert!(warnings[2].contains("no '='"), "{stderr}");
    assert!(warnings[3].contains("64 bits"), "{stderr}");
}

#[test]
fn unset_and_empty_mean_defaults() {
    for setting in ["", ","] {
        let out = child("show", setting);
        assert!(out.status.success());
        assert_eq!(printed(&out, "config="), "None,,false,None,rate=0");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("spanalloc:"));
    }
}

#[test]
fn the_main_threads_bounds_hold_its_stack_pointer_before_main() {
    let held = MAIN_BOUNDS[0].load(Ordering::SeqCst);
    assert_eq!(held, 1, "bounds found and holding the stack pointer");
    // At least the default 8 MiB limit, at most the 128 MiB cap.
    let size = MAIN_BOUNDS[1].load(Ordering::SeqCst);
    assert!((64 << 10..=128 << 20).contains(&size), "{size}");
    assert!(MAIN_BOUNDS[2].load(Ordering::SeqCst) >= 1, "the walk found the probe's call site");
}

#[test]
fn stack_bounds_hold_the_stack_pointer() {
    let out = child("bounds", "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = printed(&out, "bounds=");
    let parts: Vec<&str> = v.split(',').collect();
    assert_eq!(parts[0], "true", "{v}");
    assert!(parts[1].parse::<usize>().unwrap() >= 64 << 10, "{v}");
    eprintln!("bounds checked on the {} thread", if parts[2] == "true" { "main" } else { "test" });
}
