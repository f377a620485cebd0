//! mcache: one thread's cache of spans.
//!
//! Go gives each P an mcache; a Rust global allocator has no P, so each
//! thread that allocates owns one, in a thread-local (see
//! [`crate::global`]). An mcache is also a plain value, [`MCache`], that
//! tests, loom models and runtimes with their own workers can hold.
//!
//! # The fast paths
//!
//! For each size class the cache holds a current span and, out of that
//! span's free bitmap, one *window*: a 64-bit mask of free objects (Go's
//! `allocCache`), plus a `last` slot for the object freed last. Allocation
//! takes `last`, or the lowest set bit of the window (`tzcnt`, then `blsr`);
//! a free of an object in the window fills `last` or sets its bit again.
//! Both paths touch only the thread's own cache line for the class: no lock,
//! no atomic read-modify-write, no load from the span or from the object.
//!
//! A free also checks, at the cost of a multiply and a compare, that the
//! pointer is the start of an object and that the object is not already
//! free; anything else goes on, and the slow path tells double frees and
//! foreign pointers apart and reports them.
//!
//! # Outside the window
//!
//! Two per-class memories make the commonest frees outside the window cheap
//! (`dealloc_outside_window`, no lookup of the pointer's span):
//!
//! - the span the cache last freed into, if it owns it: frees in allocation
//!   order land there object after object, a bit set in its bitmap;
//! - the span its *deferred* frees are for (below): a consumer freeing a
//!   producer's objects in order adds them to the deferred word.
//!
//! # The slow paths
//!
//! - **refill**: when the window is empty, take the next word of the span's
//!   bitmap; then merge frees other threads made into the span; then put
//!   the span aside and take the oldest of the cache's other spans with free
//!   objects; then a span from the mcentral (or a fresh one from the mheap).
//! - **free into a span the cache owns** (its current span, or one put
//!   aside): a bit in its bitmap, no atomics; a span put aside goes on the
//!   queue of spans with free objects.
//! - **free into a span the mcentral owns**: the cache adopts the span (one
//!   lock), so its next frees into it are local.
//! - **free into another cache's span**: through a per-class *deferred free*
//!   slot that collects frees of one bitmap word and lands them in the
//!   span's remote bitmap in one `fetch_or` (see [`crate::mspan`]); the
//!   owner hears of it through its notify stack. A consumer thread freeing a
//!   producer's objects pays one atomic per 64 objects.
//! - **trim**, at most once per scavenger tick: spans whose objects are all
//!   free go back to the mcentral (one kept per busy class).
//!
//! Large objects go to the mheap, except that the cache keeps the last few
//! it freed for reuse ([`crate::largecache`]).
//!
//! Frees never migrate objects between caches: an object always goes back
//! to its own span, so producer / consumer programs stay bounded and threads
//! never end up sharing cache lines they did not ask to share.

use core::alloc::Layout;
use core::ptr;

use crate::heap::Heap;
use crate::largecache::LargeCache;
use crate::mheap::TICK_MS;
use crate::mspan::{CENTRAL, ListId, Span};
use crate::os;
use crate::report;
use crate::sizeclass::{CLASSES, MAX_SMALL, NUM_CLASSES, PAGE_SIZE, class_of, small_class};
use crate::sync::atomic::Ordering;
use crate::sync::unmodelled::Counter;

/// One size class's slot in the cache: one 64-byte line.
#[repr(C, align(64))]
pub(crate) struct ClassCache {
    /// The object freed last, if the window's `last` slot was empty: the
    /// next allocation takes it back without touching the mask. It lies in
    /// the window, and its mask bit stays clear while it waits here.
    last: usize,
    /// Free objects of the window: bit `i` is the object at `base + i * size`.
    mask: u64,
    /// Address of the window's first object (0 when there is no span).
    base: usize,
    /// Bytes the window covers: 64 objects, fewer at the end of the span.
    win_bytes: usize,
    /// The span the window is cut from (null when none).
    span: *mut Span,
    /// Object size of the class.
    size: usize,
    /// `ceil(2^64 / size)`, to divide by the size with a multiply.
    div: u64,
    /// Which bitmap word of the span the window is.
    window: usize,
}

impl ClassCache {
    const fn new(class: usize) -> Self {
        let info = crate::sizeclass::CLASSES_CONST[class];
        ClassCache {
            last: 0,
            mask: 0,
            base: 0,
            win_bytes: 0,
            span: ptr::null_mut(),
            size: info.size as usize,
            div: info.div_mul,
            window: 0,
        }
    }

    /// The free objects of the window, with `last` folded back into the mask.
    fn window_mask(&self) -> u64 {
        if self.last == 0 {
            return self.mask;
        }
        let idx = (self.last - self.base) / self.size;
        self.mask | 1 << idx
    }

    fn clear(&mut self) {
        self.last = 0;
        self.mask = 0;
        self.base = 0;
        self.win_bytes = 0;
        self.span = ptr::null_mut();
        self.window = 0;
    }
}

/// Frees into one bitmap word of a span the cache does not own, not yet
/// landed in the span. While some are held the span cannot go away, so its
/// range (`base`, `bytes`) identifies the next frees into it without a
/// lookup.
#[derive(Clone, Copy)]
struct Deferred {
    span: *mut Span,
    word: usize,
    mask: u64,
    base: usize,
    bytes: usize,
}

const NO_DEFERRED: Deferred = Deferred { span: ptr::null_mut(), word: 0, mask: 0, base: 0, bytes: 0 };

/// What a cache holds for a class besides its current span (slow paths only).
#[derive(Clone, Copy)]
struct Spare {
    /// Frees into a span the cache does not own, not yet landed.
    deferred: Deferred,
    /// Every span of the class the cache owns but the current one, linked
    /// through `Owned::prev` / `next`.
    owned: *mut Span,
    /// Those of them with free objects, oldest first, linked through
    /// `Owned::next_free`: the longer a span waits, the more frees it
    /// gathers, so a refill from the oldest lasts longest.
    free: *mut Span,
    free_tail: *mut Span,
    /// The class refilled since the last trim.
    active: bool,
    /// The owned span (not the current one) the cache last freed into, and
    /// the bytes its objects cover from `alt_base`: the next frees into it
    /// need no lookup. Frees in allocation order hit it object after object.
    alt: *const Span,
    alt_base: usize,
    alt_bytes: usize,
}

const NO_SPARE: Spare = Spare {
    deferred: NO_DEFERRED,
    owned: ptr::null_mut(),
    free: ptr::null_mut(),
    free_tail: ptr::null_mut(),
    active: false,
    alt: ptr::null(),
    alt_base: 0,
    alt_bytes: 0,
};

/// What a cache is, for the slow paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) enum Mode {
    /// A value the caller holds ([`MCache`]).
    Explicit,
    /// A thread's cache that has not been set up yet (see `global`).
    ThreadFresh,
    /// A thread's cache in use.
    ThreadActive,
    /// A thread's cache after its thread-exit flush: everything goes through
    /// the heap's shared fallback cache from now on.
    Exited,
}

/// The cache proper. Its counters live beside it in [`CacheStats`] so that
/// other threads can read them while the owner holds `&mut CacheCore`.
pub(crate) struct CacheCore {
    classes: [ClassCache; NUM_CLASSES],
    spare: [Spare; NUM_CLASSES],
    pub(crate) mode: Mode,
    /// This cache's index in span states (see `mspan`); 0 when it has none,
    /// and then it owns only its current spans.
    pub(crate) index: u32,
    /// When the cache next gives back its idle spans (`os::now_ms`).
    next_trim: u64,
    /// Pages of the spans the cache owns (published in `CacheStats`).
    owned_pages: usize,
    /// Slow-path frees since the last look at the clock.
    slow_frees: u32,
    /// Counts calls of `maybe_trim`.
    clock_skip: u32,
    /// Large objects freed here, kept for reuse.
    large: LargeCache,
}

// SAFETY: a cache owns the spans it points at; moving it to another thread
// moves that ownership with it.
unsafe impl Send for CacheCore {}

/// One class's counters, on a line of their own: the same 64-byte stride as
/// [`ClassCache`], so the fast path finds both at one offset.
#[repr(C, align(64))]
pub(crate) struct ClassCounters {
    pub(crate) mallocs: Counter,
    pub(crate) frees: Counter,
}

/// Per-class allocation counters of one cache, readable from any thread.
pub(crate) struct CacheStats {
    pub(crate) classes: [ClassCounters; NUM_CLASSES],
    /// Pages of the spans the cache owns, as of its last slow path.
    pub(crate) owned_pages: Counter,
    /// Stacks in the thread's stack cache.
    pub(crate) stacks_cached: Counter,
    /// Large objects handed out from the large-object cache.
    pub(crate) large_hits: Counter,
    /// Objects and bytes in the large-object cache.
    pub(crate) large_kept: Counter,
    pub(crate) large_kept_bytes: Counter,
    /// Links in the heap's registry of thread caches (under its lock).
    pub(crate) links: core::cell::UnsafeCell<(*const CacheStats, *const CacheStats)>,
}

// SAFETY: the counters are atomics; the links are only touched under the
// registry lock.
unsafe impl Sync for CacheStats {}
unsafe impl Send for CacheStats {}

impl CacheStats {
    pub(crate) const fn new() -> Self {
        CacheStats {
            classes: [const { ClassCounters { mallocs: Counter::new(), frees: Counter::new() } }; NUM_CLASSES],
            owned_pages: Counter::new(),
            stacks_cached: Counter::new(),
            large_hits: Counter::new(),
            large_kept: Counter::new(),
            large_kept_bytes: Counter::new(),
            links: core::cell::UnsafeCell::new((ptr::null(), ptr::null())),
        }
    }
}

impl CacheCore {
    pub(crate) const fn new(mode: Mode) -> Self {
        let mut classes = [const { ClassCache::new(0) }; NUM_CLASSES];
        let mut c = 1;
        while c < NUM_CLASSES {
            classes[c] = ClassCache::new(c);
            c += 1;
        }
        CacheCore {
            classes,
            spare: [NO_SPARE; NUM_CLASSES],
            mode,
            index: 0,
            next_trim: os::FIRST_DEADLINE,
            owned_pages: 0,
            slow_frees: 0,
            clock_skip: 0,
            large: LargeCache::new(),
        }
    }

    // -----------------------------------------------------------------------
    // Fast paths.

    /// Allocates `size` bytes aligned to `align`; null when out of memory.
    #[inline(always)]
    pub(crate) fn alloc(&mut self, heap: &Heap, stats: &CacheStats, size: usize, align: usize) -> *mut u8 {
        if align > 8 || size > MAX_SMALL {
            return self.alloc_other(heap, stats, size, align);
        }
        self.alloc_class(heap, stats, small_class(size))
    }

    /// Allocates an object of `class` (not 0) from its window.
    #[inline(always)]
    fn alloc_class(&mut self, heap: &Heap, stats: &CacheStats, class: usize) -> *mut u8 {
        // SAFETY: classes are below NUM_CLASSES.
        let e = unsafe { self.classes.get_unchecked_mut(class) };
        // SAFETY: as above.
        let counters = unsafe { stats.classes.get_unchecked(class) };
        let last = e.last;
        if last != 0 {
            // The object freed last: a free followed by an allocation costs
            // a store and a load, with no arithmetic between them.
            e.last = 0;
            counters.mallocs.bump(1);
            return last as *mut u8;
        }
        let m = e.mask;
        if m != 0 {
            e.mask = m & (m - 1);
            counters.mallocs.bump(1);
            return (e.base + m.trailing_zeros() as usize * e.size) as *mut u8;
        }
        self.refill_alloc(heap, stats, class)
    }

    /// Frees `ptr`, allocated with `size` and `align`.
    ///
    /// # Safety
    /// `ptr` must have come from this heap with this size and alignment (a
    /// detectable violation aborts with a report).
    #[inline(always)]
    pub(crate) unsafe fn dealloc(&mut self, heap: &Heap, stats: &CacheStats, ptr: *mut u8, size: usize, align: usize) {
        if align > 8 || size > MAX_SMALL {
            return self.dealloc_other(heap, stats, ptr as usize, size, align);
        }
        self.dealloc_class(heap, stats, small_class(size), ptr as usize)
    }

    /// Frees an object of `class` (not 0): into the window if it is there.
    #[inline(always)]
    fn dealloc_class(&mut self, heap: &Heap, stats: &CacheStats, class: usize, addr: usize) {
        // SAFETY: classes are below NUM_CLASSES.
        let e = unsafe { self.classes.get_unchecked_mut(class) };
        let off = addr.wrapping_sub(e.base);
        if off < e.win_bytes {
            // One multiply gives the object index (high half) and whether
            // `off` is a multiple of the size (low half below `div`).
            let prod = off as u128 * e.div as u128;
            let idx = (prod >> 64) as u32;
            let m = e.mask;
            // Not already free (in the mask, or waiting in `last`).
            if (prod as u64) < e.div && (m >> (idx & 63)) & 1 == 0 && e.last != addr {
                if e.last == 0 {
                    e.last = addr;
                } else {
                    e.mask = m | 1 << (idx & 63);
                }
                // SAFETY: as above.
                unsafe { stats.classes.get_unchecked(class) }.frees.bump(1);
                return;
            }
        }
        self.dealloc_outside_window(heap, stats, class, addr)
    }

    /// A free outside the window: perhaps into the span we last freed into
    /// (frees in allocation order land there object after object). No
    /// lookup, no atomics: that span is ours, and on our queue of spans with
    /// free objects already. Anything else goes to the slow path.
    #[inline(never)]
    fn dealloc_outside_window(&mut self, heap: &Heap, stats: &CacheStats, class: usize, addr: usize) {
        // SAFETY: classes are below NUM_CLASSES.
        let div = unsafe { self.classes.get_unchecked(class) }.div;
        // SAFETY: as above.
        let sp = unsafe { self.spare.get_unchecked_mut(class) };
        let off = addr.wrapping_sub(sp.alt_base);
        if off < sp.alt_bytes {
            let prod = off as u128 * div as u128;
            // SAFETY: `alt` is a live span of ours while it is set.
            if (prod as u64) < div && unsafe { &*sp.alt }.free_one((prod >> 64) as usize) {
                // SAFETY: as above.
                unsafe { stats.classes.get_unchecked(class) }.frees.bump(1);
                self.slow_frees += 1;
                if self.slow_frees >= 16 {
                    self.every_16_slow_frees(heap, stats);
                }
                return;
            }
        }
        // Or into the span our deferred frees are for: a consumer freeing a
        // producer's objects in order lands here.
        let d = &mut sp.deferred;
        let off = addr.wrapping_sub(d.base);
        if off < d.bytes {
            let prod = off as u128 * div as u128;
            let idx = (prod >> 64) as usize;
            let bit = 1u64 << (idx % 64);
            if (prod as u64) < div && idx / 64 == d.word && d.mask & bit == 0 {
                d.mask |= bit;
                // SAFETY: as above.
                unsafe { stats.classes.get_unchecked(class) }.frees.bump(1);
                return;
            }
        }
        self.dealloc_slow(heap, stats, class, addr)
    }

    /// Allocations the size-class fast path does not take: alignments
    /// above 8 and large objects.
    #[inline(never)]
    fn alloc_other(&mut self, heap: &Heap, stats: &CacheStats, size: usize, align: usize) -> *mut u8 {
        match class_of(size, align) {
            0 => self.alloc_large(heap, stats, size, align, false),
            class => self.alloc_class(heap, stats, class),
        }
    }

    /// Frees the fast path does not take (see [`CacheCore::alloc_other`]).
    #[inline(never)]
    fn dealloc_other(&mut self, heap: &Heap, stats: &CacheStats, addr: usize, size: usize, align: usize) {
        match class_of(size, align) {
            0 => self.free_large(heap, stats, addr),
            class => self.dealloc_class(heap, stats, class, addr),
        }
    }

    /// A large object: the most recent one of its page count from the
    /// large-object cache, or one from the mheap.
    fn alloc_large(&mut self, heap: &Heap, stats: &CacheStats, size: usize, align: usize, zero: bool) -> *mut u8 {
        if self.large.len() > 0
            && let Some(addr) = self.large.take(size.max(1).div_ceil(PAGE_SIZE), align, size)
        {
            stats.large_hits.bump(1);
            self.maybe_trim(heap, 0);
            self.publish(stats);
            if zero {
                // SAFETY: the object holds at least `size` writable bytes.
                unsafe { ptr::write_bytes(addr as *mut u8, 0, size) };
            }
            return addr as *mut u8;
        }
        heap.alloc_large(size, align, zero)
    }

    /// Frees a large object into the large-object cache, or to the mheap if
    /// it is too big to keep.
    fn free_large(&mut self, heap: &Heap, stats: &CacheStats, addr: usize) {
        match self.mode {
            Mode::Explicit | Mode::ThreadActive => {}
            // Kept objects need the exit flush.
            Mode::ThreadFresh => heap.activate_thread_cache(self, stats),
            Mode::Exited => return heap.free_large(addr),
        }
        let (_, span) = heap.mheap.large_span_of(addr);
        if !self.large.put(heap, span) {
            return heap.free_large(addr);
        }
        self.maybe_trim(heap, 0);
        self.publish(stats);
    }

    // -----------------------------------------------------------------------
    // The rest of the API.

    /// Allocates zeroed memory; skips the memset for large objects whose
    /// pages are fresh from the OS.
    pub(crate) fn alloc_zeroed(&mut self, heap: &Heap, stats: &CacheStats, size: usize, align: usize) -> *mut u8 {
        if class_of(size, align) == 0 {
            return self.alloc_large(heap, stats, size, align, true);
        }
        let p = self.alloc(heap, stats, size, align);
        if !p.is_null() {
            // SAFETY: p holds at least `size` writable bytes.
            unsafe { ptr::write_bytes(p, 0, size) };
        }
        p
    }

    /// Resizes in place when the new size has the same size class, or for
    /// large objects when the pages allow; otherwise moves.
    ///
    /// # Safety
    /// As for [`CacheCore::dealloc`]; `new_size` rounded up to `align` must
    /// not overflow `isize`.
    pub(crate) unsafe fn realloc(
        &mut self,
        heap: &Heap,
        stats: &CacheStats,
        ptr: *mut u8,
        size: usize,
        align: usize,
        new_size: usize,
    ) -> *mut u8 {
        let old_class = class_of(size, align);
        let new_class = class_of(new_size, align);
        if old_class == new_class && (old_class != 0 || heap.mheap.resize_large(ptr as usize, new_size)) {
            return ptr;
        }
        let new = self.alloc(heap, stats, new_size, align);
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct; we copy what both hold.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, size.min(new_size));
                self.dealloc(heap, stats, ptr, size, align);
            }
        }
        new
    }

    /// Gives every span and deferred free back to the heap.
    pub(crate) fn flush(&mut self, heap: &Heap) {
        self.take_notices(heap);
        for class in 1..NUM_CLASSES {
            self.release_current(heap, class);
            let spare = &mut self.spare[class];
            let owned = core::mem::replace(&mut spare.owned, ptr::null_mut());
            spare.free = ptr::null_mut();
            spare.free_tail = ptr::null_mut();
            spare.alt = ptr::null();
            spare.alt_base = 0;
            spare.alt_bytes = 0;
            if !owned.is_null() {
                let mut at = owned;
                // SAFETY: listed spans are live and ours.
                while let Some(span) = unsafe { at.as_ref() } {
                    self.owned_pages -= span.npages;
                    at = span.with_owned(|o, _| o.next);
                }
                heap.central[class].uncache_list(heap, owned);
            }
            self.land_deferred(heap, class);
        }
        // Notices that came meanwhile are for spans the mcentral now has.
        self.take_notices(heap);
        self.large.flush(heap);
    }

    // -----------------------------------------------------------------------
    // Slow paths.

    /// Refills `class` and allocates from it.
    #[cold]
    #[inline(never)]
    fn refill_alloc(&mut self, heap: &Heap, stats: &CacheStats, class: usize) -> *mut u8 {
        match self.mode {
            Mode::Explicit | Mode::ThreadActive => {}
            Mode::ThreadFresh => heap.activate_thread_cache(self, stats),
            Mode::Exited => {
                let info = CLASSES[class];
                return heap.fallback_alloc(info.size as usize, info.align as usize);
            }
        }
        self.maybe_trim(heap, class);
        let refilled = self.refill(heap, class);
        self.publish(stats);
        if !refilled {
            return ptr::null_mut();
        }
        let e = &mut self.classes[class];
        let m = e.mask;
        e.mask = m & (m - 1);
        stats.classes[class].mallocs.bump(1);
        (e.base + m.trailing_zeros() as usize * e.size) as *mut u8
    }

    /// Runs [`CacheCore::trim`] and the heap's scavenger tick when due (it
    /// reads the clock every 16th call).
    fn maybe_trim(&mut self, heap: &Heap, keep: usize) {
        self.clock_skip = self.clock_skip.wrapping_add(1);
        if self.clock_skip % 16 != 1 {
            return;
        }
        let now = os::now_ms();
        if now >= self.next_trim {
            self.next_trim = now + TICK_MS;
            self.trim(heap, keep);
        }
        heap.maybe_tick(now);
    }

    /// Gives back, at most once per scavenger tick, what the cache holds
    /// for nothing: spans whose objects are all free (but one per class the
    /// cache refilled since the last trim; the current span of `keep`
    /// stays), and deferred frees. So a thread that freed a peak lets the
    /// heap return it to the OS, while a busy thread keeps the spans it
    /// uses.
    #[cold]
    fn trim(&mut self, heap: &Heap, keep: usize) {
        self.take_notices(heap);
        self.large.trim(heap);
        for class in 1..NUM_CLASSES {
            self.land_deferred(heap, class);
            // Rebuild the queue of spans with free objects as we go.
            self.spare[class].free = ptr::null_mut();
            self.spare[class].free_tail = ptr::null_mut();
            // An idle class keeps no empty span.
            let mut kept_empty = !core::mem::replace(&mut self.spare[class].active, false);
            let mut at = self.spare[class].owned;
            // SAFETY: listed spans are live and ours.
            while let Some(span) = unsafe { at.as_ref() } {
                at = span.with_owned(|o, _| o.next);
                span.collect();
                let nfree = span.with_owned(|o, _| o.nfree);
                if nfree == span.nelems && kept_empty {
                    self.unlink_owned(class, span);
                    self.uncache(heap, class, span);
                    continue;
                }
                kept_empty |= nfree == span.nelems;
                span.with_owned(|o, _| o.has_free = false);
                if nfree > 0 {
                    self.push_free(class, span);
                }
            }
            let e = &self.classes[class];
            // SAFETY: a cached span is live and ours.
            let Some(span) = (unsafe { e.span.as_ref() }) else {
                continue;
            };
            if class == keep {
                continue;
            }
            span.collect();
            let free = span.with_owned(|o, _| o.nfree) + e.window_mask().count_ones();
            if free == span.nelems {
                self.release_current(heap, class);
            }
        }
    }

    /// Makes the window of `class` non-empty: the next bitmap word of the
    /// current span; the span's remote frees; another span the cache owns
    /// with free objects; a span from the mcentral (or a fresh one from the
    /// mheap). Returns false when the heap is out of memory.
    fn refill(&mut self, heap: &Heap, class: usize) -> bool {
        self.spare[class].active = true;
        loop {
            let current = self.classes[class].span;
            // SAFETY: a cached span is live and ours.
            if let Some(span) = unsafe { current.as_ref() } {
                let next = self.classes[class].window + 1;
                if self.load_window(class, span, next) {
                    return true;
                }
                if span.collect() > 0 {
                    continue;
                }
                // Exhausted: keep it aside (a free into it, ours or a
                // remote one we are told of, brings it back), or give it to
                // the mcentral if we have no index to be told by.
                self.classes[class].clear();
                if self.index == 0 {
                    self.uncache(heap, class, span);
                } else {
                    self.link_owned(class, span);
                }
            }
            self.take_notices(heap);
            let next = match self.pop_free(class) {
                Some(span) => {
                    self.unlink_owned(class, span);
                    self.forget_alt(class, span);
                    span as *const Span as *mut Span
                }
                None => {
                    // Land our own deferred frees first: they may make a
                    // span of the mcentral reusable.
                    self.land_deferred(heap, class);
                    let span = heap.central[class].cache_span(heap, class, self.index);
                    if span.is_null() {
                        return false;
                    }
                    // SAFETY: a live span, ours now.
                    self.owned_pages += unsafe { (*span).npages };
                    span
                }
            };
            self.classes[class].span = next;
            // SAFETY: the span is live and ours.
            let span = unsafe { &*next };
            span.collect();
            if self.load_window(class, span, 0) {
                return true;
            }
            // A span we were told of whose frees we had merged already:
            // round again (it goes back aside).
        }
    }

    /// Loads the first bitmap word with free objects, at or after `from`.
    fn load_window(&mut self, class: usize, span: &Span, from: usize) -> bool {
        let Some((w, bits)) = span.take_word(from) else {
            return false;
        };
        let e = &mut self.classes[class];
        let size = e.size;
        let first = w * 64;
        let count = (span.nelems as usize - first).min(64);
        e.mask = bits;
        e.window = w;
        e.base = span.base + first * size;
        e.win_bytes = count * size;
        true
    }

    /// Gives the current span of `class` back to its mcentral.
    fn release_current(&mut self, heap: &Heap, class: usize) {
        let e = &mut self.classes[class];
        // SAFETY: a cached span is live and ours.
        let Some(span) = (unsafe { e.span.as_ref() }) else {
            return;
        };
        let mask = e.window_mask();
        if mask != 0 {
            let dup = span.give_back(e.window, mask);
            if dup != 0 {
                report::double_free(e.base + dup.trailing_zeros() as usize * e.size, e.size);
            }
        }
        e.clear();
        self.uncache(heap, class, span);
    }

    /// Gives a span the cache owns to its mcentral.
    fn uncache(&mut self, heap: &Heap, class: usize, span: &Span) {
        self.forget_alt(class, span);
        self.owned_pages -= span.npages;
        heap.central[class].uncache_span(heap, span);
    }

    /// Stops remembering `span` for frees (it leaves the cache, or becomes
    /// the current span, whose window the fast path serves).
    fn forget_alt(&mut self, class: usize, span: &Span) {
        let sp = &mut self.spare[class];
        if ptr::eq(sp.alt, span) {
            sp.alt = ptr::null();
            sp.alt_base = 0;
            sp.alt_bytes = 0;
        }
    }

    // The spans of a class the cache owns besides the current one: a list of
    // them all, and a stack of those with free objects.

    fn link_owned(&mut self, class: usize, span: &Span) {
        span.link_front(&mut self.spare[class].owned, ListId::Cache);
        span.with_owned(|o, _| o.has_free = false);
    }

    /// Takes `span` off the owned list (it may still be on the free stack:
    /// callers either pop it from there or rebuild the stack).
    fn unlink_owned(&mut self, class: usize, span: &Span) {
        span.unlink(&mut self.spare[class].owned);
    }

    /// Puts an owned span at the end of the queue of those with free
    /// objects (once).
    #[inline]
    fn push_free(&mut self, class: usize, span: &Span) {
        let queued = span.with_owned(|o, _| {
            if o.has_free {
                return false;
            }
            o.has_free = true;
            o.next_free = ptr::null_mut();
            true
        });
        if !queued {
            return;
        }
        let me = span as *const Span as *mut Span;
        let spare = &mut self.spare[class];
        // SAFETY: queued spans are live and ours.
        match unsafe { spare.free_tail.as_ref() } {
            Some(tail) => tail.with_owned(|o, _| o.next_free = me),
            None => spare.free = me,
        }
        spare.free_tail = me;
    }

    fn pop_free(&mut self, class: usize) -> Option<&'static Span> {
        let spare = &mut self.spare[class];
        // SAFETY: queued spans are live and ours.
        let span = unsafe { spare.free.as_ref() }?;
        spare.free = span.with_owned(|o, _| {
            o.has_free = false;
            o.next_free
        });
        if spare.free.is_null() {
            spare.free_tail = ptr::null_mut();
        }
        Some(span)
    }

    /// Takes the spans freers told us have free objects off our notify
    /// stack. A span we gave away meanwhile goes on to its mcentral.
    fn take_notices(&mut self, heap: &Heap) {
        if self.index == 0 {
            return;
        }
        let stack = heap.owner_stack(self.index);
        if stack.is_empty() {
            return;
        }
        let mut at = stack.take_all();
        // SAFETY: notified spans are live (NOTIFIED keeps them from being
        // retired until their notice is handled).
        while let Some(span) = unsafe { at.as_ref() } {
            at = span.next_notified();
            let state = span.state.load(Ordering::Acquire);
            if !Span::owned_by_cache(state, self.index) {
                heap.central[span.class as usize].notify(heap, span);
                continue;
            }
            span.clear_notified();
            let class = span.class as usize;
            if !ptr::eq(span, self.classes[class].span) {
                self.push_free(class, span);
            }
        }
    }

    /// The free of `addr` when the fast path could not take it.
    #[cold]
    #[inline(never)]
    fn dealloc_slow(&mut self, heap: &Heap, stats: &CacheStats, class: usize, addr: usize) {
        let span = heap.small_span_of(addr, class);
        match self.mode {
            Mode::Explicit | Mode::ThreadActive => {}
            // A thread that only frees still needs its exit flush (its
            // deferred frees) and its counters in the registry.
            Mode::ThreadFresh => heap.activate_thread_cache(self, stats),
            Mode::Exited => {
                let info = CLASSES[class];
                return heap.fallback_dealloc(addr, info.size as usize, info.align as usize);
            }
        }
        let Some(idx) = span.object_index(addr) else {
            report::interior_free(addr, span.elem_size as usize);
        };
        let (w, bit) = (idx / 64, 1u64 << (idx % 64));
        if ptr::eq(span, self.classes[class].span) {
            stats.classes[class].frees.bump(1);
            // Our current span. In the window, the fast path only refuses a
            // free object; elsewhere the bitmap tells.
            if w == self.classes[class].window || span.give_back(w, bit) != 0 {
                report::double_free(addr, span.elem_size as usize);
            }
            return;
        }
        let state = span.state.load(Ordering::Relaxed);
        if Span::owned_by_cache(state, self.index) {
            // One of our other spans: no atomics.
            return self.free_into_owned(heap, stats, class, span, idx);
        }
        if self.index != 0 && state & CENTRAL != 0 && heap.central[class].adopt(heap, span, self.index) {
            // A span nobody holds (its thread exited, say): take it, so our
            // next frees into it are local and its objects serve us.
            self.owned_pages += span.npages;
            self.link_owned(class, span);
            return self.free_into_owned(heap, stats, class, span, idx);
        }
        self.defer_free(heap, class, span, w, bit);
        stats.classes[class].frees.bump(1);
        self.count_slow_free(heap, stats);
    }

    /// Frees object `idx` of `span`, one of the cache's spans other than the
    /// current one, and remembers the span for the next free.
    #[inline(always)]
    fn free_into_owned(&mut self, heap: &Heap, stats: &CacheStats, class: usize, span: &Span, idx: usize) {
        if !span.free_one(idx) {
            report::double_free(span.object_addr(idx), span.elem_size as usize);
        }
        self.push_free(class, span);
        let sp = &mut self.spare[class];
        if !ptr::eq(sp.alt, span) {
            sp.alt = span;
            sp.alt_base = span.base;
            sp.alt_bytes = span.nelems as usize * span.elem_size as usize;
        }
        stats.classes[class].frees.bump(1);
        self.count_slow_free(heap, stats);
    }

    /// Counts a slow-path free; every so many, looks at the clock for a
    /// trim, so a thread that frees much and allocates little still trims.
    #[inline]
    fn count_slow_free(&mut self, heap: &Heap, stats: &CacheStats) {
        self.slow_frees += 1;
        if self.slow_frees >= 16 {
            self.every_16_slow_frees(heap, stats);
        }
    }

    #[cold]
    #[inline(never)]
    fn every_16_slow_frees(&mut self, heap: &Heap, stats: &CacheStats) {
        self.slow_frees = 0;
        self.maybe_trim(heap, 0);
        self.publish(stats);
    }

    /// Publishes what the cache holds, for `stats()`.
    pub(crate) fn publish(&self, stats: &CacheStats) {
        stats.owned_pages.set(self.owned_pages as u64);
        stats.large_kept.set(self.large.len() as u64);
        stats.large_kept_bytes.set(self.large.bytes() as u64);
    }

    /// Collects a free into a span we do not own.
    fn defer_free(&mut self, heap: &Heap, class: usize, span: &Span, word: usize, bit: u64) {
        let d = &mut self.spare[class].deferred;
        if ptr::eq(d.span, span) && d.word == word {
            if d.mask & bit != 0 {
                report::double_free(
                    span.object_addr(word * 64 + bit.trailing_zeros() as usize),
                    span.elem_size as usize,
                );
            }
            d.mask |= bit;
            return;
        }
        self.land_deferred(heap, class);
        self.spare[class].deferred = Deferred {
            span: span as *const Span as *mut Span,
            word,
            mask: bit,
            base: span.base,
            bytes: span.nelems as usize * span.elem_size as usize,
        };
    }

    /// Lands the deferred frees of `class` in their span.
    fn land_deferred(&mut self, heap: &Heap, class: usize) {
        let d = core::mem::replace(&mut self.spare[class].deferred, NO_DEFERRED);
        // SAFETY: the span cannot be retired while our frees are not landed.
        if let Some(span) = unsafe { d.span.as_ref() } {
            let wake = span.free_remote(d.word, d.mask);
            heap.notify(span, wake);
        }
    }
}

/// A cache of spans bound to one [`Heap`]: the allocation API for a thread,
/// a worker of a runtime, or a test that holds its cache explicitly.
///
/// ```
/// use core::alloc::Layout;
/// let heap = spanalloc::Heap::new();
/// let mut cache = heap.cache();
/// let layout = Layout::from_size_align(100, 8).unwrap();
/// let p = cache.alloc(layout);
/// assert!(!p.is_null());
/// unsafe { cache.dealloc(p, layout) };
/// ```
///
/// Dropping the cache gives its spans back to the heap. Objects may be
/// freed through any cache of the same heap, on any thread.
pub struct MCache<'h> {
    core: CacheCore,
    stats: CacheStats,
    heap: &'h Heap,
}

// SAFETY: the cache owns its spans; moving it moves that ownership.
unsafe impl Send for MCache<'_> {}

impl<'h> MCache<'h> {
    /// A new, empty cache for `heap`.
    pub fn new(heap: &'h Heap) -> Self {
        let mut core = CacheCore::new(Mode::Explicit);
        core.index = heap.take_index();
        MCache { core, stats: CacheStats::new(), heap }
    }

    /// A cache without an index: it owns only its current spans, and frees
    /// into other spans always go to them as remote frees. This is how a
    /// cache works when every index is taken (and how the fallback cache of
    /// exited threads works); tests and models use it to reach those paths.
    #[doc(hidden)]
    pub fn without_index(heap: &'h Heap) -> Self {
        MCache { core: CacheCore::new(Mode::Explicit), stats: CacheStats::new(), heap }
    }

    /// Allocates memory for `layout`; null when out of memory.
    #[inline]
    pub fn alloc(&mut self, layout: Layout) -> *mut u8 {
        self.core.alloc(self.heap, &self.stats, layout.size(), layout.align())
    }

    /// Allocates zeroed memory for `layout`; null when out of memory.
    pub fn alloc_zeroed(&mut self, layout: Layout) -> *mut u8 {
        self.core.alloc_zeroed(self.heap, &self.stats, layout.size(), layout.align())
    }

    /// Frees `ptr`.
    ///
    /// # Safety
    /// `ptr` must have been allocated from this cache's heap with `layout`
    /// and not freed since.
    #[inline]
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { self.core.dealloc(self.heap, &self.stats, ptr, layout.size(), layout.align()) }
    }

    /// Resizes `ptr` to `new_size` bytes, as `GlobalAlloc::realloc`.
    ///
    /// # Safety
    /// As for `GlobalAlloc::realloc`, with this cache's heap.
    pub unsafe fn realloc(&mut self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe { self.core.realloc(self.heap, &self.stats, ptr, layout.size(), layout.align(), new_size) }
    }

    /// Gives every cached span and deferred free back to the heap now.
    pub fn flush(&mut self) {
        self.core.flush(self.heap);
        self.core.publish(&self.stats);
    }

    /// The heap this cache allocates from.
    pub fn heap(&self) -> &'h Heap {
        self.heap
    }
}

impl Drop for MCache<'_> {
    fn drop(&mut self) {
        self.core.flush(self.heap);
        self.core.publish(&self.stats);
        self.heap.give_index(self.core.index);
        self.heap.absorb_stats(&self.stats);
    }
}
