//! A free from another thread races with the owner allocating from, and
//! releasing, the same span.
//!
//! Guards: the owner merges remote frees by the bits it finds and subtracts
//! exactly what it merged, so a freer whose bits are set but not yet counted
//! cannot leave a count behind (mutant `collect_trusts_count` subtracts the
//! count it read instead).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{FOUR_PER_SPAN, assert_disjoint, free_all_and_audit, layout, model, spawn, spawn_freer};

#[test]
fn remote_frees_race_owner_allocating_from_and_releasing_the_span() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let (tx1, rx1) = channel::<usize>();
        let (tx2, rx2) = channel::<usize>();
        let (landed, first_landed) = channel::<()>();
        let h = heap.clone();
        let owner = spawn(move || {
            let l = layout(FOUR_PER_SPAN);
            let mut cache = h.cache();
            // The span's four objects: two go to other threads.
            let objs: Vec<usize> = (0..4).map(|_| cache.alloc(l) as usize).collect();
            tx1.send(objs[0]).unwrap();
            tx2.send(objs[1]).unwrap();
            // One remote free has landed; the other lands while we refill:
            // the span is exhausted, so refilling merges the remote frees
            // (one counted, the other perhaps only half done), or puts the
            // span aside and takes a fresh one.
            first_landed.recv().unwrap();
            let x = cache.alloc(l) as usize;
            let y = cache.alloc(l) as usize;
            vec![objs[2], objs[3], x, y]
        });
        let f1 = spawn_freer(heap.clone(), FOUR_PER_SPAN, rx1, Some(landed));
        let f2 = spawn_freer(heap.clone(), FOUR_PER_SPAN, rx2, None);
        let kept = owner.join().unwrap();
        f1.join().unwrap();
        f2.join().unwrap();
        let live: Vec<_> = kept.into_iter().map(|p| (p, FOUR_PER_SPAN)).collect();
        assert_disjoint(&live);
        free_all_and_audit(&heap, &live);
    });
}
