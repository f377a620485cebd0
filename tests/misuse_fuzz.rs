//! Double frees are always caught: a fuzz test of their detection.
//!
//! Each trial is a child process (this test binary again, told its kind and
//! seed by `SPANALLOC_FUZZ_TRIAL`) in which two or three worker threads
//! churn objects of mixed sizes, 8 B to 100 KiB (small classes and large
//! objects, some aligned to 16, 64 or 4096), allocating, resizing and
//! freeing through `std::alloc`, and handing about a quarter of the objects
//! they free to another worker, which frees them (remote frees). At a
//! random moment every worker stops (a barrier) and one random live object,
//! the *victim*, is freed twice, in one of three kinds:
//!
//! - **at-once**: one thread frees it twice in a row: the thread that
//!   allocated it (`owner`), or another one (`other`).
//! - **after-allocs**: a thread frees it, then the class is busy: that
//!   thread frees more objects of the victim's layout and allocates some
//!   (more than it freed, in one trial in five), and the other workers
//!   allocate and free objects of the layout too; then, with everybody
//!   stopped again, it is freed a second time. `owner-owner` and
//!   `other-other` free it twice on one thread, `owner-other` and
//!   `other-owner` on two.
//! - **split**: it is freed on one thread and then on another, with
//!   everybody stopped in between: the owner first and another thread
//!   second (`owner-other`), another thread first and the owner second
//!   (`other-owner`), or two threads that are not the owner
//!   (`other-another`).
//!
//! The combination follows from the seed (`seed % combinations`), so
//! consecutive seeds cover all of them.
//!
//! After the double free the workers churn on, then free everything and
//! exit, and the process releases its memory: the exits flush every cache
//! and the release merges every span. A free by the owner after another
//! thread's is only noticed when the owner's cache hands the object out
//! again, or merges or gives back its span, so the seed also varies what
//! comes after: in two trials in three the workers allocate the victim's
//! layout often; in one in five the thread that made the second free exits
//! at once. In one trial in six every worker sleeps past a scavenger tick
//! (250 ms) during the churn, and in one in six right after the first free,
//! so that the next slow paths trim the caches and retire empty spans; in
//! one in five the first free of a small victim is a `realloc` that moves
//! it to another class. A child that gets to its end was not stopped: it
//! prints `fuzz-no-abort` and exits with status 3.
//!
//! # Handed out twice
//!
//! A missed double free leaves the object free twice, so the allocator
//! hands it out twice. The child looks for that in two ways. The global
//! allocator is spanalloc behind a thin wrapper that keeps the set of
//! every live address (every allocation of the process, std's own
//! included, in a fixed table outside the heap): an address handed out
//! while it is live ends the child at once. And the workers keep the
//! ranges of their objects in a sorted map, so an object that overlaps a
//! live one is caught too; every object carries its id in its first and
//! last words, checked when it is resized or freed, so one written through
//! another handle is caught. Any of these prints a `fuzz-twice` line and
//! exits with status 4.
//!
//! # Excluded trials
//!
//! Between the two frees of an `after-allocs` trial the victim's address
//! may be handed out again, legitimately: then the second free is a valid
//! free of the new object, not a double free. The wrapper sees every
//! allocation while a trial's victim is being watched; if one returned the
//! victim's address, the second free is skipped and the child exits with
//! status 5 (`fuzz-excluded`). The other kinds allocate nothing between
//! the frees (everyone else is stopped at a barrier, and the freer does
//! nothing else), so they have no excluded trials.
//!
//! # The reports accepted
//!
//! Every counted trial must end in `SIGABRT` with a spanalloc report that
//! names the victim's address and says one of:
//!
//! - `double free of <addr>`: the object's bits, or a large object's
//!   kept state, say it is free. Required for `at-once` of a large object,
//!   and of any object freed twice by its owner: the first free left it in
//!   that thread's cache, where nothing can move it before the second.
//! - `free of <addr>: spanalloc did not allocate this pointer`: between the
//!   frees the victim's pages left every span (the span became wholly free
//!   and went back to the mheap, or a large object's pages went back), so
//!   the pointer is now indistinguishable from a foreign one; the report
//!   says "or already freed".
//! - `free of <addr>: layout size ... does not match` or `not the start of
//!   an object`: the pages went back and then came out again in a span of
//!   other objects. Only possible where something was allocated between
//!   the frees: `after-allocs`, or when the wrapper saw an allocation
//!   overlap the victim.
//!
//! The tests print, per kind and combination, how many trials there were,
//! which report each ended in, and how many were caught only after the
//! second free had returned.
//!
//! # Running
//!
//! Rerun one trial (its child's output is printed in full):
//!
//! ```sh
//! SPANALLOC_FUZZ_KIND=split SPANALLOC_FUZZ_SEED=7 cargo test --test misuse_fuzz -- --nocapture
//! ```
//!
//! `SPANALLOC_FUZZ_TRIALS=n` runs `n` trials of each kind,
//! `SPANALLOC_FUZZ_BASE_SEED=s` starts at seed `s` instead of 1.
//!
//! The test must fail where detection is absent. Building it with
//! `SPANALLOC_FUZZ_INNER=naive` puts a size-bucketed free-list allocator
//! that checks nothing behind the wrapper: every trial must then fail
//! (handed out twice, or no abort). `SPANALLOC_FUZZ_INNER=system` puts
//! glibc's malloc there: it catches some double frees itself, with its own
//! message, which is not spanalloc's report, and misses others.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Barrier, Mutex};

use spanalloc::sizeclass::{CLASSES, MAX_SMALL, PAGE_SIZE, class_of};
use support::{Rng, run_child};

mod support;

/// The child's exit status when it ran to the end: the double free was missed.
const NO_ABORT: i32 = 3;
/// ... when it saw an object handed out twice (or written through another handle).
const TWICE: i32 = 4;
/// ... when the victim's address came back before the second free.
const EXCLUDED: i32 = 5;

/// A child still running after this long is hung (it ends by SIGALRM).
const HANG_SECS: u32 = 60;

const TRIAL_VAR: &str = "SPANALLOC_FUZZ_TRIAL";

// ---------------------------------------------------------------------------
// The global allocator: spanalloc behind a wrapper that watches addresses.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Inner {
    SpanAlloc,
    System,
    Naive,
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The allocator behind the wrapper, chosen when the test is built.
const INNER: Inner = match option_env!("SPANALLOC_FUZZ_INNER") {
    None => Inner::SpanAlloc,
    Some(s) if same(s, "spanalloc") => Inner::SpanAlloc,
    Some(s) if same(s, "system") => Inner::System,
    Some(s) if same(s, "naive") => Inner::Naive,
    Some(_) => panic!("SPANALLOC_FUZZ_INNER is one of spanalloc, system, naive"),
};

fn inner() -> &'static dyn GlobalAlloc {
    match INNER {
        Inner::SpanAlloc => &spanalloc::SpanAlloc,
        Inner::System => &System,
        Inner::Naive => &Naive,
    }
}

/// Forwards to [`INNER`]; keeps every live address in [`live`] and shows
/// every allocation to [`watch`].
struct Watched;

#[global_allocator]
static GLOBAL: Watched = Watched;

// SAFETY: forwards every call to an allocator that keeps the contract.
unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { inner().alloc(layout) };
        handed_out(p, layout);
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { inner().alloc_zeroed(layout) };
        handed_out(p, layout);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Before the free: once freed, another thread may be handed it.
        live::remove(ptr as usize);
        // SAFETY: forwarded.
        unsafe { inner().dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        live::remove(ptr as usize);
        // SAFETY: forwarded.
        let p = unsafe { inner().realloc(ptr, layout, new_size) };
        if p.is_null() {
            // Still live at its old address.
            if !live::insert(ptr as usize) {
                handed_out_twice(ptr as usize);
            }
        } else {
            // SAFETY: GlobalAlloc::realloc's contract: a valid layout.
            handed_out(p, unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) });
        }
        p
    }
}

/// Records a block the allocator just handed out.
#[inline]
fn handed_out(p: *mut u8, layout: Layout) {
    if p.is_null() {
        return;
    }
    watch::note(p as usize, layout);
    if !live::insert(p as usize) {
        handed_out_twice(p as usize);
    }
}

/// Ends the child: the allocator handed out an address that is live. Runs
/// inside the global allocator, so it formats on the stack and writes
/// with `write(2)`.
fn handed_out_twice(addr: usize) -> ! {
    let mut buf = [0u8; 128];
    let mut w = &mut buf[..];
    let _ = write!(w, "\nfuzz-twice {addr:#x} was handed out while it was live\n");
    let n = 128 - w.len();
    // SAFETY: writes `n` initialized bytes; `_exit` ends the process.
    unsafe {
        libc::write(1, buf.as_ptr().cast(), n);
        libc::write(2, buf.as_ptr().cast(), n);
        libc::_exit(TWICE)
    }
}

/// The bytes an allocation of `layout` really spans in spanalloc: its size
/// class, or whole pages.
fn extent(layout: Layout) -> usize {
    match class_of(layout.size(), layout.align()) {
        0 => layout.size().max(1).next_multiple_of(PAGE_SIZE),
        c => CLASSES[c].size as usize,
    }
}

/// The set of live addresses: open addressing with linear probing in a
/// static table (no allocation), under a spin lock that is never held
/// across a call into the allocator.
mod live {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

    const BITS: u32 = 16;
    const SLOTS: usize = 1 << BITS;
    const MASK: usize = SLOTS - 1;

    static LOCK: AtomicBool = AtomicBool::new(false);
    /// Addresses; 0 is an empty slot. Under LOCK.
    static TABLE: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static COUNT: AtomicUsize = AtomicUsize::new(0);

    fn home(addr: usize) -> usize {
        ((addr as u64 >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS)) as usize
    }

    fn lock() {
        let mut spins = 0u32;
        while LOCK.compare_exchange_weak(false, true, std::sync::atomic::Ordering::Acquire, Relaxed).is_err() {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn unlock() {
        LOCK.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Adds `addr`; false if it is in the set already. Beyond three
    /// quarters full, new addresses are not tracked (the workers keep far
    /// fewer objects than that).
    pub fn insert(addr: usize) -> bool {
        lock();
        let mut i = home(addr);
        let fresh = loop {
            match TABLE[i].load(Relaxed) {
                v if v == addr => break false,
                0 => {
                    if COUNT.load(Relaxed) < SLOTS / 4 * 3 {
                        TABLE[i].store(addr, Relaxed);
                        COUNT.store(COUNT.load(Relaxed) + 1, Relaxed);
                    }
                    break true;
                }
                _ => i = (i + 1) & MASK,
            }
        };
        unlock();
        fresh
    }

    /// Removes `addr` if it is in the set (backward-shift deletion, so
    /// the table needs no tombstones).
    pub fn remove(addr: usize) {
        lock();
        let mut i = home(addr);
        loop {
            match TABLE[i].load(Relaxed) {
                0 => {
                    unlock();
                    return;
                }
                v if v == addr => break,
                _ => i = (i + 1) & MASK,
            }
        }
        let mut j = i;
        loop {
            j = (j + 1) & MASK;
            let v = TABLE[j].load(Relaxed);
            if v == 0 {
                break;
            }
            // `v` may fill the hole at `i` unless its home lies
            // cyclically in (i, j].
            let k = home(v);
            let stays = if i <= j { i < k && k <= j } else { i < k || k <= j };
            if !stays {
                TABLE[i].store(v, Relaxed);
                i = j;
            }
        }
        TABLE[i].store(0, Relaxed);
        COUNT.store(COUNT.load(Relaxed) - 1, Relaxed);
        unlock();
    }
}

/// The victim under watch, between its first and second free: did any
/// allocation hand out its address again, or memory overlapping it?
mod watch {
    use std::alloc::Layout;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// The victim's address came back.
    pub const EXACT: usize = 1;
    /// A block overlapping the victim's memory was handed out.
    pub const OVERLAP: usize = 2;

    static ADDR: AtomicUsize = AtomicUsize::new(0);
    static EXTENT: AtomicUsize = AtomicUsize::new(0);
    static SEEN: AtomicUsize = AtomicUsize::new(0);

    pub fn arm(addr: usize, extent: usize) {
        EXTENT.store(extent, SeqCst);
        SEEN.store(0, SeqCst);
        ADDR.store(addr, SeqCst);
    }

    pub fn seen() -> usize {
        SEEN.load(SeqCst)
    }

    #[inline]
    pub fn note(p: usize, layout: Layout) {
        let a = ADDR.load(SeqCst);
        if a == 0 {
            return;
        }
        if p == a {
            SEEN.fetch_or(EXACT, SeqCst);
        } else if (p < a && a < p + super::extent(layout)) || (a < p && p < a + EXTENT.load(SeqCst)) {
            SEEN.fetch_or(OVERLAP, SeqCst);
        }
    }
}

/// An allocator that detects nothing, to show that the test fails without
/// detection: per (power-of-two size, alignment) a free list linked
/// through the objects' first words, over `System`. A second free of an
/// object links it to itself, so it is handed out twice.
struct Naive;

const NAIVE_MAX: usize = 128 << 10;
static NAIVE_LOCK: AtomicBool = AtomicBool::new(false);
static NAIVE_HEADS: [[AtomicUsize; 13]; 18] = [const { [const { AtomicUsize::new(0) }; 13] }; 18];

impl Naive {
    /// The free list of `layout`, or None for blocks it passes to System.
    fn list(layout: Layout) -> Option<(&'static AtomicUsize, Layout)> {
        let (size, align) = (layout.size().max(16).next_power_of_two(), layout.align().max(16));
        if size > NAIVE_MAX || align > 4096 {
            return None;
        }
        let head = &NAIVE_HEADS[size.trailing_zeros() as usize][align.trailing_zeros() as usize];
        Some((head, Layout::from_size_align(size, align).unwrap()))
    }

    fn locked<R>(f: impl FnOnce() -> R) -> R {
        while NAIVE_LOCK.swap(true, Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let r = f();
        NAIVE_LOCK.store(false, Ordering::Release);
        r
    }
}

// SAFETY: blocks come from System with at least the layout's size and
// alignment; a block is reused only for its own bucket. (Double frees, which
// the contract forbids, are what it leaves undetected on purpose.)
unsafe impl GlobalAlloc for Naive {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((head, bucket)) = Naive::list(layout) else {
            // SAFETY: forwarded.
            return unsafe { System.alloc(layout) };
        };
        let p = Naive::locked(|| {
            let p = head.load(Ordering::Relaxed);
            if p != 0 {
                // SAFETY: a listed block holds the next one's address.
                head.store(unsafe { (p as *const usize).read() }, Ordering::Relaxed);
            }
            p
        });
        if p != 0 {
            return p as *mut u8;
        }
        // SAFETY: a non-zero size.
        unsafe { System.alloc(bucket) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((head, _)) = Naive::list(layout) else {
            // SAFETY: forwarded.
            return unsafe { System.dealloc(ptr, layout) };
        };
        // SAFETY: the block is at least 16 bytes and ours again.
        Naive::locked(|| unsafe {
            (ptr as *mut usize).write(head.load(Ordering::Relaxed));
            head.store(ptr as usize, Ordering::Relaxed);
        });
    }
}

// ---------------------------------------------------------------------------
// Trials: kinds, combinations, plans.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    AtOnce,
    AfterAllocs,
    Split,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::AtOnce, Kind::AfterAllocs, Kind::Split];

    fn name(self) -> &'static str {
        match self {
            Kind::AtOnce => "at-once",
            Kind::AfterAllocs => "after-allocs",
            Kind::Split => "split",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Who frees first and who second: the victim's owner (the thread
    /// that allocated it), another thread (`other`, the same one when it
    /// appears twice), or a third one (`another`).
    fn combos(self) -> &'static [&'static str] {
        match self {
            Kind::AtOnce => &["owner", "other"],
            Kind::AfterAllocs => &["owner-owner", "owner-other", "other-owner", "other-other"],
            Kind::Split => &["owner-other", "other-owner", "other-another"],
        }
    }

    /// Trials per kind by default: after-allocs has excluded trials.
    fn default_trials(self) -> u64 {
        match self {
            Kind::AtOnce => 40,
            Kind::AfterAllocs | Kind::Split => 60,
        }
    }
}

/// What a trial does, from its kind and seed alone.
struct Plan {
    kind: Kind,
    combo: &'static str,
    workers: usize,
    /// Steps each worker churns before the double free, and after it.
    before: [usize; 3],
    after: usize,
    owner: usize,
    first: usize,
    second: usize,
    /// Sleep longer than a scavenger tick at some step before the double
    /// free, and right after the first free, so that the caches' trims and
    /// the heap's tick run at their next slow paths (spans given back,
    /// kept large objects returned, empty spans retired).
    pause_before: Option<usize>,
    pause_mid: bool,
    /// The first free is a `realloc` of a small victim to another class
    /// (which moves it) rather than a `dealloc`.
    first_by_realloc: bool,
    /// After the double free, the workers allocate the victim's layout
    /// often (its owner's cache then hands out the object again soon);
    /// else only as the random mix does, and the allocator has to catch
    /// the double free when it merges or flushes.
    bias_after: bool,
    /// The thread that made the second free exits at once (its cache's
    /// flush has to catch the double free, or leave it to be caught).
    quit_after: bool,
}

/// Longer than spanalloc's scavenger tick (250 ms).
const PAUSE: std::time::Duration = std::time::Duration::from_millis(260);

impl Plan {
    fn new(kind: Kind, seed: u64) -> Plan {
        let mut rng = Rng::new(seed ^ 0xD0B1_E5EE);
        let combos = kind.combos();
        let combo = combos[(seed % combos.len() as u64) as usize];
        let workers = if combo.ends_with("another") { 3 } else { 2 + rng.below(2) as usize };
        let owner = rng.below(workers as u64) as usize;
        let other = (owner + 1 + rng.below(workers as u64 - 1) as usize) % workers;
        let another = 3 - owner - other; // only used with 3 workers
        let (first, second) = match combo {
            "owner" | "owner-owner" => (owner, owner),
            "other" | "other-other" => (other, other),
            "owner-other" => (owner, other),
            "other-owner" => (other, owner),
            "other-another" => (other, another),
            _ => unreachable!(),
        };
        let before = [(); 3].map(|_| 500 + rng.below(5000) as usize);
        let after = 1000 + rng.below(2000) as usize;
        let pause_before = (rng.below(6) == 0).then(|| rng.below(before[0] as u64) as usize);
        let pause_mid = rng.below(6) == 0;
        let first_by_realloc = rng.below(5) == 0;
        let bias_after = rng.below(3) != 0;
        let quit_after = rng.below(5) == 0;
        Plan {
            kind,
            combo,
            workers,
            before,
            after,
            owner,
            first,
            second,
            pause_before,
            pause_mid,
            first_by_realloc,
            bias_after,
            quit_after,
        }
    }
}

// ---------------------------------------------------------------------------
// The child: workers and the double free.

const MAX_LIVE: usize = 256;
const MAX_BYTES: usize = 3 << 20;

/// A worker's object: its id is in its first and last words.
#[derive(Clone, Copy, Debug)]
struct Obj {
    addr: usize,
    layout: Layout,
    id: u64,
}

struct Shared {
    plan: Plan,
    barrier: Barrier,
    /// The last meeting: every worker but one that quit early.
    end: Barrier,
    /// The victim, once its owner picked it.
    victim: Mutex<Option<Obj>>,
    /// Every worker object's range: start → (end, id).
    ranges: Mutex<BTreeMap<usize, (usize, u64)>>,
}

struct Worker<'a> {
    me: usize,
    rng: Rng,
    live: Vec<Obj>,
    bytes: usize,
    next_id: u64,
    inbox: Receiver<Obj>,
    peers: Vec<Sender<Obj>>,
    /// A worker that has stopped taking objects.
    gone: Option<usize>,
    sh: &'a Shared,
}

/// Prints a child's line to stdout at once (`\n` first, to stand apart
/// from the test harness's output).
fn say(line: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{line}");
    let _ = out.flush();
}

/// Ends the child: an object was handed out twice or overwritten.
fn twice(line: std::fmt::Arguments) -> ! {
    say(format_args!("fuzz-twice {line}"));
    // SAFETY: ends the process (no exit handlers that might allocate).
    unsafe { libc::_exit(TWICE) }
}

fn random_layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(100) {
        0..60 => 8 + rng.below(249),
        60..80 => 257 + rng.below(4096 - 257),
        80..92 => 4096 + rng.below(MAX_SMALL as u64 - 4096 + 1),
        _ => MAX_SMALL as u64 + 1 + rng.below((100 << 10) - MAX_SMALL as u64),
    } as usize;
    let align = match rng.below(100) {
        0..85 => 8,
        85..92 => 16,
        92..97 => 64,
        _ => 4096,
    };
    Layout::from_size_align(size, align).unwrap()
}

/// Objects of `layout` a cache stacks before it flushes (spanalloc keeps
/// 32 KiB of objects per class, 4 to 256; large objects: 8 kept).
fn stack_cap(layout: Layout) -> usize {
    match class_of(layout.size(), layout.align()) {
        0 => 8,
        c => ((32 << 10) / CLASSES[c].size as usize).clamp(4, 256),
    }
}

impl Worker<'_> {
    fn alloc(&mut self, layout: Layout) -> Obj {
        // SAFETY: sizes are at least 8.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        assert_eq!(p as usize % layout.align(), 0, "{layout:?} misaligned at {p:p}");
        self.next_id += 1;
        let obj = Obj { addr: p as usize, layout, id: (self.me as u64) << 56 | self.next_id };
        write_pattern(&obj);
        self.register(&obj);
        obj
    }

    /// Adds `obj` to the ranges, unless it overlaps a live object.
    fn register(&self, obj: &Obj) {
        let end = obj.addr + obj.layout.size();
        let mut ranges = self.sh.ranges.lock().unwrap();
        // The live range starting last before `end` is the only one that
        // can overlap (live ranges are disjoint).
        if let Some((&start, &(e, id))) = ranges.range(..end).next_back()
            && e > obj.addr
        {
            twice(format_args!(
                "{:#x} ({:?}, object {:#x}) overlaps the live object {start:#x}..{e:#x} (object {id:#x})",
                obj.addr, obj.layout, obj.id
            ));
        }
        ranges.insert(obj.addr, (end, obj.id));
    }

    fn unregister(&self, obj: &Obj) {
        let got = self.sh.ranges.lock().unwrap().remove(&obj.addr);
        assert_eq!(got, Some((obj.addr + obj.layout.size(), obj.id)), "object {obj:?} not registered");
    }

    fn keep(&mut self, obj: Obj) {
        self.bytes += obj.layout.size();
        self.live.push(obj);
    }

    fn take_random(&mut self) -> Option<Obj> {
        if self.live.is_empty() {
            return None;
        }
        let obj = self.live.swap_remove(self.rng.below(self.live.len() as u64) as usize);
        self.bytes -= obj.layout.size();
        Some(obj)
    }

    fn free(&self, obj: Obj) {
        check_pattern(&obj);
        self.unregister(&obj);
        // SAFETY: allocated with this layout and live.
        unsafe { std::alloc::dealloc(obj.addr as *mut u8, obj.layout) };
    }

    fn hand_over(&mut self, obj: Obj) {
        let n = self.peers.len();
        let to = (self.me + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        if Some(to) == self.gone {
            return self.free(obj);
        }
        self.peers[to].send(obj).expect("a peer's inbox");
    }

    fn realloc(&mut self, obj: Obj) -> Obj {
        check_pattern(&obj);
        self.unregister(&obj);
        let old = obj.layout.size();
        let new = match self.rng.below(3) {
            0 => (old / 2).max(8),
            1 => old + self.rng.below(64) as usize,
            _ => (old * 2).min(100 << 10).max(old),
        };
        // SAFETY: allocated with this layout; a non-zero size.
        let p = unsafe { std::alloc::realloc(obj.addr as *mut u8, obj.layout, new) };
        if p.is_null() {
            std::alloc::handle_alloc_error(obj.layout);
        }
        let moved = Obj { addr: p as usize, layout: Layout::from_size_align(new, obj.layout.align()).unwrap(), ..obj };
        assert_eq!(moved.addr % moved.layout.align(), 0, "realloc to {:?} misaligned", moved.layout);
        // SAFETY: the first word came along (at least 8 bytes kept).
        if unsafe { (moved.addr as *const u64).read() } != obj.id {
            twice(format_args!("object {:#x} lost its first word in a realloc to {:#x}", obj.id, moved.addr));
        }
        write_pattern(&moved);
        self.register(&moved);
        moved
    }

    fn drain_inbox(&mut self) {
        while let Ok(obj) = self.inbox.try_recv() {
            self.free(obj);
        }
    }

    /// One random step; `bias` is a layout to allocate often.
    fn step(&mut self, bias: Option<Layout>) {
        self.drain_inbox();
        let full = self.live.len() >= MAX_LIVE || self.bytes >= MAX_BYTES;
        if let Some(layout) = bias
            && !full
            && self.rng.below(3) == 0
        {
            let obj = self.alloc(layout);
            self.keep(obj);
        }
        match self.rng.below(100) {
            0..50 if !full => {
                let layout = random_layout(&mut self.rng);
                let obj = self.alloc(layout);
                self.keep(obj);
            }
            0..72 => {
                if let Some(obj) = self.take_random() {
                    self.free(obj);
                }
            }
            72..80 => {
                if let Some(obj) = self.take_random() {
                    self.hand_over(obj);
                }
            }
            80..90 => {
                if let Some(obj) = self.take_random() {
                    let obj = self.realloc(obj);
                    self.keep(obj);
                }
            }
            _ => {
                if let Some(obj) = self.take_random() {
                    let layout = obj.layout;
                    self.free(obj);
                    let obj = self.alloc(layout);
                    self.keep(obj);
                }
            }
        }
    }

    fn churn(&mut self, steps: usize, bias: Option<Layout>) {
        for _ in 0..steps {
            self.step(bias);
        }
    }

    /// The owner picks the victim among its live objects: a large or an
    /// over-aligned one in some trials, so that those paths get their share.
    fn pick_victim(&mut self) -> Obj {
        let want: fn(&Obj) -> bool = match self.rng.below(10) {
            0..2 => |o| o.layout.size() > MAX_SMALL,
            2..4 => |o| o.layout.align() > 8,
            _ => |_| true,
        };
        let candidates: Vec<usize> = (0..self.live.len()).filter(|&i| want(&self.live[i])).collect();
        let obj = if let Some(&i) = candidates.get(self.rng.below(candidates.len() as u64) as usize) {
            self.bytes -= self.live[i].layout.size();
            self.live.swap_remove(i)
        } else if let Some(obj) = self.take_random() {
            obj
        } else {
            let layout = random_layout(&mut self.rng);
            self.alloc(layout)
        };
        check_pattern(&obj);
        self.unregister(&obj);
        obj
    }

    /// after-allocs: the first freer's objects of the victim's layout
    /// before the first free, to free some of them (and allocate) after it.
    fn class_objects(&mut self, layout: Layout) -> Vec<Obj> {
        let n = self.rng.below(2 * stack_cap(layout) as u64 + 8) as usize;
        let n = n.min((6 << 20) / extent(layout));
        (0..n).map(|_| self.alloc(layout)).collect()
    }

    /// after-allocs: the class is busy between the two frees. The first
    /// freer frees some of its class objects, then allocates as many or
    /// fewer (so its cache hands out those first, not the victim), except in
    /// one trial in five, where it allocates more (the victim is then
    /// likely to come back, and the trial is excluded). The others allocate
    /// objects of the layout, a few or up to a cache's stack of them, and
    /// free some.
    fn class_activity(&mut self, layout: Layout, mut mine: Vec<Obj>) {
        if self.me == self.sh.plan.first {
            let k = self.rng.below(mine.len() as u64 + 1) as usize;
            let j = if self.rng.below(5) == 0 {
                k + 1 + self.rng.below(8) as usize
            } else {
                self.rng.below(k as u64 + 1) as usize
            };
            for _ in 0..k {
                let obj = mine.swap_remove(self.rng.below(mine.len() as u64) as usize);
                self.free(obj);
            }
            for _ in 0..j {
                mine.push(self.alloc(layout));
            }
        } else {
            let r =
                if self.rng.below(2) == 0 { self.rng.below(stack_cap(layout) as u64 + 1) } else { self.rng.below(8) };
            let r = (r as usize).min((3 << 20) / extent(layout));
            for _ in 0..r {
                mine.push(self.alloc(layout));
            }
            for _ in 0..self.rng.below(mine.len() as u64 + 1) {
                let obj = mine.swap_remove(self.rng.below(mine.len() as u64) as usize);
                self.free(obj);
            }
        }
        for obj in mine {
            self.keep(obj);
        }
    }
}

fn write_pattern(obj: &Obj) {
    let size = obj.layout.size();
    // SAFETY: the object holds `size` (at least 8) bytes, 8-aligned.
    unsafe {
        (obj.addr as *mut u64).write(obj.id);
        if size >= 16 {
            ((obj.addr + size / 8 * 8 - 8) as *mut u64).write(!obj.id);
        }
    }
}

fn check_pattern(obj: &Obj) {
    let size = obj.layout.size();
    // SAFETY: as in write_pattern.
    let (first, last) = unsafe {
        let first = (obj.addr as *const u64).read();
        let last = if size >= 16 { ((obj.addr + size / 8 * 8 - 8) as *const u64).read() } else { !obj.id };
        (first, last)
    };
    if first != obj.id || last != !obj.id {
        twice(format_args!(
            "object {:#x} at {:#x} ({:?}) was overwritten: first word {first:#x}, last word {last:#x}",
            obj.id, obj.addr, obj.layout
        ));
    }
}

/// Frees the victim (a free the test makes on purpose: the second one is
/// the misuse).
fn free_victim(v: &Obj) {
    // SAFETY: the first time, a valid free; the second is the misuse
    // under test, which the allocator must stop.
    unsafe { std::alloc::dealloc(v.addr as *mut u8, v.layout) };
}

fn run_worker(mut w: Worker) {
    let sh = w.sh;
    let plan = &sh.plan;
    // Reports name the thread (its kernel id).
    // SAFETY: gettid has no preconditions.
    say(format_args!("fuzz-thread worker={} tid={}", w.me, unsafe { libc::gettid() }));
    match plan.pause_before {
        Some(at) if at < plan.before[w.me] => {
            w.churn(at, None);
            std::thread::sleep(PAUSE);
            w.churn(plan.before[w.me] - at, None);
        }
        _ => w.churn(plan.before[w.me], None),
    }
    sh.barrier.wait(); // everybody stopped
    if w.me == plan.owner {
        let v = w.pick_victim();
        say(format_args!(
            "fuzz-victim {:#x} size={} align={} large={} owner={} first={} second={}",
            v.addr,
            v.layout.size(),
            v.layout.align(),
            (class_of(v.layout.size(), v.layout.align()) == 0) as u8,
            plan.owner,
            plan.first,
            plan.second
        ));
        *sh.victim.lock().unwrap() = Some(v);
    }
    sh.barrier.wait();
    let v = sh.victim.lock().unwrap().expect("the victim");
    let mut mine = Vec::new();
    if w.me == plan.first {
        if plan.kind == Kind::AfterAllocs {
            mine = w.class_objects(v.layout);
        }
        watch::arm(v.addr, extent(v.layout));
        if plan.kind == Kind::AtOnce {
            say(format_args!("fuzz-double-free reused=0"));
        }
        let bigger = v.layout.size() * 2 + 64;
        let class = class_of(v.layout.size(), v.layout.align());
        if plan.first_by_realloc && class != 0 && ![0, class].contains(&class_of(bigger, v.layout.align())) {
            // A move to another class frees the victim.
            // SAFETY: allocated with this layout and live; a non-zero size.
            let p = unsafe { std::alloc::realloc(v.addr as *mut u8, v.layout, bigger) };
            assert!(!p.is_null() && p as usize != v.addr, "a realloc to another class moves");
            let moved =
                Obj { addr: p as usize, layout: Layout::from_size_align(bigger, v.layout.align()).unwrap(), ..v };
            write_pattern(&moved);
            w.register(&moved);
            w.keep(moved);
        } else {
            free_victim(&v);
        }
        if plan.kind == Kind::AtOnce {
            free_victim(&v);
            say(format_args!("fuzz-second-free-returned"));
        }
    }
    sh.barrier.wait();
    if plan.pause_mid {
        std::thread::sleep(PAUSE);
    }
    if plan.kind == Kind::AfterAllocs {
        w.class_activity(v.layout, mine);
        sh.barrier.wait();
    }
    if plan.kind != Kind::AtOnce && w.me == plan.second {
        let seen = watch::seen();
        if seen & watch::EXACT != 0 {
            say(format_args!("fuzz-excluded {:#x} was handed out again before the second free", v.addr));
            // SAFETY: ends the process.
            unsafe { libc::_exit(EXCLUDED) };
        }
        say(format_args!("fuzz-double-free reused={}", (seen & watch::OVERLAP != 0) as u8));
        free_victim(&v);
        say(format_args!("fuzz-second-free-returned"));
    }
    sh.barrier.wait();
    if plan.quit_after {
        // Nobody sends to the quitter from now on.
        w.gone = Some(plan.second);
    }
    if w.gone != Some(w.me) {
        w.churn(plan.after, plan.bias_after.then_some(v.layout));
        sh.end.wait(); // nobody sends any more
    }
    w.drain_inbox();
    while let Some(obj) = w.live.pop() {
        w.free(obj);
    }
    say(format_args!("fuzz-worker-done worker={}", w.me));
}

fn child(kind: Kind, seed: u64) -> ! {
    // A worker that panics would leave the others at a barrier: end the
    // child instead; and end a hang (in the test or the allocator).
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        // SAFETY: ends the process.
        unsafe { libc::_exit(101) }
    }));
    // SAFETY: plain syscall; SIGALRM's default action ends the process.
    unsafe { libc::alarm(HANG_SECS) };
    let plan = Plan::new(kind, seed);
    say(format_args!(
        "fuzz-plan kind={} seed={seed} combo={} workers={} before={:?} after={} pause_before={:?} pause_mid={} \
         first_by_realloc={} bias_after={} quit_after={}",
        kind.name(),
        plan.combo,
        plan.workers,
        &plan.before[..plan.workers],
        plan.after,
        plan.pause_before,
        plan.pause_mid,
        plan.first_by_realloc,
        plan.bias_after,
        plan.quit_after
    ));
    let n = plan.workers;
    let sh = Shared {
        barrier: Barrier::new(n),
        end: Barrier::new(n - plan.quit_after as usize),
        plan,
        victim: Mutex::new(None),
        ranges: Mutex::new(BTreeMap::new()),
    };
    let (txs, rxs): (Vec<Sender<Obj>>, Vec<Receiver<Obj>>) = (0..n).map(|_| channel()).unzip();
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for (me, inbox) in rxs.into_iter().enumerate() {
            let w = Worker {
                me,
                rng: Rng::new(seed.wrapping_mul(31).wrapping_add(me as u64 + 1)),
                live: Vec::new(),
                bytes: 0,
                next_id: 0,
                inbox,
                peers: txs.clone(),
                gone: None,
                sh: &sh,
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("worker-{me}"))
                    .spawn_scoped(s, move || run_worker(w))
                    .unwrap(),
            );
        }
        // Joined, not just waited for: the scope ends when the workers'
        // closures return, a join when their threads are gone, after the
        // thread-exit flush of their caches (which may be what catches the
        // double free).
        for w in workers {
            w.join().unwrap();
        }
    });
    say(format_args!("fuzz-joined"));
    if INNER == Inner::SpanAlloc {
        spanalloc::release();
    }
    say(format_args!("fuzz-no-abort"));
    // SAFETY: ends the process.
    unsafe { libc::_exit(NO_ABORT) }
}

/// The child side: runs the trial named by the environment.
#[test]
fn child_entry() {
    let Ok(trial) = std::env::var(TRIAL_VAR) else { return };
    let (kind, seed) = trial.split_once(':').expect("kind:seed");
    child(Kind::parse(kind).expect("a kind"), seed.parse().expect("a seed"));
}

// ---------------------------------------------------------------------------
// The parent: running trials and judging them.

/// How a trial ended.
#[derive(Debug)]
enum Verdict {
    /// Aborted: `double free of <victim>`.
    DoubleFree,
    /// Aborted: `free of <victim>: spanalloc did not allocate` (its pages
    /// had left every span).
    PagesGone,
    /// Aborted: `free of <victim>` with a layout mismatch or as an interior
    /// pointer (its pages were in a span of other objects).
    OtherSpan,
    /// The victim's address came back before the second free.
    Excluded,
    Failed(String),
}

/// The value after `key=` in a line of `key=value` words.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn line_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(marker))
}

fn judge(kind: Kind, out: &Output) -> (String, Verdict) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let combo = line_after(&stdout, "fuzz-plan ").and_then(|l| field(l, "combo")).unwrap_or("?").to_string();
    let fail = |why: String| (combo.clone(), Verdict::Failed(why));
    if let Some(line) = line_after(&stdout, "fuzz-twice ") {
        return fail(format!("an object was handed out twice: {line}"));
    }
    match out.status.code() {
        Some(EXCLUDED) if line_after(&stdout, "fuzz-excluded ").is_some() => return (combo, Verdict::Excluded),
        Some(NO_ABORT) => return fail("missed: the child ran to its end without an abort".into()),
        _ => {}
    }
    if out.status.signal() == Some(libc::SIGALRM) {
        return fail(format!("hung: still running after {HANG_SECS} s"));
    }
    if out.status.signal() != Some(libc::SIGABRT) {
        return fail(format!("the child ended with {} instead of SIGABRT; stderr ends: {}", out.status, tail(&stderr)));
    }
    let Some(victim) = line_after(&stdout, "fuzz-victim ") else {
        return fail("aborted before it picked its victim".into());
    };
    let addr = victim.split_whitespace().next().unwrap_or("?").to_string();
    let large = field(victim, "large") == Some("1");
    let Some(report) = stderr.lines().find(|l| l.starts_with("spanalloc: fatal:")) else {
        return fail(format!("aborted without a spanalloc report; stderr ends: {}", tail(&stderr)));
    };
    let Some(df) = line_after(&stdout, "fuzz-double-free ") else {
        return fail(format!("aborted before the second free: {report}"));
    };
    let reused = field(df, "reused") == Some("1");
    // Freed twice in a row by its owner, or a large object by anyone: the
    // first free left the object in the freeing thread's cache (its stack,
    // or its large-object cache), where nothing moves it before the second.
    let strict = kind == Kind::AtOnce && (combo == "owner" || large);
    let verdict = if report.contains(&format!("double free of {addr}:")) {
        Verdict::DoubleFree
    } else if report.contains(&format!("free of {addr}: spanalloc did not allocate")) && !strict {
        Verdict::PagesGone
    } else if (report.contains(&format!("free of {addr}: layout size"))
        || report.contains(&format!("free of {addr}: not the start")))
        && (kind == Kind::AfterAllocs || reused)
        && !strict
    {
        Verdict::OtherSpan
    } else {
        return fail(format!("the report is not one accepted for a double free of {addr}: {report}"));
    };
    (combo, verdict)
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[derive(Default)]
struct Tally {
    trials: u64,
    double_free: u64,
    pages_gone: u64,
    other_span: u64,
    excluded: u64,
    failed: u64,
    /// Caught after the second free returned.
    later: u64,
}

impl Tally {
    fn add(&mut self, v: &Verdict, later: bool) {
        self.trials += 1;
        if later && matches!(v, Verdict::DoubleFree | Verdict::PagesGone | Verdict::OtherSpan) {
            self.later += 1;
        }
        match v {
            Verdict::DoubleFree => self.double_free += 1,
            Verdict::PagesGone => self.pages_gone += 1,
            Verdict::OtherSpan => self.other_span += 1,
            Verdict::Excluded => self.excluded += 1,
            Verdict::Failed(_) => self.failed += 1,
        }
    }

    fn caught(&self) -> u64 {
        self.double_free + self.pages_gone + self.other_span
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{:3} trials, {:3} caught ({} later; {} double free, {} pages gone, {} other span), {:2} excluded, {} failed",
            self.trials,
            self.caught(),
            self.later,
            self.double_free,
            self.pages_gone,
            self.other_span,
            self.excluded,
            self.failed
        )
    }
}

fn env_u64(var: &str) -> Option<u64> {
    std::env::var(var).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{var} is a number")))
}

/// Runs the trials of `kind` and checks every one.
fn fuzz(kind: Kind) {
    let one = match (env_u64("SPANALLOC_FUZZ_SEED"), std::env::var("SPANALLOC_FUZZ_KIND").ok()) {
        (Some(seed), Some(k)) => {
            Kind::parse(&k).unwrap_or_else(|| panic!("SPANALLOC_FUZZ_KIND is at-once, after-allocs or split"));
            if k != kind.name() {
                return;
            }
            Some(seed)
        }
        (None, None) => None,
        _ => panic!("rerunning one trial takes both SPANALLOC_FUZZ_SEED and SPANALLOC_FUZZ_KIND"),
    };
    let seeds: Vec<u64> = match one {
        Some(seed) => vec![seed],
        None => {
            let base = env_u64("SPANALLOC_FUZZ_BASE_SEED").unwrap_or(1);
            let n = env_u64("SPANALLOC_FUZZ_TRIALS").unwrap_or(kind.default_trials());
            (base..base + n).collect()
        }
    };
    let started = std::time::Instant::now();
    let mut total = Tally::default();
    let mut by_combo: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    for &seed in &seeds {
        let out = run_child(TRIAL_VAR, &format!("{}:{seed}", kind.name()));
        let (combo, verdict) = judge(kind, &out);
        // Caught after the second free returned: at a later allocation,
        // merge or flush.
        let later = line_after(&String::from_utf8_lossy(&out.stdout), "fuzz-second-free-returned").is_some();
        if one.is_some() {
            eprintln!(
                "child stdout:\n{}\nchild stderr:\n{}\nstatus: {}\nverdict: {verdict:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                out.status
            );
        }
        total.add(&verdict, later);
        by_combo.entry(combo.clone()).or_default().add(&verdict, later);
        if let Verdict::Failed(why) = verdict {
            let victim = line_after(&String::from_utf8_lossy(&out.stdout), "fuzz-victim ").unwrap_or("").to_string();
            failures.push(format!(
                "{} seed {seed} ({combo}; victim {victim}): {why}\n    rerun: SPANALLOC_FUZZ_KIND={} SPANALLOC_FUZZ_SEED={seed} \
                 cargo test --test misuse_fuzz -- --nocapture",
                kind.name(),
                kind.name()
            ));
        }
    }
    // Straight to stderr, past the harness's capture: the summary shows in
    // every run.
    let mut summary = format!(
        "misuse_fuzz {:12} {total}; seeds {}..={} in {:.1} s\n",
        kind.name(),
        seeds[0],
        seeds[seeds.len() - 1],
        started.elapsed().as_secs_f64()
    );
    for (combo, t) in &by_combo {
        summary += &format!("    {:10} {:13} {t}\n", kind.name(), combo);
    }
    let _ = std::io::stderr().write_all(summary.as_bytes());
    let shown = failures.len().min(20);
    assert!(
        failures.is_empty(),
        "{} of {} {} trials failed{}:\n{}",
        failures.len(),
        total.trials,
        kind.name(),
        if shown < failures.len() { " (the first 20)" } else { "" },
        failures[..shown].join("\n")
    );
    if one.is_none() {
        assert!(
            total.caught() * 3 >= total.trials * 2,
            "only {} of {} {} trials count (the rest excluded): too few",
            total.caught(),
            total.trials,
            kind.name()
        );
    }
}

#[test]
fn double_free_at_once_always_aborts_naming_the_object() {
    fuzz(Kind::AtOnce);
}

#[test]
fn double_free_after_more_allocations_of_its_class_always_aborts_and_nothing_is_handed_out_twice() {
    fuzz(Kind::AfterAllocs);
}

#[test]
fn double_free_split_across_threads_always_aborts_and_nothing_is_handed_out_twice() {
    fuzz(Kind::Split);
}
