//! Helpers shared by spanalloc's loom models (see `tests/`).
//!
//! Every model builds a fresh [`Heap`] inside `loom::model`, gives each
//! model thread its own [`spanalloc::MCache`], and ends by freeing what it
//! kept, dropping every cache and auditing the heap ([`Heap::audit`]):
//! every span back with its mcentral, on the list its state names, no free
//! stranded in a span the mcentral believes full, the bitmaps agreeing with
//! each other, no object left allocated. Objects handed out at the same
//! time must not overlap.
//!
//! [`Memory`] models the users' side of the objects: a loom-tracked cell
//! per object address, which each user writes after it gets the object and
//! before it frees it. A reuse of an object that does not happen after its
//! free (an allocator that hands it on without synchronising with the
//! freer) is then a causality violation loom reports.
//!
//! The size classes used keep spans tiny, as loom needs: 2048-byte objects
//! come 4 to a span, 4096-byte objects 2 to a span, 8192-byte objects 1.
//! Under loom a cache's stack holds 2 objects per class.

#![cfg(loom)]

use std::alloc::Layout;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use loom::cell::UnsafeCell;
use loom::sync::mpsc::{Receiver, Sender};

use spanalloc::Heap;

/// 4 objects per span.
pub const FOUR_PER_SPAN: usize = 2048;
/// 2 objects per span.
pub const TWO_PER_SPAN: usize = 4096;
/// 1 object per span (a small class, not a large object).
pub const ONE_PER_SPAN: usize = 8192;
/// A large object: its own span of 5 pages (an arena holds 6 under loom).
pub const LARGE: usize = 5 * 8192;

/// Stack for model threads: a heap and a cache are tens of KiB, more than
/// loom's default coroutine stack.
const STACK: usize = 4 << 20;

/// Runs `body` under `loom::model`, on a model thread with a stack large
/// enough for a heap and its caches.
pub fn model(body: impl Fn() + Send + Sync + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let body = std::sync::Arc::new(body);
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let mut builder = loom::model::Builder::new();
    // The audits at the end of a model read every bitmap word of the
    // heap: many loads on one path, though once every thread is joined
    // they add no execution to explore.
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = 20_000;
    }
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        let body = body.clone();
        spawn(move || body()).join().unwrap();
    });
    eprintln!("explored {} executions", runs.load(Ordering::Relaxed));
}

/// `loom::thread::spawn` with a stack large enough for a cache.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> loom::thread::JoinHandle<T> {
    loom::thread::Builder::new().stack_size(STACK).spawn(f).unwrap()
}

/// The layout of `size` bytes.
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Asserts that no two of the live objects `(address, size)` overlap.
pub fn assert_disjoint(objects: &[(usize, usize)]) {
    let mut sorted = objects.to_vec();
    sorted.sort();
    for pair in sorted.windows(2) {
        let ((a, size_a), (b, _)) = (pair[0], pair[1]);
        assert!(a + size_a <= b, "objects at {a:#x} (+{size_a}) and {b:#x} overlap");
    }
}

/// The users' memory: one loom cell per 2048-byte slot of the heap's
/// arena (every object the models use starts on one).
#[derive(Clone)]
pub struct Memory(Arc<Mutex<HashMap<usize, Arc<Cell>>>>);

/// One object's user memory.
struct Cell(UnsafeCell<u64>);

// SAFETY: every access goes through loom's causality checks.
unsafe impl Sync for Cell {}
unsafe impl Send for Cell {}

impl Memory {
    /// Cells for every object slot of `heap`'s arena. Takes (and frees) an
    /// object to find the arena.
    pub fn new(heap: &Heap) -> Memory {
        let probe = {
            let mut cache = heap.cache();
            let p = cache.alloc(layout(FOUR_PER_SPAN));
            // SAFETY: just allocated with this layout.
            unsafe { cache.dealloc(p, layout(FOUR_PER_SPAN)) };
            p as usize
        };
        let (lo, hi) = spanalloc::loom_api::usable_range(probe);
        let cells = (lo..hi).step_by(FOUR_PER_SPAN).map(|a| (a, Arc::new(Cell(UnsafeCell::new(0u64))))).collect();
        Memory(Arc::new(Mutex::new(cells)))
    }

    /// The user of the object at `p` writes it (after allocating, before
    /// freeing). The map's lock is invisible to loom: only the cell is.
    pub fn touch(&self, p: usize) {
        let cell = self.0.lock().unwrap().get(&p).cloned().unwrap_or_else(|| panic!("no object slot at {p:#x}"));
        // SAFETY: a model of the user's write; loom checks its causality.
        cell.0.with_mut(|v| unsafe { *v += 1 });
    }
}

/// A model thread that receives the address of one object of `size` bytes,
/// writes it as its user (if `mem` is given), frees it through a cache of
/// its own and drops the cache, then says so on `done`, if given. The cache
/// is made before the object arrives, so it never has the index (and so
/// the page tags) of the sender's cache: its free is a remote one.
pub fn spawn_freer(
    heap: Arc<Heap>,
    size: usize,
    rx: Receiver<usize>,
    mem: Option<Memory>,
    done: Option<Sender<()>>,
) -> loom::thread::JoinHandle<()> {
    spawn(move || {
        let mut cache = heap.cache();
        let p = rx.recv().unwrap();
        if let Some(mem) = &mem {
            mem.touch(p);
        }
        // SAFETY: the sender hands over a live object of `size` bytes.
        unsafe { cache.dealloc(p as *mut u8, layout(size)) };
        drop(cache);
        if let Some(done) = done {
            done.send(()).unwrap();
        }
    })
}

/// Audits the heap as the model left it (the small ones of `objects` are
/// the only allocated objects), then frees `objects` through a fresh cache,
/// drops it, and audits again: nothing may be left allocated. Every other
/// holder of the heap must be gone (their threads joined). The first audit
/// comes before any cache touches the heap again, so nothing the model did
/// wrong is mended by the clean-up.
pub fn free_all_and_audit(mut heap: Arc<Heap>, objects: &[(usize, usize)]) {
    {
        let heap = Arc::get_mut(&mut heap).expect("a model thread still holds the heap");
        let audit = heap.audit();
        let small = objects.iter().filter(|&&(_, size)| size <= ONE_PER_SPAN).count();
        assert_eq!(audit.allocated_objects, small as u64, "{audit:?}");
    }
    {
        let mut cache = heap.cache();
        for &(p, size) in objects {
            // SAFETY: each object is live and was allocated with this layout.
            unsafe { cache.dealloc(p as *mut u8, layout(size)) };
        }
    }
    let heap = Arc::get_mut(&mut heap).expect("a model thread still holds the heap");
    let audit = heap.audit();
    assert_eq!(audit.allocated_objects, 0, "{audit:?}");
    assert_eq!(audit.large_objects, 0, "{audit:?}");
}
