//! A thread's exit flushes its mcache while other threads free objects of
//! the span it is giving back.
//!
//! Guards: the hand-over of a span to its mcentral is one compare-and-swap
//! of the span's state, so a remote free counted meanwhile is never lost
//! (mutant `publish_store` writes the new state with a plain store).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{FOUR_PER_SPAN, free_all_and_audit, layout, model, spawn, spawn_freer};

#[test]
fn exit_flush_races_frees_into_the_exiting_threads_span() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let (tx1, rx1) = channel::<usize>();
        let (tx2, rx2) = channel::<usize>();
        let h = heap.clone();
        let exiting = spawn(move || {
            let l = layout(FOUR_PER_SPAN);
            let mut cache = h.cache();
            let a = cache.alloc(l) as usize;
            let b = cache.alloc(l) as usize;
            let c = cache.alloc(l) as usize;
            tx1.send(a).unwrap();
            tx2.send(b).unwrap();
            // The thread exits: its cache gives the span back.
            drop(cache);
            c
        });
        let f1 = spawn_freer(heap.clone(), FOUR_PER_SPAN, rx1, None);
        let f2 = spawn_freer(heap.clone(), FOUR_PER_SPAN, rx2, None);
        let c = exiting.join().unwrap();
        f1.join().unwrap();
        f2.join().unwrap();
        free_all_and_audit(&heap, &[(c, FOUR_PER_SPAN)]);
    });
}
