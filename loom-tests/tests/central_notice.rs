//! Frees from other threads into a span its owner used up and handed to
//! the mcentral (a `FULL` span on no list) make its objects reusable: the
//! next cache that needs a span of the class gets them, instead of new
//! pages.
//!
//! Guards: the free that brings a `FULL` span its first free object queues
//! the span on the mcentral's notify stack (mutant `notice_dropped` never
//! does: the objects are never reused; mutant `notify_push_relaxed` pushes
//! without publishing the span's link: loom reports the drain's read).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{FOUR_PER_SPAN, Memory, free_all_and_audit, layout, model, spawn, spawn_freer};

#[test]
fn remote_frees_into_a_full_central_span_make_it_reusable() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let mem = Memory::new(&heap);
        let l = layout(FOUR_PER_SPAN);
        // A span used up and handed over: the cache allocates its four
        // objects and then one more (the refill parks the full span with
        // the mcentral).
        let mut cache = heap.cache();
        let first: Vec<usize> = (0..4).map(|_| cache.alloc(l) as usize).collect();
        let extra = cache.alloc(l) as usize;
        let (to_a, from_a) = channel::<usize>();
        let (to_b, from_b) = channel::<usize>();
        let (done, freed) = channel::<()>();
        let fa = spawn_freer(heap.clone(), FOUR_PER_SPAN, from_a, Some(mem.clone()), Some(done.clone()));
        let fb = spawn_freer(heap.clone(), FOUR_PER_SPAN, from_b, Some(mem.clone()), Some(done));
        // Another thread drains the notify stacks meanwhile.
        let h = heap.clone();
        let drainer = spawn(move || h.release());
        to_a.send(first[0]).unwrap();
        to_b.send(first[1]).unwrap();
        freed.recv().unwrap();
        freed.recv().unwrap();
        drainer.join().unwrap();
        // The cache's current span (`extra`'s) has three free objects;
        // take them, then two more: those must be the ones freed above.
        let mut got: Vec<usize> = (0..5).map(|_| cache.alloc(l) as usize).collect();
        for &p in &got {
            mem.touch(p);
        }
        let reused = got.iter().filter(|p| first[..2].contains(p)).count();
        assert_eq!(reused, 2, "the objects freed into the full span were not reused: {got:x?}");
        drop(cache);
        fa.join().unwrap();
        fb.join().unwrap();
        got.extend([first[2], first[3], extra]);
        let live: Vec<_> = got.into_iter().map(|p| (p, FOUR_PER_SPAN)).collect();
        drop(mem);
        free_all_and_audit(heap, &live);
    });
}
