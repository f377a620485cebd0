//! Two mcaches refill the same size class from one mcentral while a third
//! thread returns a span to it.
//!
//! Guards: the mcentral lock around taking a span off the partial list and
//! claiming it (mutant `refill_toctou` takes and claims in two critical
//! sections, so two caches can own one span).

#![cfg(loom)]

use std::sync::Arc;

use spanalloc::Heap;
use spanalloc_loom_tests::{FOUR_PER_SPAN, assert_disjoint, free_all_and_audit, layout, model, spawn};

#[test]
fn two_caches_refill_one_class_while_a_third_returns_a_span() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let l = layout(FOUR_PER_SPAN);
        // Leave two partial spans with the mcentral: the first full but for
        // one object freed, the second with two objects allocated.
        let mut live = Vec::new();
        {
            let mut cache = heap.cache();
            let ptrs: Vec<usize> = (0..6).map(|_| cache.alloc(l) as usize).collect();
            unsafe { cache.dealloc(ptrs[0] as *mut u8, l) };
            live.extend(ptrs[1..].iter().map(|&p| (p, FOUR_PER_SPAN)));
        }
        let refill = |heap: Arc<Heap>| {
            spawn(move || {
                let mut cache = heap.cache();
                let p = cache.alloc(layout(FOUR_PER_SPAN));
                assert!(!p.is_null());
                p as usize
            })
        };
        let a = refill(heap.clone());
        let b = refill(heap.clone());
        let h = heap.clone();
        let giver = spawn(move || {
            let mut cache = h.cache();
            let p = cache.alloc(layout(FOUR_PER_SPAN));
            unsafe { cache.dealloc(p, layout(FOUR_PER_SPAN)) };
            cache.flush();
        });
        live.push((a.join().unwrap(), FOUR_PER_SPAN));
        live.push((b.join().unwrap(), FOUR_PER_SPAN));
        giver.join().unwrap();
        assert_disjoint(&live);
        free_all_and_audit(heap, &live);
    });
}
