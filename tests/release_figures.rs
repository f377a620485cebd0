//! Figures for what happens to freed memory: RSS after a 1 GiB peak is
//! freed and the program idles, RSS after `release()`, the parked-producer
//! program, and the longest small allocation while another thread releases
//! a GiB. The same programs run under the peers (glibc, mimalloc, jemalloc,
//! snmalloc) by `LD_PRELOAD` of their shared objects, so the table compares
//! like with like.
//!
//! These are figures, not assertions: RSS and latency on a shared machine
//! move from run to run. The test is ignored by default; run it with
//!
//! ```text
//! scripts/release-figures.sh        # cargo test --release --test release_figures -- --ignored --nocapture
//! ```
//!
//! Each case runs in a process of its own (this binary again, see
//! `child_entry`). The binary's global allocator is spanalloc, or the
//! system's `malloc` when `SPANALLOC_FIGURES_PEER` names a peer (whose
//! shared object is then preloaded): the choice is made at the first
//! allocation, from the environment, without allocating.
//!
//! The cases:
//!
//! - `idle1`: one thread allocates about 1 GiB of 4–64 KiB blocks, writes
//!   every byte, frees them in shuffled order, and then makes no allocator
//!   call for a second: RSS then (`idle`); then it allocates 1000 small
//!   objects (`after`).
//! - `idle2`: two threads each allocate half of it, swap their blocks and
//!   free each other's in shuffled order; both then stay blocked (parked,
//!   not exited) while the main thread waits a second and measures, then
//!   allocates the 1000 small objects.
//! - `release1`, `release2`: the same, with `spanalloc::release()` (for a
//!   peer, its own purge call: `mi_collect`, jemalloc's `arena.<all>.purge`,
//!   glibc's `malloc_trim`; snmalloc has none) at once after the free, by
//!   each freeing thread and then by the main thread.
//! - `parked`: a producer allocates 256 MiB of 1 KiB objects, hands them to
//!   a consumer and blocks forever; the consumer frees them and releases;
//!   then a new thread allocates the same again: its peak against the first.
//! - `latency`: a thread allocates small objects (1–32 KiB, many of them a
//!   span of their own, so it needs spans from the mheap all the time)
//!   while the main thread releases 1 GiB of free pages, first with
//!   `release()`, then by the background release after a short decay; the
//!   longest allocation in each phase, against a phase with no release,
//!   and how many took over 1 ms, and of those how many the kernel
//!   preempted (rather than the thread sleeping on a lock).

#[global_allocator]
static A: Chosen = Chosen;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use support::{Rng, rss_kib};

mod support;

const CASE_VAR: &str = "SPANALLOC_FIGURES_CASE";
const PEER_VAR: &str = "SPANALLOC_FIGURES_PEER";

// ---------------------------------------------------------------------------
// The allocator under test.

/// spanalloc, or the system's `malloc` (a preloaded peer).
struct Chosen;

/// 0: not decided yet; 1: spanalloc; 2: the system's malloc.
static MODE: AtomicU8 = AtomicU8::new(0);

#[inline]
fn spanalloc_mode() -> bool {
    let m = MODE.load(Ordering::Relaxed);
    if m != 0 {
        return m == 1;
    }
    // SAFETY: getenv reads the environment and allocates nothing.
    let peer = unsafe { libc::getenv(c"SPANALLOC_FIGURES_PEER".as_ptr()) };
    let m = if peer.is_null() { 1 } else { 2 };
    MODE.store(m, Ordering::Relaxed);
    m == 1
}

// SAFETY: forwards to one of two allocators, the same one for the whole
// process (decided before the first block is handed out).
unsafe impl GlobalAlloc for Chosen {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if spanalloc_mode() { unsafe { spanalloc::SpanAlloc.alloc(l) } } else { unsafe { System.alloc(l) } }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if spanalloc_mode() { unsafe { spanalloc::SpanAlloc.dealloc(p, l) } } else { unsafe { System.dealloc(p, l) } }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if spanalloc_mode() {
            unsafe { spanalloc::SpanAlloc.alloc_zeroed(l) }
        } else {
            unsafe { System.alloc_zeroed(l) }
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if spanalloc_mode() {
            unsafe { spanalloc::SpanAlloc.realloc(p, l, n) }
        } else {
            unsafe { System.realloc(p, l, n) }
        }
    }
}

/// Gives free memory back now: `spanalloc::release()`, or the peer's own
/// purge. Returns whether the allocator has one.
fn purge() -> bool {
    if spanalloc_mode() {
        spanalloc::release();
        return true;
    }
    // SAFETY: looking symbols up and calling them with their documented
    // signatures.
    unsafe {
        let mi = libc::dlsym(libc::RTLD_DEFAULT, c"mi_collect".as_ptr());
        if !mi.is_null() {
            let f: extern "C" fn(bool) = std::mem::transmute(mi);
            f(true);
            return true;
        }
        let je = libc::dlsym(libc::RTLD_DEFAULT, c"mallctl".as_ptr());
        if !je.is_null() {
            type Mallctl = extern "C" fn(*const libc::c_char, *mut u8, *mut usize, *mut u8, usize) -> libc::c_int;
            let f: Mallctl = std::mem::transmute(je);
            // 4096 is MALLCTL_ARENAS_ALL.
            f(c"arena.4096.purge".as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0);
            return true;
        }
        if std::env::var(PEER_VAR).as_deref() == Ok("glibc") {
            libc::malloc_trim(0);
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Measuring.

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// A block of `size` bytes, every byte written.
fn block(size: usize, fill: u8) -> usize {
    // SAFETY: a non-zero layout; the block is ours.
    unsafe {
        let p = A.alloc(layout(size));
        assert!(!p.is_null());
        p.write_bytes(fill, size);
        p as usize
    }
}

fn free_block(p: usize, size: usize) {
    // SAFETY: `p` came from `block(size, ..)` and is freed once.
    unsafe { A.dealloc(p as *mut u8, layout(size)) };
}

/// About `bytes` of 4–64 KiB blocks.
fn blocks(bytes: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(bytes / (30 << 10));
    let mut total = 0;
    while total < bytes {
        let size = (4 << 10) + rng.below((60 << 10) + 1) as usize;
        v.push((block(size, seed as u8), size));
        total += size;
    }
    v
}

fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

fn free_all(mut v: Vec<(usize, usize)>, seed: u64) {
    shuffle(&mut v, seed);
    for (p, size) in v.drain(..) {
        free_block(p, size);
    }
}

/// 1000 small objects of 16 B – 1 KiB, kept.
fn small_objects() -> Vec<Box<[u8]>> {
    (0..1000).map(|i| vec![1u8; 16 + (i * 37) % 1000].into_boxed_slice()).collect()
}

/// spanalloc's own account of what it released (empty for a peer).
fn released_note() -> String {
    if !spanalloc_mode() {
        return String::new();
    }
    let s = spanalloc::stats();
    format!(" heap_sys_kib={} released_kib={}", s.heap_sys >> 10, s.heap_released >> 10)
}

// ---------------------------------------------------------------------------
// The cases.

fn idle(threads: usize, release: bool) -> String {
    let _ = small_objects(); // std's and the allocator's start-up
    let before = rss_kib();
    let total = 1usize << 30;
    let peak;
    let mut extra = String::new();
    if threads == 1 {
        let v = blocks(total, 1);
        peak = rss_kib();
        free_all(v, 2);
        if release {
            purge();
        }
    } else {
        let (to_main, from_workers) = mpsc::channel::<u64>();
        let (park_tx, park_rx) = mpsc::channel::<()>();
        let park_rx = Arc::new(std::sync::Mutex::new(park_rx));
        let mut swap_tx = Vec::new();
        let mut swap_rx = Vec::new();
        for _ in 0..2 {
            let (t, r) = mpsc::channel::<Vec<(usize, usize)>>();
            swap_tx.push(t);
            swap_rx.push(r);
        }
        let peak_seen = Arc::new(std::sync::Barrier::new(3));
        let mut handles = Vec::new();
        for (w, rx) in swap_rx.into_iter().enumerate() {
            let to_other = swap_tx[1 - w].clone();
            let to_main = to_main.clone();
            let park_rx = park_rx.clone();
            let peak_seen = peak_seen.clone();
            handles.push(std::thread::spawn(move || {
                let mine = blocks(total / 2, 10 + w as u64);
                peak_seen.wait();
                peak_seen.wait();
                to_other.send(mine).unwrap();
                let theirs = rx.recv().unwrap();
                free_all(theirs, 20 + w as u64);
                if release {
                    purge();
                }
                to_main.send(0).unwrap();
                // Parked: blocked, not exited, until the main thread is done.
                let _ = park_rx.lock().unwrap().recv();
            }));
        }
        peak_seen.wait();
        peak = rss_kib();
        peak_seen.wait();
        from_workers.recv().unwrap();
        from_workers.recv().unwrap();
        if release {
            purge();
        }
        let idle = rss_kib();
        extra = format!(" freed_kib={idle}");
        let measured = finish(before, peak, release);
        drop(park_tx);
        for h in handles {
            h.join().unwrap();
        }
        return format!("{measured}{extra}");
    }
    format!("{}{extra}", finish(before, peak, release))
}

/// The common end of the idle cases: a second without allocator calls
/// (unless released), RSS, 1000 small objects, RSS.
fn finish(before: u64, peak: u64, released: bool) -> String {
    let start = Instant::now();
    let at = if released {
        rss_kib()
    } else {
        std::thread::sleep(Duration::from_secs(1));
        rss_kib()
    };
    if std::env::var("FIGURES_SMAPS").is_ok() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut cur = String::new();
        for l in smaps.lines() {
            if l.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) && l.contains('-') && !l.starts_with("Rss") {
                cur = l.to_string();
            } else if let Some(r) = l.strip_prefix("Rss:") {
                let kb: u64 = r.trim().trim_end_matches("kB").trim().parse().unwrap();
                if kb >= 256 {
                    eprintln!("{kb:>8} kB  {cur}");
                }
            }
        }
    }
    let small = small_objects();
    let after = rss_kib();
    drop(small);
    let pct = |k: u64| format!("{:.2}", 100.0 * k as f64 / peak as f64);
    format!(
        "before_kib={before} peak_kib={peak} idle_kib={at} idle_pct={} after_kib={after} after_pct={} wait_ms={}{}",
        pct(at),
        pct(after),
        start.elapsed().as_millis(),
        released_note()
    )
}

fn parked() -> String {
    let _ = small_objects();
    let before = rss_kib();
    const N: usize = 256 << 10; // 1 KiB objects: 256 MiB
    let (tx, rx) = mpsc::channel::<Vec<usize>>();
    let (_never_tx, never_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for _ in 0..N / 4096 {
            tx.send((0..4096).map(|i| block(1024, i as u8)).collect()).unwrap();
        }
        drop(tx);
        // Blocks forever: the sender stays alive in the main thread.
        let _ = never_rx.recv();
    });
    let mut got = Vec::with_capacity(N / 4096);
    while let Ok(batch) = rx.recv() {
        got.push(batch);
    }
    let peak1 = rss_kib();
    for batch in got.drain(..) {
        for p in batch {
            free_block(p, 1024);
        }
    }
    drop(got);
    let has_purge = purge();
    let after = rss_kib();
    let sys_after = released_note();
    let peak2 = std::thread::spawn(move || {
        let v: Vec<usize> = (0..N).map(|i| block(1024, i as u8)).collect();
        let peak = rss_kib();
        for p in v {
            free_block(p, 1024);
        }
        peak
    })
    .join()
    .unwrap();
    std::mem::forget(_never_tx);
    format!(
        "before_kib={before} peak_kib={peak1} after_release_kib={after} after_pct={:.2} purge={has_purge} \
         second_peak_kib={peak2} second_over_first={:.3}{sys_after}",
        100.0 * after as f64 / peak1 as f64,
        peak2 as f64 / peak1 as f64
    )
}

/// The allocating thread of `latency`: the longest allocation in each
/// phase (`phase` names it), until `stop`.
struct Prober {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    /// Per phase: longest allocation (ns), allocations, allocations over 1 ms.
    max_ns: Arc<[AtomicU64; 4]>,
    count: Arc<[AtomicU64; 4]>,
    over_ms: Arc<[AtomicU64; 4]>,
    /// Per phase: allocations over 1 ms during which the kernel preempted
    /// the thread (an involuntary context switch and no voluntary one, so
    /// it did not sleep on a lock) in the window since the last reading.
    preempted: Arc<[AtomicU64; 4]>,
}

/// The calling thread's voluntary and involuntary context switches so far.
fn switches() -> (i64, i64) {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    (u.ru_nvcsw, u.ru_nivcsw)
}

fn probe(p: &Prober) {
    const RING: usize = 4096;
    let sizes = [1024usize, 16 << 10, 32 << 10, 4096, 20 << 10];
    let mut ring: Vec<(usize, usize)> = Vec::with_capacity(RING);
    let mut at = 0;
    let mut i = 0usize;
    let mut seen = switches();
    while !p.stop.load(Ordering::Relaxed) {
        let size = sizes[i % sizes.len()];
        i += 1;
        // The context switches are read every 256 allocations and after a
        // slow one: a window of well under a millisecond around it.
        if i.is_multiple_of(256) {
            seen = switches();
        }
        let t0 = Instant::now();
        // SAFETY: a non-zero layout.
        let q = unsafe { A.alloc(layout(size)) };
        let ns = t0.elapsed().as_nanos() as u64;
        assert!(!q.is_null());
        // SAFETY: the block holds `size` bytes.
        unsafe { q.write(1) };
        let ph = p.phase.load(Ordering::Relaxed) as usize;
        p.max_ns[ph].fetch_max(ns, Ordering::Relaxed);
        p.count[ph].fetch_add(1, Ordering::Relaxed);
        if ns > 1_000_000 {
            p.over_ms[ph].fetch_add(1, Ordering::Relaxed);
            let now = switches();
            if now.0 == seen.0 && now.1 > seen.1 {
                p.preempted[ph].fetch_add(1, Ordering::Relaxed);
            }
            seen = now;
        }
        if ring.len() < RING {
            ring.push((q as usize, size));
        } else {
            let (old, old_size) = std::mem::replace(&mut ring[at], (q as usize, size));
            free_block(old, old_size);
            at = (at + 1) % RING;
        }
    }
    for (q, size) in ring {
        free_block(q, size);
    }
}

fn latency() -> String {
    if !spanalloc_mode() {
        return "skipped=1".into();
    }
    // Keep the decay out of the way until the last phase.
    spanalloc::set_release_decay_ms(3_600_000);
    let _ = small_objects();
    let dirty = |seed: u8| {
        let v: Vec<usize> = (0..4096).map(|_| block(256 << 10, seed)).collect();
        for p in v {
            free_block(p, 256 << 10);
        }
    };
    dirty(1);
    let prober = Prober {
        phase: Arc::new(AtomicU8::new(0)),
        stop: Arc::new(AtomicBool::new(false)),
        max_ns: Arc::new(Default::default()),
        count: Arc::new(Default::default()),
        over_ms: Arc::new(Default::default()),
        preempted: Arc::new(Default::default()),
    };
    let p2 = Prober {
        phase: prober.phase.clone(),
        stop: prober.stop.clone(),
        max_ns: prober.max_ns.clone(),
        count: prober.count.clone(),
        over_ms: prober.over_ms.clone(),
        preempted: prober.preempted.clone(),
    };
    let t = std::thread::spawn(move || probe(&p2));
    // Phase 0: no release.
    std::thread::sleep(Duration::from_millis(500));
    // Phase 1: release() of 1 GiB of free pages.
    prober.phase.store(1, Ordering::Relaxed);
    let t0 = Instant::now();
    spanalloc::release();
    let release_ms = t0.elapsed().as_millis();
    std::thread::sleep(Duration::from_millis(50));
    // Phase 2: another GiB, released by the background after a decay.
    prober.phase.store(3, Ordering::Relaxed);
    dirty(2);
    let released_before = spanalloc::stats().heap_released;
    prober.phase.store(2, Ordering::Relaxed);
    spanalloc::set_release_decay_ms(100);
    let t0 = Instant::now();
    while spanalloc::stats().heap_released < released_before + (900 << 20) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let bg_ms = t0.elapsed().as_millis();
    prober.phase.store(3, Ordering::Relaxed);
    prober.stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let f = |a: &Arc<[AtomicU64; 4]>, i: usize| a[i].load(Ordering::Relaxed);
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
    format!(
        "idle_max_us={} idle_allocs={} idle_over_1ms={} idle_preempted={} release_ms={release_ms} release_max_us={} \
         release_allocs={} release_over_1ms={} release_preempted={} bg_ms={bg_ms} bg_max_us={} bg_allocs={} \
         bg_over_1ms={} bg_preempted={}",
        us(f(&prober.max_ns, 0)),
        f(&prober.count, 0),
        f(&prober.over_ms, 0),
        f(&prober.preempted, 0),
        us(f(&prober.max_ns, 1)),
        f(&prober.count, 1),
        f(&prober.over_ms, 1),
        f(&prober.preempted, 1),
        us(f(&prober.max_ns, 2)),
        f(&prober.count, 2),
        f(&prober.over_ms, 2),
        f(&prober.preempted, 2),
    )
}

#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    let line = match case.as_str() {
        "idle1" => idle(1, false),
        "idle2" => idle(2, false),
        "release1" => idle(1, true),
        "release2" => idle(2, true),
        "parked" => parked(),
        "latency" => latency(),
        other => panic!("no case {other}"),
    };
    if spanalloc_mode() && std::env::var("FIGURES_STATS").is_ok() {
        eprintln!("{}", spanalloc::stats());
    }
    println!("\nfigures {line}");
}

// ---------------------------------------------------------------------------
// The table.

/// Peers and where their shared objects may be.
const PEERS: [(&str, &[&str]); 4] = [
    ("glibc", &[]),
    ("mimalloc", &["/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"]),
    ("jemalloc", &["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"]),
    ("snmalloc", &[]), // SNMALLOC_SO
];

fn run(case: &str, peer: Option<(&str, &str)>) -> Option<String> {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1", "--include-ignored"]).env(CASE_VAR, case);
    if let Some((name, so)) = peer {
        cmd.env(PEER_VAR, name);
        if !so.is_empty() {
            cmd.env("LD_PRELOAD", so);
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("figures ")).map(str::to_string);
    if line.is_none() {
        eprintln!("{case} under {peer:?} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    line
}

#[test]
#[ignore = "figures: run by scripts/release-figures.sh"]
fn figures() {
    let cases: Vec<String> = std::env::var("FIGURES_CASES")
        .unwrap_or_else(|_| "idle1 idle2 release1 release2 parked latency".into())
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let peers_wanted =
        std::env::var("FIGURES_PEERS").unwrap_or_else(|_| "spanalloc glibc mimalloc jemalloc snmalloc".into());
    for case in &cases {
        for who in peers_wanted.split_whitespace() {
            // snmalloc's shim is built locally: SNMALLOC_SO names it.
            let snmalloc = std::env::var("SNMALLOC_SO").unwrap_or_default();
            let snmalloc_paths = [snmalloc.as_str()];
            let peer = if who == "spanalloc" {
                None
            } else {
                let Some((name, paths)) = PEERS.iter().find(|(n, _)| *n == who) else { continue };
                let paths: &[&str] = if *name == "snmalloc" { &snmalloc_paths } else { paths };
                if case == "latency" {
                    continue;
                }
                match paths.iter().find(|p| !p.is_empty() && std::path::Path::new(p).exists()) {
                    Some(p) => Some((*name, *p)),
                    None if paths.is_empty() => Some((*name, "")),
                    None => {
                        println!("figures case={case} alloc={who} missing=1");
                        continue;
                    }
                }
            };
            if let Some(line) = run(case, peer) {
                println!("figures case={case} alloc={who} {line}");
            }
        }
    }
}
