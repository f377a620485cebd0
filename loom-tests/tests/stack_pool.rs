//! The stack pools' refill and drain: two threads' stack caches refill
//! from one class's pool at once, after stacks were drained into it; and one
//! thread drains its cache into the pool while another refills from it and
//! carves new stacks from the class's slabs.
//!
//! Guards: a cache takes warm stacks off the pool under the class's lock
//! (mutant `pool_unlocked_refill` counts them, lets go of the lock, then
//! takes them: two threads can get the same stack).

#![cfg(loom)]

use std::sync::Arc;

use loom::sync::Mutex;

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
        assert_pool_holds_every_stack(&pools);
    });
}

/// The stacks handed out and not yet given back, across the model's
/// threads: a stack taken while it is in here was handed out twice.
#[derive(Default)]
struct Live(Mutex<Vec<usize>>);

impl Live {
    fn claim(&self, addr: usize) {
        let mut live = self.0.lock().unwrap();
        assert!(!live.contains(&addr), "stack {addr:#x} handed to two threads at once");
        live.push(addr);
    }

    fn unclaim(&self, addr: usize) {
        self.0.lock().unwrap().retain(|&a| a != addr);
    }
}

#[test]
fn a_drain_races_a_refill_that_carves_new_stacks() {
    model(|| {
        let pools = Arc::new(StackPools::new());
        let live = Arc::new(Live::default());
        // One stack made and given back: the pool has it warm, and the
        // slab has room for one more (a slab holds two under loom).
        {
            let mut cache = StackCache::new();
            let a = pools.take(&mut cache, 0).unwrap();
            pools.give(&mut cache, 0, a);
            pools.flush(&mut cache);
        }
        let (p, l) = (pools.clone(), live.clone());
        let t1 = spawn(move || {
            // Takes two (the second refill finds the pool empty or carves),
            // then drains both back.
            let mut cache = StackCache::new();
            let a = p.take(&mut cache, 0).unwrap();
            l.claim(a.addr);
            let b = p.take(&mut cache, 0).unwrap();
            l.claim(b.addr);
            l.unclaim(a.addr);
            p.give(&mut cache, 0, a);
            l.unclaim(b.addr);
            p.give(&mut cache, 0, b);
            p.flush(&mut cache);
        });
        let mut cache = StackCache::new();
        let c = pools.take(&mut cache, 0).unwrap();
        live.claim(c.addr);
        live.unclaim(c.addr);
        pools.give(&mut cache, 0, c);
        pools.flush(&mut cache);
        t1.join().unwrap();
        assert_pool_holds_every_stack(&pools);
    });
}

/// Every stack ever made is back in the pool, once: taking as many as were
/// made gives distinct stacks and makes none.
fn assert_pool_holds_every_stack(pools: &StackPools) {
    let made = pools.created();
    assert_eq!(pools.pooled(), made, "a stack went missing");
    let mut cache = StackCache::new();
    let mut taken: Vec<_> = (0..made).map(|_| pools.take(&mut cache, 0).unwrap()).collect();
    assert_eq!(pools.created(), made, "the pool lost a stack and had to make one");
    let mut addrs: Vec<usize> = taken.iter().map(|s| s.addr).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), taken.len(), "the pool holds a stack twice");
    for s in taken.drain(..) {
        pools.give(&mut cache, 0, s);
    }
    pools.flush(&mut cache);
}
