//! Two threads' stack caches refill from one class's pool at once, after
//! stacks were drained into it (the pools' refill and drain).
//!
//! Guards: a cache takes warm stacks off the pool under the class's lock
//! (mutant `pool_unlocked_refill` counts them, lets go of the lock, then
//! takes them: two threads can get the same stack).

#![cfg(loom)]

use std::sync::Arc;

use spanalloc::loom_api::{StackCache, StackPools};
use spanalloc_loom_tests::{model, spawn};

#[test]
fn two_caches_refill_from_one_pool_after_a_drain() {
    model(|| {
        let pools = Arc::new(StackPools::new());
        // Two stacks made and given back: the pool has them warm.
        {
            let mut cache = StackCache::new();
            let a = pools.take(&mut cache, 0).unwrap();
            let b = pools.take(&mut cache, 0).unwrap();
            pools.give(&mut cache, 0, a);
            pools.give(&mut cache, 0, b);
            pools.flush(&mut cache);
        }
        let p = pools.clone();
        let t1 = spawn(move || {
            let mut cache = StackCache::new();
            let s = p.take(&mut cache, 0).unwrap();
            p.flush(&mut cache);
            s
        });
        let mut cache = StackCache::new();
        let mine = pools.take(&mut cache, 0).unwrap();
        let theirs = t1.join().unwrap();
        assert_ne!(mine.addr, theirs.addr, "one stack handed to two threads at once");
        // Both freed here: this cache fills and drains to the pool.
        pools.give(&mut cache, 0, mine);
        pools.give(&mut cache, 0, theirs);
        pools.flush(&mut cache);
        assert_eq!(pools.pooled(), pools.created(), "a stack went missing");
    });
}
