//! The last free of a span races with that span's return to the mheap and
//! the reuse of its pages and record for another size class, which the
//! reusing cache uses up and hands back, full, to its own mcentral.
//!
//! Guards: a freer that looks at the span's state after its free was
//! merged compares the life it freed into, and leaves a record that now
//! describes another span alone (mutant `freer_ignores_life` does not: it
//! queues the new span on the mcentral of the old class, and the audit finds
//! a span on another class's list).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{
    ONE_PER_SPAN, TWO_PER_SPAN, assert_disjoint, free_all_and_audit, layout, model, spawn, spawn_freer,
};

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
        let (tx1, rx1) = channel::<usize>();
        let (tx2, rx2) = channel::<usize>();
        let f1 = spawn_freer(heap.clone(), TWO_PER_SPAN, rx1, None, None);
        let f2 = spawn_freer(heap.clone(), TWO_PER_SPAN, rx2, None, None);
        tx1.send(a).unwrap();
        tx2.send(b).unwrap();
        let h = heap.clone();
        let reuser = spawn(move || {
            // Empty spans go back to the mheap; then spans of another class
            // may take the same pages and record. The second allocation
            // parks the first span, used up, with the mcentral.
            h.release();
            let mut cache = h.cache();
            let l = layout(ONE_PER_SPAN);
            [cache.alloc(l) as usize, cache.alloc(l) as usize]
        });
        f1.join().unwrap();
        f2.join().unwrap();
        let got = reuser.join().unwrap();
        let live = [(got[0], ONE_PER_SPAN), (got[1], ONE_PER_SPAN)];
        assert_disjoint(&live);
        free_all_and_audit(heap, &live);
    });
}
