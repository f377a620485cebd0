//! Frees from two other threads race the owner allocating from, and using
//! up, the same span; the owner reuses what they freed.
//!
//! Guards: the owner's merge of remote frees acquires what each freer
//! released, so an object's next user happens after its last one (mutant
//! `merge_relaxed` merges with relaxed ordering: the users' writes to the
//! object race, and loom reports it on the object's cell).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{
    FOUR_PER_SPAN, Memory, assert_disjoint, free_all_and_audit, layout, model, spawn, spawn_freer,
};

#[test]
fn remote_frees_race_owner_using_up_the_span_and_reusing_them() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let mem = Memory::new(&heap);
        let (tx1, rx1) = channel::<usize>();
        let (tx2, rx2) = channel::<usize>();
        let (landed, first_landed) = channel::<()>();
        let (h, m) = (heap.clone(), mem.clone());
        let owner = spawn(move || {
            let l = layout(FOUR_PER_SPAN);
            let mut cache = h.cache();
            // The span's four objects: two go to other threads.
            let objs: Vec<usize> = (0..4).map(|_| cache.alloc(l) as usize).collect();
            for &p in &objs {
                m.touch(p);
            }
            tx1.send(objs[0]).unwrap();
            tx2.send(objs[1]).unwrap();
            // One remote free has landed; the other lands while we refill:
            // the span is used up, so refilling merges the remote frees
            // (one done, the other perhaps landing), or hands the span over
            // and takes a fresh one.
            first_landed.recv().unwrap();
            let x = cache.alloc(l) as usize;
            let y = cache.alloc(l) as usize;
            m.touch(x);
            m.touch(y);
            vec![objs[2], objs[3], x, y]
        });
        let f1 = spawn_freer(heap.clone(), FOUR_PER_SPAN, rx1, Some(mem.clone()), Some(landed));
        let f2 = spawn_freer(heap.clone(), FOUR_PER_SPAN, rx2, Some(mem.clone()), None);
        let kept = owner.join().unwrap();
        f1.join().unwrap();
        f2.join().unwrap();
        let live: Vec<_> = kept.into_iter().map(|p| (p, FOUR_PER_SPAN)).collect();
        assert_disjoint(&live);
        drop(mem);
        free_all_and_audit(heap, &live);
    });
}
