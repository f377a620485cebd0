//! rptest-like: rpmalloc's benchmark (`rpmalloc-benchmark`, run by
//! mimalloc-bench as `rptest`), scaled down. Each of [`THREADS`] threads
//! keeps a ring of [`SLOTS`] slots and runs loops. A loop frees the objects
//! at a run of slots (walked with one stride), frees the batches other
//! threads sent it, and allocates objects of random size at another run of
//! slots (walked with another stride, freeing what is there); every
//! [`CROSS_RATE`]th loop it also allocates a batch of objects and sends it
//! to the next thread, which frees them. How many objects a loop frees and
//! allocates varies from loop to loop, so lifetimes are random. As in
//! rptest, no thread sends batches once one has finished its loops (a
//! finished thread frees no more, and would pile up what it is sent).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::{Crew, Job, Words, alloc, dealloc};
use crate::support::Rng;

/// Threads.
pub const THREADS: usize = 4;
/// Slots per thread.
pub const SLOTS: usize = 1000;
/// A loop allocates 30–99 % of `OPS` objects and frees 0.8 times 30–99 %.
const OPS: u64 = 100;
/// Every `CROSS_RATE`th loop sends a batch to another thread.
pub const CROSS_RATE: u64 = 2;
/// Object sizes.
const MIN_SIZE: usize = 8;
const MAX_SIZE: usize = 16_000;
/// Random sizes and operation counts, precomputed per thread.
const SIZE_TABLE: usize = 2000;
const OPS_TABLE: usize = 311;
/// Strides of the allocating and the freeing walk through the slots
/// (coprime with `SLOTS`).
const ALLOC_STRIDE: usize = 7;
const FREE_STRIDE: usize = 11;

const _: () = assert!(!SLOTS.is_multiple_of(ALLOC_STRIDE) && !SLOTS.is_multiple_of(FREE_STRIDE));

/// The layout of an object of `size` bytes: objects under 4 KiB whose size
/// is a multiple of 3 ask for 16-byte alignment, the others for 8 (rptest
/// asks for none, 8 and 16 in turn).
#[inline(always)]
fn object_layout(size: usize) -> Layout {
    let align = if size < 4096 && size.is_multiple_of(3) { 16 } else { 8 };
    Layout::from_size_align(size, align).expect("object layout")
}

/// Allocates `size` bytes, keeps the size in the first word and writes one
/// byte per 4 KiB page and the last byte (beyond the first word), so every
/// page is resident.
#[inline(always)]
fn new_object<A: GlobalAlloc>(a: &A, size: usize) -> usize {
    let p = alloc(a, object_layout(size));
    // SAFETY: the object has `size >= 8` bytes at alignment 8 or more.
    unsafe {
        p.cast::<usize>().write(size);
        for page in (4096..size).step_by(4096) {
            p.add(page).write(1);
        }
        if size > 8 {
            p.add(size - 1).write(1);
        }
    }
    p as usize
}

/// Frees an object of [`new_object`].
///
/// # Safety
///
/// `addr` is a live object of `new_object(a, ..)`, not used again.
#[inline(always)]
unsafe fn free_object<A: GlobalAlloc>(a: &A, addr: usize) {
    // SAFETY: the caller's contract; the first word holds the size.
    unsafe {
        let size = (addr as *const usize).read();
        dealloc(a, addr as *mut u8, object_layout(size));
    }
}

/// A batch of objects for another thread: one block of `2 + n` words from
/// the allocator under test, `[next batch, n, object...]`.
fn batch_layout(n: usize) -> Layout {
    Layout::array::<usize>(2 + n).expect("batch layout")
}

/// Each thread's inbox: a stack of batches, pushed by any thread, taken
/// whole by its owner. Dropping it frees every batch still in it.
struct Inboxes<A: GlobalAlloc + 'static> {
    a: &'static A,
    heads: Box<[AtomicUsize]>,
    /// The last run (counted from 1) that some thread has finished: batches
    /// are sent only while it is below the current run.
    finished: AtomicU64,
}

impl<A: GlobalAlloc + 'static> Inboxes<A> {
    fn push(&self, to: usize, batch: usize) {
        let head = &self.heads[to];
        let mut old = head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the batch is ours until the exchange publishes it.
            unsafe { (batch as *mut usize).write(old) };
            match head.compare_exchange_weak(old, batch, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => old = now,
            }
        }
    }

    /// Frees every batch in `to`'s inbox and every object in them.
    fn free_all(&self, to: usize) {
        let mut batch = self.heads[to].swap(0, Ordering::Acquire);
        while batch != 0 {
            let b = batch as *mut usize;
            // SAFETY: taken from the inbox, the batch and its objects are
            // ours; its words are `[next, n, object...]`.
            unsafe {
                batch = b.read();
                let n = b.add(1).read();
                for i in 0..n {
                    free_object(self.a, b.add(2 + i).read());
                }
                dealloc(self.a, b.cast(), batch_layout(n));
            }
        }
    }
}

impl<A: GlobalAlloc + 'static> Drop for Inboxes<A> {
    fn drop(&mut self) {
        for t in 0..self.heads.len() {
            self.free_all(t);
        }
    }
}

/// One thread's state.
struct Worker<A: GlobalAlloc + 'static> {
    a: &'static A,
    me: usize,
    inboxes: Arc<Inboxes<A>>,
    /// Object addresses, 0 for an empty slot.
    slots: Words<A>,
    sizes: Box<[usize]>,
    alloc_ops: Box<[u64]>,
    free_ops: Box<[u64]>,
    alloc_at: usize,
    free_at: usize,
    size_at: usize,
    loops: u64,
    send_to: usize,
    /// Runs started (the crew's runs, counted from 1).
    run: u64,
}

impl<A: GlobalAlloc + Sync + 'static> Worker<A> {
    fn new(a: &'static A, me: usize, inboxes: Arc<Inboxes<A>>) -> Worker<A> {
        let mut rng = Rng::new(500 + me as u64);
        // rptest's linear drop-off: a uniform size scaled by a triangular
        // variable peaked at 0, so small objects are the most common.
        let range = (MAX_SIZE - MIN_SIZE) as u64;
        let sizes = (0..SIZE_TABLE)
            .map(|_| {
                let (u0, u1) = (rng.below(1 << 20) as i64, rng.below(1 << 20) as i64);
                let weight = (u0 + u1 - (1 << 20)).unsigned_abs();
                MIN_SIZE + ((rng.below(range + 1) * weight) >> 20) as usize
            })
            .collect();
        let mut percents = |n: usize, scale: u64| (0..n).map(|_| scale * (30 + rng.below(70)) / 100).collect();
        let alloc_ops = percents(OPS_TABLE, OPS);
        let free_ops = percents(OPS_TABLE + 2, OPS * 4 / 5);
        Worker {
            a,
            me,
            inboxes,
            slots: Words::zeroed(a, SLOTS),
            sizes,
            alloc_ops,
            free_ops,
            alloc_at: 0,
            free_at: 0,
            size_at: me * 37 % SIZE_TABLE,
            loops: 0,
            send_to: me,
            run: 0,
        }
    }

    #[inline(always)]
    fn next_size(&mut self) -> usize {
        let size = self.sizes[self.size_at];
        self.size_at = if self.size_at + 1 == SIZE_TABLE { 0 } else { self.size_at + 1 };
        size
    }

    /// One loop.
    fn one_loop(&mut self) {
        let a = self.a;
        let frees = self.free_ops[(self.loops % self.free_ops.len() as u64) as usize];
        for _ in 0..frees {
            let slot = &mut self.slots[self.free_at];
            if *slot != 0 {
                // SAFETY: the slot's object is freed once: its slot is emptied.
                unsafe { free_object(a, *slot) };
                *slot = 0;
            }
            self.free_at = (self.free_at + FREE_STRIDE) % SLOTS;
        }
        self.inboxes.free_all(self.me);
        let allocs = self.alloc_ops[(self.loops % self.alloc_ops.len() as u64) as usize];
        for _ in 0..allocs {
            let size = self.next_size();
            let slot = &mut self.slots[self.alloc_at];
            if *slot != 0 {
                // SAFETY: as above; the slot takes the new object at once.
                unsafe { free_object(a, *slot) };
            }
            *slot = new_object(a, size);
            self.alloc_at = (self.alloc_at + ALLOC_STRIDE) % SLOTS;
        }
        let threads = self.inboxes.heads.len();
        let sending = self.inboxes.finished.load(Ordering::Relaxed) < self.run;
        if threads > 1 && sending && self.loops.is_multiple_of(CROSS_RATE) {
            let n = (allocs / 4) as usize;
            let batch = alloc(a, batch_layout(n)).cast::<usize>();
            for i in 0..n {
                let size = self.next_size();
                // SAFETY: the batch has `2 + n` words.
                unsafe { batch.add(2 + i).write(new_object(a, size)) };
            }
            // SAFETY: as above.
            unsafe { batch.add(1).write(n) };
            self.send_to = (self.send_to + 1) % threads;
            if self.send_to == self.me {
                self.send_to = (self.send_to + 1) % threads;
            }
            self.inboxes.push(self.send_to, batch as usize);
        }
        self.loops += 1;
    }
}

impl<A: GlobalAlloc + 'static> Drop for Worker<A> {
    fn drop(&mut self) {
        for &p in self.slots.iter().filter(|&&p| p != 0) {
            // SAFETY: every object the slots hold, once each.
            unsafe { free_object(self.a, p) };
        }
    }
}

/// The threads of an rptest-like run, created before the clock starts; an
/// iteration is one loop on every thread. Dropping it frees everything
/// (each thread its own slots, then the batches still in flight).
pub struct Rptest<A: GlobalAlloc + 'static> {
    // Dropped first: the workers exit (and free their slots) before the
    // inboxes go.
    crew: Crew,
    _inboxes: Arc<Inboxes<A>>,
}

impl<A: GlobalAlloc + Sync + 'static> Rptest<A> {
    pub fn new(a: &'static A, threads: usize) -> Rptest<A> {
        let inboxes = Arc::new(Inboxes {
            a,
            heads: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            finished: AtomicU64::new(0),
        });
        let jobs = (0..threads)
            .map(|me| {
                let inboxes = inboxes.clone();
                let mut worker: Option<Worker<A>> = None;
                Box::new(move |iters: u64| {
                    let w = worker.get_or_insert_with(|| Worker::new(a, me, inboxes.clone()));
                    w.run += 1;
                    for _ in 0..iters {
                        w.one_loop();
                    }
                    inboxes.finished.fetch_max(w.run, Ordering::Relaxed);
                }) as Job
            })
            .collect();
        Rptest { crew: Crew::new(jobs), _inboxes: inboxes }
    }

    /// `iters` loops on every thread; the wall time of the slowest.
    pub fn run(&self, iters: u64) -> Duration {
        self.crew.run(iters)
    }
}
