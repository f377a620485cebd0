//! Two threads grow the heap at once: both find no free pages, one grows
//! the arena, the other must reserve a new one (an arena holds six pages
//! under loom), and each takes pages nobody else has.
//!
//! Guards: finding and taking a run of pages happen under one hold of the
//! mheap lock (mutant `grow_toctou` lets go of the lock in between).

#![cfg(loom)]

use std::sync::Arc;

use spanalloc::Heap;
use spanalloc_loom_tests::{LARGE, ONE_PER_SPAN, assert_disjoint, free_all_and_audit, layout, model, spawn};

#[test]
fn two_threads_grow_the_heap_at_once() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let grower = |heap: Arc<Heap>| {
            spawn(move || {
                let mut cache = heap.cache();
                let big = cache.alloc(layout(LARGE)) as usize;
                let small = cache.alloc(layout(ONE_PER_SPAN)) as usize;
                assert!(big != 0 && small != 0);
                [(big, LARGE), (small, ONE_PER_SPAN)]
            })
        };
        let a = grower(heap.clone());
        let b = grower(heap.clone());
        let mut live = a.join().unwrap().to_vec();
        live.extend(b.join().unwrap());
        assert_disjoint(&live);
        let s = heap.stats();
        assert!(s.heap_sys >= (2 * LARGE + 2 * ONE_PER_SPAN) as u64, "{s:?}");
        free_all_and_audit(heap, &live);
    });
}
