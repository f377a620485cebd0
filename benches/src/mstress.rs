//! mstress-like: mimalloc's stress test (`test/test-stress.c`, run by
//! mimalloc-bench as `mstress`), scaled down. In rounds, [`THREADS`]
//! threads are created; each allocates many objects of random, mostly
//! small sizes (written in full, checked word by word when freed), keeps
//! some in a retained array to the end of the round, frees most of the
//! others at random, and swaps some with a transfer array shared by all
//! threads, so objects change threads. At the end of a round the threads
//! free what they hold and exit; half of the transfer array is freed and
//! the rest survives into the next round.

use std::alloc::GlobalAlloc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use crate::harness::{Words, alloc_zeroed, dealloc, layout};
use crate::support::Rng;

/// Threads per round.
pub const THREADS: usize = 4;
/// The load per thread: thread `t` allocates `100 * SCALE * (t % 8 + 1)`
/// objects and retains half as many more.
pub const SCALE: usize = 10;
/// Slots of the transfer array.
pub const TRANSFERS: usize = 1000;
/// What each word of an object of `n` words holds, xor'ed: `n - i`.
const COOKIE: usize = 0xbf58_476d_1ce4_e5b9;

/// `percent` in 100.
#[inline(always)]
fn chance(percent: u64, rng: &mut Rng) -> bool {
    rng.below(100) < percent
}

/// An object of `items` words (more for 1 % of them: 100× as many, and of
/// those 10 % 1,000× and 1 % 10,000×), zeroed by the allocator, then every
/// word written. Returns its address.
fn alloc_items<A: GlobalAlloc>(a: &A, mut items: usize, rng: &mut Rng) -> usize {
    if chance(1, rng) {
        items *= if chance(1, rng) {
            10_000
        } else if chance(10, rng) {
            1000
        } else {
            100
        };
    }
    let p = alloc_zeroed(a, layout(items * 8)).cast::<usize>();
    for i in 0..items {
        // SAFETY: `i < items`, the object's length in words.
        unsafe { p.add(i).write((items - i) ^ COOKIE) };
    }
    p as usize
}

/// Checks every word of an object of [`alloc_items`] (0: none) and frees it.
///
/// # Safety
///
/// `addr` is 0 or a live object of `alloc_items(a, ..)`, not used again.
unsafe fn free_items<A: GlobalAlloc>(a: &A, addr: usize) {
    if addr == 0 {
        return;
    }
    let p = addr as *mut usize;
    // SAFETY: the object's first word holds its length in words, and it has
    // that many.
    unsafe {
        let items = p.read() ^ COOKIE;
        for i in 0..items {
            if p.add(i).read() ^ COOKIE != items - i {
                eprintln!("benchmark: mstress: object {p:p} corrupted at word {i}");
                std::process::abort();
            }
        }
        dealloc(a, p.cast(), layout(items * 8));
    }
}

/// One thread's part of a round.
fn stress<A: GlobalAlloc + Sync + 'static>(a: &'static A, tid: usize, transfer: &[AtomicUsize]) {
    let mut rng = Rng::new(tid as u64 * 43);
    let mut allocs = 100 * SCALE * (tid % 8 + 1);
    let mut retain = allocs / 2;
    let mut data = Words::zeroed(a, allocs);
    let mut retained = Words::zeroed(a, retain);
    let (mut data_top, mut retain_top) = (0, 0);
    while allocs > 0 || retain > 0 {
        if retain == 0 || (chance(50, &mut rng) && allocs > 0) {
            // 8 B – 128 B, powers of two.
            allocs -= 1;
            data[data_top] = alloc_items(a, 1 << rng.below(5), &mut rng);
            data_top += 1;
        } else {
            // 8 B – 512 B, kept to the end of the round.
            retained[retain_top] = alloc_items(a, 1 << rng.below(7), &mut rng);
            retain_top += 1;
            retain -= 1;
        }
        if chance(66, &mut rng) && data_top > 0 {
            let i = rng.below(data_top as u64) as usize;
            // SAFETY: the slot's object (if any) is freed once: its slot is
            // emptied.
            unsafe { free_items(a, data[i]) };
            data[i] = 0;
        }
        if chance(25, &mut rng) && data_top > 0 {
            let i = rng.below(data_top as u64) as usize;
            let j = rng.below(TRANSFERS as u64) as usize;
            data[i] = transfer[j].swap(data[i], Ordering::AcqRel);
        }
    }
    for &p in retained[..retain_top].iter().chain(&data[..data_top]) {
        // SAFETY: every object this thread holds, once each.
        unsafe { free_items(a, p) };
    }
}

/// The transfer array and the main thread's random generator, kept from
/// round to round. Dropping it frees what the transfer array still holds.
pub struct Mstress<A: GlobalAlloc + 'static> {
    a: &'static A,
    transfer: Box<[AtomicUsize]>,
    rng: Rng,
}

impl<A: GlobalAlloc + Sync + 'static> Mstress<A> {
    pub fn new(a: &'static A) -> Mstress<A> {
        Mstress { a, transfer: (0..TRANSFERS).map(|_| AtomicUsize::new(0)).collect(), rng: Rng::new(0x7feb_352d) }
    }

    /// One round: [`THREADS`] threads created, run and joined, then about
    /// half of the transfer array freed.
    pub fn round(&mut self) {
        let (a, transfer) = (self.a, &self.transfer[..]);
        thread::scope(|s| {
            for tid in 0..THREADS {
                s.spawn(move || stress(a, tid, transfer));
            }
        });
        for slot in self.transfer.iter() {
            if chance(50, &mut self.rng) {
                // SAFETY: taken out of the array, so freed once.
                unsafe { free_items(self.a, slot.swap(0, Ordering::AcqRel)) };
            }
        }
    }
}

impl<A: GlobalAlloc + 'static> Drop for Mstress<A> {
    fn drop(&mut self) {
        for slot in self.transfer.iter() {
            // SAFETY: taken out of the array, so freed once.
            unsafe { free_items(self.a, slot.swap(0, Ordering::AcqRel)) };
        }
    }
}
