//! After a program frees a 1 GiB peak, its resident set comes back to
//! within 10% of the pre-peak level: within about a second of further
//! allocator activity (the scavenger's decay), or at once after
//! `spanalloc::release()`. The program keeps 64 MiB of its own data live
//! throughout, as a real one would.
//!
//! The two cases run in separate child processes (this binary again), so
//! each measures a clean process; the tests in one process would otherwise
//! share one resident set.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::time::{Duration, Instant};

use support::{printed, rss_kib, run_child};

mod support;

const CASE_VAR: &str = "SPANALLOC_RSS_CASE";

/// Allocates about 1 GiB on two threads (small, medium and large objects,
/// every page touched) and frees it, half of it on the other thread.
fn peak_and_free() {
    let per_thread = 512usize << 20;
    let make = move |seed: usize| {
        let mut objs: Vec<Vec<u8>> = Vec::new();
        let mut total = 0;
        let mut i = seed;
        while total < per_thread {
            let size = match i % 10 {
                0..6 => 64 + (i * 37) % 2000,
                6..9 => 4096 + (i * 101) % 30_000,
                _ => 65_536 + (i * 7919) % (1 << 20),
            };
            objs.push(vec![i as u8; size]);
            total += size;
            i += 1;
        }
        objs
    };
    let a = std::thread::spawn(move || make(1));
    let b = make(2);
    let a = a.join().unwrap();
    let (a_keep, a_give): (Vec<_>, Vec<_>) = a.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let freer = std::thread::spawn(move || drop(a_give));
    drop(a_keep);
    drop(b);
    freer.join().unwrap();
}

/// Small allocations of many sizes, as a program that goes on working.
fn activity() {
    let v: Vec<Box<[u8]>> = (0..1000).map(|i| vec![1u8; 16 + (i * 7) % 1000].into_boxed_slice()).collect();
    drop(v);
}

#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    // The program's own live data, kept throughout: 64 MiB of objects of
    // many sizes.
    let live: Vec<Vec<u8>> = (0..16_384).map(|i| vec![i as u8; 64 + (i * 131) % 8000]).collect();
    // Warm up: std's and the allocator's own start-up allocations, and a
    // few threads (the C library keeps their stacks for reuse).
    let warm: Vec<_> = (0..3).map(|_| std::thread::spawn(activity)).collect();
    warm.into_iter().for_each(|t| t.join().unwrap());
    for _ in 0..20 {
        activity();
    }
    let before = rss_kib();
    peak_and_free();
    let peak = rss_kib();
    let start = Instant::now();
    let after = if case == "release" {
        spanalloc::release();
        rss_kib()
    } else {
        while start.elapsed() < Duration::from_millis(1500) {
            activity();
            std::thread::sleep(Duration::from_millis(10));
            if rss_kib() <= before + before / 10 {
                break;
            }
        }
        rss_kib()
    };
    // For the parent's failure message.
    eprintln!("{}", spanalloc::stats());
    assert!(live.iter().enumerate().all(|(i, v)| v[v.len() - 1] == i as u8));
    drop(live);
    println!("\nrss before={before} peak={peak} after={after} ms={}", start.elapsed().as_millis());
}

fn run(case: &str) -> (u64, u64, u64) {
    let out = run_child(CASE_VAR, case);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    let line = printed(&out, "rss ");
    eprintln!("{line}\n{stderr}");
    let num = |k: &str| -> u64 { line.split_whitespace().find_map(|f| f.strip_prefix(k)).unwrap().parse().unwrap() };
    (num("before="), num("peak="), num("after="))
}

#[test]
fn rss_returns_within_a_second_of_activity_after_a_1_gib_peak() {
    let (before, peak, after) = run("decay");
    assert!(peak > before + (900 << 10), "the peak was not reached: {before} -> {peak} KiB");
    assert!(after <= before + before / 10, "RSS {after} KiB after the decay, {before} KiB before the peak");
}

#[test]
fn rss_returns_at_once_after_release() {
    let (before, peak, after) = run("release");
    assert!(peak > before + (900 << 10), "the peak was not reached: {before} -> {peak} KiB");
    assert!(after <= before + before / 10, "RSS {after} KiB after release(), {before} KiB before the peak");
}
