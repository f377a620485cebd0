//! Stack pools: Go's `stackpool` and `stackcache`, for stacks that cannot
//! move.
//!
//! A stack is a slot in a *slab*: one mapping carved into slots of one size
//! class, each slot a guard region followed by the usable stack.
//!
//! ```text
//!  slab:  | guard | stack ... | guard | stack ... | guard | stack ... |
//!           slot 0              slot 1              slot 2
//! ```
//!
//! Classes are powers of two from 16 KiB to 8 MiB of usable stack. A slot's
//! guard is installed when the slot is first carved and stays for the life
//! of the slab, so reusing a stack costs no syscall. With
//! `MADV_GUARD_INSTALL` (Linux 6.13+) a slab is one memory mapping however
//! many guards it has; with the `mprotect` fallback each guard splits it.
//!
//! Three tiers hold free stacks, like Go's:
//!
//! - **the thread's cache** ([`StackCache`]): a small array per class, no
//!   lock; refilled from and drained to the pool half at a time. Stacks in it
//!   may still have their pages resident: a coroutine runtime that frees a
//!   stack and takes another gets back warm memory.
//! - **the pool's warm list** (per class, behind the class's lock): stacks
//!   that keep at most their top `keep` bytes resident; the pages below were
//!   given back with `MADV_DONTNEED` when the stack left a thread cache.
//! - **cold slots** in the slabs: every page given back; only address space.
//!
//! Everything here is metadata outside the stacks: the caches and warm lists
//! are arrays of addresses, the slab records live in mappings of their own.
//! A write through a dangling pointer into a freed stack cannot corrupt them.

#![cfg_attr(loom, allow(dead_code))]

use core::ptr;

use crate::os;
use crate::sync::unmodelled::{AtomicUsize, Counter, Ordering};
use crate::sync::{Mutex, const_fn_unless_loom};

use super::overflow;

/// The smallest class: 16 KiB of usable stack.
pub(crate) const MIN_SHIFT: u32 = 14;
/// The largest pooled class: 8 MiB. Larger stacks get a mapping each.
pub(crate) const MAX_SHIFT: u32 = 23;
/// Number of pooled classes.
pub(crate) const NUM_CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;

/// Bytes of address space a slab aims for (fewer slots for big classes).
#[cfg(not(loom))]
const SLAB_BYTES: usize = 16 << 20;
/// Under loom a slab holds two small stacks, so models reach "slab full".
#[cfg(loom)]
const SLAB_BYTES: usize = 2 * ((16 << 10) + 4096);
/// Slots per slab at most (the cold bitmap's size).
const MAX_SLOTS: usize = 1024;

/// Stacks per class a thread cache holds at most: about 256 KiB of them,
/// between 2 and 16 (under loom: 2, so models reach refill and drain).
pub(crate) const fn cache_cap(class: usize) -> usize {
    if cfg!(loom) {
        return 2;
    }
    let n = (256 << 10) >> (MIN_SHIFT as usize + class);
    if n < 2 {
        2
    } else if n > 16 {
        16
    } else {
        n
    }
}
const MAX_CACHE: usize = 16;

/// Warm stacks per class the pool keeps (their top `keep` bytes may be
/// resident); beyond, stacks go cold.
const WARM_CAP: usize = if cfg!(loom) { 2 } else { 64 };

/// Classes above this size give their pages back as soon as they are
/// dropped (the syscall is small next to the stack), so thread caches hold
/// them clean.
const RELEASE_ON_DROP_SHIFT: u32 = 18;

/// Usable bytes of `class`.
pub const fn class_size(class: usize) -> usize {
    1 << (MIN_SHIFT as usize + class)
}

/// The class for a stack of at least `size` usable bytes, or `None` when it
/// is larger than the largest class.
#[inline]
pub(crate) fn class_for(size: usize) -> Option<usize> {
    let rounded = size.max(1 << MIN_SHIFT).checked_next_power_of_two()?;
    let shift = rounded.trailing_zeros();
    if shift > MAX_SHIFT { None } else { Some((shift - MIN_SHIFT) as usize) }
}

/// Bytes of guard below every stack.
pub(crate) fn guard_size() -> usize {
    os::page_size()
}

/// A slab of stack slots of one class.
pub struct Slab {
    /// First byte of the mapping (slot 0's guard).
    base: usize,
    /// Bytes per slot (guard + stack).
    stride: usize,
    nslots: usize,
    /// Slots carved so far (their guards installed).
    carved: usize,
    /// Bit set: a carved slot that is free and cold.
    cold: [u64; MAX_SLOTS / 64],
    ncold: usize,
    /// Next slab of the class.
    next: *mut Slab,
    /// Next slab on the class's list of slabs with cold slots.
    next_cold: *mut Slab,
    /// On that list.
    listed_cold: bool,
}

/// A free stack: its slot's address and its slab.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// First byte of the slot (the guard); the stack is above the guard.
    pub addr: usize,
    pub(crate) slab: *mut Slab,
}

const NO_SLOT: Slot = Slot { addr: 0, slab: ptr::null_mut() };

// SAFETY: a slot names memory the pools own; it moves between threads with
// its stack.
unsafe impl Send for Slot {}

/// The pool of one class.
struct ClassPool {
    warm: [Slot; WARM_CAP],
    nwarm: usize,
    /// Slabs, newest first.
    slabs: *mut Slab,
    /// Slabs with cold slots (a slab may stay listed after its last cold
    /// slot is taken; it is dropped from the list when found so).
    cold: *mut Slab,
    /// The slab whose slots are being carved (the newest).
    carving: *mut Slab,
}

// SAFETY: only reached under the class's lock.
unsafe impl Send for ClassPool {}

/// Why a stack could not be had (see [`super::StackError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// `mmap` or the guard failed with this errno.
    Os(i32),
}

/// Every class's pool, and the pools' figures.
pub struct StackPools {
    classes: [Mutex<ClassPool>; NUM_CLASSES],
    /// Bytes the resident part of a pooled stack may keep.
    keep: AtomicUsize,
    /// Slab records, carved from mappings of their own.
    records: Mutex<Records>,
    pub(crate) counters: PoolCounters,
}

/// Stack figures (see `stats::StackStats`), kept in the slow paths; the
/// stacks in thread caches are counted by the caches themselves.
pub(crate) struct PoolCounters {
    /// Bytes of slab mappings.
    pub(crate) reserved: Counter,
    /// Slots in slabs.
    pub(crate) created: Counter,
    /// Free slots in the pools: warm, cold or not carved yet.
    pub(crate) pooled: Counter,
}

struct Records {
    cur: usize,
    end: usize,
    /// The newest chunk; each chunk's first word holds the one before.
    chunks: usize,
}

/// Bytes of each chunk of slab records.
const RECORD_CHUNK: usize = 64 << 10;

// SAFETY: only reached under its lock.
unsafe impl Send for Records {}

/// Bytes a pooled stack keeps resident at its top by default.
pub(crate) const DEFAULT_KEEP: usize = 16 << 10;

impl StackPools {
    const_fn_unless_loom! {
        /// Empty pools.
        pub fn new() -> StackPools {
            StackPools {
                classes: new_classes(),
                keep: AtomicUsize::new(DEFAULT_KEEP),
                records: Mutex::new(Records { cur: 0, end: 0, chunks: 0 }),
                counters: PoolCounters { reserved: Counter::new(), created: Counter::new(), pooled: Counter::new() },
            }
        }
    }

    /// Sets how many bytes at its top a pooled stack may keep resident. Any
    /// value is accepted: one at least the largest class keeps every page,
    /// so it is stored as that (the page rounding below cannot overflow).
    pub(crate) fn set_keep(&self, bytes: usize) {
        self.keep.store(bytes.min(class_size(NUM_CLASSES - 1)), Ordering::Relaxed);
    }

    /// A stack of `class` for `cache`'s thread.
    #[inline]
    pub fn take(&self, cache: &mut StackCache, class: usize) -> Result<Slot, PoolError> {
        let c = &mut cache.classes[class];
        if c.n == 0 {
            self.refill_cache(cache, class)?;
        }
        let c = &mut cache.classes[class];
        c.n -= 1;
        cache.held -= 1;
        Ok(c.slots[c.n])
    }

    #[cold]
    #[inline(never)]
    fn refill_cache(&self, cache: &mut StackCache, class: usize) -> Result<(), PoolError> {
        self.refill(&mut cache.classes[class], class)?;
        cache.held += cache.classes[class].n;
        Ok(())
    }

    /// Takes back a stack of `class` into `cache`.
    #[inline]
    pub fn give(&self, cache: &mut StackCache, class: usize, slot: Slot) {
        if class as u32 + MIN_SHIFT > RELEASE_ON_DROP_SHIFT {
            self.release_below_keep(class, slot);
        }
        if cache.classes[class].n == cache_cap(class) {
            self.drain_cache(cache, class);
        }
        let c = &mut cache.classes[class];
        c.slots[c.n] = slot;
        c.n += 1;
        cache.held += 1;
    }

    #[cold]
    #[inline(never)]
    fn drain_cache(&self, cache: &mut StackCache, class: usize) {
        self.drain(&mut cache.classes[class], class, cache_cap(class) / 2);
        cache.held -= cache_cap(class) / 2;
    }

    /// Gives every cached stack back to the pools (thread exit).
    pub fn flush(&self, cache: &mut StackCache) {
        for (class, c) in cache.classes.iter_mut().enumerate() {
            let n = c.n;
            self.drain(c, class, n);
        }
        cache.held = 0;
    }

    /// Moves half a cache's worth of stacks from the pool into `c`.
    fn refill(&self, c: &mut ClassCache, class: usize) -> Result<(), PoolError> {
        let want = cache_cap(class).div_ceil(2);
        let mut pool = self.classes[class].lock();
        #[cfg(spanalloc_mutant = "pool_unlocked_refill")]
        let mut pool = {
            // Mutant: count the warm stacks, let go of the lock, then take
            // them: two threads can take the same stack.
            let n = pool.nwarm;
            drop(pool);
            crate::sync::spin_point();
            let mut pool = self.classes[class].lock();
            pool.nwarm = n;
            pool
        };
        while c.n < want && pool.nwarm > 0 {
            pool.nwarm -= 1;
            c.slots[c.n] = pool.warm[pool.nwarm];
            c.n += 1;
        }
        while c.n < want {
            match self.take_cold(&mut pool, class) {
                Ok(slot) => {
                    c.slots[c.n] = slot;
                    c.n += 1;
                }
                // Some stacks are better than an error.
                Err(_) if c.n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        self.counters.pooled.sub_shared(c.n as u64);
        Ok(())
    }

    /// Moves `n` stacks from `c` to the pool, giving back the pages below
    /// each one's kept top first.
    fn drain(&self, c: &mut ClassCache, class: usize, n: usize) {
        let mut out = [NO_SLOT; MAX_CACHE];
        for slot in out.iter_mut().take(n) {
            c.n -= 1;
            *slot = c.slots[c.n];
        }
        // The madvise calls happen outside the lock.
        if class as u32 + MIN_SHIFT <= RELEASE_ON_DROP_SHIFT {
            for &slot in &out[..n] {
                self.release_below_keep(class, slot);
            }
        }
        self.counters.pooled.add_shared(n as u64);
        let mut pool = self.classes[class].lock();
        for &slot in &out[..n] {
            if pool.nwarm < WARM_CAP {
                let i = pool.nwarm;
                #[cfg(spanalloc_mutant = "pool_unlocked_drain")]
                {
                    // Mutant: find the free place, let go of the lock, then
                    // fill it: two drains can fill the same place.
                    drop(pool);
                    pool = self.classes[class].lock();
                }
                pool.warm[i] = slot;
                pool.nwarm = i + 1;
            } else {
                Self::make_cold(&mut pool, class, slot);
            }
        }
    }

    /// Gives back the pages of a stack below its kept top.
    fn release_below_keep(&self, class: usize, slot: Slot) {
        // At most the largest class (`set_keep`), so this cannot overflow.
        let keep = self.keep.load(Ordering::Relaxed).next_multiple_of(os::page_size());
        let size = class_size(class);
        if keep < size {
            os::release((slot.addr + guard_size()) as *mut u8, size - keep);
        }
    }

    /// Gives back every page of a stack and marks its slot cold.
    fn make_cold(pool: &mut ClassPool, class: usize, slot: Slot) {
        os::release((slot.addr + guard_size()) as *mut u8, class_size(class));
        // SAFETY: the slab outlives its slots; under the class's lock.
        let slab = unsafe { &mut *slot.slab };
        let i = (slot.addr - slab.base) / slab.stride;
        slab.cold[i / 64] |= 1 << (i % 64);
        slab.ncold += 1;
        if !slab.listed_cold {
            slab.listed_cold = true;
            slab.next_cold = pool.cold;
            pool.cold = slab;
        }
    }

    /// A cold slot, else a newly carved one, else one of a new slab. Each
    /// is found in constant time (the slab count can be large).
    fn take_cold(&self, pool: &mut ClassPool, class: usize) -> Result<Slot, PoolError> {
        // SAFETY: listed slabs are live; under the class's lock.
        while let Some(slab) = unsafe { pool.cold.as_mut() } {
            if slab.ncold == 0 {
                pool.cold = slab.next_cold;
                slab.listed_cold = false;
                continue;
            }
            let w = slab.cold.iter().position(|&w| w != 0).unwrap_or(0);
            let b = slab.cold[w].trailing_zeros() as usize;
            slab.cold[w] &= !(1 << b);
            slab.ncold -= 1;
            return Ok(Slot { addr: slab.base + (w * 64 + b) * slab.stride, slab });
        }
        // SAFETY: as above.
        if let Some(slab) = unsafe { pool.carving.as_mut() }
            && slab.carved < slab.nslots
        {
            return Self::carve(slab);
        }
        let slab = self.new_slab(class)?;
        // SAFETY: a fresh record, ours under the class's lock.
        unsafe {
            (*slab).next = pool.slabs;
            pool.slabs = slab;
            pool.carving = slab;
            Self::carve(&mut *slab)
        }
    }

    /// Carves the next slot of a slab: installs its guard.
    fn carve(slab: &mut Slab) -> Result<Slot, PoolError> {
        let addr = slab.base + slab.carved * slab.stride;
        os::guard(addr as *mut u8, guard_size()).map_err(PoolError::Os)?;
        slab.carved += 1;
        Ok(Slot { addr, slab })
    }

    /// Maps a new slab of `class` and registers it with the overflow
    /// handler.
    fn new_slab(&self, class: usize) -> Result<*mut Slab, PoolError> {
        let stride = class_size(class) + guard_size();
        let nslots = (SLAB_BYTES / stride).clamp(1, MAX_SLOTS);
        let len = nslots * stride;
        let record = self.new_record().ok_or(PoolError::Os(libc::ENOMEM))?;
        let Some(base) = os::map(len) else {
            return Err(PoolError::Os(os::errno()));
        };
        os::no_huge_pages(base, len);
        // SAFETY: a fresh record of our own.
        unsafe {
            record.write(Slab {
                base: base as usize,
                stride,
                nslots,
                carved: 0,
                cold: [0; MAX_SLOTS / 64],
                ncold: 0,
                next: ptr::null_mut(),
                next_cold: ptr::null_mut(),
                listed_cold: false,
            });
        }
        overflow::register_slab(base as usize, len, stride, guard_size(), class_size(class));
        self.counters.reserved.add_shared(len as u64);
        self.counters.created.add_shared(nslots as u64);
        self.counters.pooled.add_shared(nslots as u64);
        Ok(record)
    }

    /// Memory for a slab record.
    fn new_record(&self) -> Option<*mut Slab> {
        let mut r = self.records.lock();
        let size = size_of::<Slab>().next_multiple_of(64);
        if r.cur + size > r.end {
            let chunk = os::map(RECORD_CHUNK)? as usize;
            // SAFETY: a fresh mapping of our own; its first record's worth
            // of bytes links it to the chunk before.
            unsafe { (chunk as *mut usize).write(r.chunks) };
            r.chunks = chunk;
            r.cur = chunk + size;
            r.end = chunk + RECORD_CHUNK;
        }
        let at = r.cur;
        r.cur += size;
        Some(at as *mut Slab)
    }

    /// Stacks in the pools (warm, cold or not carved yet).
    pub fn pooled(&self) -> u64 {
        self.counters.pooled.get()
    }

    /// Stack slots in slabs.
    pub fn created(&self) -> u64 {
        self.counters.created.get()
    }

    /// Calls `f` on every slab's mapping: (base, length).
    pub(crate) fn for_each_slab(&self, mut f: impl FnMut(usize, usize)) {
        for class in &self.classes {
            let pool = class.lock();
            let mut at = pool.slabs;
            // SAFETY: listed slabs are live; under the class's lock.
            while let Some(slab) = unsafe { at.as_ref() } {
                f(slab.base, slab.nslots * slab.stride);
                at = slab.next;
            }
        }
    }

    /// The locks, in order, for `fork`.
    #[cfg(not(loom))]
    pub(crate) fn for_each_lock(&self, mut f: impl FnMut(&crate::sync::RawLock)) {
        for class in &self.classes {
            f(class.raw());
        }
        f(self.records.raw());
    }
}

/// Pools built for a loom model are dropped at the end of each run: their
/// slabs and records go back, so thousands of runs do not exhaust the
/// process's mappings. (The global pools are a static and never dropped;
/// their slabs stay registered with the overflow handler for good.)
#[cfg(loom)]
impl Drop for StackPools {
    fn drop(&mut self) {
        for class in &self.classes {
            let pool = class.lock();
            let mut at = pool.slabs;
            // SAFETY: the pools are being dropped: no stack of theirs is
            // in use, and the slab records are still mapped.
            while let Some(slab) = unsafe { at.as_ref() } {
                os::unmap(slab.base as *mut u8, slab.nslots * slab.stride);
                at = slab.next;
            }
        }
        let mut chunk = self.records.lock().chunks;
        while chunk != 0 {
            // SAFETY: every chunk starts with the address of the one before.
            let before = unsafe { (chunk as *const usize).read() };
            os::unmap(chunk as *mut u8, RECORD_CHUNK);
            chunk = before;
        }
    }
}

/// A class pool with no stacks.
const EMPTY_POOL: ClassPool = ClassPool {
    warm: [NO_SLOT; WARM_CAP],
    nwarm: 0,
    slabs: ptr::null_mut(),
    cold: ptr::null_mut(),
    carving: ptr::null_mut(),
};

#[cfg(not(loom))]
const fn new_classes() -> [Mutex<ClassPool>; NUM_CLASSES] {
    [const { Mutex::new(EMPTY_POOL) }; NUM_CLASSES]
}

#[cfg(loom)]
fn new_classes() -> [Mutex<ClassPool>; NUM_CLASSES] {
    core::array::from_fn(|_| Mutex::new(EMPTY_POOL))
}

/// One class of a thread's stack cache.
#[derive(Clone, Copy)]
struct ClassCache {
    slots: [Slot; MAX_CACHE],
    n: usize,
}

/// A thread's stack cache: a few free stacks per class, no lock.
pub struct StackCache {
    classes: [ClassCache; NUM_CLASSES],
    /// Stacks held, all classes.
    held: usize,
}

// SAFETY: the cache owns the stacks it holds; moving it moves them.
unsafe impl Send for StackCache {}

impl StackCache {
    /// An empty cache.
    pub const fn new() -> StackCache {
        StackCache { classes: [ClassCache { slots: [NO_SLOT; MAX_CACHE], n: 0 }; NUM_CLASSES], held: 0 }
    }

    /// Stacks held, all classes.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether the cache holds no stack.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }
}

impl Default for StackCache {
    fn default() -> Self {
        StackCache::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_power_of_two_classes() {
        assert_eq!(class_for(1), Some(0));
        assert_eq!(class_for(16 << 10), Some(0));
        assert_eq!(class_for((16 << 10) + 1), Some(1));
        assert_eq!(class_for(1 << 20), Some(6));
        assert_eq!(class_for(8 << 20), Some(NUM_CLASSES - 1));
        assert_eq!(class_for((8 << 20) + 1), None);
        assert_eq!(class_for(usize::MAX), None);
        for class in 0..NUM_CLASSES {
            assert_eq!(class_for(class_size(class)), Some(class));
            assert!(cache_cap(class) >= 2 && cache_cap(class) <= MAX_CACHE);
        }
    }

    #[test]
    fn stacks_come_back_through_cache_and_pool() {
        let pools = StackPools::new();
        let mut a = StackCache::new();
        let mut b = StackCache::new();
        let cap = cache_cap(0);
        let mut taken: Vec<Slot> = (0..3 * cap).map(|_| pools.take(&mut a, 0).unwrap()).collect();
        let mut addrs: Vec<usize> = taken.iter().map(|s| s.addr).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 3 * cap, "a stack handed out twice");
        // Freed on another thread's cache: it fills, drains to the pool...
        for s in taken.drain(..) {
            pools.give(&mut b, 0, s);
        }
        assert!(b.len() <= cap);
        // ... and the first cache refills from what came back.
        let again: Vec<Slot> = (0..2 * cap).map(|_| pools.take(&mut a, 0).unwrap()).collect();
        assert!(again.iter().all(|s| addrs.contains(&s.addr)), "reuse, not new slabs");
        for s in again {
            pools.give(&mut a, 0, s);
        }
        pools.flush(&mut a);
        pools.flush(&mut b);
        assert_eq!(a.len() + b.len(), 0);
        assert_eq!(pools.counters.pooled.get(), pools.counters.created.get(), "every stack back in the pool");
    }
}
