//! Calls into an allocator that abort on null, objects that carry their
//! size, arrays that live in the allocator under test, and worker threads
//! that live for all the samples of a benchmark.

use std::alloc::{GlobalAlloc, Layout};
use std::ops::{Deref, DerefMut};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Aborts the benchmark: allocator `A` returned null.
#[cold]
#[inline(never)]
pub fn null_from<A>(what: &str, size: usize, align: usize) -> ! {
    eprintln!(
        "benchmark: {} returned null from {what} ({size} bytes, align {align}); aborting",
        std::any::type_name::<A>()
    );
    std::process::abort()
}

/// `a.alloc(layout)`, aborting on null.
#[inline(always)]
pub fn alloc<A: GlobalAlloc>(a: &A, layout: Layout) -> *mut u8 {
    // SAFETY: every layout in these benchmarks has a non-zero size.
    let p = unsafe { a.alloc(layout) };
    if p.is_null() {
        null_from::<A>("alloc", layout.size(), layout.align());
    }
    p
}

/// `a.alloc_zeroed(layout)`, aborting on null.
#[inline(always)]
pub fn alloc_zeroed<A: GlobalAlloc>(a: &A, layout: Layout) -> *mut u8 {
    // SAFETY: every layout in these benchmarks has a non-zero size.
    let p = unsafe { a.alloc_zeroed(layout) };
    if p.is_null() {
        null_from::<A>("alloc_zeroed", layout.size(), layout.align());
    }
    p
}

/// `a.dealloc(p, layout)`.
///
/// # Safety
///
/// `p` came from `a` with `layout` and is not used again.
#[inline(always)]
pub unsafe fn dealloc<A: GlobalAlloc>(a: &A, p: *mut u8, layout: Layout) {
    // SAFETY: the caller's contract.
    unsafe { a.dealloc(p, layout) }
}

/// A layout of `size` bytes at alignment 8.
#[inline(always)]
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("layout size")
}

/// Allocates `size >= 16` bytes, stores the size in the first word and
/// writes the last byte, so the object is touched and can be freed by
/// whoever holds only its address.
#[inline(always)]
pub fn alloc_sized<A: GlobalAlloc>(a: &A, size: usize) -> usize {
    let p = alloc(a, layout(size));
    // SAFETY: the block has `size >= 16` bytes at alignment 8.
    unsafe {
        p.cast::<usize>().write(size);
        p.add(size - 1).write(1);
    }
    p as usize
}

/// Frees an object from [`alloc_sized`], writing a byte of it first.
///
/// # Safety
///
/// `addr` came from `alloc_sized(a, _)` and is not used again.
#[inline(always)]
pub unsafe fn free_sized<A: GlobalAlloc>(a: &A, addr: usize) {
    let p = addr as *mut u8;
    // SAFETY: the object is live and holds its size in its first word.
    unsafe {
        let size = p.cast::<usize>().read();
        p.add(size / 2).write(2);
        dealloc(a, p, layout(size));
    }
}

/// A zeroed array of words in the allocator under test, freed on drop: the
/// slot arrays of the workloads, so that their memory is the allocator's
/// too, as it is in the C programs they follow.
pub struct Words<A: GlobalAlloc + 'static> {
    a: &'static A,
    ptr: *mut usize,
    len: usize,
}

// SAFETY: `Words` owns its block; the allocator is `Sync`, so the block may
// be used and freed on any thread.
unsafe impl<A: GlobalAlloc + Sync + 'static> Send for Words<A> {}

impl<A: GlobalAlloc + 'static> Words<A> {
    /// `len >= 1` zeroed words from `a`.
    pub fn zeroed(a: &'static A, len: usize) -> Words<A> {
        let layout = Layout::array::<usize>(len.max(1)).expect("words layout");
        Words { a, ptr: alloc_zeroed(a, layout).cast(), len }
    }
}

impl<A: GlobalAlloc + 'static> Deref for Words<A> {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        // SAFETY: `ptr` holds `len` initialised words, owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<A: GlobalAlloc + 'static> DerefMut for Words<A> {
    fn deref_mut(&mut self) -> &mut [usize] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<A: GlobalAlloc + 'static> Drop for Words<A> {
    fn drop(&mut self) {
        let layout = Layout::array::<usize>(self.len.max(1)).expect("words layout");
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.a, self.ptr.cast(), layout) };
    }
}

/// What one worker of a [`Crew`] does per sample, given the iteration count.
pub type Job = Box<dyn FnMut(u64) + Send>;

/// Worker threads that live for all the samples of one benchmark, so thread
/// creation stays out of the timed region. [`Crew::run`] releases every
/// worker at once through a barrier and times until the last is done. A
/// job's state lives on its worker's thread and is dropped there when the
/// crew is.
pub struct Crew {
    start: Arc<Barrier>,
    done: Arc<Barrier>,
    iters: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Crew {
    pub fn new(jobs: Vec<Job>) -> Crew {
        let start = Arc::new(Barrier::new(jobs.len() + 1));
        let done = Arc::new(Barrier::new(jobs.len() + 1));
        let iters = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = jobs
            .into_iter()
            .map(|mut job| {
                let (start, done) = (start.clone(), done.clone());
                let (iters, stop) = (iters.clone(), stop.clone());
                thread::spawn(move || {
                    loop {
                        start.wait();
                        // The barrier orders these loads after the main
                        // thread's stores.
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let iters = iters.load(Ordering::Relaxed);
                        // A panicking job would leave the timer waiting at
                        // the barrier forever.
                        if panic::catch_unwind(AssertUnwindSafe(|| job(iters))).is_err() {
                            eprintln!("benchmark: a worker thread panicked");
                            std::process::abort();
                        }
                        done.wait();
                    }
                })
            })
            .collect();
        Crew { start, done, iters, stop, workers }
    }

    /// Runs every job with `iters` and returns the wall time of the slowest.
    pub fn run(&self, iters: u64) -> Duration {
        self.iters.store(iters, Ordering::Relaxed);
        let t = Instant::now();
        self.start.wait();
        self.done.wait();
        t.elapsed()
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.start.wait();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A criterion group with the suite's timing: 1 s warm-up, `secs` of
/// measurement, `samples` samples, and the throughput (elements per
/// iteration) when it is given.
pub fn group<'a>(
    c: &'a mut criterion::Criterion,
    name: &str,
    samples: usize,
    secs: u64,
    per: Option<u64>,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(secs)).sample_size(samples);
    if let Some(n) = per {
        g.throughput(criterion::Throughput::Elements(n));
    }
    g
}
