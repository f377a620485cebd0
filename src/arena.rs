//! Arenas: the address space the mheap carves pages from, and the O(1) map
//! from any pointer to its span.
//!
//! An arena is a 64 MiB reservation aligned to 64 MiB, placed by the kernel
//! (`MAP_NORESERVE`: untouched pages cost nothing). Its first pages hold its
//! metadata ([`ArenaMeta`]: page bitmaps and the page → span table), then a
//! guard page, then the pages the mheap hands out, then a guard page at the
//! end. So the metadata is never inside user memory, and a linear overflow
//! off either end of the user pages faults before it reaches any metadata.
//!
//! ```text
//!  arena base (64 MiB aligned)
//!  | ArenaMeta ... | guard | page FIRST_PAGE ... page ARENA_PAGES-2 | guard |
//! ```
//!
//! Pointer → span: because arenas are aligned, `addr & !(ARENA_SIZE - 1)` is
//! the metadata and `(addr >> PAGE_SHIFT) % ARENA_PAGES` the page: one
//! dependent load finds the span. Before that load, a process-wide
//! registry (two bits per 64 MiB of address space, 512 KiB of zero pages)
//! says whether the address is in a spanalloc arena at all, so a foreign
//! pointer is reported instead of read through.
//!
//! Objects too large for an arena get a "huge" reservation of their own with
//! the same metadata header. A huge object aligned to 64 MiB or more cannot
//! have its metadata at its own slot's base; its metadata sits one slot
//! below and the registry marks the slot "far".
//!
//! The page bitmaps (`free`, `clean`, `aged`) are guarded by the mheap lock;
//! the page → span table is atomic and read without locks.

use core::ptr;

use crate::mspan::Span;
use crate::os;
use crate::sizeclass::{PAGE_SHIFT, PAGE_SIZE};
use crate::sync::UnsafeCell;
use crate::sync::unmodelled::{AtomicPtr, AtomicU64, Ordering};

/// log2 of the arena size.
pub(crate) const ARENA_SHIFT: usize = 26;
/// Bytes per arena.
pub(crate) const ARENA_SIZE: usize = 1 << ARENA_SHIFT;
/// Runtime pages per arena.
pub(crate) const ARENA_PAGES: usize = ARENA_SIZE / PAGE_SIZE;
const BITMAP_WORDS: usize = ARENA_PAGES / 64;

/// Pages the arena metadata occupies.
pub(crate) const META_PAGES: usize = size_of::<ArenaMeta>().div_ceil(PAGE_SIZE);
/// The first page the mheap hands out (after the metadata and a guard).
pub(crate) const FIRST_PAGE: usize = META_PAGES + 1;
/// One past the last page the mheap may hand out (the last page is a guard).
#[cfg(not(loom))]
pub(crate) const END_PAGE: usize = ARENA_PAGES - 1;
/// Under loom an arena is a handful of pages, so models reach "arena full".
#[cfg(loom)]
pub(crate) const END_PAGE: usize = FIRST_PAGE + 6;
/// Pages added to the heap at a time when it grows (Go: 4 MiB).
#[cfg(not(loom))]
pub(crate) const GROW_PAGES: usize = (4 << 20) / PAGE_SIZE;
#[cfg(loom)]
pub(crate) const GROW_PAGES: usize = 2;

static_assertions::const_assert!(FIRST_PAGE < 16);
static_assertions::const_assert_eq!(ARENA_PAGES % 64, 0);

/// Metadata at the base of every arena (and of every huge reservation).
#[repr(C)]
pub(crate) struct ArenaMeta {
    /// The span of each page: set for every page of a small span, for the
    /// first page of a large one; null for free pages. First in the struct,
    /// so its 4 KiB pages are page-aligned and can be given back to the OS
    /// where they describe only free pages.
    pub(crate) spans: [AtomicPtr<Span>; ARENA_PAGES],
    /// The heap that owns the arena.
    pub(crate) heap_id: u64,
    /// Start of the reservation (the metadata itself, except far huge).
    pub(crate) map_base: usize,
    /// A huge reservation holding one object.
    pub(crate) huge: bool,
    /// The registry slot this metadata is found through.
    pub(crate) slot: usize,
    /// Page state, guarded by the mheap lock.
    pub(crate) pages: UnsafeCell<PageState>,
}

/// The page allocator's view of one arena (under the mheap lock).
pub(crate) struct PageState {
    /// Next arena in the heap's list.
    pub(crate) next: *mut ArenaMeta,
    /// Bytes reserved from the kernel, starting at `map_base`.
    pub(crate) reserved: usize,
    /// Pages `[FIRST_PAGE, grown)` belong to the heap; the rest are not used yet.
    pub(crate) grown: usize,
    /// Free pages in `[FIRST_PAGE, grown)`.
    pub(crate) nfree: usize,
    /// Bit set: page is free.
    pub(crate) free: [u64; BITMAP_WORDS],
    /// Bit set: page holds only zeros and is not resident (never touched, or
    /// given back with `MADV_DONTNEED`).
    pub(crate) clean: [u64; BITMAP_WORDS],
    /// Bit set: page was free and dirty at the last scavenger tick.
    pub(crate) aged: [u64; BITMAP_WORDS],
    /// Bit `g` set: the page of `spans` entries for pages
    /// `[g * MAP_GROUP, (g + 1) * MAP_GROUP)` may be resident.
    pub(crate) map_resident: u64,
}

/// Page → span entries per 4 KiB of the table.
const MAP_GROUP: usize = 4096 / size_of::<AtomicPtr<Span>>();
static_assertions::const_assert!(ARENA_PAGES / MAP_GROUP <= 64);

// ---------------------------------------------------------------------------
// The registry: which 64 MiB slots of the address space are ours.

/// Address bits the registry covers (the x86-64 / aarch64 user space).
const ADDRESS_BITS: usize = 47;
const SLOTS: usize = 1 << (ADDRESS_BITS - ARENA_SHIFT);
/// Two bits per slot, 32 slots per word.
static REGISTRY: [AtomicU64; SLOTS / 32] = [const { AtomicU64::new(0) }; SLOTS / 32];

/// Registry tags.
const TAG_NONE: u64 = 0;
/// The slot starts with an `ArenaMeta`.
const TAG_ARENA: u64 = 1;
/// The slot starts a huge object whose `ArenaMeta` is one slot below.
const TAG_FAR: u64 = 2;

fn set_tag(slot: usize, tag: u64) {
    let (w, shift) = (slot / 32, (slot % 32) * 2);
    let word = &REGISTRY[w];
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        let new = (cur & !(3 << shift)) | (tag << shift);
        match word.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(x) => cur = x,
        }
    }
}

#[inline]
fn tag_of(addr: usize) -> u64 {
    let slot = addr >> ARENA_SHIFT;
    if slot >= SLOTS {
        return TAG_NONE;
    }
    // SAFETY: slot < SLOTS, so slot / 32 is in bounds.
    let word = unsafe { REGISTRY.get_unchecked(slot / 32) }.load(Ordering::Acquire);
    (word >> ((slot % 32) * 2)) & 3
}

/// The arena metadata for `addr`, if `addr` lies in a slot spanalloc
/// registered (in any heap).
#[inline]
pub(crate) fn meta_of(addr: usize) -> Option<&'static ArenaMeta> {
    let slot_base = addr & !(ARENA_SIZE - 1);
    let meta = match tag_of(addr) {
        TAG_ARENA => slot_base,
        TAG_FAR => slot_base - ARENA_SIZE,
        _ => return None,
    };
    // SAFETY: a registered slot's metadata stays mapped until it is
    // unregistered, which happens only when no live object is in it.
    Some(unsafe { &*(meta as *const ArenaMeta) })
}

/// The span holding `addr` (null for a free page), and the metadata it was
/// found in, or `None` if `addr` is not in a spanalloc arena.
#[inline]
pub(crate) fn span_of(addr: usize) -> Option<(&'static ArenaMeta, *mut Span)> {
    let meta = meta_of(addr)?;
    let page = (addr >> PAGE_SHIFT) & (ARENA_PAGES - 1);
    // SAFETY: page < ARENA_PAGES.
    let span = unsafe { meta.spans.get_unchecked(page) }.load(Ordering::Acquire);
    Some((meta, span))
}

impl ArenaMeta {
    /// Reserves a new arena for heap `heap_id`. Returns `None` if the kernel
    /// refuses (or places it beyond the registry's reach).
    pub(crate) fn reserve(heap_id: u64) -> Option<*mut ArenaMeta> {
        let base = os::map_aligned(ARENA_SIZE, ARENA_SIZE)?;
        // SAFETY: base is a fresh ARENA_SIZE reservation.
        let slot = base as usize >> ARENA_SHIFT;
        match unsafe { Self::init(base, base as usize, ARENA_SIZE, heap_id, false, slot) } {
            Some(meta) => {
                set_tag(slot, TAG_ARENA);
                Some(meta)
            }
            None => {
                os::unmap(base, ARENA_SIZE);
                None
            }
        }
    }

    /// Reserves a huge region for one object of `bytes` bytes aligned to
    /// `align`. Returns the metadata and the object's address.
    pub(crate) fn reserve_huge(heap_id: u64, bytes: usize, align: usize) -> Option<(*mut ArenaMeta, usize)> {
        let align = align.max(PAGE_SIZE);
        let guard = PAGE_SIZE;
        if align < ARENA_SIZE {
            // Metadata at the base of the object's own slot.
            let offset = (FIRST_PAGE * PAGE_SIZE).next_multiple_of(align);
            let len = offset.checked_add(bytes)?.checked_add(guard)?;
            let base = os::map_aligned(len, ARENA_SIZE)?;
            let slot = base as usize >> ARENA_SHIFT;
            // SAFETY: base is a fresh reservation of len bytes.
            let Some(meta) = (unsafe { Self::init(base, base as usize, len, heap_id, true, slot) }) else {
                os::unmap(base, len);
                return None;
            };
            set_tag(slot, TAG_ARENA);
            Some((meta, base as usize + offset))
        } else {
            // The object starts a slot; its metadata is the slot below.
            let len = ARENA_SIZE.checked_add(bytes)?.checked_add(guard)?;
            let padded = len.checked_add(align)?;
            let raw = os::map(padded)? as usize;
            let object = (raw + ARENA_SIZE).next_multiple_of(align);
            let meta_base = object - ARENA_SIZE;
            // Trim what lies outside [meta_base, meta_base + len).
            if meta_base > raw {
                os::unmap(raw as *mut u8, meta_base - raw);
            }
            let end = meta_base + len;
            if raw + padded > end {
                os::unmap(end as *mut u8, raw + padded - end);
            }
            let slot = object >> ARENA_SHIFT;
            // SAFETY: [meta_base, meta_base + len) is a fresh reservation.
            let Some(meta) = (unsafe { Self::init(meta_base as *mut u8, meta_base, len, heap_id, true, slot) }) else {
                os::unmap(meta_base as *mut u8, len);
                return None;
            };
            set_tag(slot, TAG_FAR);
            Some((meta, object))
        }
    }

    /// Writes the metadata and guards into a fresh reservation.
    ///
    /// # Safety
    /// `[map_base, map_base + reserved)` must be a fresh reservation and
    /// `meta_at` 64 MiB-aligned inside it.
    unsafe fn init(
        meta_at: *mut u8,
        map_base: usize,
        reserved: usize,
        heap_id: u64,
        huge: bool,
        slot: usize,
    ) -> Option<*mut ArenaMeta> {
        if (meta_at as usize + reserved) >> ADDRESS_BITS != 0 {
            return None;
        }
        let meta = meta_at.cast::<ArenaMeta>();
        // SAFETY: the reservation is zeroed, mapped and ours; the metadata
        // fits in META_PAGES pages of it. Zero bytes are a valid
        // `[AtomicPtr; N]` and a valid all-zero bitmap, so only the header
        // fields need writing.
        unsafe {
            ptr::addr_of_mut!((*meta).heap_id).write(heap_id);
            ptr::addr_of_mut!((*meta).map_base).write(map_base);
            ptr::addr_of_mut!((*meta).huge).write(huge);
            ptr::addr_of_mut!((*meta).slot).write(slot);
            ptr::addr_of_mut!((*meta).pages).write(UnsafeCell::new(PageState {
                next: ptr::null_mut(),
                reserved,
                grown: FIRST_PAGE,
                nfree: 0,
                free: [0; BITMAP_WORDS],
                clean: [0; BITMAP_WORDS],
                aged: [0; BITMAP_WORDS],
                map_resident: 0,
            }));
        }
        // Guard between the metadata and the first user page, and after
        // the last one. A failed guard costs protection, not correctness.
        let guard_at = meta_at as usize + META_PAGES * PAGE_SIZE;
        let _ = os::guard(guard_at as *mut u8, PAGE_SIZE);
        if !huge {
            let _ = os::guard((meta_at as usize + (ARENA_PAGES - 1) * PAGE_SIZE) as *mut u8, PAGE_SIZE);
        } else {
            let _ = os::guard((map_base + reserved - PAGE_SIZE) as *mut u8, PAGE_SIZE);
        }
        Some(meta)
    }

    /// The arena's base address (its metadata).
    #[inline]
    pub(crate) fn base(&self) -> usize {
        self as *const ArenaMeta as usize
    }

    /// Address of page `page` of this arena.
    #[inline]
    pub(crate) fn page_addr(&self, page: usize) -> usize {
        self.base() + page * PAGE_SIZE
    }

    /// The page index of `addr` in this arena.
    #[inline]
    pub(crate) fn page_of(addr: usize) -> usize {
        (addr >> PAGE_SHIFT) & (ARENA_PAGES - 1)
    }

    /// Points pages `[page, page + n)` at `span` (or at null).
    pub(crate) fn set_spans(&self, page: usize, n: usize, span: *mut Span) {
        for entry in &self.spans[page..page + n] {
            entry.store(span, Ordering::Release);
        }
    }

    /// Gives back the pages of the page → span table that describe only
    /// free pages (their entries are all null, which is what a released
    /// page reads as). Caller holds the heap lock.
    pub(crate) fn release_map(&self) {
        if os::page_size() != 4096 {
            return;
        }
        self.pages.with_mut(|p| {
            // SAFETY: under the heap lock.
            let p = unsafe { &mut *p };
            for g in 0..ARENA_PAGES / MAP_GROUP {
                if p.map_resident & (1 << g) == 0 {
                    continue;
                }
                // Only pages the heap has handed out can have entries.
                let from = (g * MAP_GROUP).max(FIRST_PAGE);
                let to = ((g + 1) * MAP_GROUP).min(p.grown);
                if from >= to || count_range(&p.free, from, to) == to - from {
                    os::release(self.spans[g * MAP_GROUP..].as_ptr() as *mut u8, 4096);
                    p.map_resident &= !(1 << g);
                }
            }
        });
    }

    /// Unregisters and unmaps the arena.
    ///
    /// # Safety
    /// The arena and everything in it must be dead.
    pub(crate) unsafe fn destroy(meta: *mut ArenaMeta) {
        // SAFETY: the caller guarantees the arena is still mapped and dead.
        let (map_base, slot) = unsafe { ((*meta).map_base, (*meta).slot) };
        let reserved = unsafe { &*meta }.pages.with(|p| unsafe { (*p).reserved });
        set_tag(slot, TAG_NONE);
        os::unmap(map_base as *mut u8, reserved);
    }
}

// ---------------------------------------------------------------------------
// The page allocator over one arena's bitmaps.

/// The part of word `w` that falls in bits `[from, to)`.
#[inline]
fn word_mask(w: usize, from: usize, to: usize) -> u64 {
    let lo = from.max(w * 64) - w * 64;
    let hi = to.min(w * 64 + 64) - w * 64;
    if hi <= lo {
        0
    } else if hi - lo == 64 {
        !0
    } else {
        ((1u64 << (hi - lo)) - 1) << lo
    }
}

/// Sets bits `[from, to)`.
fn set_range(bits: &mut [u64], from: usize, to: usize) {
    let words = from / 64..to.div_ceil(64);
    for (w, word) in words.clone().zip(&mut bits[words]) {
        *word |= word_mask(w, from, to);
    }
}

/// Clears bits `[from, to)`.
fn clear_range(bits: &mut [u64], from: usize, to: usize) {
    let words = from / 64..to.div_ceil(64);
    for (w, word) in words.clone().zip(&mut bits[words]) {
        *word &= !word_mask(w, from, to);
    }
}

/// Counts set bits in `[from, to)`.
fn count_range(bits: &[u64], from: usize, to: usize) -> usize {
    (from / 64..to.div_ceil(64)).map(|w| (bits[w] & word_mask(w, from, to)).count_ones() as usize).sum()
}

/// First index in `[from, to)` whose bit equals `want`, or `to`.
fn next_bit(bits: &[u64], from: usize, to: usize, want: bool) -> usize {
    let mut i = from;
    while i < to {
        let w = i / 64;
        let word = if want { bits[w] } else { !bits[w] };
        let masked = word & (!0u64 << (i % 64));
        if masked != 0 {
            return (w * 64 + masked.trailing_zeros() as usize).min(to);
        }
        i = (w + 1) * 64;
    }
    to
}

impl PageState {
    /// First run of `n` free pages whose first page is a multiple of
    /// `align` pages, lowest address first.
    ///
    /// Unaligned runs are found a bitmap word at a time, whatever the
    /// fragmentation: a run carried over from the words below, a run inside
    /// the word (shift-and doubling: bit `i` survives when pages `i..i+n`
    /// are all free), and the free top of the word carried up.
    pub(crate) fn find_run(&self, n: usize, align: usize) -> Option<usize> {
        if align > 1 {
            return self.find_aligned_run(n, align);
        }
        let mut carried = 0;
        for w in FIRST_PAGE / 64..self.grown.div_ceil(64) {
            let word = self.free[w] & word_mask(w, FIRST_PAGE, self.grown);
            if word == !0 {
                carried += 64;
                if carried >= n {
                    return Some(w * 64 + 64 - carried);
                }
                continue;
            }
            if carried + (!word).trailing_zeros() as usize >= n {
                return Some(w * 64 - carried);
            }
            if n < 64 {
                let mut x = word;
                let mut have = 1;
                while have < n && x != 0 {
                    let k = have.min(n - have);
                    x &= x >> k;
                    have += k;
                }
                if x != 0 {
                    return Some(w * 64 + x.trailing_zeros() as usize);
                }
            }
            carried = (!word).leading_zeros() as usize;
        }
        None
    }

    /// [`PageState::find_run`] with an alignment: run by run.
    fn find_aligned_run(&self, n: usize, align: usize) -> Option<usize> {
        let mut i = FIRST_PAGE;
        while i < self.grown {
            let start = next_bit(&self.free, i, self.grown, true);
            if start >= self.grown {
                return None;
            }
            let end = next_bit(&self.free, start, self.grown, false);
            let aligned = start.next_multiple_of(align);
            if aligned + n <= end {
                return Some(aligned);
            }
            i = end;
        }
        None
    }

    /// Whether the run `[page, page + n)` is free (for growing in place).
    pub(crate) fn is_free(&self, page: usize, n: usize) -> bool {
        page + n <= self.grown && next_bit(&self.free, page, page + n, false) == page + n
    }

    /// Adds up to `want` more pages (at least `GROW_PAGES` if room allows)
    /// to the heap. Returns how many were added (all clean).
    pub(crate) fn grow(&mut self, want: usize) -> usize {
        let room = END_PAGE - self.grown;
        let n = want.next_multiple_of(GROW_PAGES).min(room);
        if n < want {
            return 0;
        }
        let (from, to) = (self.grown, self.grown + n);
        set_range(&mut self.free, from, to);
        set_range(&mut self.clean, from, to);
        self.grown = to;
        self.nfree += n;
        n
    }

    /// Takes the free run `[page, page + n)`. Returns how many of its pages
    /// were clean.
    pub(crate) fn take(&mut self, page: usize, n: usize) -> usize {
        debug_assert!(self.is_free(page, n));
        let clean = count_range(&self.clean, page, page + n);
        clear_range(&mut self.free, page, page + n);
        clear_range(&mut self.clean, page, page + n);
        clear_range(&mut self.aged, page, page + n);
        for g in page / MAP_GROUP..=(page + n - 1) / MAP_GROUP {
            self.map_resident |= 1 << g;
        }
        self.nfree -= n;
        clean
    }

    /// Gives back the run `[page, page + n)` (its pages dirty).
    pub(crate) fn put(&mut self, page: usize, n: usize) {
        debug_assert!(count_range(&self.free, page, page + n) == 0);
        set_range(&mut self.free, page, page + n);
        self.nfree += n;
    }

    /// Gives free dirty pages back to the kernel: all of them, or (a tick)
    /// only those that were already free at the previous tick, after which
    /// the pages free now become the aged ones. `arena_base` is the arena's
    /// address. Returns the number of pages released.
    pub(crate) fn scavenge(&mut self, arena_base: usize, all: bool) -> usize {
        let mut cand = [0u64; BITMAP_WORDS];
        let mut released = 0;
        for (w, c) in cand.iter_mut().enumerate() {
            *c = self.free[w] & !self.clean[w];
            if !all {
                *c &= self.aged[w];
            }
            self.clean[w] |= *c;
            released += c.count_ones() as usize;
            if !all {
                self.aged[w] = self.free[w] & !self.clean[w];
            }
        }
        let mut i = 0;
        while released > 0 && i < ARENA_PAGES {
            let start = next_bit(&cand, i, ARENA_PAGES, true);
            if start == ARENA_PAGES {
                break;
            }
            let end = next_bit(&cand, start, ARENA_PAGES, false);
            os::release((arena_base + start * PAGE_SIZE) as *mut u8, (end - start) * PAGE_SIZE);
            i = end;
        }
        released
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn state() -> PageState {
        PageState {
            next: ptr::null_mut(),
            reserved: 0,
            grown: FIRST_PAGE,
            nfree: 0,
            free: [0; BITMAP_WORDS],
            clean: [0; BITMAP_WORDS],
            aged: [0; BITMAP_WORDS],
            map_resident: 0,
        }
    }

    #[test]
    fn runs_are_found_lowest_first_and_coalesce_when_freed() {
        let mut s = state();
        assert_eq!(s.find_run(1, 1), None);
        assert_eq!(s.grow(3), GROW_PAGES);
        let a = s.find_run(3, 1).unwrap();
        assert_eq!(a, FIRST_PAGE);
        assert_eq!(s.take(a, 3), 3, "fresh pages are clean");
        let b = s.find_run(2, 1).unwrap();
        assert_eq!(b, FIRST_PAGE + 3);
        assert_eq!(s.take(b, 2), 2, "grown pages are clean");
        s.put(a, 3);
        // a's run (3 pages) is free again but a 4-page run must come later.
        assert_eq!(s.find_run(3, 1), Some(a));
        assert_eq!(s.find_run(4, 1), Some(b + 2));
        s.put(b, 2);
        // Coalesced: one run from FIRST_PAGE to the end.
        assert_eq!(s.find_run(GROW_PAGES, 1), Some(FIRST_PAGE));
        assert_eq!(s.nfree, GROW_PAGES);
    }

    #[test]
    fn aligned_runs_start_on_the_alignment() {
        let mut s = state();
        s.grow(GROW_PAGES * 2);
        let p = s.find_run(5, 64).unwrap();
        assert_eq!(p % 64, 0);
        assert!(p >= FIRST_PAGE);
    }

    #[test]
    fn grow_stops_at_the_end_of_the_arena() {
        let mut s = state();
        let mut total = 0;
        loop {
            let n = s.grow(1);
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, END_PAGE - FIRST_PAGE);
        assert_eq!(s.grow(1), 0);
        assert!(s.find_run(END_PAGE - FIRST_PAGE, 1).is_some());
        assert!(s.find_run(END_PAGE - FIRST_PAGE + 1, 1).is_none());
    }

    #[test]
    fn word_scan_finds_the_first_fit_in_a_fragmented_arena() {
        let mut s = state();
        s.grow(GROW_PAGES * 4);
        let total = s.grown - FIRST_PAGE;
        s.take(FIRST_PAGE, total);
        // Free runs of every length 1..70 separated by one used page; the
        // first fit for n is the first run of length >= n.
        let mut runs = Vec::new();
        let mut at = FIRST_PAGE + 1;
        for len in 1..70 {
            if at + len >= s.grown {
                break;
            }
            s.put(at, len);
            runs.push((at, len));
            at += len + 1;
        }
        for n in 1..70 {
            let want = runs.iter().find(|&&(_, len)| len >= n).map(|&(start, _)| start);
            assert_eq!(s.find_run(n, 1), want, "n = {n}");
            // The slow search agrees.
            assert_eq!(s.find_aligned_run(n, 1), want, "n = {n}");
        }
    }

    #[test]
    fn is_free_checks_the_whole_run() {
        let mut s = state();
        s.grow(1);
        s.take(FIRST_PAGE + 2, 1);
        assert!(s.is_free(FIRST_PAGE, 2));
        assert!(!s.is_free(FIRST_PAGE, 3));
        assert!(!s.is_free(s.grown - 1, 2), "beyond grown");
    }
}
