//! larson-like server churn: `threads` lineages of threads replace random
//! 16–1,024 B objects in slot arrays that move to a new thread every
//! [`ROUND`] replacements, so most objects die on another thread than the
//! one that made them.

use std::alloc::GlobalAlloc;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{alloc_sized, free_sized};
use crate::support::Rng;

/// Objects per lineage.
pub const SLOTS: usize = 5000;
/// Replacements before a lineage hands its slots to a new thread.
pub const ROUND: u64 = 10_000;

/// Replaces `left` random objects of `slots` by new ones of random size,
/// `ROUND` at a time on a thread each, then sends the slots back.
fn lineage<A: GlobalAlloc + Sync + 'static>(
    a: &'static A,
    mut slots: Vec<usize>,
    mut rng: Rng,
    left: u64,
    done: Sender<Vec<usize>>,
) {
    let n = left.min(ROUND);
    for _ in 0..n {
        let slot = &mut slots[rng.below(SLOTS as u64) as usize];
        // SAFETY: every slot holds a live object from `alloc_sized(a, _)`.
        unsafe { free_sized(a, *slot) };
        *slot = alloc_sized(a, 16 + rng.below(1009) as usize);
    }
    if left > n {
        spawn(move || lineage(a, slots, rng, left - n, done));
    } else if done.send(slots).is_err() {
        eprintln!("benchmark: larson's timer is gone");
        std::process::abort();
    }
}

/// Starts a detached larson thread (a small stack, but room for the C
/// allocators built without optimisation).
fn spawn(f: impl FnOnce() + Send + 'static) {
    if thread::Builder::new().stack_size(512 << 10).spawn(f).is_err() {
        eprintln!("benchmark: cannot spawn a larson thread");
        std::process::abort();
    }
}

/// Fills `threads` slot arrays, then times `iters` replacements on each
/// lineage (all at once) and frees what is left after the clock stops.
pub fn run<A: GlobalAlloc + Sync + 'static>(a: &'static A, threads: usize, iters: u64) -> Duration {
    let (done, finished) = mpsc::channel();
    let start = Arc::new(Barrier::new(threads + 1));
    let mut seeder = Rng::new(threads as u64);
    for t in 0..threads {
        let slots: Vec<usize> = (0..SLOTS).map(|_| alloc_sized(a, 16 + seeder.below(1009) as usize)).collect();
        let (start, done) = (start.clone(), done.clone());
        spawn(move || {
            start.wait();
            lineage(a, slots, Rng::new(100 + t as u64), iters, done);
        });
    }
    // Only the lineages hold senders now: if every one of them dies, `recv`
    // fails instead of waiting forever.
    drop(done);
    let t = Instant::now();
    start.wait();
    let back: Vec<Vec<usize>> = (0..threads)
        .map(|_| match finished.recv() {
            Ok(slots) => slots,
            Err(_) => {
                eprintln!("benchmark: a larson thread died");
                std::process::abort();
            }
        })
        .collect();
    let elapsed = t.elapsed();
    for p in back.into_iter().flatten() {
        // SAFETY: each slot's object is live and freed once.
        unsafe { free_sized(a, p) };
    }
    elapsed
}
