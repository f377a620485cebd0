//! Helpers shared by spanalloc's loom models (see `tests/`).
//!
//! Every model builds a fresh [`Heap`] inside `loom::model`, gives each
//! model thread its own [`spanalloc::MCache`], and ends by freeing what it
//! kept, dropping every cache and auditing the heap
//! ([`Heap::audit`]): every span back with its mcentral, on the list its
//! state names, its counters matching its bitmaps, and no object left
//! allocated. Objects handed out at the same time must not overlap.
//!
//! The size classes used keep spans tiny, as loom needs: 2048-byte objects
//! come 4 to a span, 4096-byte objects 2 to a span, 8192-byte objects 1.

#![cfg(loom)]

use std::alloc::Layout;
use std::sync::Arc;

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
    loom::model(move || {
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

/// A model thread that receives the address of one object of `size` bytes,
/// frees it through a cache of its own and drops the cache (which lands the
/// free in the object's span), then says so on `done`, if given.
pub fn spawn_freer(
    heap: Arc<Heap>,
    size: usize,
    rx: Receiver<usize>,
    done: Option<Sender<()>>,
) -> loom::thread::JoinHandle<()> {
    spawn(move || {
        let p = rx.recv().unwrap();
        {
            let mut cache = heap.cache();
            // SAFETY: the sender hands over a live object of `size` bytes.
            unsafe { cache.dealloc(p as *mut u8, layout(size)) };
        }
        if let Some(done) = done {
            done.send(()).unwrap();
        }
    })
}

/// Frees `objects` through a fresh cache, drops it, and audits the heap:
/// nothing may be left allocated.
pub fn free_all_and_audit(heap: &Heap, objects: &[(usize, usize)]) {
    {
        let mut cache = heap.cache();
        for &(p, size) in objects {
            // SAFETY: each object is live and was allocated with this layout.
            unsafe { cache.dealloc(p as *mut u8, layout(size)) };
        }
    }
    let audit = heap.audit();
    assert_eq!(audit.allocated_objects, 0, "{audit:?}");
    assert_eq!(audit.large_objects, 0, "{audit:?}");
}
