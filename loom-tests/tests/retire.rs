//! The last free of a span races with that span's return to the mheap and
//! the reuse of its pages (and record) for another size class.
//!
//! Guards: a freer sets its bits before it counts them, so once the count
//! says every object is free nobody touches the span again (mutant
//! `count_before_bits` counts first: the span can be retired and reused
//! while the last freer still writes into it).

#![cfg(loom)]

use std::sync::Arc;

use spanalloc::{Heap, MCache};
use spanalloc_loom_tests::{ONE_PER_SPAN, TWO_PER_SPAN, assert_disjoint, free_all_and_audit, layout, model, spawn};

#[test]
fn last_free_races_return_to_mheap_and_reuse_for_another_class() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let l = layout(TWO_PER_SPAN);
        // A full span owned by the mcentral.
        let (a, b) = {
            let mut cache = heap.cache();
            (cache.alloc(l) as usize, cache.alloc(l) as usize)
        };
        // The freers' caches have no index, so they do not take the span
        // over: their frees land in it as remote frees.
        let free_one = |heap: Arc<Heap>, p: usize| {
            spawn(move || {
                let mut cache = MCache::without_index(&heap);
                unsafe { cache.dealloc(p as *mut u8, layout(TWO_PER_SPAN)) };
            })
        };
        let f1 = free_one(heap.clone(), a);
        let f2 = free_one(heap.clone(), b);
        let h = heap.clone();
        let reuser = spawn(move || {
            // Empty spans go back to the mheap; then a span of another
            // class may take the same pages and record.
            h.release();
            let mut cache = h.cache();
            cache.alloc(layout(ONE_PER_SPAN)) as usize
        });
        f1.join().unwrap();
        f2.join().unwrap();
        let c = reuser.join().unwrap();
        let live = [(c, ONE_PER_SPAN)];
        assert_disjoint(&live);
        free_all_and_audit(&heap, &live);
    });
}
