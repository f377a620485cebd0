//! A span keeps one live object while other threads free the rest of it and
//! another thread gives the heap's empty spans back and reuses their pages
//! for another size class: the live object must survive.
//!
//! Guards: only a span whose objects are all free is retired (mutant
//! `retire_ignores_live` overlooks one allocated object: its pages go back
//! to the mheap and another object is placed over the live one).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{
    Memory, ONE_PER_SPAN, TWO_PER_SPAN, assert_disjoint, free_all_and_audit, layout, model, spawn, spawn_freer,
};

#[test]
fn a_live_object_survives_remote_frees_and_release_of_empty_spans() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let mem = Memory::new(&heap);
        let l = layout(TWO_PER_SPAN);
        // A span of two objects, handed to the mcentral with both allocated.
        let (live, gone) = {
            let mut cache = heap.cache();
            (cache.alloc(l) as usize, cache.alloc(l) as usize)
        };
        mem.touch(live);
        let (tx, rx) = channel::<usize>();
        let freer = spawn_freer(heap.clone(), TWO_PER_SPAN, rx, Some(mem.clone()), None);
        tx.send(gone).unwrap();
        let (h, m) = (heap.clone(), mem.clone());
        let reuser = spawn(move || {
            // Empty spans go back to the mheap; then a span of another
            // class may take the same pages.
            h.release();
            let mut cache = h.cache();
            let p = cache.alloc(layout(ONE_PER_SPAN)) as usize;
            m.touch(p);
            p
        });
        freer.join().unwrap();
        let other = reuser.join().unwrap();
        // The live object's user goes on using it.
        mem.touch(live);
        let objects = [(live, TWO_PER_SPAN), (other, ONE_PER_SPAN)];
        assert_disjoint(&objects);
        drop(mem);
        free_all_and_audit(heap, &objects);
    });
}
