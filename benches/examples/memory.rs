//! Resident memory (RSS) of spanalloc and its peers, one allocator per
//! process (RSS is per process).
//!
//! ```text
//! cd benches
//! cargo build --release --example memory
//! target/release/examples/memory spanalloc peak1g
//! ```
//!
//! Two workloads measure the peak and what goes back after the free:
//!
//! - `peak1g`: about 1 GiB of 64 B – 64 KiB objects, allocated on two
//!   threads and every byte written; then everything freed, half of each
//!   thread's objects by the other thread; then about 1.2 s of further
//!   small allocations with short sleeps, as a program that goes on working.
//! - `churn`: two threads each keep about 100,000 live objects of 16 B –
//!   4 KiB and replace random ones, 5 million times each; then everything is
//!   freed, followed by the same 1.2 s of activity.
//!
//! Five run a program-like workload of the criterion suite (the crate's
//! library, `benches/alloc.rs` says what each does) for a fixed number of
//! steps and report its peak (`VmHWM`):
//!
//! - `churn_simple`: 10 million touched steps on 64 slots, one thread;
//! - `churn_thread4`: 2 million touched steps on each of 4 threads;
//! - `larson`: 4 lineages of 1 million replacements each;
//! - `mstress`: 25 rounds (mimalloc-bench's count);
//! - `rptest`: 20,000 loops on each of 4 threads.
//!
//! The workloads call the chosen allocator through `GlobalAlloc` on its
//! static instance; the binary's own global allocator stays the default
//! (glibc) and serves only small std allocations (arguments, threads,
//! channels, and in the last five the random tables and larson's slot
//! vectors: under 1 MiB, alike for every allocator). The objects of
//! `peak1g` and `churn` are chained through their own first words, and
//! their slot arrays come from the allocator under test, so there is no
//! side storage outside it.
//!
//! One line per run, `key=value` fields, sizes in KiB from `/proc/self/status`:
//! `rss_before_kib` (after a warm-up), `peak_kib` (`VmHWM`), `end_live_kib`
//! (churn: at the end with the working set live), `after_free_kib` (at once
//! after the last free), `after_activity_kib` (after the activity),
//! `after_release_kib` (spanalloc: after `spanalloc::release()`; `na` for
//! the peers, which are measured as a user gets them by default). The five
//! peak workloads print `rss_before_kib`, `peak_kib` and `ms` only.
//! `scripts/memory.sh` runs every allocator and workload and tabulates them.

use std::alloc::{GlobalAlloc, Layout};
use std::io::Read;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use spanalloc_benches::mstress::Mstress;
use spanalloc_benches::rptest::Rptest;
use spanalloc_benches::{ALLOCATORS, Rng, WithAllocator, alloc, churn, larson, layout, with_allocator};

/// Bytes each of the two threads allocates in `peak1g`.
const PEAK_PER_THREAD: usize = 512 << 20;
/// Live objects per thread in `churn`.
const CHURN_SLOTS: usize = 100_000;
/// Replacements per thread in `churn`.
const CHURN_OPS: u64 = 5_000_000;
/// How long the activity after the free lasts.
const ACTIVITY: Duration = Duration::from_millis(1200);
/// The length of the peak workloads (see the module documentation).
const CHURN_SIMPLE_STEPS: u64 = 10_000_000;
const CHURN_THREADS: usize = 4;
const CHURN_THREAD_STEPS: u64 = 2_000_000;
const LARSON_THREADS: usize = 4;
const LARSON_STEPS: u64 = 1_000_000;
const MSTRESS_ROUNDS: usize = 25;
const RPTEST_LOOPS: u64 = 20_000;

// ---------------------------------------------------------------------------
// /proc/self/status

/// `VmRSS` and `VmHWM` in KiB.
#[derive(Clone, Copy)]
struct Rss {
    now: u64,
    peak: u64,
}

/// Reads `/proc/self/status` into a stack buffer (no heap allocation: the
/// short path is turned into a C string on the stack too).
fn rss() -> Rss {
    let mut buf = [0u8; 8192];
    let mut len = 0;
    let mut f = std::fs::File::open("/proc/self/status").expect("open /proc/self/status");
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read /proc/self/status: {e}"),
        }
    }
    let field = |name: &[u8]| -> u64 {
        let line = buf[..len]
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {} in /proc/self/status", String::from_utf8_lossy(name)));
        line[name.len()..].iter().filter(|b| b.is_ascii_digit()).fold(0, |n, &d| n * 10 + u64::from(d - b'0'))
    };
    Rss { now: field(b"VmRSS:"), peak: field(b"VmHWM:") }
}

// ---------------------------------------------------------------------------
// Objects

/// Allocates `size >= 16` bytes, writes all of them (so every page is
/// resident) and keeps the size in the second word; the first word is the
/// link of a [`List`].
fn new_obj<A: GlobalAlloc>(a: &A, size: usize, fill: u8) -> *mut usize {
    let p = alloc(a, layout(size));
    // SAFETY: the block has `size >= 16` bytes at alignment 8.
    unsafe {
        p.write_bytes(fill, size);
        let p = p.cast::<usize>();
        p.add(1).write(size);
        p
    }
}

/// Frees an object of [`new_obj`].
///
/// # Safety
///
/// `p` came from `new_obj(a, ..)` and is not used again.
unsafe fn free_obj<A: GlobalAlloc>(a: &A, p: *mut usize) {
    // SAFETY: the object is live and its second word is its size.
    unsafe {
        let size = p.add(1).read();
        a.dealloc(p.cast(), layout(size));
    }
}

/// Objects chained through their first words (addresses as `usize` so a
/// list can move to another thread).
#[derive(Default)]
struct List {
    head: usize,
}

impl List {
    fn push(&mut self, p: *mut usize) {
        // SAFETY: `p` is a live object of `new_obj`, owned by the list now.
        unsafe { p.write(self.head) };
        self.head = p as usize;
    }

    fn pop(&mut self) -> Option<*mut usize> {
        let p = self.head as *mut usize;
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` is the list's live head object.
        self.head = unsafe { p.read() };
        Some(p)
    }

    /// Splits into the objects at even and at odd positions.
    fn split(mut self) -> (List, List) {
        let (mut even, mut odd) = (List::default(), List::default());
        while let Some(p) = self.pop() {
            even.push(p);
            if let Some(q) = self.pop() {
                odd.push(q);
            }
        }
        (even, odd)
    }

    /// Frees every object.
    ///
    /// # Safety
    ///
    /// The objects came from `new_obj(a, ..)`.
    unsafe fn free<A: GlobalAlloc>(mut self, a: &A) {
        while let Some(p) = self.pop() {
            // SAFETY: the caller's contract; popped, so used no more.
            unsafe { free_obj(a, p) };
        }
    }
}

/// A few thousand small allocations of many sizes, all freed: a program
/// that goes on working.
fn activity<A: GlobalAlloc>(a: &A) {
    let mut l = List::default();
    for i in 0..2000 {
        l.push(new_obj(a, 16 + i % 3000, 1));
    }
    // SAFETY: every object came from `new_obj(a, ..)`.
    unsafe { l.free(a) };
}

/// [`activity`] every 10 ms for [`ACTIVITY`].
fn keep_working<A: GlobalAlloc>(a: &A) {
    let start = Instant::now();
    while start.elapsed() < ACTIVITY {
        activity(a);
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Workloads

/// The figures of one run.
#[derive(Default)]
struct Report {
    before: u64,
    peak: u64,
    end_live: Option<u64>,
    after_free: u64,
    after_activity: u64,
    after_release: Option<u64>,
    ms: u128,
}

/// Warms up (the allocator's and std's start-up allocations, and one
/// thread, whose stack glibc keeps for reuse) and returns RSS then.
fn warm_up<A: GlobalAlloc + Sync + 'static>(a: &'static A) -> u64 {
    std::thread::spawn(move || activity(a)).join().expect("warm-up thread");
    activity(a);
    rss().now
}

/// About `PEAK_PER_THREAD` bytes: 97.6 % of the objects 64 B – 1 KiB,
/// 1.9 % 1 – 32 KiB, 0.5 % 32 – 64 KiB (roughly half the bytes small, a
/// third medium, a fifth large).
fn fill<A: GlobalAlloc>(a: &A, seed: u64) -> List {
    let mut rng = Rng::new(seed);
    let mut list = List::default();
    let mut total = 0;
    while total < PEAK_PER_THREAD {
        let size = match rng.below(1000) {
            0..976 => 64 + rng.below(961),
            976..995 => 1024 + rng.below(31 * 1024 + 1),
            _ => (32 << 10) + rng.below((32 << 10) + 1),
        } as usize;
        list.push(new_obj(a, size, seed as u8));
        total += size;
    }
    list
}

/// `peak1g`: see the module documentation.
fn peak1g<A: GlobalAlloc + Sync + 'static>(a: &'static A) -> Report {
    let mut r = Report { before: warm_up(a), ..Report::default() };
    let start = Instant::now();
    let peak_reached = Arc::new(Barrier::new(2));
    let (to_helper, from_main) = mpsc::channel::<List>();
    let (to_main, from_helper) = mpsc::channel::<List>();
    let helper = {
        let peak_reached = peak_reached.clone();
        std::thread::spawn(move || {
            let (mine, theirs) = fill(a, 2).split();
            peak_reached.wait();
            peak_reached.wait();
            to_main.send(theirs).expect("main thread gone");
            let given = from_main.recv().expect("main thread gone");
            // SAFETY: both lists hold objects of `new_obj(a, ..)`.
            unsafe {
                mine.free(a);
                given.free(a);
            }
        })
    };
    let (mine, theirs) = fill(a, 1).split();
    peak_reached.wait();
    r.peak = rss().peak;
    peak_reached.wait();
    to_helper.send(theirs).expect("helper thread gone");
    let given = from_helper.recv().expect("helper thread gone");
    // SAFETY: both lists hold objects of `new_obj(a, ..)`.
    unsafe {
        mine.free(a);
        given.free(a);
    }
    helper.join().expect("helper thread");
    r.ms = start.elapsed().as_millis();
    r.after_free = rss().now;
    keep_working(a);
    r.after_activity = rss().now;
    r
}

/// One thread's churn: fills its slots, replaces `CHURN_OPS` random
/// objects, runs `at_end` while both threads' working sets are live (the
/// two threads meet at `end` before and after it), then frees everything.
fn churn_thread<A: GlobalAlloc>(a: &A, seed: u64, end: &Barrier, at_end: impl FnOnce()) {
    let mut rng = Rng::new(seed);
    // Log-uniform in 16 B .. 4 KiB.
    let mut size = move || {
        let e = 4 + rng.below(8);
        ((1u64 << e) + rng.below(1 << e)) as usize
    };
    let slots_layout = Layout::array::<*mut usize>(CHURN_SLOTS).expect("slots layout");
    let slots = alloc(a, slots_layout).cast::<*mut usize>();
    for i in 0..CHURN_SLOTS {
        // SAFETY: `i < CHURN_SLOTS`, the array's length.
        unsafe { slots.add(i).write(new_obj(a, size(), seed as u8)) };
    }
    let mut pick = Rng::new(seed + 1000);
    for op in 0..CHURN_OPS {
        // SAFETY: the index is below `CHURN_SLOTS`; every slot holds a live
        // object of `new_obj`, replaced at once after its free.
        unsafe {
            let slot = slots.add(pick.below(CHURN_SLOTS as u64) as usize);
            free_obj(a, slot.read());
            slot.write(new_obj(a, size(), op as u8));
        }
    }
    end.wait();
    at_end();
    end.wait();
    for i in 0..CHURN_SLOTS {
        // SAFETY: as above; each object is freed once.
        unsafe { free_obj(a, slots.add(i).read()) };
    }
    // SAFETY: allocated above with `slots_layout`.
    unsafe { a.dealloc(slots.cast(), slots_layout) };
}

/// `churn`: see the module documentation.
fn churn<A: GlobalAlloc + Sync + 'static>(a: &'static A) -> Report {
    let mut r = Report { before: warm_up(a), ..Report::default() };
    let start = Instant::now();
    let end = Arc::new(Barrier::new(2));
    let helper = {
        let end = end.clone();
        std::thread::spawn(move || churn_thread(a, 2, &end, || {}))
    };
    churn_thread(a, 1, &end, || r.end_live = Some(rss().now));
    helper.join().expect("helper thread");
    r.ms = start.elapsed().as_millis();
    r.peak = rss().peak;
    r.after_free = rss().now;
    keep_working(a);
    r.after_activity = rss().now;
    r
}

/// A peak workload: warms up, runs `work`, and reports the peak.
fn peak<A: GlobalAlloc + Sync + 'static>(a: &'static A, work: impl FnOnce()) -> Report {
    let before = warm_up(a);
    let start = Instant::now();
    work();
    Report { before, peak: rss().peak, ms: start.elapsed().as_millis(), ..Report::default() }
}

/// The workloads by name.
struct Workload<'a>(&'a str);

impl WithAllocator for Workload<'_> {
    type Output = ();

    fn run<A: GlobalAlloc + Sync + 'static>(self, a: &'static A, name: &'static str) {
        let workload = self.0;
        let r = match workload {
            "peak1g" => peak1g(a),
            "churn" => churn(a),
            "churn_simple" => peak(a, || churn::Churn::new(a, 1).steps::<true>(CHURN_SIMPLE_STEPS)),
            "churn_thread4" => peak(a, || {
                churn::crew(a, CHURN_THREADS).run(CHURN_THREAD_STEPS);
            }),
            "larson" => peak(a, || {
                larson::run(a, LARSON_THREADS, LARSON_STEPS);
            }),
            "mstress" => peak(a, || {
                let mut m = Mstress::new(a);
                for _ in 0..MSTRESS_ROUNDS {
                    m.round();
                }
            }),
            "rptest" => peak(a, || {
                Rptest::new(a, spanalloc_benches::rptest::THREADS).run(RPTEST_LOOPS);
            }),
            other => {
                eprintln!(
                    "memory: unknown workload {other} (peak1g, churn, churn_simple, churn_thread4, larson, mstress, rptest)"
                );
                std::process::exit(2);
            }
        };
        print(r, name, workload);
    }
}

/// Prints a run's line.
fn print(mut r: Report, name: &str, workload: &str) {
    if !matches!(workload, "peak1g" | "churn") {
        println!("allocator={name} workload={workload} rss_before_kib={} peak_kib={} ms={}", r.before, r.peak, r.ms);
        return;
    }
    if name == "spanalloc" {
        spanalloc::release();
        r.after_release = Some(rss().now);
    }
    let opt = |v: Option<u64>| v.map_or_else(|| "na".to_string(), |v| v.to_string());
    println!(
        "allocator={name} workload={workload} rss_before_kib={} peak_kib={} end_live_kib={} \
         after_free_kib={} after_activity_kib={} after_release_kib={} ms={}",
        r.before,
        r.peak,
        opt(r.end_live),
        r.after_free,
        r.after_activity,
        opt(r.after_release),
        r.ms,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, allocator, workload] = args.as_slice() else {
        eprintln!(
            "usage: memory <{}> <peak1g|churn|churn_simple|churn_thread4|larson|mstress|rptest>",
            ALLOCATORS.join("|")
        );
        std::process::exit(2);
    };
    if with_allocator(allocator, Workload(workload)).is_none() {
        eprintln!("memory: unknown allocator {allocator}");
        std::process::exit(2);
    }
}
