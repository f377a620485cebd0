//! Allocation speed of spanalloc against its peers: glibc (`System`),
//! mimalloc, jemalloc and snmalloc.
//!
//! ```text
//! cd benches
//! cargo bench --bench alloc                      # the whole suite, about ten minutes
//! cargo bench --bench alloc -- lifo_pair/64      # one group
//! ```
//!
//! Every workload is one generic function over the allocator, called through
//! `GlobalAlloc` on a `static` instance of each; the benchmark binary itself
//! keeps the default global allocator, so criterion's own allocations and
//! the std channels used to pass objects between threads go to glibc for
//! every allocator alike. Each criterion group lists the five allocators
//! side by side (ids `spanalloc`, `system`, `mimalloc`, `jemalloc`,
//! `snmalloc`). The workloads that the memory harness and the instruction
//! counts run too live in the crate's library (`src/`).
//!
//! The groups that isolate one path of the allocator:
//!
//! - `lifo_pair/<size>`: an alloc immediately followed by its free, per pair.
//! - `lifo_cycle`: LIFO pairs whose size cycles through 16, 32, 64, 128 and
//!   256 B (one size per pair, the next pair the next size), per pair: a
//!   last-freed slot per size class no longer serves every pair.
//! - `batch_1000/<size>`: 1,000 allocations, then 1,000 frees in allocation
//!   order, per pair.
//! - `producer_consumer`: one thread allocates 64 B objects, another frees
//!   them (every free is remote), per object.
//! - `realloc_growth`: a `u64` vector grown by doubling `realloc` from empty
//!   to 1 MiB, per push.
//! - `xmalloc`: two threads only allocate, two only free, per object.
//! - `cache_scratch/<size>`: passive false sharing; two workers each free an
//!   object the main thread allocated next to the other's, then allocate,
//!   write 1,024 times and free an object of the same size, per cycle.
//! - `large/<size>`: 64 KiB to 8 MiB, alloc, write one byte per 4 KiB page,
//!   free, per object.
//!
//! The groups that represent programs: many sizes, random lifetimes, objects
//! that are used.
//!
//! - `churn_simple/{touched,alone}`: the pattern of glibc's
//!   `bench-malloc-thread` (and of `bench-malloc-simple`'s random-order
//!   cousin) on one thread: 64 slots, each step frees the object in a random
//!   slot and allocates one of a random size, uniform in 16–512 B, in its
//!   place; per step. `touched` reads the freed object's first word before
//!   the free and writes every byte of the new object (a volatile read and a
//!   `black_box`ed `write_bytes`), as a program does; `alone` writes only
//!   the new object's first word, so the time is the allocator's. The slots
//!   and sizes come from a 16,384-step table made before the clock starts.
//!   Where it differs from glibc: `bench-malloc-thread` keeps 1,024 slots,
//!   draws sizes of 4 B – 32 KiB from an inverse-square distribution (8,000
//!   precomputed sizes, 4,096 precomputed slots), starts from empty slots,
//!   touches nothing and runs for 60 s; `bench-malloc-simple` allocates
//!   25–1,600 objects of one size and frees them in order. 64 slots of
//!   16–512 B keep the working set in the thread caches and the first
//!   level of cache, where the allocator's own branches and metadata lines
//!   decide the time.
//! - `churn_thread/{2,4}`: the same `touched` pattern on 2 and 4 threads,
//!   each with slots of its own (filled on its own thread), created before
//!   the clock starts; an iteration is one step on every thread, all
//!   threads together (as `bench-malloc-thread <n>`, which sums the
//!   threads' iterations). 4 threads on 2 cores are oversubscribed.
//! - `larson/<threads>`: server-like churn of 16–1,024 B objects in
//!   per-thread slot arrays of 5,000 that move to a new thread every 10,000
//!   replacements, per object replaced (all threads together). Where it
//!   differs from larson (mimalloc-bench runs `larson 5 8 1000 5000 100 4141
//!   <threads>`): sizes 16–1,024 B rather than 8–1,000 B, a fixed count of
//!   replacements rather than a fixed time, and every replaced object
//!   touched at its first word, last byte and middle.
//! - `mstress`: mimalloc's `test/test-stress.c` (mimalloc-bench's
//!   `mstress`), scaled down, per round. In a round 4 threads are created;
//!   thread `t` allocates `1000 × (t + 1)` objects of 8–128 B and retains
//!   half as many more of 8–512 B until the end of the round (sizes powers
//!   of two; 1 % of objects 100× larger, and of those 10 % 1,000× and 1 %
//!   10,000×, up to 5 MiB); each object is zeroed by the allocator
//!   (`alloc_zeroed`, as the test's `calloc`), written in full and checked
//!   word by word when freed. After each allocation a thread frees a random
//!   one of its objects with chance 66 % and swaps one with a random slot
//!   of a 1,000-slot transfer array shared by all threads with chance 25 %;
//!   at the end of the round it frees what it holds and exits, and the main
//!   thread frees half of the transfer array. Thread creation and exit are
//!   in the time, as in the original. Where it differs: mimalloc-bench runs
//!   `mstress <cores> 50 25` (scale 50, 25 rounds in one process); here the
//!   scale is 10, the threads are 4 whatever the cores, a round is one
//!   iteration and criterion picks how many; the thread's object array is
//!   allocated once at its full length instead of grown by `realloc`, and
//!   chances are `< n` in 100 (the original's `<= n`).
//! - `rptest`: rpmalloc's benchmark (`rpmalloc-benchmark`, mimalloc-bench's
//!   `rptest <threads> 0 1 2 500 1000 100 8 16000`), scaled down, per loop
//!   on every thread (all threads together). 4 threads, each with 1,000
//!   slots, run loops: free the objects at 24–79 slots (one stride), free
//!   the batches other threads sent, allocate 30–99 objects at other slots
//!   (another stride; an occupied slot's object is freed first); every
//!   second loop also allocate a batch of a quarter as many objects and
//!   send it to the next thread, which frees it in its next loop. Sizes are
//!   8–16,000 B with rptest's linear drop-off (a uniform size times a
//!   triangular weight peaked at 0; mean about 2.7 KB), a third of the
//!   objects under 4 KiB 16-byte aligned; each object gets its size in its
//!   first word and a byte written in every 4 KiB page. Where it differs:
//!   the threads run loops without end, with no free-everything between
//!   rptest's two passes of 500 loops; the random tables are drawn from
//!   this crate's generator, not rptest's fixed tables; a batch is one
//!   block (header and pointers) instead of two.
//! - `rust_mix/{hashmap_words,btree_churn,format_sort}`: std collections,
//!   which allocate through the *global* allocator, so they run in five
//!   other bench binaries (`benches/rust_mix/`), one per allocator, each
//!   with it as `#[global_allocator]`, in the same groups with the
//!   allocator as the function id. Criterion's own allocations go through
//!   the allocator under test there too. See `benches/rust_mix/workload.rs`.
//!
//! Multi-threaded groups time only the threaded work (`iter_custom`): their
//! threads are created before the clock starts and released by a barrier
//! (except mstress, whose rounds create their threads).

use std::alloc::GlobalAlloc;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};

use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup, Criterion, SamplingMode, criterion_group, criterion_main};
use spanalloc_benches::mstress::Mstress;
use spanalloc_benches::rptest::Rptest;
use spanalloc_benches::{
    Crew, JEMALLOC, Job, MIMALLOC, Rng, SNMALLOC, SPANALLOC, SYSTEM, alloc, alloc_sized, churn, dealloc, free_sized,
    group, larson, layout, null_from, rptest,
};

type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// Registers `$workload(&ALLOCATOR, args...)` in group `$g` for all five
/// allocators, one after the other. A workload is a generic function
/// `fn<A: GlobalAlloc + Sync + 'static>(&'static A, ...) -> impl
/// FnMut(&mut Bencher)`: it does its one-off set-up (threads, buffers) when
/// called and returns the routine criterion times. The arguments are
/// evaluated once per allocator.
macro_rules! side_by_side {
    ($g:expr, $workload:ident($($arg:expr),* $(,)?)) => {{
        let g: &mut Group<'_> = $g;
        g.bench_function("spanalloc", $workload(&SPANALLOC $(, $arg)*));
        g.bench_function("system", $workload(&SYSTEM $(, $arg)*));
        g.bench_function("mimalloc", $workload(&MIMALLOC $(, $arg)*));
        g.bench_function("jemalloc", $workload(&JEMALLOC $(, $arg)*));
        g.bench_function("snmalloc", $workload(&SNMALLOC $(, $arg)*));
    }};
}

// ---------------------------------------------------------------------------
// 1. LIFO pairs.

/// One alloc immediately followed by its free. The layout is made once and
/// passed through `black_box` on every pair, so the size-class lookup cannot
/// be hoisted out of the loop for allocators whose fast path inlines into
/// this crate.
fn lifo_pair<A: GlobalAlloc + Sync + 'static>(a: &'static A, size: usize) -> impl FnMut(&mut Bencher<'_>) {
    let layout = layout(size);
    move |b| {
        b.iter(|| {
            let l = black_box(layout);
            let p = black_box(alloc(a, l));
            // SAFETY: freed with the layout it was allocated with.
            unsafe { dealloc(a, p, l) };
        })
    }
}

// ---------------------------------------------------------------------------
// 2. Batches of 1,000.

const BATCH_OBJECTS: usize = 1000;

/// 1,000 allocations, then 1,000 frees in allocation order (FIFO). The
/// pointer array is made once, outside the timed loop.
fn batch_1000<A: GlobalAlloc + Sync + 'static>(a: &'static A, size: usize) -> impl FnMut(&mut Bencher<'_>) {
    let layout = layout(size);
    let mut ptrs = vec![std::ptr::null_mut::<u8>(); BATCH_OBJECTS];
    move |b| {
        b.iter(|| {
            let l = black_box(layout);
            for slot in ptrs.iter_mut() {
                *slot = alloc(a, l);
            }
            black_box(&mut ptrs);
            for &p in ptrs.iter() {
                // SAFETY: every slot holds a live block of layout `l`.
                unsafe { dealloc(a, p, l) };
            }
        })
    }
}

// ---------------------------------------------------------------------------
// 3 and 6. Objects passed from allocating threads to freeing threads.

/// Addresses handed over per message.
const PIPE_BATCH: usize = 256;
/// Batches a freeing thread's queue holds before its producers block.
const PIPE_DEPTH: usize = 16;

/// A batch of object addresses and the index of the producer that made it
/// (to return the emptied vector). An empty batch ends a producer's job.
struct Batch {
    from: usize,
    addrs: Vec<usize>,
}

/// `producers` threads allocate `iters` objects each (sizes from `size`,
/// touched), and pass them in batches of [`PIPE_BATCH`] round-robin to
/// `consumers` threads, which touch and free them.
///
/// The queues are std channels (`sync_channel` of batches, plus a channel
/// per producer that returns emptied vectors for reuse); their own memory
/// comes from the benchmark binary's global allocator, glibc, whichever
/// allocator is measured.
fn pipeline<A, S>(a: &'static A, producers: usize, consumers: usize, size: S) -> Crew
where
    A: GlobalAlloc + Sync + 'static,
    S: Fn(&mut Rng) -> usize + Copy + Send + 'static,
{
    let mut jobs: Vec<Job> = Vec::new();
    let (to_consumers, from_producers): (Vec<_>, Vec<_>) =
        (0..consumers).map(|_| mpsc::sync_channel::<Batch>(PIPE_DEPTH)).unzip();
    let (to_producers, recycled): (Vec<_>, Vec<_>) = (0..producers).map(|_| mpsc::channel::<Vec<usize>>()).unzip();
    for (me, recycled) in recycled.into_iter().enumerate() {
        let to = to_consumers.clone();
        let mut rng = Rng::new(me as u64);
        let mut cur: Vec<usize> = Vec::with_capacity(PIPE_BATCH);
        let mut next = me % consumers;
        jobs.push(Box::new(move |iters| {
            let fresh = || recycled.try_recv().unwrap_or_else(|_| Vec::with_capacity(PIPE_BATCH));
            let send = |to: &SyncSender<Batch>, addrs: Vec<usize>| {
                if to.send(Batch { from: me, addrs }).is_err() {
                    eprintln!("alloc benchmark: a freeing thread is gone");
                    std::process::abort();
                }
            };
            for _ in 0..iters {
                cur.push(alloc_sized(a, size(&mut rng)));
                if cur.len() == PIPE_BATCH {
                    send(&to[next], std::mem::replace(&mut cur, fresh()));
                    next = (next + 1) % consumers;
                }
            }
            if !cur.is_empty() {
                send(&to[next], std::mem::replace(&mut cur, fresh()));
                next = (next + 1) % consumers;
            }
            // An empty batch tells each freeing thread this producer is done.
            for tx in to.iter() {
                send(tx, Vec::new());
            }
        }));
    }
    for rx in from_producers {
        let back = to_producers.clone();
        jobs.push(Box::new(move |_iters| {
            let mut ended = 0;
            while ended < producers {
                let Ok(Batch { from, mut addrs }) = rx.recv() else {
                    eprintln!("alloc benchmark: an allocating thread is gone");
                    std::process::abort();
                };
                if addrs.is_empty() {
                    ended += 1;
                    continue;
                }
                for &p in addrs.iter() {
                    // SAFETY: each address was made by `alloc_sized(a, _)`
                    // and is freed exactly once, here.
                    unsafe { free_sized(a, p) };
                }
                addrs.clear();
                // The producer may be gone at the end of the benchmark.
                let _ = back[from].send(addrs);
            }
        }));
    }
    Crew::new(jobs)
}

/// One thread allocates 64 B objects, another frees them: every free is
/// remote. Per object.
fn producer_consumer<A: GlobalAlloc + Sync + 'static>(a: &'static A) -> impl FnMut(&mut Bencher<'_>) {
    let crew = pipeline(a, 1, 1, |_: &mut Rng| 64);
    move |b| b.iter_custom(|iters| crew.run(iters))
}

const XMALLOC_THREADS: usize = 2;

/// Two threads only allocate (half 64 B, half 16–512 B), two threads only
/// free what either allocated. An iteration is one object per allocating
/// thread.
fn xmalloc<A: GlobalAlloc + Sync + 'static>(a: &'static A) -> impl FnMut(&mut Bencher<'_>) {
    let sizes = |r: &mut Rng| {
        if r.next() & 1 == 0 { 64 } else { 16 + r.below(497) as usize }
    };
    let crew = pipeline(a, XMALLOC_THREADS, XMALLOC_THREADS, sizes);
    move |b| b.iter_custom(|iters| crew.run(iters))
}

// ---------------------------------------------------------------------------
// 4. realloc growth.

/// `u64` pushes to grow a vector from empty to 1 MiB.
const GROWTH_PUSHES: usize = (1 << 20) / 8;

/// A `u64` vector grown by pushes with raw `alloc`/`realloc`: capacity 0,
/// then 8 bytes, doubling when full; freed at 1 MiB.
fn realloc_growth<A: GlobalAlloc + Sync + 'static>(a: &'static A) -> impl FnMut(&mut Bencher<'_>) {
    move |b| {
        b.iter(|| {
            let mut ptr: *mut u64 = std::ptr::null_mut();
            let mut cap = 0usize;
            for i in 0..GROWTH_PUSHES {
                if i == cap {
                    let new_cap = if cap == 0 { 1 } else { cap * 2 };
                    ptr = if cap == 0 {
                        alloc(a, layout(8)).cast()
                    } else {
                        // SAFETY: `ptr` is live with the layout of `cap` words.
                        let p = unsafe { a.realloc(ptr.cast(), layout(cap * 8), new_cap * 8) };
                        if p.is_null() {
                            null_from::<A>("realloc", new_cap * 8, 8);
                        }
                        p.cast()
                    };
                    cap = new_cap;
                }
                // SAFETY: `i < cap`.
                unsafe { ptr.add(i).write(i as u64) };
            }
            black_box(ptr);
            // SAFETY: the last (re)allocation had `cap` words.
            unsafe { dealloc(a, ptr.cast(), layout(cap * 8)) };
        })
    }
}

// ---------------------------------------------------------------------------
// 5. larson.

/// See [`larson::run`]: the slots are filled before the clock starts; an
/// iteration is one replacement per lineage.
fn larson<A: GlobalAlloc + Sync + 'static>(a: &'static A, threads: usize) -> impl FnMut(&mut Bencher<'_>) {
    move |b| b.iter_custom(|iters| larson::run(a, threads, iters))
}

// ---------------------------------------------------------------------------
// 7. cache-scratch.

const SCRATCH_WORKERS: usize = 2;
const SCRATCH_WRITES: usize = 1024;

/// Passive false sharing: before each sample the main thread allocates one
/// `size`-byte object per worker, back to back; each worker frees its
/// object, then per iteration allocates an object of the same size, writes
/// it [`SCRATCH_WRITES`] times and frees it. An allocator that hands the
/// workers objects on one cache line makes the writes ping-pong the line.
fn cache_scratch<A: GlobalAlloc + Sync + 'static>(a: &'static A, size: usize) -> impl FnMut(&mut Bencher<'_>) {
    assert!(SCRATCH_WRITES.is_multiple_of(size), "cache_scratch size {size}");
    let layout = layout(size);
    let handoff: Arc<[AtomicUsize]> = (0..SCRATCH_WORKERS).map(|_| AtomicUsize::new(0)).collect();
    let jobs: Vec<Job> = (0..SCRATCH_WORKERS)
        .map(|w| {
            let handoff = handoff.clone();
            Box::new(move |iters: u64| {
                let first = handoff[w].swap(0, Ordering::Relaxed) as *mut u8;
                // SAFETY: the main thread allocated it with `layout` for us.
                unsafe { dealloc(a, first, layout) };
                for _ in 0..iters {
                    let p = alloc(a, layout);
                    for _ in 0..SCRATCH_WRITES / size {
                        for k in 0..size {
                            // SAFETY: `k < size`; volatile so every write
                            // reaches memory.
                            unsafe { p.add(k).write_volatile(k as u8) };
                        }
                    }
                    // SAFETY: freed with the layout it was allocated with.
                    unsafe { dealloc(a, p, layout) };
                }
            }) as Job
        })
        .collect();
    let crew = Crew::new(jobs);
    move |b| {
        b.iter_custom(|iters| {
            for slot in handoff.iter() {
                // The crew's barrier publishes the stores to the workers.
                slot.store(alloc(a, layout) as usize, Ordering::Relaxed);
            }
            crew.run(iters)
        })
    }
}

// ---------------------------------------------------------------------------
// 8. Large objects.

/// Allocates `size` bytes, writes one byte per 4 KiB page, frees.
fn large<A: GlobalAlloc + Sync + 'static>(a: &'static A, size: usize) -> impl FnMut(&mut Bencher<'_>) {
    let layout = layout(size);
    move |b| {
        b.iter(|| {
            let l = black_box(layout);
            let p = alloc(a, l);
            for off in (0..size).step_by(4096) {
                // SAFETY: `off < size`.
                unsafe { p.add(off).write_volatile(1) };
            }
            // SAFETY: freed with the layout it was allocated with.
            unsafe { dealloc(a, p, l) };
        })
    }
}

// ---------------------------------------------------------------------------
// 9. LIFO pairs of changing sizes.

/// The sizes `lifo_cycle` goes through, one per pair.
const CYCLE_SIZES: [usize; 5] = [16, 32, 64, 128, 256];

/// An alloc immediately followed by its free, each pair of the next size in
/// [`CYCLE_SIZES`].
fn lifo_cycle<A: GlobalAlloc + Sync + 'static>(a: &'static A) -> impl FnMut(&mut Bencher<'_>) {
    let layouts = CYCLE_SIZES.map(layout);
    let mut k = 0;
    move |b| {
        b.iter(|| {
            let l = black_box(layouts[k]);
            k = if k + 1 == layouts.len() { 0 } else { k + 1 };
            let p = black_box(alloc(a, l));
            // SAFETY: freed with the layout it was allocated with.
            unsafe { dealloc(a, p, l) };
        })
    }
}

// ---------------------------------------------------------------------------
// 10. Random frees of random sizes (glibc's bench-malloc-simple/thread).

/// One thread's 64 slots ([`churn::Churn`]), a step per iteration; `touch`
/// picks `touched` or `alone`.
fn churn_simple<A: GlobalAlloc + Sync + 'static>(a: &'static A, touch: bool) -> impl FnMut(&mut Bencher<'_>) {
    let mut slots = churn::Churn::new(a, 1);
    move |b| {
        if touch { b.iter(|| slots.step::<true>()) } else { b.iter(|| slots.step::<false>()) }
    }
}

/// `threads` threads with 64 slots each ([`churn::crew`]), one touched step
/// on every thread per iteration.
fn churn_thread<A: GlobalAlloc + Sync + 'static>(a: &'static A, threads: usize) -> impl FnMut(&mut Bencher<'_>) {
    let crew = churn::crew(a, threads);
    move |b| b.iter_custom(|iters| crew.run(iters))
}

// ---------------------------------------------------------------------------
// 11. mstress and rptest.

/// A round of [`Mstress`] per iteration; the transfer array lives across
/// the rounds of all samples.
fn mstress<A: GlobalAlloc + Sync + 'static>(a: &'static A) -> impl FnMut(&mut Bencher<'_>) {
    let mut m = Mstress::new(a);
    move |b| b.iter(|| m.round())
}

/// One loop on every [`Rptest`] thread per iteration.
fn rptest<A: GlobalAlloc + Sync + 'static>(a: &'static A) -> impl FnMut(&mut Bencher<'_>) {
    let r = Rptest::new(a, rptest::THREADS);
    move |b| b.iter_custom(|iters| r.run(iters))
}

// ---------------------------------------------------------------------------
// 12. The heap profile's cost.

/// The function id of spanalloc with heap profiling on, in the churn groups.
const PROFILED: &str = "spanalloc_profiled";

/// `f` with spanalloc's heap profile on at its default rate (a sample per
/// 512 KiB on average) while it runs, and off again after.
fn profiled(mut f: impl FnMut(&mut Bencher<'_>)) -> impl FnMut(&mut Bencher<'_>) {
    move |b| {
        spanalloc::profile::set_rate(512 << 10);
        f(b);
        spanalloc::profile::set_rate(0);
    }
}

// ---------------------------------------------------------------------------

fn benches(c: &mut Criterion) {
    let per = Some;

    for size in [16, 64, 256, 1024, 4096, 32768] {
        let mut g = group(c, &format!("lifo_pair/{size}"), 50, 2, per(1));
        side_by_side!(&mut g, lifo_pair(size));
        g.finish();
    }

    let mut g = group(c, "lifo_cycle", 50, 2, per(1));
    side_by_side!(&mut g, lifo_cycle());
    g.finish();

    for size in [64, 1024] {
        let mut g = group(c, &format!("batch_1000/{size}"), 50, 2, per(BATCH_OBJECTS as u64));
        side_by_side!(&mut g, batch_1000(size));
        g.finish();
    }

    let mut g = group(c, "producer_consumer", 20, 3, per(1));
    side_by_side!(&mut g, producer_consumer());
    g.finish();

    let mut g = group(c, "realloc_growth", 20, 3, per(GROWTH_PUSHES as u64));
    side_by_side!(&mut g, realloc_growth());
    g.finish();

    for (name, touch) in [("touched", true), ("alone", false)] {
        let mut g = group(c, &format!("churn_simple/{name}"), 50, 2, per(1));
        side_by_side!(&mut g, churn_simple(touch));
        g.bench_function(PROFILED, profiled(churn_simple(&SPANALLOC, touch)));
        g.finish();
    }

    for threads in [2, 4] {
        let mut g = group(c, &format!("churn_thread/{threads}"), 20, 3, per(threads as u64));
        side_by_side!(&mut g, churn_thread(threads));
        g.bench_function(PROFILED, profiled(churn_thread(&SPANALLOC, threads)));
        g.finish();
    }

    for threads in [2, 4] {
        let mut g = group(c, &format!("larson/{threads}"), 20, 3, per(threads as u64));
        side_by_side!(&mut g, larson(threads));
        g.finish();
    }

    // A round takes milliseconds: equal samples of about 100 ms each.
    let mut g = group(c, "mstress", 20, 2, None);
    g.sampling_mode(SamplingMode::Flat);
    side_by_side!(&mut g, mstress());
    g.finish();

    let mut g = group(c, "rptest", 20, 3, per(rptest::THREADS as u64));
    side_by_side!(&mut g, rptest());
    g.finish();

    let mut g = group(c, "xmalloc", 20, 3, per(XMALLOC_THREADS as u64));
    side_by_side!(&mut g, xmalloc());
    g.finish();

    // Time per cycle: one alloc, 1,024 writes and a free on each worker.
    for size in [8, 64] {
        let mut g = group(c, &format!("cache_scratch/{size}"), 20, 3, None);
        side_by_side!(&mut g, cache_scratch(size));
        g.finish();
    }

    for size in [64 << 10, 256 << 10, 1 << 20, 8 << 20] {
        let mut g = group(c, &format!("large/{size}"), 20, 2, per(1));
        side_by_side!(&mut g, large(size));
        g.finish();
    }
}

criterion_group!(alloc_benches, benches);
criterion_main!(alloc_benches);
