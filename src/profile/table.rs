//! The profile table: live samples by address, and unbiased counts by
//! call stack, in a fixed-size mapping outside the heap.
//!
//! Go keeps a bucket per (stack, size) with alloc and free counts and a
//! side record per sampled object (`mprof.go`, `specialprofile`). Here one
//! [`Table`] holds both, behind one lock taken only on a sample or on the
//! free of a sampled object:
//!
//! - **Live records**, one per sampled object still allocated: its
//!   address, size, weight and stack entry. Found by address through an
//!   open-addressed index (linear probing, backward-shift deletion, so no
//!   tombstones pile up): O(1) expected for insert and remove.
//! - **Stack entries**: the frames, their hash, and the unbiased
//!   `alloc_objects`, `alloc_bytes`, `inuse_objects`, `inuse_bytes` of the
//!   samples taken there, plus the number of samples and of live ones.
//!   Found by frame hash through a second index.
//!
//! Each sample is unbiased on its own (its weight is `1/(1 − e^(−s/R))`
//! for its size and the rate its gap was drawn with) and then summed:
//! "unbias, then sum", so stacks that allocate mixed sizes are right.
//! The sums are `f64`; when an entry's last live sample is freed its
//! in-use sums are set to exactly zero, so no rounding residue survives.
//!
//! # Bounds
//!
//! Capacities are fixed when the table is made; the memory is one
//! `os::map` reservation (lazily committed, mapped at the first sample, so
//! a program that never profiles pays nothing) carved into four arrays.
//! Records and entries are carved in order and reused through free lists,
//! so the resident part grows with what is used. When the table is full:
//!
//! - no live record free: the sample still counts in its stack's `alloc_*`,
//!   not in its in-use values (its free could not be matched); counted in
//!   `live_full`;
//! - no stack entry free: the oldest entry with no live sample is evicted
//!   (its `alloc_*` move into the overflow entry, so totals stay right;
//!   counted in `evicted`); if every entry has live samples, the sample
//!   goes to the overflow entry (counted in `overflowed`).
//!
//! Entry 0 is the overflow entry: it has no frames, is never evicted, and
//! shows in profiles as one synthetic frame.
//!
//! The table never allocates through the global allocator, never panics
//! (indices are checked), and all of it runs under the caller's lock.

use core::ptr;

use super::sampler::Sample;
use super::walk::MAX_DEPTH;
use crate::os;

/// No entry / end of a list.
const NIL: u32 = u32::MAX;
/// The overflow entry.
pub(crate) const OVERFLOW: u32 = 0;
/// `Entry::size` before the first sample.
const SIZE_UNSET: u64 = 0;
/// `Entry::size` once samples of different sizes were seen.
const SIZE_MIXED: u64 = u64::MAX;

/// A live sampled object.
#[derive(Clone, Copy)]
#[repr(C)]
struct Live {
    addr: usize,
    weight: f64,
    size: u64,
    /// Its stack entry, or, while the record is free, the next free record.
    stack: u32,
    _pad: u32,
}

/// A call stack and its counts.
#[repr(C)]
struct Entry {
    hash: u64,
    alloc_objects: f64,
    alloc_bytes: f64,
    inuse_objects: f64,
    inuse_bytes: f64,
    /// Samples taken here, ever (including those evicted into the overflow
    /// entry, for that entry).
    samples: u64,
    /// The sample size if all had one, else `SIZE_MIXED`.
    size: u64,
    /// Live samples.
    live: u32,
    depth: u32,
    /// Idle list links (entries with `live == 0`).
    prev: u32,
    next: u32,
    frames: [usize; MAX_DEPTH],
}

/// The counts of one stack, copied out for a snapshot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryCounts {
    pub(crate) overflow: bool,
    pub(crate) alloc_objects: f64,
    pub(crate) alloc_bytes: f64,
    pub(crate) inuse_objects: f64,
    pub(crate) inuse_bytes: f64,
    pub(crate) samples: u64,
    pub(crate) live: u32,
    /// The objects' size when they all had one.
    pub(crate) size: Option<u64>,
    pub(crate) depth: u32,
    pub(crate) frames: [usize; MAX_DEPTH],
}

/// What the table could not keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Samples whose object could not get a live record (in `alloc_*`
    /// only).
    pub live_full: u64,
    /// Stacks with no live sample evicted to make room; their `alloc_*`
    /// moved to the overflow record.
    pub evicted: u64,
    /// Samples counted in the overflow record because every stack entry
    /// had live samples.
    pub overflowed: u64,
    /// Samples lost because the table's memory could not be mapped.
    pub unmapped: u64,
    /// Samples recorded at an address that already had a live record (a
    /// sampled object whose free was not reported); the old record was
    /// dropped as if freed.
    pub replaced: u64,
}

/// The table. Every method must run under the lock that guards it.
pub(crate) struct Table {
    live_cap: u32,
    stack_cap: u32,
    /// The mapping (null until the first sample).
    base: *mut u8,
    bytes: usize,
    live_index: *mut u32,
    lives: *mut Live,
    stack_index: *mut u32,
    entries: *mut Entry,
    /// Records and entries carved so far; the rest of each array is
    /// untouched.
    lives_carved: u32,
    entries_carved: u32,
    free_live: u32,
    live_count: u32,
    /// Entries (not the overflow one) with no live sample, oldest first.
    idle_head: u32,
    idle_tail: u32,
    dropped: Dropped,
}

// SAFETY: the table owns its mapping; its users serialise access with a
// lock.
unsafe impl Send for Table {}

/// Slots of an index: twice the capacity, a power of two.
const fn slots(cap: u32) -> usize {
    (cap as usize * 2).next_power_of_two()
}

#[inline]
fn hash_addr(addr: usize) -> u64 {
    ((addr as u64) >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The hash of a call stack.
pub(crate) fn hash_frames(frames: &[usize]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ frames.len() as u64;
    for &f in frames {
        h = (h ^ f as u64).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The slot an index would place `hash` in.
#[inline]
fn home(hash: u64, mask: usize) -> usize {
    (hash >> 16) as usize & mask
}

impl Table {
    /// A table for `live_cap` live samples and `stack_cap` stacks (both at
    /// least 1, at most 2^30), not yet mapped.
    pub(crate) const fn new(live_cap: u32, stack_cap: u32) -> Self {
        assert!(live_cap >= 1 && live_cap <= 1 << 30 && stack_cap >= 1 && stack_cap <= 1 << 30);
        Table {
            live_cap,
            stack_cap,
            base: ptr::null_mut(),
            bytes: 0,
            live_index: ptr::null_mut(),
            lives: ptr::null_mut(),
            stack_index: ptr::null_mut(),
            entries: ptr::null_mut(),
            lives_carved: 0,
            entries_carved: 0,
            free_live: NIL,
            live_count: 0,
            idle_head: NIL,
            idle_tail: NIL,
            dropped: Dropped { live_full: 0, evicted: 0, overflowed: 0, unmapped: 0, replaced: 0 },
        }
    }

    /// Offsets of the four arrays in the mapping, and its length.
    fn layout(&self) -> [usize; 5] {
        let page = os::page_size();
        let round = |n: usize| n.next_multiple_of(64);
        let live_index = 0;
        let lives = live_index + round(slots(self.live_cap) * 4);
        let stack_index = lives + round(self.live_cap as usize * size_of::<Live>());
        let entries = stack_index + round(slots(self.stack_cap + 1) * 4);
        let end = entries + (self.stack_cap as usize + 1) * size_of::<Entry>();
        [live_index, lives, stack_index, entries, end.next_multiple_of(page)]
    }

    /// Maps the table's memory on first use; false if the kernel refuses.
    fn ensure_mapped(&mut self) -> bool {
        if !self.base.is_null() {
            return true;
        }
        let [li, l, si, e, len] = self.layout();
        let Some(base) = os::map(len) else { return false };
        self.base = base;
        self.bytes = len;
        // SAFETY: the offsets lie inside the fresh mapping and are 64-aligned.
        unsafe {
            self.live_index = base.add(li).cast();
            self.lives = base.add(l).cast();
            self.stack_index = base.add(si).cast();
            self.entries = base.add(e).cast();
        }
        // The overflow entry; the mapping is zeroed, which reads as empty
        // indices and zero counts.
        self.entries_carved = 1;
        let o = self.entry(OVERFLOW);
        o.prev = NIL;
        o.next = NIL;
        true
    }

    /// Bytes of address space the table holds.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Live samples recorded.
    pub(crate) fn live_samples(&self) -> u32 {
        self.live_count
    }

    /// Stack entries in use, the overflow entry included once mapped
    /// (entries are never freed, only evicted and reused at once).
    pub(crate) fn stack_count(&self) -> usize {
        self.entries_carved as usize
    }

    #[inline]
    fn entry(&mut self, i: u32) -> &mut Entry {
        debug_assert!(i < self.entries_carved);
        // SAFETY: i < entries_carved ≤ stack_cap + 1: inside the array.
        unsafe { &mut *self.entries.add(i as usize) }
    }

    #[inline]
    fn entry_ref(&self, i: u32) -> &Entry {
        // SAFETY: as in `entry`.
        unsafe { &*self.entries.add(i as usize) }
    }

    #[inline]
    fn live(&mut self, i: u32) -> &mut Live {
        // SAFETY: i < lives_carved ≤ live_cap.
        unsafe { &mut *self.lives.add(i as usize) }
    }

    #[inline]
    fn live_slot(&mut self, s: usize) -> &mut u32 {
        // SAFETY: s is masked to the index's slots.
        unsafe { &mut *self.live_index.add(s) }
    }

    #[inline]
    fn stack_slot(&mut self, s: usize) -> &mut u32 {
        // SAFETY: s is masked to the index's slots.
        unsafe { &mut *self.stack_index.add(s) }
    }

    // -----------------------------------------------------------------------
    // Samples and frees.

    /// Records a sampled object at `addr` allocated at `frames` (innermost
    /// first; at most 64 are kept).
    pub(crate) fn insert(&mut self, addr: usize, sample: Sample, frames: &[usize]) {
        if !self.ensure_mapped() {
            self.dropped.unmapped += 1;
            return;
        }
        if self.remove(addr) {
            self.dropped.replaced += 1;
        }
        let frames = &frames[..frames.len().min(MAX_DEPTH)];
        let e = self.find_or_add_stack(frames);
        let (w, bytes) = (sample.weight, sample.weight * sample.size as f64);
        {
            let entry = self.entry(e);
            entry.alloc_objects += w;
            entry.alloc_bytes += bytes;
            entry.samples += 1;
            entry.size = match entry.size {
                SIZE_UNSET => sample.size,
                s if s == sample.size => s,
                _ => SIZE_MIXED,
            };
        }
        let Some(r) = self.take_live() else {
            self.dropped.live_full += 1;
            return;
        };
        *self.live(r) = Live { addr, weight: w, size: sample.size, stack: e, _pad: 0 };
        let mask = slots(self.live_cap) - 1;
        let mut s = home(hash_addr(addr), mask);
        while *self.live_slot(s) != 0 {
            s = (s + 1) & mask;
        }
        *self.live_slot(s) = r + 1;
        self.live_count += 1;
        if self.entry(e).live == 0 && e != OVERFLOW {
            self.idle_unlink(e);
        }
        let entry = self.entry(e);
        entry.live += 1;
        entry.inuse_objects += w;
        entry.inuse_bytes += bytes;
    }

    /// The object at `addr` was freed: drops its live record and its share
    /// of its stack's in-use counts. Returns whether `addr` was sampled.
    pub(crate) fn remove(&mut self, addr: usize) -> bool {
        if self.base.is_null() || self.live_count == 0 {
            return false;
        }
        let mask = slots(self.live_cap) - 1;
        let mut s = home(hash_addr(addr), mask);
        let r = loop {
            let v = *self.live_slot(s);
            if v == 0 {
                return false;
            }
            if self.live(v - 1).addr == addr {
                break v - 1;
            }
            s = (s + 1) & mask;
        };
        let lives = self.lives;
        // SAFETY: the index has mask + 1 slots; its members are carved
        // records.
        unsafe { delete_slot(self.live_index, mask, s, |r| home(hash_addr((*lives.add(r as usize)).addr), mask)) };
        let rec = *self.live(r);
        self.live(r).stack = self.free_live;
        self.free_live = r;
        self.live_count -= 1;
        let e = rec.stack;
        let entry = self.entry(e);
        entry.live -= 1;
        if entry.live == 0 {
            entry.inuse_objects = 0.0;
            entry.inuse_bytes = 0.0;
            if e != OVERFLOW {
                self.idle_push(e);
            }
        } else {
            entry.inuse_objects -= rec.weight;
            entry.inuse_bytes -= rec.weight * rec.size as f64;
        }
        true
    }

    /// Copies every stack entry's counts into `out`, as long as `out` has
    /// room without growing (the caller sizes it from [`stack_count`]).
    /// Returns false, copying nothing, if it has not.
    ///
    /// [`stack_count`]: Table::stack_count
    pub(crate) fn copy_out(&self, out: &mut Vec<EntryCounts>) -> bool {
        if out.capacity() - out.len() < self.stack_count() {
            return false;
        }
        for i in 0..self.entries_carved {
            let e = self.entry_ref(i);
            // Within the capacity checked above: never reallocates.
            out.push(EntryCounts {
                overflow: i == OVERFLOW,
                alloc_objects: e.alloc_objects,
                alloc_bytes: e.alloc_bytes,
                inuse_objects: e.inuse_objects,
                inuse_bytes: e.inuse_bytes,
                samples: e.samples,
                live: e.live,
                size: if e.size == SIZE_UNSET || e.size == SIZE_MIXED { None } else { Some(e.size) },
                depth: e.depth,
                frames: e.frames,
            });
        }
        true
    }

    // -----------------------------------------------------------------------
    // Live records.

    fn take_live(&mut self) -> Option<u32> {
        if self.free_live != NIL {
            let r = self.free_live;
            self.free_live = self.live(r).stack;
            return Some(r);
        }
        if self.lives_carved < self.live_cap {
            self.lives_carved += 1;
            return Some(self.lives_carved - 1);
        }
        None
    }

    // -----------------------------------------------------------------------
    // Stack entries.

    fn find_or_add_stack(&mut self, frames: &[usize]) -> u32 {
        let hash = hash_frames(frames);
        let mask = slots(self.stack_cap + 1) - 1;
        let mut s = home(hash, mask);
        loop {
            let v = *self.stack_slot(s);
            if v == 0 {
                break;
            }
            let e = self.entry_ref(v - 1);
            if e.hash == hash && &e.frames[..e.depth as usize] == frames {
                return v - 1;
            }
            s = (s + 1) & mask;
        }
        let Some(e) = self.take_entry() else {
            self.dropped.overflowed += 1;
            return OVERFLOW;
        };
        // The eviction may have moved members of the probe run: find the
        // first empty slot again.
        let mut s = home(hash, mask);
        while *self.stack_slot(s) != 0 {
            s = (s + 1) & mask;
        }
        *self.stack_slot(s) = e + 1;
        let entry = self.entry(e);
        entry.hash = hash;
        entry.alloc_objects = 0.0;
        entry.alloc_bytes = 0.0;
        entry.inuse_objects = 0.0;
        entry.inuse_bytes = 0.0;
        entry.samples = 0;
        entry.size = SIZE_UNSET;
        entry.live = 0;
        entry.depth = frames.len() as u32;
        entry.frames[..frames.len()].copy_from_slice(frames);
        self.idle_push(e);
        e
    }

    /// A free entry: carved, or evicted (the oldest idle one).
    fn take_entry(&mut self) -> Option<u32> {
        if self.entries_carved <= self.stack_cap {
            self.entries_carved += 1;
            return Some(self.entries_carved - 1);
        }
        let e = self.idle_head;
        if e == NIL {
            return None;
        }
        self.idle_unlink(e);
        self.delete_stack(e);
        let (ao, ab, n) = {
            let v = self.entry(e);
            (v.alloc_objects, v.alloc_bytes, v.samples)
        };
        let o = self.entry(OVERFLOW);
        o.alloc_objects += ao;
        o.alloc_bytes += ab;
        o.samples += n;
        self.dropped.evicted += 1;
        Some(e)
    }

    /// Takes entry `e` out of the stack index.
    fn delete_stack(&mut self, e: u32) {
        let mask = slots(self.stack_cap + 1) - 1;
        let mut s = home(self.entry_ref(e).hash, mask);
        while *self.stack_slot(s) != e + 1 {
            s = (s + 1) & mask;
        }
        let entries = self.entries;
        // SAFETY: the index has mask + 1 slots; its members are carved
        // entries.
        unsafe { delete_slot(self.stack_index, mask, s, |e| home((*entries.add(e as usize)).hash, mask)) };
    }

    fn idle_push(&mut self, e: u32) {
        let tail = self.idle_tail;
        {
            let entry = self.entry(e);
            entry.prev = tail;
            entry.next = NIL;
        }
        if tail == NIL {
            self.idle_head = e;
        } else {
            self.entry(tail).next = e;
        }
        self.idle_tail = e;
    }

    fn idle_unlink(&mut self, e: u32) {
        let (prev, next) = {
            let entry = self.entry(e);
            (entry.prev, entry.next)
        };
        if prev == NIL {
            self.idle_head = next;
        } else {
            self.entry(prev).next = next;
        }
        if next == NIL {
            self.idle_tail = prev;
        } else {
            self.entry(next).prev = prev;
        }
    }
}

/// Empties slot `s` of a linear-probing index whose slots hold a member
/// plus one (0: empty), shifting later members of its probe run back so
/// that every member stays reachable from its home slot (`home` of the
/// member). No tombstones.
///
/// # Safety
/// `index` must point at `mask + 1` slots.
unsafe fn delete_slot(index: *mut u32, mask: usize, mut s: usize, home: impl Fn(u32) -> usize) {
    // SAFETY: every slot touched is masked into the index.
    unsafe {
        loop {
            *index.add(s) = 0;
            let mut j = s;
            loop {
                j = (j + 1) & mask;
                let v = *index.add(j);
                if v == 0 {
                    return;
                }
                if !cyclic_between(s, home(v - 1), j) {
                    *index.add(s) = v;
                    s = j;
                    break;
                }
            }
        }
    }
}

/// Whether `k` lies in the cyclic interval `(i, j]`.
#[inline]
fn cyclic_between(i: usize, k: usize, j: usize) -> bool {
    if i <= j { i < k && k <= j } else { i < k || k <= j }
}

impl Drop for Table {
    fn drop(&mut self) {
        if !self.base.is_null() {
            os::unmap(self.base, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(size: u64) -> Sample {
        Sample { size, weight: 1.0 }
    }

    fn counts(t: &Table) -> Vec<EntryCounts> {
        let mut v = Vec::with_capacity(t.stack_count());
        assert!(t.copy_out(&mut v));
        v
    }

    fn by_frames(t: &Table, frames: &[usize]) -> EntryCounts {
        *counts(t)
            .iter()
            .find(|c| !c.overflow && &c.frames[..c.depth as usize] == frames)
            .unwrap_or_else(|| panic!("no entry for {frames:x?}"))
    }

    #[test]
    fn insert_remove_and_snapshot_are_exact_at_weight_one() {
        let mut t = Table::new(1024, 64);
        let (a, b) = ([0x1000usize, 0x2000], [0x3000usize]);
        for i in 0..100 {
            t.insert(0x10_0000 + i * 16, one(16), &a);
        }
        for i in 0..30 {
            t.insert(0x20_0000 + i * 64, one(64), &b);
        }
        for i in 0..40 {
            assert!(t.remove(0x10_0000 + i * 16));
        }
        assert!(!t.remove(0x10_0000), "already removed");
        assert!(!t.remove(0xdead_0000), "never sampled");
        let ca = by_frames(&t, &a);
        assert_eq!((ca.alloc_objects, ca.alloc_bytes, ca.inuse_objects, ca.inuse_bytes), (100.0, 1600.0, 60.0, 960.0));
        assert_eq!((ca.samples, ca.live, ca.size), (100, 60, Some(16)));
        let cb = by_frames(&t, &b);
        assert_eq!((cb.alloc_objects, cb.inuse_objects, cb.inuse_bytes), (30.0, 30.0, 1920.0));
        assert_eq!(t.live_samples(), 90);
        assert_eq!(t.stack_count(), 3, "two stacks and the overflow entry");
        for i in 40..100 {
            assert!(t.remove(0x10_0000 + i * 16));
        }
        for i in 0..30 {
            assert!(t.remove(0x20_0000 + i * 64));
        }
        assert_eq!(t.live_samples(), 0);
        let ca = by_frames(&t, &a);
        assert_eq!((ca.alloc_objects, ca.inuse_objects, ca.inuse_bytes, ca.live), (100.0, 0.0, 0.0, 0));
        assert_eq!(t.dropped(), Dropped::default());
    }

    #[test]
    fn in_use_returns_to_exactly_zero_after_unequal_weights() {
        let mut t = Table::new(64, 8);
        let f = [0x4000usize];
        let ws = [32768.5, 1.1, 7.3, 1e-3 + 1.0];
        for (i, &w) in ws.iter().enumerate() {
            t.insert(0x1000 * (i + 1), Sample { size: 24 + i as u64, weight: w }, &f);
        }
        let c = by_frames(&t, &f);
        assert_eq!(c.size, None, "mixed sizes");
        assert!((c.alloc_objects - ws.iter().sum::<f64>()).abs() < 1e-9);
        for i in 0..ws.len() {
            t.remove(0x1000 * (i + 1));
        }
        let c = by_frames(&t, &f);
        assert_eq!((c.inuse_objects, c.inuse_bytes), (0.0, 0.0));
    }

    #[test]
    fn probe_runs_survive_many_removals() {
        // Addresses that collide a lot, inserted and removed in a scrambled
        // order; every remaining one must stay findable.
        let mut t = Table::new(512, 4);
        let f = [0x5000usize];
        let addr = |i: usize| (i * 4096 * 1024) ^ ((i % 7) * 8);
        for i in 0..512 {
            t.insert(addr(i), one(8), &f);
        }
        let mut gone = vec![false; 512];
        let mut x = 12345usize;
        for _ in 0..300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let i = (x >> 33) % 512;
            assert_eq!(t.remove(addr(i)), !gone[i]);
            gone[i] = true;
        }
        for (i, g) in gone.iter().enumerate() {
            assert_eq!(t.remove(addr(i)), !g, "entry {i}");
        }
        assert_eq!(t.live_samples(), 0);
    }

    #[test]
    fn a_full_live_table_counts_allocs_and_drops() {
        let mut t = Table::new(4, 8);
        let f = [0x6000usize];
        for i in 0..10 {
            t.insert(0x1000 * (i + 1), one(32), &f);
        }
        let c = by_frames(&t, &f);
        assert_eq!((c.alloc_objects, c.inuse_objects, c.live), (10.0, 4.0, 4));
        assert_eq!(t.dropped().live_full, 6);
        // A free of a dropped sample finds nothing; a kept one frees a slot.
        assert!(!t.remove(0x1000 * 10));
        assert!(t.remove(0x1000));
        t.insert(0x9000_0000, one(32), &f);
        assert_eq!(by_frames(&t, &f).live, 4);
        assert_eq!(t.dropped().live_full, 6);
    }

    #[test]
    fn a_full_stack_table_evicts_idle_stacks_then_overflows() {
        let mut t = Table::new(64, 2);
        // Two stacks with live samples fill the table.
        t.insert(0x1000, one(8), &[0xa]);
        t.insert(0x2000, one(8), &[0xb]);
        // A third: nothing idle to evict, so it overflows.
        t.insert(0x3000, one(8), &[0xc]);
        assert_eq!(t.dropped().overflowed, 1);
        // Free the first stack's only sample: it becomes evictable.
        assert!(t.remove(0x1000));
        t.insert(0x4000, one(8), &[0xd]);
        let d = t.dropped();
        assert_eq!((d.evicted, d.overflowed), (1, 1));
        let all = counts(&t);
        assert_eq!(all.len(), 3);
        let o = all.iter().find(|c| c.overflow).unwrap();
        // The overflow entry holds the overflowed live sample and the
        // evicted stack's allocation.
        assert_eq!((o.alloc_objects, o.inuse_objects, o.live, o.samples), (2.0, 1.0, 1, 2));
        assert!(all.iter().all(|c| c.overflow || c.frames[0] != 0xa), "0xa was evicted");
        assert_eq!(by_frames(&t, &[0xd]).live, 1);
        // Totals stay right: four objects allocated, three live.
        let alloc: f64 = all.iter().map(|c| c.alloc_objects).sum();
        let inuse: f64 = all.iter().map(|c| c.inuse_objects).sum();
        assert_eq!((alloc, inuse), (4.0, 3.0));
        // The overflowed sample's free lands in the overflow entry.
        assert!(t.remove(0x3000));
        assert_eq!(counts(&t).iter().find(|c| c.overflow).unwrap().live, 0);
    }

    #[test]
    fn many_stacks_under_eviction_keep_the_index_consistent() {
        let mut t = Table::new(256, 16);
        let mut x = 99usize;
        for i in 0..2000usize {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let frame = [0x1000 + (x >> 40) % 40, 0x77];
            t.insert(0x10_0000 + i * 8, one(8), &frame);
            if i >= 8 {
                // Keep at most 8 live, so most stacks become idle.
                assert!(t.remove(0x10_0000 + (i - 8) * 8));
            }
        }
        let all = counts(&t);
        assert!(all.len() <= 17);
        let alloc: f64 = all.iter().map(|c| c.alloc_objects).sum();
        assert_eq!(alloc, 2000.0);
        let inuse: f64 = all.iter().map(|c| c.inuse_objects).sum();
        assert_eq!(inuse, 8.0);
        // Every stack is found again by its frames, adding nothing.
        let n = t.stack_count();
        for c in all.iter().filter(|c| !c.overflow) {
            let frames = &c.frames[..c.depth as usize];
            let e = t.find_or_add_stack(frames);
            assert_eq!(&t.entry_ref(e).frames[..c.depth as usize], frames);
        }
        assert_eq!(t.stack_count(), n);
        assert_eq!(t.dropped().overflowed, 0);
    }

    #[test]
    fn copy_out_refuses_a_short_buffer() {
        let mut t = Table::new(8, 8);
        t.insert(0x1000, one(8), &[1]);
        t.insert(0x2000, one(8), &[2]);
        let mut v = Vec::with_capacity(1);
        let cap = v.capacity();
        assert!(cap < 3 && !t.copy_out(&mut v));
        assert!(v.is_empty() && v.capacity() == cap);
        // Nothing mapped, nothing counted.
        let t = Table::new(8, 8);
        assert_eq!(t.stack_count(), 0);
        assert!(!Table::new(8, 8).remove(0x1000));
    }
}
