//! The heap profile of a program that uses spanalloc as its global
//! allocator: sampled on the allocator's own paths, with frees from any
//! thread dropping samples from the live set.
//!
//! Two call sites allocate objects of sizes no other code here uses (and
//! that are size classes, so the sizes recorded are the sizes asked for),
//! so a profile record is attributed to a site by the stack it was taken on
//! and checked by its object size. The stack walk follows frame pointers, so
//! these tests mean something only in a build with them
//! (`scripts/profile-fp-tests.sh` sets `-C force-frame-pointers=yes` and
//! `SPANALLOC_FP_TESTS=1`); in other builds they say so and pass.
//!
//! The rate is process-wide: the tests take turns.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::sync::Mutex;

use spanalloc::profile::{self, Profile};

static SERIAL: Mutex<()> = Mutex::new(());

fn with_frame_pointers() -> bool {
    if std::env::var_os("SPANALLOC_FP_TESTS").is_none() {
        eprintln!("skipped: the stack walk needs frame pointers (run scripts/profile-fp-tests.sh)");
        return false;
    }
    true
}

/// Allocates `n` objects of `size` bytes at a site of its own.
#[inline(never)]
fn heap_site_alpha(n: usize, size: usize) -> Vec<Box<[u8]>> {
    (0..n).map(|i| std::hint::black_box(vec![i as u8; size].into_boxed_slice())).collect()
}

/// The same, at another site.
#[inline(never)]
fn heap_site_beta(n: usize, size: usize) -> Vec<Box<[u8]>> {
    (0..n).map(|i| std::hint::black_box(vec![i as u8; size].into_boxed_slice())).collect()
}

/// The profile's totals over the records of objects of `size` bytes:
/// (alloc objects, in-use objects, in-use bytes).
fn totals(p: &Profile, size: u64) -> (u64, u64, u64) {
    p.records
        .iter()
        .filter(|r| r.object_size == Some(size))
        .fold((0, 0, 0), |(a, i, b), r| (a + r.alloc_objects, i + r.inuse_objects, b + r.inuse_bytes))
}

#[test]
fn at_rate_one_counts_are_exact_and_frees_from_another_thread_leave_the_live_set() {
    if !with_frame_pointers() {
        return;
    }
    let _turn = SERIAL.lock().unwrap();
    profile::set_rate(1);
    let mut a = heap_site_alpha(1000, 1152);
    let b = heap_site_beta(500, 3200);
    // 400 of site alpha's objects die on another thread.
    let gone: Vec<Box<[u8]>> = a.drain(..400).collect();
    std::thread::spawn(move || drop(gone)).join().unwrap();
    let p = profile::snapshot();
    profile::set_rate(0);
    assert_eq!(totals(&p, 1152).0, 1000, "site alpha's allocations");
    assert_eq!(totals(&p, 1152).1, 600, "site alpha's live objects after 400 remote frees");
    assert_eq!(totals(&p, 3200).0, 500, "site beta's allocations");
    assert_eq!(totals(&p, 3200).1, 500, "site beta's live objects");
    drop(a);
    drop(b);
    let p = profile::snapshot();
    assert_eq!(totals(&p, 1152).1, 0, "site alpha's live set after every free");
    assert_eq!(totals(&p, 3200).1, 0, "site beta's live set after every free");
}

#[test]
fn at_16_kib_each_sites_in_use_bytes_and_their_ratio_are_within_15_percent() {
    if !with_frame_pointers() {
        return;
    }
    let _turn = SERIAL.lock().unwrap();
    profile::set_rate(16 << 10);
    let a = heap_site_alpha(100_000, 256);
    let b = heap_site_beta(100_000, 768);
    let p = profile::snapshot();
    profile::set_rate(0);
    let (ia, ib) = (totals(&p, 256).2 as f64, totals(&p, 768).2 as f64);
    let (ta, tb) = (100_000.0 * 256.0, 100_000.0 * 768.0);
    assert!((ia / ta - 1.0).abs() <= 0.15, "site alpha: {ia} bytes estimated, {ta} live");
    assert!((ib / tb - 1.0).abs() <= 0.15, "site beta: {ib} bytes estimated, {tb} live");
    assert!(((ib / ia) / 3.0 - 1.0).abs() <= 0.15, "ratio {} instead of 3", ib / ia);
    drop((a, b));
}

#[test]
fn the_profiles_in_use_bytes_agree_with_stats_for_100_mib_live() {
    let _turn = SERIAL.lock().unwrap();
    // 64 KiB: about 1,600 samples of 100 MiB, a relative spread of 2.5%.
    profile::set_rate(64 << 10);
    let live: Vec<Box<[u8]>> = (0..100_000).map(|i| vec![1u8; 64 + (i * 37) % 2000].into_boxed_slice()).collect();
    let p = profile::snapshot();
    let s = spanalloc::stats();
    profile::set_rate(0);
    let in_profile: u64 = p.records.iter().map(|r| r.inuse_bytes).sum();
    let in_objects = s.heap_alloc as f64;
    assert!(in_objects > 100e6, "{in_objects} bytes in objects");
    assert!(
        (in_profile as f64 / in_objects - 1.0).abs() <= 0.10,
        "the profile says {in_profile} bytes in use, stats() {in_objects}"
    );
    drop(live);
}

#[test]
fn go_tool_pprof_names_both_call_sites() {
    if !with_frame_pointers() {
        return;
    }
    let _turn = SERIAL.lock().unwrap();
    profile::set_rate(4 << 10);
    let a = heap_site_alpha(20_000, 512);
    let b = heap_site_beta(20_000, 512);
    let path = std::env::temp_dir().join(format!("spanalloc-heap-{}.pb.gz", std::process::id()));
    profile::write_pprof(&mut std::fs::File::create(&path).unwrap()).unwrap();
    profile::set_rate(0);
    drop((a, b));
    let exe = std::env::current_exe().unwrap();
    let out = match std::process::Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space"])
        .arg(&exe)
        .arg(&path)
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            eprintln!("skipped: `go` not found (Debian: apt-get install golang-go)");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "go tool pprof failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("heap_site_alpha"), "no site alpha in\n{text}");
    assert!(text.contains("heap_site_beta"), "no site beta in\n{text}");
    let _ = std::fs::remove_file(&path);
}
