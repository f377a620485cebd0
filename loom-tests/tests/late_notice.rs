//! The last free into a full span handed to the mcentral comes from another
//! thread at the moment its former owner frees into it too and takes it
//! back: the notice and the adoption race for the span.
//!
//! Guards: a span a freer queued is not adopted (mutant `adopt_queued`
//! takes it anyway: the span is then both on the notify stack and owned by
//! a cache, and the mcentral's drain touches the cache's view of it).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{FOUR_PER_SPAN, free_all_and_audit, layout, model, spawn, spawn_freer};

#[test]
fn a_notice_races_the_former_owner_taking_the_span_back() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let (tx, rx) = channel::<usize>();
        let freer = spawn_freer(heap.clone(), FOUR_PER_SPAN, rx, None, None);
        let h = heap.clone();
        let owner = spawn(move || {
            let l = layout(FOUR_PER_SPAN);
            let mut cache = h.cache();
            // Use the span up; the next allocation parks it, full, with the
            // mcentral.
            let objs: Vec<usize> = (0..4).map(|_| cache.alloc(l) as usize).collect();
            let extra = cache.alloc(l) as usize;
            tx.send(objs[0]).unwrap();
            // Free into the span we gave back: we take it back, unless the
            // other thread's free queued it first.
            unsafe { cache.dealloc(objs[1] as *mut u8, l) };
            let again = cache.alloc(l) as usize;
            vec![objs[2], objs[3], extra, again]
        });
        let kept = owner.join().unwrap();
        freer.join().unwrap();
        let live: Vec<_> = kept.into_iter().map(|p| (p, FOUR_PER_SPAN)).collect();
        free_all_and_audit(heap, &live);
    });
}
