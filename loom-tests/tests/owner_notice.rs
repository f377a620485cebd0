//! Frees from other threads into a span its owner has put aside (no free
//! object left) reach the owner: its next refill reuses those objects
//! instead of taking a new span.
//!
//! Guards: a remote free that brings an owned span its first free object
//! pushes the span on the owner's notify stack (mutant `owner_not_told`
//! never does; mutant `notify_push_relaxed` pushes without publishing the
//! span's link).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{FOUR_PER_SPAN, free_all_and_audit, layout, model, spawn, spawn_freer};

#[test]
fn remote_frees_into_a_span_put_aside_reach_its_owner() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let (to_a, from_owner_a) = channel::<usize>();
        let (to_b, from_owner_b) = channel::<usize>();
        let (done, freed) = channel::<()>();
        let h = heap.clone();
        let owner = spawn(move || {
            let l = layout(FOUR_PER_SPAN);
            let mut cache = h.cache();
            // Fill a span, then take one object of the next: the first span
            // is put aside with no free object.
            let first: Vec<usize> = (0..4).map(|_| cache.alloc(l) as usize).collect();
            let mut kept = vec![cache.alloc(l) as usize];
            to_a.send(first[0]).unwrap();
            to_b.send(first[1]).unwrap();
            freed.recv().unwrap();
            freed.recv().unwrap();
            // Use up the second span; the next two objects must be the two
            // the other threads freed.
            kept.extend((0..3).map(|_| cache.alloc(l) as usize));
            let x = cache.alloc(l) as usize;
            let y = cache.alloc(l) as usize;
            let mut got = [x, y];
            got.sort();
            let mut want = [first[0], first[1]];
            want.sort();
            assert_eq!(got, want, "the owner did not reuse the remotely freed objects");
            kept.extend([x, y, first[2], first[3]]);
            kept
        });
        let fa = spawn_freer(heap.clone(), FOUR_PER_SPAN, from_owner_a, Some(done.clone()));
        let fb = spawn_freer(heap.clone(), FOUR_PER_SPAN, from_owner_b, Some(done));
        let kept = owner.join().unwrap();
        fa.join().unwrap();
        fb.join().unwrap();
        let live: Vec<_> = kept.into_iter().map(|p| (p, FOUR_PER_SPAN)).collect();
        free_all_and_audit(&heap, &live);
    });
}
