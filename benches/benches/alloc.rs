//! Allocation speed of spanalloc against its peers: glibc (`System`),
//! mimalloc, jemalloc and snmalloc.
//!
//! ```text
//! cd benches
//! cargo bench --bench alloc                      # the whole suite, a few minutes
//! cargo bench --bench alloc -- lifo_pair/64      # one group
//! ```
//!
//! Every workload is one generic function over the allocator, called through
//! `GlobalAlloc` on a `static` instance of each; the benchmark binary itself
//! keeps the default global allocator, so criterion's own allocations and
//! the std channels used to pass objects between threads go to glibc for
//! every allocator alike. Each criterion group lists the five allocators
//! side by side (ids `spanalloc`, `system`, `mimalloc`, `jemalloc`,
//! `snmalloc`). Workloads that other targets run too (larson) live in the
//! crate's library (`src/`).
//!
//! The groups:
//!
//! - `lifo_pair/<size>`: an alloc immediately followed by its free, per pair.
//! - `batch_1000/<size>`: 1,000 allocations, then 1,000 frees in allocation
//!   order, per pair.
//! - `producer_consumer`: one thread allocates 64 B objects, another frees
//!   them (every free is remote), per object.
//! - `realloc_growth`: a `u64` vector grown by doubling `realloc` from empty
//!   to 1 MiB, per push.
//! - `larson/<threads>`: server-like churn of 16–1,024 B objects in per-thread
//!   slot arrays that move to a new thread every round, per object replaced
//!   (all threads together).
//! - `xmalloc`: two threads only allocate, two only free, per object.
//! - `cache_scratch/<size>`: passive false sharing; two workers each free an
//!   object the main thread allocated next to the other's, then allocate,
//!   write 1,024 times and free an object of the same size, per cycle.
//! - `large/<size>`: 64 KiB to 8 MiB, alloc, write one byte per 4 KiB page,
//!   free, per object.
//!
//! Multi-threaded groups time only the threaded work (`iter_custom`): their
//! threads are created before the clock starts and released by a barrier.

use std::alloc::GlobalAlloc;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};

use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup, Criterion, criterion_group, criterion_main};
use spanalloc_benches::{
    Crew, JEMALLOC, Job, MIMALLOC, Rng, SNMALLOC, SPANALLOC, SYSTEM, alloc, alloc_sized, dealloc, free_sized, group,
    larson, layout, null_from,
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

fn benches(c: &mut Criterion) {
    let per = Some;

    for size in [16, 64, 256, 1024, 4096, 32768] {
        let mut g = group(c, &format!("lifo_pair/{size}"), 50, 2, per(1));
        side_by_side!(&mut g, lifo_pair(size));
        g.finish();
    }

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

    for threads in [2, 4] {
        let mut g = group(c, &format!("larson/{threads}"), 20, 3, per(threads as u64));
        side_by_side!(&mut g, larson(threads));
        g.finish();
    }

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
