//! glibc's bench-malloc-simple/thread pattern: a small array of slots per
//! thread; each step frees the object in a random slot and puts a new
//! object of random size in its place.
//!
//! The random slots and sizes come from a table made before the first step
//! (as bench-malloc-thread precomputes its offsets and sizes), so that a
//! step is the allocator's work plus one table load; the table is long
//! enough that no branch predictor learns its sequence.

use std::alloc::GlobalAlloc;
use std::hint::black_box;

use crate::harness::{Crew, Job, alloc, dealloc, layout};
use crate::support::Rng;

/// Slots per thread.
pub const SLOTS: usize = 64;
/// The smallest and the largest object, in bytes (uniform in between).
pub const MIN_SIZE: usize = 16;
pub const MAX_SIZE: usize = 512;
/// Steps in the table of random slots and sizes (a power of two: the
/// index wraps with a mask).
const PLAN: usize = 1 << 14;

// A plan entry keeps the slot in 8 bits and the size in 24; the index masks
// need powers of two.
const _: () = assert!(SLOTS.is_power_of_two() && SLOTS <= 256 && MAX_SIZE < 1 << 24 && PLAN.is_power_of_two());

/// One thread's slots. Made full (every slot holds an object); dropping it
/// frees them all.
pub struct Churn<A: GlobalAlloc + 'static> {
    a: &'static A,
    objects: [*mut u8; SLOTS],
    sizes: [usize; SLOTS],
    /// Per step: the slot in the low 8 bits, the new object's size above.
    plan: Box<[u32]>,
    next: usize,
}

// SAFETY: `Churn` owns its objects; the allocator is `Sync`, so they may be
// used and freed on any thread.
unsafe impl<A: GlobalAlloc + Sync + 'static> Send for Churn<A> {}

impl<A: GlobalAlloc + 'static> Churn<A> {
    /// Fills the slots with objects of random sizes (first word written).
    pub fn new(a: &'static A, seed: u64) -> Churn<A> {
        let mut rng = Rng::new(seed);
        let mut size = move || MIN_SIZE + rng.below((MAX_SIZE - MIN_SIZE + 1) as u64) as usize;
        let mut pick = Rng::new(seed + 1000);
        let plan = (0..PLAN).map(|_| ((size() as u32) << 8) | pick.below(SLOTS as u64) as u32).collect();
        let mut sizes = [0; SLOTS];
        let objects = std::array::from_fn(|i| {
            sizes[i] = size();
            let p = alloc(a, layout(sizes[i]));
            // SAFETY: the object has at least 16 bytes at alignment 8.
            unsafe { p.cast::<usize>().write(sizes[i]) };
            p
        });
        Churn { a, objects, sizes, plan, next: 0 }
    }

    /// One step: frees a random slot's object and allocates a new one of
    /// random size in its place. `TOUCH`: the freed object's first word is
    /// read before the free and the new object is written in full, as a
    /// program uses what it allocates; otherwise only the new object's
    /// first word is written (the allocator alone).
    #[inline(always)]
    pub fn step<const TOUCH: bool>(&mut self) {
        let e = self.plan[self.next];
        self.next = (self.next + 1) & (PLAN - 1);
        let slot = e as usize & (SLOTS - 1);
        let size = (e >> 8) as usize;
        let old = self.objects[slot];
        if TOUCH {
            // SAFETY: `old` is live and its first word was written.
            black_box(unsafe { old.cast::<usize>().read_volatile() });
        }
        // SAFETY: `old` came from `a` with the layout of its size, and its
        // slot takes the new object at once.
        unsafe { dealloc(self.a, old, layout(self.sizes[slot])) };
        let p = alloc(self.a, layout(size));
        // SAFETY: `p` has `size >= 16` bytes at alignment 8. `black_box`
        // makes the stores observable, so none is optimised away.
        unsafe {
            if TOUCH {
                p.write_bytes(self.next as u8, size);
            } else {
                p.cast::<usize>().write(size);
            }
        }
        self.objects[slot] = black_box(p);
        self.sizes[slot] = size;
    }

    /// `n` steps.
    #[inline(never)]
    pub fn steps<const TOUCH: bool>(&mut self, n: u64) {
        for _ in 0..n {
            self.step::<TOUCH>();
        }
    }
}

impl<A: GlobalAlloc + 'static> Drop for Churn<A> {
    fn drop(&mut self) {
        for (&p, &size) in self.objects.iter().zip(&self.sizes) {
            // SAFETY: every slot holds a live object of its size.
            unsafe { dealloc(self.a, p, layout(size)) };
        }
    }
}

/// `threads` workers, each with slots of its own (filled on the worker's
/// thread at its first run, so that each thread owns its objects); an
/// iteration is one touched step on every worker.
pub fn crew<A: GlobalAlloc + Sync + 'static>(a: &'static A, threads: usize) -> Crew {
    let jobs = (0..threads)
        .map(|t| {
            let mut slots: Option<Churn<A>> = None;
            Box::new(move |iters: u64| {
                slots.get_or_insert_with(|| Churn::new(a, 10 + t as u64)).steps::<true>(iters);
            }) as Job
        })
        .collect();
    Crew::new(jobs)
}
