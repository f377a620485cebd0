//! The spin-then-sleep lock (`sync::RawLock`) gives mutual exclusion: two
//! threads increment a counter under it, and loom checks every access to the
//! counter is ordered by the lock.
//!
//! Guards: the lock's acquire and release orderings (mutant `lock_relaxed`
//! makes both relaxed).

#![cfg(loom)]

use std::sync::Arc;

use loom::cell::UnsafeCell;
use spanalloc::loom_api::RawLock;
use spanalloc_loom_tests::{model, spawn};

struct Guarded {
    lock: RawLock,
    count: UnsafeCell<u32>,
}

// SAFETY: `count` is only touched with `lock` held.
unsafe impl Sync for Guarded {}

#[test]
fn two_threads_increment_under_the_lock() {
    model(|| {
        let g = Arc::new(Guarded { lock: RawLock::new(), count: UnsafeCell::new(0) });
        let bump = |g: Arc<Guarded>| {
            spawn(move || {
                g.lock.lock();
                g.count.with_mut(|c| unsafe { *c += 1 });
                unsafe { g.lock.unlock() };
            })
        };
        let a = bump(g.clone());
        let b = bump(g.clone());
        a.join().unwrap();
        b.join().unwrap();
        g.lock.lock();
        assert_eq!(g.count.with(|c| unsafe { *c }), 2);
        unsafe { g.lock.unlock() };
    });
}
