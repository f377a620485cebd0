//! Releases seen from inside, through the `test-hooks` feature: no system
//! call that gives memory back runs while a lock that allocations take is
//! held (so no allocation waits for the kernel), whoever releases (an
//! explicit `release()`, the background releaser); and on kernels whose
//! pages are 16 KiB or 64 KiB, which the allocator is made to see here,
//! live neighbours keep their bytes, `alloc_zeroed` returns zeros, and
//! memory the kernel refused to release is never taken for zeroed.
//!
//! Timing is not asserted (the machine is shared): the longest allocation
//! while a GiB is released is a figure in `tests/release_figures.rs`.
//! Each case runs in a child process of its own.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use spanalloc::test_hooks;
use support::Rng;

mod support;

const CASE_VAR: &str = "SPANALLOC_RELEASE_HOOKS_CASE";

static RELEASES: AtomicU64 = AtomicU64::new(0);
static UNDER_LOCK: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Before each release: could an allocation take the heap's locks now?
fn check_locks(_addr: usize, _len: usize) -> bool {
    RELEASES.fetch_add(1, Ordering::Relaxed);
    // One finding is enough (each costs the wait).
    if UNDER_LOCK.load(Ordering::Relaxed) == 0 && !test_hooks::allocation_locks_free_within(1000) {
        UNDER_LOCK.fetch_add(1, Ordering::Relaxed);
    }
    true
}

/// Refuses every third release, as a kernel may.
fn refuse_some(_addr: usize, _len: usize) -> bool {
    if RELEASES.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// A thread allocating and freeing objects of 1–32 KiB (needing spans all
/// the time) while 512 MiB is released, by `release()` and then by the
/// background releaser after a short decay.
fn no_lock() {
    test_hooks::set_release_hook(Some(check_locks));
    let stop = Arc::new(AtomicBool::new(false));
    let allocs = Arc::new(AtomicU64::new(0));
    let prober = {
        let (stop, allocs) = (stop.clone(), allocs.clone());
        std::thread::spawn(move || {
            let sizes = [1024usize, 16 << 10, 32 << 10, 4096, 20 << 10];
            let mut ring = vec![(0usize, 0usize); 4096];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let size = sizes[i % sizes.len()];
                // SAFETY: a non-zero layout.
                let p = unsafe { A.alloc(layout(size)) };
                assert!(!p.is_null());
                // SAFETY: ours.
                unsafe { p.write(1) };
                let (old, old_size) = std::mem::replace(&mut ring[i % 4096], (p as usize, size));
                if old != 0 {
                    // SAFETY: allocated above with this layout.
                    unsafe { A.dealloc(old as *mut u8, layout(old_size)) };
                }
                i += 1;
                allocs.fetch_add(1, Ordering::Relaxed);
            }
            for (p, size) in ring.into_iter().filter(|&(p, _)| p != 0) {
                // SAFETY: as above.
                unsafe { A.dealloc(p as *mut u8, layout(size)) };
            }
        })
    };
    let big = |n: usize| -> Vec<Vec<u8>> { (0..n).map(|i| vec![i as u8; 1 << 20]).collect() };
    drop(big(512));
    spanalloc::release();
    let explicit = RELEASES.load(Ordering::Relaxed);
    spanalloc::set_release_decay_ms(30);
    let bg = spanalloc::stats().release.background_bytes;
    drop(big(512));
    let start = Instant::now();
    while spanalloc::stats().release.background_bytes < bg + (256 << 20) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let bg = spanalloc::stats().release.background_bytes - bg;
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    test_hooks::set_release_hook(None);
    println!(
        "\nnolock releases={} explicit={explicit} under_lock={} background_mib={} probes={}",
        RELEASES.load(Ordering::Relaxed),
        UNDER_LOCK.load(Ordering::Relaxed),
        bg >> 20,
        allocs.load(Ordering::Relaxed)
    );
}

/// Objects side by side whose ends fall inside kernel pages of `page`
/// bytes, holes freed among live ones, everything released (some of it
/// refused by the "kernel"), explicitly and by the background: the live
/// ones keep their bytes and zeroed allocations are zero.
fn pages(page: usize) {
    test_hooks::pretend_page_size(page);
    test_hooks::set_release_hook(Some(refuse_some));
    spanalloc::set_release_decay_ms(30);
    let mut rng = Rng::new(page as u64);
    // Large objects of 5 runtime pages (40 KiB), and small ones of classes
    // whose spans are not a whole number of kernel pages.
    let sizes = [40 << 10, 5 << 13, 24 << 10, 1024, 3 << 10, 56 << 10];
    let mut objs: Vec<(usize, usize, u8)> = Vec::new();
    for i in 0..6000 {
        let size = sizes[i % sizes.len()];
        // SAFETY: a non-zero layout.
        let p = unsafe { A.alloc(layout(size)) };
        assert!(!p.is_null());
        let fill = (i % 251) as u8 | 1;
        // SAFETY: ours.
        unsafe { p.write_bytes(fill, size) };
        objs.push((p as usize, size, fill));
    }
    let mut bad_live = 0usize;
    let mut bad_zero = 0usize;
    let check_live = |objs: &[(usize, usize, u8)], bad: &mut usize| {
        for &(p, size, fill) in objs {
            // SAFETY: live objects of ours.
            let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
            if bytes.iter().any(|&b| b != fill) {
                *bad += 1;
            }
        }
    };
    for round in 0..2 {
        // Free holes of one to four objects among live ones.
        let mut keep = Vec::new();
        let mut i = 0;
        while i < objs.len() {
            let run = 1 + rng.below(4) as usize;
            for &(p, size, _) in &objs[i..(i + run).min(objs.len())] {
                // SAFETY: allocated above with this layout.
                unsafe { A.dealloc(p as *mut u8, layout(size)) };
            }
            if let Some(&o) = objs.get(i + run) {
                keep.push(o);
            }
            i += run + 1;
        }
        objs = keep;
        if round == 0 {
            spanalloc::release();
        } else {
            // The background releaser's turn.
            let before = spanalloc::stats().release.background_bytes;
            let start = Instant::now();
            while spanalloc::stats().release.background_bytes == before && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        check_live(&objs, &mut bad_live);
        // Zeroed allocations in the holes, of every size.
        let mut zeroed = Vec::new();
        for i in 0..3000 {
            let size = sizes[i % sizes.len()];
            // SAFETY: a non-zero layout.
            let p = unsafe { A.alloc_zeroed(layout(size)) };
            assert!(!p.is_null());
            // SAFETY: ours, `size` bytes.
            if unsafe { std::slice::from_raw_parts(p, size) }.iter().any(|&b| b != 0) {
                bad_zero += 1;
            }
            let fill = (i % 251) as u8 | 1;
            // SAFETY: ours.
            unsafe { p.write_bytes(fill, size) };
            zeroed.push((p as usize, size, fill));
        }
        check_live(&objs, &mut bad_live);
        objs.extend(zeroed);
    }
    let s = spanalloc::stats();
    test_hooks::set_release_hook(None);
    println!(
        "\npages bad_live={bad_live} bad_zero={bad_zero} refused={} failures={} released_mib={} background_mib={}",
        REFUSED.load(Ordering::Relaxed),
        s.release.failures,
        s.release.released_bytes >> 20,
        s.release.background_bytes >> 20
    );
}

#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    match case.as_str() {
        "nolock" => no_lock(),
        "pages16" => pages(16 << 10),
        "pages64" => pages(64 << 10),
        other => panic!("unknown case {other}"),
    }
}

fn fields(case: &str, marker: &str) -> impl Fn(&str) -> u64 {
    support::child_fields(CASE_VAR, case, marker)
}

#[test]
fn no_release_system_call_runs_under_a_lock_that_allocations_take() {
    let f = fields("nolock", "nolock ");
    assert!(f("explicit") > 0, "release() made no release");
    assert!(f("releases") > f("explicit"), "the background releaser made no release");
    assert!(f("background_mib") >= 256, "the background releaser released too little");
    assert_eq!(f("under_lock"), 0, "memory was released while an allocation lock was held");
}

fn pages_case(case: &str) {
    let f = fields(case, "pages ");
    assert_eq!(f("bad_live"), 0, "live objects lost bytes to a release");
    assert_eq!(f("bad_zero"), 0, "alloc_zeroed returned old data");
    assert!(f("refused") > 0 && f("failures") >= f("refused"), "refusals not counted");
    assert!(f("released_mib") > 0, "nothing was released");
    assert!(f("background_mib") > 0, "the background releaser released nothing");
}

#[test]
fn at_16_kib_kernel_pages_releases_keep_live_neighbours_and_zeroed_memory_is_zero() {
    pages_case("pages16");
}

#[test]
fn at_64_kib_kernel_pages_releases_keep_live_neighbours_and_zeroed_memory_is_zero() {
    pages_case("pages64");
}
