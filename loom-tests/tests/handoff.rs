//! A cache gives its spans back (its thread exits) while another thread
//! frees an object of a span it used up: the free is never lost, whichever
//! side of the hand-over it lands on.
//!
//! Guards: the hand-over publishes the new state first and merges the
//! remote frees after (mutant `handoff_merge_first` merges first: a free
//! that lands in between sees the cache as owner and queues nothing, and
//! stays stranded in a span the mcentral believes full; the audit says so).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{FOUR_PER_SPAN, free_all_and_audit, layout, model, spawn, spawn_freer};

#[test]
fn handing_spans_back_races_frees_into_them() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let (tx1, rx1) = channel::<usize>();
        let h = heap.clone();
        let exiting = spawn(move || {
            let l = layout(FOUR_PER_SPAN);
            let mut cache = h.cache();
            let objs: Vec<usize> = (0..4).map(|_| cache.alloc(l) as usize).collect();
            tx1.send(objs[0]).unwrap();
            // The thread exits: its cache gives the span back, used up.
            drop(cache);
            [objs[1], objs[2], objs[3]]
        });
        let f1 = spawn_freer(heap.clone(), FOUR_PER_SPAN, rx1, None, None);
        let kept = exiting.join().unwrap();
        f1.join().unwrap();
        let live: Vec<_> = kept.iter().map(|&p| (p, FOUR_PER_SPAN)).collect();
        free_all_and_audit(heap, &live);
    });
}
