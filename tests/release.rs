//! Freed memory goes back to the OS: while the program idles (no allocator
//! call at all), from spans whose owning thread is parked, in a forked
//! child, and not from the background while the program has turned that
//! off. The decay comes from `SPANALLOC=decay_ms=N` too.
//!
//! Each case runs in a child process of its own (this binary again), so it
//! measures a clean resident set. Waits are polled (every 50 ms, up to a
//! few seconds) and the RSS bounds are generous: the machine is shared.
//! The figures (how low, how fast, against the peers) are in
//! `tests/release_figures.rs`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{Rng, printed, rss_kib, run_child};

mod support;

/// spanalloc, counting every call, so a case can show that it made none
/// while it waited.
struct Counting;

static CALLS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to spanalloc.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { spanalloc::SpanAlloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { spanalloc::SpanAlloc.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { spanalloc::SpanAlloc.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { spanalloc::SpanAlloc.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const CASE_VAR: &str = "SPANALLOC_RELEASE_CASE";

/// Polls (every 50 ms, up to `secs`) until RSS is at most `limit` KiB,
/// making no allocator call. Returns the last RSS and the milliseconds.
fn wait_rss(limit: u64, secs: u64) -> (u64, u128) {
    let start = Instant::now();
    loop {
        let r = rss_kib();
        if r <= limit || start.elapsed() > Duration::from_secs(secs) {
            return (r, start.elapsed().as_millis());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Blocks of 4–64 KiB, `total` bytes in all, every page written.
fn peak(total: usize, seed: u64) -> Vec<(usize, usize)> {
    blocks(total, seed, |rng| 4096 + rng.below(60 << 10) as usize)
}

/// Blocks of 64 B – 64 KiB (log-uniform), `total` bytes in all, written.
fn peak_mixed(total: usize, seed: u64) -> Vec<(usize, usize)> {
    blocks(total, seed, |rng| {
        let e = 6 + rng.below(10);
        (1usize << e) + rng.below(1 << e) as usize
    })
}

/// Blocks of the sizes `size` draws, `total` bytes in all, every byte
/// written.
fn blocks(total: usize, seed: u64, mut size: impl FnMut(&mut Rng) -> usize) -> Vec<(usize, usize)> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::new();
    let mut got = 0;
    while got < total {
        let size = size(&mut rng);
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { A.alloc(l) };
        assert!(!p.is_null());
        // SAFETY: `size` bytes of ours.
        unsafe { p.write_bytes(seed as u8 | 1, size) };
        v.push((p as usize, size));
        got += size;
    }
    v
}

/// Frees the blocks in the order they were allocated.
fn free_in_order(v: Vec<(usize, usize)>) {
    for &(p, size) in &v {
        // SAFETY: allocated with this layout.
        unsafe { A.dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
    }
}

/// Blocks: (address, size).
type Blocks = Vec<(usize, usize)>;

/// Every other block: two halves whose blocks share spans.
fn halves(v: Blocks) -> (Blocks, Blocks) {
    let (a, b): (Vec<_>, Vec<_>) = v.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    (a.into_iter().map(|(_, x)| x).collect(), b.into_iter().map(|(_, x)| x).collect())
}

/// Frees the blocks in shuffled order.
fn free_shuffled(mut v: Vec<(usize, usize)>, seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &(p, size) in &v {
        // SAFETY: allocated by `peak` with this layout.
        unsafe { A.dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
    }
}

/// Start-up allocations of std and the allocator, then the resident set.
fn settle() -> u64 {
    let v: Vec<Box<[u8]>> = (0..1000).map(|i| vec![1u8; 16 + i % 1000].into_boxed_slice()).collect();
    drop(v);
    std::thread::spawn(|| ()).join().unwrap();
    rss_kib()
}

fn one_tenth_above(before: u64, peak: u64) -> u64 {
    before + (peak - before) / 10
}

/// A peak of 768 MiB freed, then no allocator call: RSS falls.
fn idle() {
    let before = settle();
    let v = peak(768 << 20, 1);
    let top = rss_kib();
    free_shuffled(v, 2);
    let calls = CALLS.load(Ordering::SeqCst);
    let (after, ms) = wait_rss(one_tenth_above(before, top), 5);
    let during = CALLS.load(Ordering::SeqCst) - calls;
    println!("\nidle before={before} peak={top} after={after} ms={ms} calls={during}");
}

/// Two threads allocate 384 MiB each (64 B – 64 KiB) and swap every other
/// block, so that each frees
/// its own objects (taking back the spans it gave the mcentral) while the
/// other frees into the same spans; the helper exits and this thread goes
/// on allocating small objects, as a program that goes on working: the
/// spans it took back, with the other thread's frees unmerged in them,
/// must not stay in its cache.
fn swapped() {
    let before = settle();
    let (to_main, from_helper) = mpsc::channel::<Vec<(usize, usize)>>();
    let (to_helper, from_main) = mpsc::channel::<Vec<(usize, usize)>>();
    let helper = std::thread::spawn(move || {
        let (mine, theirs) = halves(peak_mixed(384 << 20, 3));
        to_main.send(theirs).unwrap();
        let given = from_main.recv().unwrap();
        free_in_order(mine);
        free_in_order(given);
    });
    let (mine, theirs) = halves(peak_mixed(384 << 20, 6));
    let top = rss_kib();
    to_helper.send(theirs).unwrap();
    let given = from_helper.recv().unwrap();
    free_in_order(mine);
    free_in_order(given);
    helper.join().unwrap();
    // 1.5 s of work: three decays.
    let start = std::time::Instant::now();
    while start.elapsed().as_millis() < 1500 {
        let v: Vec<Box<[u8]>> = (0..2000).map(|i| vec![1u8; 16 + i % 3000].into_boxed_slice()).collect();
        drop(v);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let after = rss_kib();
    println!("\nswapped before={before} peak={top} after={after} ms={}", start.elapsed().as_millis());
}

/// A producer allocates 256 MiB of 1 KiB objects, hands them over and
/// blocks; the consumer frees them (with `release()` or not); then another
/// thread allocates as much again.
fn parked(release: bool) {
    const N: usize = 256 << 10;
    let before = settle();
    let (tx, rx) = mpsc::channel::<Vec<usize>>();
    let (never_tx, never_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for b in 0..N / 4096 {
            let batch = (0..4096)
                .map(|i| {
                    let p = Box::into_raw(Box::new([(b + i) as u8; 1024]));
                    p as usize
                })
                .collect();
            tx.send(batch).unwrap();
        }
        drop(tx);
        let _ = never_rx.recv(); // parked for good: the sender lives on
    });
    let batches: Vec<Vec<usize>> = rx.iter().collect();
    let top = rss_kib();
    let sys1 = spanalloc::stats().heap_sys;
    for batch in batches {
        for p in batch {
            // SAFETY: made by `Box::into_raw` above.
            drop(unsafe { Box::from_raw(p as *mut [u8; 1024]) });
        }
    }
    if release {
        spanalloc::release();
    }
    let (after, ms) = wait_rss(before + (top - before) * 15 / 100, 5);
    // For the parent's failure message.
    eprintln!("{}", spanalloc::stats());
    let second = std::thread::spawn(|| {
        let v: Vec<Box<[u8; 1024]>> = (0..N).map(|i| Box::new([i as u8; 1024])).collect();
        let sys = spanalloc::stats().heap_sys;
        drop(v);
        sys
    });
    let sys2 = second.join().unwrap();
    std::mem::forget(never_tx);
    println!("\nparked before={before} peak={top} after={after} ms={ms} sys1={sys1} sys2={sys2}");
}

/// With the background releaser running, the process forks; the child
/// frees a peak of its own and its memory goes back too.
fn fork() {
    let _ = settle();
    free_shuffled(peak(64 << 20, 3), 4);
    let start = Instant::now();
    while !spanalloc::stats().release.background && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(spanalloc::stats().release.background, "the background releaser did not start");
    // SAFETY: the child only allocates, measures and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let before = rss_kib();
        let v = peak(256 << 20, 5);
        let top = rss_kib();
        free_shuffled(v, 6);
        let (after, _) = wait_rss(one_tenth_above(before, top), 5);
        let s = spanalloc::stats();
        let code = if after > one_tenth_above(before, top) {
            10
        } else if !s.release.background || s.release.background_bytes == 0 {
            11
        } else {
            // And release() in the child, after another peak.
            free_shuffled(peak(128 << 20, 7), 8);
            spanalloc::release();
            if rss_kib() > one_tenth_above(before, top) { 12 } else { 0 }
        };
        // SAFETY: ends the child at once, without the parent's at-exit work.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    // The parent's releaser still works.
    let before = rss_kib();
    let v = peak(128 << 20, 9);
    let top = rss_kib();
    free_shuffled(v, 10);
    let (after, _) = wait_rss(one_tenth_above(before, top), 5);
    println!(
        "\nfork child_exit={} parent_before={before} parent_peak={top} parent_after={after}",
        if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 }
    );
}

/// Background release off: a freed peak stays while the program idles;
/// turned on again, it goes back without any allocator call.
fn off() {
    spanalloc::set_background_release(false);
    let before = settle();
    let v = peak(256 << 20, 11);
    let top = rss_kib();
    free_shuffled(v, 12);
    let bg = spanalloc::stats().release.background_bytes;
    std::thread::sleep(Duration::from_millis(1500));
    let idle = rss_kib();
    let s = spanalloc::stats();
    let calls = CALLS.load(Ordering::SeqCst);
    spanalloc::set_background_release(true);
    let (after, ms) = wait_rss(one_tenth_above(before, top), 5);
    let during = CALLS.load(Ordering::SeqCst) - calls;
    println!(
        "\noff before={before} peak={top} idle={idle} bg_grew={} bg_flag={} after={after} ms={ms} calls={during}",
        s.release.background_bytes - bg,
        s.release.background as u8
    );
}

#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    match case.as_str() {
        "idle" => idle(),
        "swapped" => swapped(),
        "parked_release" => parked(true),
        "parked_idle" => parked(false),
        "fork" => fork(),
        "off" => off(),
        "decay" => {
            let s = spanalloc::stats();
            println!("\ndecay ms={} stats={}", spanalloc::release_decay_ms(), s.release.decay_ms);
        }
        other => panic!("unknown case {other}"),
    }
}

fn fields(case: &str, marker: &str) -> impl Fn(&str) -> u64 {
    support::child_fields(CASE_VAR, case, marker)
}

#[test]
fn an_idle_program_gives_a_freed_peak_back_without_calling_the_allocator() {
    let f = fields("idle", "idle ");
    let (before, peak, after) = (f("before"), f("peak"), f("after"));
    assert!(peak > before + (700 << 10), "the peak was not reached: {before} -> {peak} KiB");
    assert_eq!(f("calls"), 0, "the program called the allocator while it waited");
    assert!(
        after <= one_tenth_above(before, peak),
        "RSS {after} KiB after idling {} ms; {before} KiB before the peak of {peak} KiB",
        f("ms")
    );
}

#[test]
fn a_busy_thread_does_not_keep_spans_it_took_back_with_another_threads_frees_in_them() {
    let f = fields("swapped", "swapped ");
    let (before, peak, after) = (f("before"), f("peak"), f("after"));
    assert!(peak > before + (300 << 10), "the peak was not reached: {before} -> {peak} KiB");
    assert!(
        after <= before + (peak - before) / 20,
        "RSS {after} KiB after {} ms of small allocations; {before} KiB before the peak of {peak} KiB",
        f("ms")
    );
}

/// The parked-producer case `case`: RSS at most 15% of the peak after
/// `what`, and the second allocation within 1.15× of the first's heap.
fn assert_parked(case: &str, what: &str) {
    let f = fields(case, "parked ");
    let (before, peak, after) = (f("before"), f("peak"), f("after"));
    assert!(after <= before + (peak - before) * 15 / 100, "RSS {after} KiB after {what}; {before} -> {peak} KiB");
    let (sys1, sys2) = (f("sys1"), f("sys2"));
    assert!(sys2 * 100 <= sys1 * 115, "the second allocation grew the heap from {sys1} to {sys2} bytes");
}

#[test]
fn objects_freed_into_a_parked_owners_spans_are_released_and_reused_after_release() {
    assert_parked("parked_release", "release()");
}

#[test]
fn objects_freed_into_a_parked_owners_spans_go_back_while_the_program_idles() {
    assert_parked("parked_idle", "idling");
}

#[test]
fn a_child_forked_while_the_background_releaser_runs_gets_one_of_its_own() {
    let f = fields("fork", "fork ");
    let code = f("child_exit");
    assert_eq!(
        code, 0,
        "child: 10 = RSS did not fall while idle, 11 = no background release, 12 = release() did not bring RSS down"
    );
    let (before, peak, after) = (f("parent_before"), f("parent_peak"), f("parent_after"));
    assert!(after <= one_tenth_above(before, peak), "the parent's RSS stayed at {after} KiB ({before} -> {peak})");
}

#[test]
fn background_release_turned_off_releases_nothing_while_idle_and_resumes_when_turned_on() {
    let f = fields("off", "off ");
    let (before, peak, idle, after) = (f("before"), f("peak"), f("idle"), f("after"));
    assert_eq!(f("bg_grew"), 0, "the background released memory while turned off");
    assert_eq!(f("bg_flag"), 0, "stats say background release is on");
    assert!(idle > before + (peak - before) / 2, "RSS fell to {idle} KiB while background release was off");
    assert_eq!(f("calls"), 0);
    assert!(after <= one_tenth_above(before, peak), "RSS {after} KiB after turning it on again ({before} -> {peak})");
}

#[test]
fn spanalloc_decay_ms_in_the_environment_sets_the_decay() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CASE_VAR, "decay")
        .env("SPANALLOC", "decay_ms=1234")
        .output()
        .unwrap();
    assert_eq!(printed(&out, "decay "), "ms=1234 stats=1234");
    let out = run_child(CASE_VAR, "decay");
    assert_eq!(printed(&out, "decay "), "ms=500 stats=500");
}
