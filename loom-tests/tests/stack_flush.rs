//! A cache's stacks hold objects it freed (one stack overflows and goes
//! back to its span) when its thread exits, while another thread frees an
//! object of the same span: every object ends up free in its span, once.
//!
//! Guards: a cache hands a span over only after its stack gave back the
//! span's objects (mutant `handoff_keeps_stack` hands the spans over first:
//! objects the stack still held are lost, neither free nor allocated, and
//! the audit says so).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::mpsc::channel;
use spanalloc::Heap;
use spanalloc_loom_tests::{FOUR_PER_SPAN, Memory, free_all_and_audit, layout, model, spawn, spawn_freer};

#[test]
fn exit_flushes_the_stacks_back_to_spans_while_another_thread_frees() {
    model(|| {
        let heap = Arc::new(Heap::new());
        let mem = Memory::new(&heap);
        let (tx, rx) = channel::<usize>();
        let freer = spawn_freer(heap.clone(), FOUR_PER_SPAN, rx, Some(mem.clone()), None);
        let (h, m) = (heap.clone(), mem.clone());
        let exiting = spawn(move || {
            let l = layout(FOUR_PER_SPAN);
            let mut cache = h.cache();
            let objs: Vec<usize> = (0..4).map(|_| cache.alloc(l) as usize).collect();
            for &p in &objs {
                m.touch(p);
            }
            tx.send(objs[0]).unwrap();
            // Three local frees into a stack of two: the third overflows it.
            for &p in &objs[1..] {
                m.touch(p);
                unsafe { cache.dealloc(p as *mut u8, l) };
            }
            // A reuse, then the thread exits.
            let again = cache.alloc(l) as usize;
            m.touch(again);
            drop(cache);
            again
        });
        let kept = exiting.join().unwrap();
        freer.join().unwrap();
        drop(mem);
        free_all_and_audit(heap, &[(kept, FOUR_PER_SPAN)]);
    });
}
