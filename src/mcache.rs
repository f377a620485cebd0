//! mcache: one thread's cache of spans, one span per size class.
//!
//! Go gives each P an mcache; a Rust global allocator has no P, so each
//! thread that allocates owns one, in a thread-local (see
//! [`crate::global`]). An mcache is also a plain value, [`MCache`], that
//! tests, loom models and runtimes with their own workers can hold.
//!
//! # The fast paths
//!
//! For each size class the cache holds one span and, out of that span's
//! free bitmap, one *window*: a 64-bit mask of free objects (Go's
//! `allocCache`). Allocation takes the lowest set bit (`tzcnt`, then
//! `blsr`); a free of an object in the window sets its bit again. Both
//! paths touch only the thread's own cache line for the class: no lock, no
//! atomic read-modify-write, no load from the span or from the object.
//!
//! A free also checks, at the cost of a multiply and a compare, that the
//! pointer is the start of an object and that the object is not already
//! free; anything else takes the slow path, which tells double frees and
//! foreign pointers apart and reports them.
//!
//! # The slow paths
//!
//! - **refill**: when the window is empty, take the next word of the span's
//!   bitmap; then merge frees other threads made into the span; then give
//!   the span back to its mcentral and take another.
//! - **free outside the window**: into another word of our span, directly;
//!   into any other span, through a per-class *deferred free* slot that
//!   collects frees of one bitmap word and lands them in the span's remote
//!   bitmap in one `fetch_or` (see [`crate::mspan`]). A program that frees
//!   in allocation order, or a consumer thread freeing a producer's objects,
//!   pays one atomic per 64 objects.
//!
//! Frees never migrate objects between caches: an object always goes back
//! to its own span, so producer / consumer programs stay bounded and threads
//! never end up sharing cache lines they did not ask to share.

use core::alloc::Layout;
use core::ptr;

use crate::heap::Heap;
use crate::mheap::TICK_MS;
use crate::mspan::Span;
use crate::os;
use crate::report;
use crate::sizeclass::{CLASSES, MAX_SMALL, NUM_CLASSES, class_of, small_class};
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
/// landed in the span.
#[derive(Clone, Copy)]
struct Deferred {
    span: *mut Span,
    word: usize,
    mask: u64,
}

const NO_DEFERRED: Deferred = Deferred { span: ptr::null_mut(), word: 0, mask: 0 };

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
    deferred: [Deferred; NUM_CLASSES],
    pub(crate) mode: Mode,
    /// When the cache next gives back its idle spans (`os::now_ms`).
    next_trim: u64,
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
        CacheCore { classes, deferred: [NO_DEFERRED; NUM_CLASSES], mode, next_trim: os::FIRST_DEADLINE }
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
        self.dealloc_slow(heap, stats, class, addr)
    }

    /// Allocations the size-class fast path does not take: alignments
    /// above 8 and large objects.
    #[inline(never)]
    fn alloc_other(&mut self, heap: &Heap, stats: &CacheStats, size: usize, align: usize) -> *mut u8 {
        match class_of(size, align) {
            0 => heap.alloc_large(size, align, false),
            class => self.alloc_class(heap, stats, class),
        }
    }

    /// Frees the fast path does not take (see [`CacheCore::alloc_other`]).
    #[inline(never)]
    fn dealloc_other(&mut self, heap: &Heap, stats: &CacheStats, addr: usize, size: usize, align: usize) {
        match class_of(size, align) {
            0 => heap.free_large(addr),
            class => self.dealloc_class(heap, stats, class, addr),
        }
    }

    // -----------------------------------------------------------------------
    // The rest of the API.

    /// Allocates zeroed memory; skips the memset for large objects whose
    /// pages are fresh from the OS.
    pub(crate) fn alloc_zeroed(&mut self, heap: &Heap, stats: &CacheStats, size: usize, align: usize) -> *mut u8 {
        if class_of(size, align) == 0 {
            return heap.alloc_large(size, align, true);
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
        if old_class == new_class {
            if old_class != 0 || heap.mheap.resize_large(ptr as usize, new_size) {
                return ptr;
            }
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
        for class in 1..NUM_CLASSES {
            self.release_span(heap, class);
            self.land_deferred(heap, class);
        }
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
        let now = os::now_ms();
        if now >= self.next_trim {
            self.next_trim = now + TICK_MS;
            self.trim(heap, class);
        }
        heap.maybe_tick(now);
        if !self.refill(heap, class) {
            return ptr::null_mut();
        }
        let e = &mut self.classes[class];
        let m = e.mask;
        e.mask = m & (m - 1);
        stats.classes[class].mallocs.bump(1);
        (e.base + m.trailing_zeros() as usize * e.size) as *mut u8
    }

    /// Gives back, at most once per scavenger tick, what the cache holds
    /// for nothing: spans whose objects are all free (except `keep`'s), and
    /// deferred frees. So a thread that freed a peak lets the heap return
    /// it to the OS, while a busy thread keeps the spans it uses.
    #[cold]
    fn trim(&mut self, heap: &Heap, keep: usize) {
        for class in 1..NUM_CLASSES {
            self.land_deferred(heap, class);
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
                self.release_span(heap, class);
            }
        }
    }

    /// Makes the window of `class` non-empty. Returns false when the heap
    /// is out of memory.
    fn refill(&mut self, heap: &Heap, class: usize) -> bool {
        let span = self.classes[class].span;
        // SAFETY: a cached span is live and ours.
        if let Some(s) = unsafe { span.as_ref() } {
            let next = self.classes[class].window + 1;
            if self.load_window(class, s, next) {
                return true;
            }
            if s.collect() > 0 && self.load_window(class, s, next) {
                return true;
            }
            self.release_span(heap, class);
        }
        // Land our own deferred frees first: they may make a span reusable.
        self.land_deferred(heap, class);
        let span = heap.central[class].cache_span(heap, class);
        // SAFETY: the mcentral (or mheap) hands us a live span we now own.
        let Some(s) = (unsafe { span.as_ref() }) else {
            return false;
        };
        self.classes[class].span = span;
        s.collect();
        if self.load_window(class, s, 0) {
            return true;
        }
        // The mcentral only hands out spans with a free object.
        debug_assert!(false, "span from the mcentral has no free object");
        self.release_span(heap, class);
        false
    }

    /// Loads the first bitmap word with free objects, at or after `from`.
    fn load_window(&mut self, class: usize, span: &Span, from: usize) -> bool {
        let words = span.used_words();
        let Some((w, bits)) = span.take_word(from % words) else {
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

    /// Gives the cached span of `class` back to its mcentral.
    fn release_span(&mut self, heap: &Heap, class: usize) {
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
        heap.central[class].uncache_span(heap, span);
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
        let e = &mut self.classes[class];
        if ptr::eq(span, e.span) {
            // Our span. In the window, the fast path only refuses a free
            // object; elsewhere the bitmap tells.
            if w == e.window || span.give_back(w, bit) != 0 {
                report::double_free(addr, span.elem_size as usize);
            }
        } else {
            self.defer_free(heap, class, span, w, bit);
        }
        stats.classes[class].frees.bump(1);
    }

    /// Collects a free into a span we do not own.
    fn defer_free(&mut self, heap: &Heap, class: usize, span: &Span, word: usize, bit: u64) {
        let d = &mut self.deferred[class];
        if ptr::eq(d.span, span) && d.word == word {
            if d.mask & bit != 0 {
                report::double_free(span.object_addr(word * 64 + bit.trailing_zeros() as usize), span.elem_size as usize);
            }
            d.mask |= bit;
            return;
        }
        self.land_deferred(heap, class);
        self.deferred[class] = Deferred { span: span as *const Span as *mut Span, word, mask: bit };
    }

    /// Lands the deferred frees of `class` in their span.
    fn land_deferred(&mut self, heap: &Heap, class: usize) {
        let d = core::mem::replace(&mut self.deferred[class], NO_DEFERRED);
        // SAFETY: the span cannot be retired while our frees are not landed.
        if let Some(span) = unsafe { d.span.as_ref() } {
            if span.free_remote(d.word, d.mask) {
                heap.central[class].notify(heap, span);
            }
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
    }

    /// The heap this cache allocates from.
    pub fn heap(&self) -> &'h Heap {
        self.heap
    }
}

impl Drop for MCache<'_> {
    fn drop(&mut self) {
        self.core.flush(self.heap);
        self.heap.absorb_stats(&self.stats);
    }
}
