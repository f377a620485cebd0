//! mcache: one thread's cache of free objects and of the spans they are in.
//!
//! Go gives each P an mcache; a Rust global allocator has no P, so each
//! thread that allocates owns one, in a thread-local (see `thread`). An
//! mcache is also a plain value, [`MCache`], that tests, loom models and
//! runtimes with their own workers can hold.
//!
//! # The fast paths
//!
//! For each size class the cache keeps a *stack* of pointers to free
//! objects, in an array beside the objects (never inside them): allocation
//! pops the most recently freed object, a free pushes. So the object handed
//! out next is the one freed last, still in cache, whatever order the
//! program frees in, and each path takes one branch that is almost always
//! predicted the same way: "stack empty" and "stack full". The stack's
//! bounds are compared on the low 16 bits of its top pointer (`Bin`), as
//! jemalloc's cache bins do; a bin (32 bytes) also holds the class's page
//! tag and its heap-profile countdown, and an all-zero bin is both empty
//! and full (a thread's fresh cache needs no set-up to be safe).
//!
//! Every path also checks, from the address alone (see [`crate::arena`]):
//!
//! - **free**: the object's page tag is this cache's tag for the class
//!   (this cache owns the span, and the layout names the right class), and
//!   its `alloc` bit is set (it is allocated: not free already) and its
//!   `remote` bit clear (no other thread freed it first). Then it clears
//!   the `alloc` bit and pushes. A plain load and store: the cache is the
//!   bit's only writer.
//! - **alloc**: sets the popped object's `alloc` bit. It reads nothing that
//!   other threads write, so a consumer's frees into the remote words of
//!   the producer's spans cost the producer nothing until it merges them.
//!
//! No lock, no atomic read-modify-write, no load from the span record.
//!
//! # The slow paths
//!
//! - **refill** (stack empty): carve up to 16 KiB of free objects
//!   from the current span's bitmap; else merge the frees other threads
//!   made into it; else the span is used up: it goes on the cache's list of
//!   full spans, handed to the mcentral a few at a time (remote frees into
//!   it then reach the mcentral, and any thread can reuse them), and the
//!   next span comes from the cache's other spans, or the mcentral (or
//!   fresh from the mheap).
//! - **flush** (stack full): the older half of the stack goes back into its
//!   spans' bitmaps; spans that become wholly free go back to the mcentral.
//! - **a free that is not the cache's**: into a span the cache gave back
//!   to the mcentral, the cache takes it back (`MCentral::adopt`, one lock);
//!   into any other span, a remote free (see [`crate::mspan`]): one
//!   `fetch_or`, published at once, so a second free anywhere finds it.
//! - **trim**, at most once per scavenger tick: classes idle since the last
//!   trim empty their stacks into their spans and give every span back.
//!
//! Spans leave the cache only when the class's stack is empty (a refill, or
//! after emptying it), so an object in a stack is always in a span the
//! cache owns: its bits have one writer.
//!
//! Large objects go to the mheap, except that the cache keeps the last few
//! it freed for reuse ([`crate::largecache`]).
//!
//! Frees never migrate objects between caches: an object always goes back
//! to its own span, so producer / consumer programs stay bounded and
//! threads never end up sharing cache lines they did not ask to share.
//! What a cache may hold is bounded: per class a stack of at most
//! [`stack_cap`] objects (64 KiB of objects, 4 to 1024), a current span, and
//! other spans (with free objects, used up, or wholly free) up to the
//! class's hold budget (`hold_budget`: 1 MiB of spans, 2 to 128).

use core::alloc::Layout;
use core::ptr;

use crate::arena::{self, ArenaMeta, cache_tag};
use crate::heap::Heap;
use crate::index;
use crate::largecache::LargeCache;
use crate::mcentral::central_tag;
use crate::mheap::TICK_MS;
use crate::mspan::{ListId, Span, SpanKind};
use crate::os;
#[cfg(not(loom))]
use crate::profile::{self, Sample, Sampler};
use crate::report;
use crate::sizeclass::{CLASSES, CLASSES_CONST, MAX_SMALL, NUM_CLASSES, PAGE_SIZE, c_class, class_of, small_class};
use crate::stats::CacheStats;
use crate::sync::atomic::AtomicU64;
use crate::sync::unmodelled::Ordering;

// ---------------------------------------------------------------------------
// Stack geometry.

/// Objects the stack of `class` holds at most: 64 KiB of objects, at least
/// 4 and at most 1024 (under loom: 2, so models reach full stacks). A
/// program that allocates and then frees a thousand small objects at a
/// time keeps them all on the stack, with no trip through their spans.
pub(crate) const fn stack_cap(class: usize) -> usize {
    if cfg!(loom) {
        return 2;
    }
    objects_in(class, 64 << 10, 1024)
}

/// Objects a refill of the empty stack of `class` carves: half of 32 KiB
/// of objects, 2 to 128 (under loom: 1), so a class a thread allocates a
/// few objects of takes little.
const fn refill_objects(class: usize) -> usize {
    if cfg!(loom) {
        return 1;
    }
    objects_in(class, 32 << 10, 256).div_ceil(2)
}

/// How many objects of `class` fit in `bytes`, clamped to 4..=`max` (0 for
/// class 0).
const fn objects_in(class: usize, bytes: usize, max: usize) -> usize {
    let size = CLASSES_CONST[class].size as usize;
    if size == 0 {
        return 0;
    }
    let n = bytes / size;
    if n < 4 {
        4
    } else if n > max {
        max
    } else {
        n
    }
}

/// Each class's first slot in the cache's slot array.
const SLOT_OFFSETS: [usize; NUM_CLASSES + 1] = {
    let mut off = [0; NUM_CLASSES + 1];
    let mut c = 1;
    // Slot 0 is the permanently empty and full stack of class 0.
    off[1] = 1;
    while c < NUM_CLASSES {
        off[c + 1] = off[c] + stack_cap(c);
        c += 1;
    }
    off
};
/// Slots of one cache.
const SLOTS: usize = SLOT_OFFSETS[NUM_CLASSES];
/// Bytes of one cache's slot array, in whole OS pages of 4 KiB (a larger
/// OS page rounds up in `os::map`).
const SLOT_BYTES: usize = (SLOTS * 8).next_multiple_of(4096);

// The 16-bit bound compare needs every stack under 64 KiB.
static_assertions::const_assert!(1024 * 8 < 1 << 16);

/// Spans of `class` a cache holds besides its current one (used up, or
/// with free objects, or wholly free) before it gives some back: 1 MiB of
/// spans, 2 to 128 (under loom: none, so the models reach the mcentral).
/// A program that allocates and frees a few hundred kilobytes at a time
/// keeps its spans, with no lock; a thread that stops strands at most this
/// much per class it used.
fn hold_budget(class: usize) -> usize {
    if cfg!(loom) {
        return 0;
    }
    let span = CLASSES[class].pages as usize * PAGE_SIZE;
    ((1 << 20) / span).clamp(2, 128)
}

/// Pages of spans a cache owns (its current spans, and those it holds
/// with live or free objects) above which its used-up spans, and spans
/// whose objects are all free, go back to the mcentral whatever their
/// class's budget: 8 MiB. A thread that used many classes and then stops
/// allocating keeps at most about this much, not 1 MiB per class, where
/// other threads' frees cannot be reused or released while it sleeps.
const OWNED_PAGES_SOFT: usize = (8 << 20) / PAGE_SIZE;

/// One class's stack of free objects, and its heap-profile countdown:
/// 32 bytes (a shift to index).
#[repr(C)]
pub(crate) struct Bin {
    /// One past the last pushed pointer.
    top: *mut usize,
    /// The low 16 bits of `top` when the stack is empty...
    empty: u16,
    /// ... and when it is full.
    full: u16,
    /// The page tag of the spans this cache holds for the class.
    tag: u32,
    /// Allocations of the class left before the next heap-profile sample
    /// (see `alloc_counted`); each allocation decrements it, and the one
    /// that takes it below zero takes the slow path.
    left: i64,
    _pad: u64,
}

static_assertions::const_assert_eq!(size_of::<Bin>(), 32);

/// A countdown while profiling is off: the class looks again after this
/// many allocations (and at every refill) whether it was turned on.
const PARKED_OBJECTS: i64 = 1 << 20;

impl Bin {
    const ZERO: Bin = Bin { top: ptr::null_mut(), empty: 0, full: 0, tag: 0, left: 0, _pad: 0 };

    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.top as u16 == self.empty
    }

    #[inline(always)]
    fn is_full(&self) -> bool {
        self.top as u16 == self.full
    }
}

/// What a cache holds for a class besides its stack (slow paths only).
#[derive(Clone, Copy)]
struct ClassSpans {
    /// The span refills carve from (owned; on no list).
    current: *mut Span,
    /// Other owned spans with free objects (`ListId::CachePartial`).
    partial: *mut Span,
    /// Owned spans with no free object (`ListId::CacheFull`), waiting to go
    /// to the mcentral.
    full: *mut Span,
    nfull: usize,
    npartial: usize,
    /// The class refilled or flushed since the last trim.
    busy: bool,
    /// The heap-profile rate the class's countdown was drawn with (0:
    /// parked, or never drawn).
    sample_rate: u64,
}

const NO_SPANS: ClassSpans = ClassSpans {
    current: ptr::null_mut(),
    partial: ptr::null_mut(),
    full: ptr::null_mut(),
    nfull: 0,
    npartial: 0,
    busy: false,
    sample_rate: 0,
};

/// What a cache is, for the slow paths. A thread's cache starts all-zero:
/// `ThreadFresh` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) enum Mode {
    /// A thread's cache that has not been set up yet (see `thread`).
    ThreadFresh = 0,
    /// A value the caller holds ([`MCache`]).
    Explicit,
    /// A thread's cache in use.
    ThreadActive,
    /// A thread's cache after its thread-exit flush: everything goes through
    /// the fallback cache from now on.
    Exited,
}

/// What a cache's slow paths need from whoever holds the cache: the heap,
/// the counters, and, for thread caches, their set-up and the fallback.
pub(crate) trait Host {
    fn heap(&self) -> &Heap;
    fn stats(&self) -> &CacheStats;
    /// Sets up a `ThreadFresh` cache (index, slots, registry, exit hook);
    /// leaves it `ThreadFresh` when it cannot.
    fn activate(&self, core: &mut CacheCore);
    /// Serves a cache that cannot serve itself (`Exited`, or set-up failed).
    fn fallback_alloc(&self, size: usize, align: usize, zero: bool) -> *mut u8;
    fn fallback_dealloc(&self, addr: usize, size: usize, align: usize);
    /// Allocates a small object that the heap profile sampled: from the
    /// profile's own cache (whose page tags tell every free to come back to
    /// it), recorded. `None`: this host does not profile.
    fn sampled_alloc(&self, sample: Sample, size: usize, align: usize, zero: bool) -> Option<*mut u8>;
    /// Frees `addr` if it is an object of the profile's cache (`tag` is its
    /// page tag); false if it is not.
    fn sampled_free(&self, addr: usize, tag: u32) -> bool;
}

/// The cache proper. Its counters live beside it in [`CacheStats`] so that
/// other threads can read them while the owner holds `&mut CacheCore`.
#[repr(C)]
pub(crate) struct CacheCore {
    bins: [Bin; NUM_CLASSES],
    /// Bytes to allocate before the next heap-profile sample (see
    /// `profile`): every allocation charges it, two instructions.
    sampler: Sampler,
    spans: [ClassSpans; NUM_CLASSES],
    pub(crate) mode: Mode,
    /// This cache's index (see `index`); 0 until it has one.
    pub(crate) index: u32,
    /// The slot array the stacks live in.
    slots: *mut usize,
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
    /// The cache keeps every span that holds an allocated object (the heap
    /// profile's cache: a span with a live sample must stay with it, so
    /// the sample's free comes back to it and drops the record).
    pub(crate) keep_spans: bool,
}

// SAFETY: a cache owns the spans it points at; moving it to another thread
// moves that ownership with it.
unsafe impl Send for CacheCore {}

impl CacheCore {
    /// A cache with no index and no slots: every operation takes a slow
    /// path, which sets it up ([`CacheCore::attach`]) or, per `mode`, asks
    /// the host.
    pub(crate) const fn new(mode: Mode) -> Self {
        CacheCore {
            bins: [Bin::ZERO; NUM_CLASSES],
            sampler: Sampler::new(),
            spans: [NO_SPANS; NUM_CLASSES],
            mode,
            index: 0,
            slots: ptr::null_mut(),
            next_trim: 0,
            owned_pages: 0,
            slow_frees: 0,
            clock_skip: 0,
            large: LargeCache::new(),
            keep_spans: false,
        }
    }

    /// Gives the cache an index and a slot array; false (and nothing
    /// changed) when the kernel refuses memory.
    pub(crate) fn attach(&mut self) -> bool {
        let index = index::take();
        if index == 0 {
            return false;
        }
        let Some(slots) = slot_arrays::take() else {
            index::give(index);
            return false;
        };
        self.index = index;
        self.slots = slots;
        self.next_trim = os::FIRST_DEADLINE;
        for class in 0..NUM_CLASSES {
            let base = self.bin_base(class);
            let limit = base.wrapping_add(stack_cap(class));
            self.bins[class] = Bin {
                top: base,
                empty: base as u16,
                full: limit as u16,
                // No page has this tag: class 0's stack never serves.
                tag: if class == 0 { u32::MAX } else { cache_tag(index, class) },
                left: 0,
                _pad: 0,
            };
        }
        true
    }

    /// Follows a change of the heap profile's rate now: every class's
    /// countdown starts again at its next allocation.
    pub(crate) fn refresh_sampler(&mut self) {
        self.sampler.refresh();
        for b in &mut self.bins {
            b.left = 0;
        }
    }

    /// Gives back the slot array and the index (after [`CacheCore::flush`]).
    pub(crate) fn detach(&mut self) {
        if !self.slots.is_null() {
            slot_arrays::give(self.slots);
        }
        index::give(self.index);
        self.index = 0;
        self.slots = ptr::null_mut();
        self.bins = [Bin::ZERO; NUM_CLASSES];
    }

    #[inline(always)]
    fn bin_base(&self, class: usize) -> *mut usize {
        self.slots.wrapping_add(SLOT_OFFSETS[class])
    }

    /// Objects in the stack of `class`.
    #[inline]
    fn bin_len(&self, class: usize) -> usize {
        (self.bins[class].top as usize - self.bin_base(class) as usize) / 8
    }

    // -----------------------------------------------------------------------
    // Fast paths.

    /// Allocates `size` bytes aligned to `align`; null when out of memory.
    #[inline(always)]
    pub(crate) fn alloc<H: Host>(&mut self, host: &H, size: usize, align: usize) -> *mut u8 {
        if align > 8 || size > MAX_SMALL {
            return self.alloc_other(host, size, align, false);
        }
        self.alloc_class(host, small_class(size))
    }

    /// Allocates an object of `class` (not 0): the top of its stack.
    #[inline(always)]
    fn alloc_class<H: Host>(&mut self, host: &H, class: usize) -> *mut u8 {
        // SAFETY: classes are below NUM_CLASSES.
        let b = unsafe { self.bins.get_unchecked_mut(class) };
        b.left -= 1;
        if b.left < 0 {
            return self.alloc_counted(host, class);
        }
        self.pop(host, class)
    }

    /// The top of the stack of `class`, or a refill.
    #[inline(always)]
    fn pop<H: Host>(&mut self, host: &H, class: usize) -> *mut u8 {
        // SAFETY: classes are below NUM_CLASSES.
        let b = unsafe { self.bins.get_unchecked_mut(class) };
        let top = b.top;
        if b.is_empty() {
            return self.refill_alloc(host, class);
        }
        // SAFETY: the stack is not empty, so the slot below `top` holds a
        // free object of an arena span this cache owns.
        let addr = unsafe {
            let top = top.sub(1);
            b.top = top;
            top.read()
        };
        // SAFETY: as above, the object is in an arena.
        let meta = unsafe { arena::meta_unchecked(addr) };
        let (word, n) = meta.alloc_word(addr);
        // No look at the remote word: the free that pushed the object saw
        // its remote bit clear, and a free on another thread while it sat
        // on the stack found its alloc bit clear. (The remote words are
        // where other threads write: a load here would fetch their cache
        // line on every allocation whose object a consumer freed before.)
        word.store(word.load(Ordering::Relaxed) | 1 << n, Ordering::Relaxed);
        // SAFETY: classes are below NUM_CLASSES.
        unsafe { host.stats().classes.get_unchecked(class) }.mallocs.bump(1);
        addr as *mut u8
    }

    /// Frees `ptr`, allocated with `size` and `align`.
    ///
    /// # Safety
    /// `ptr` must have come from this heap with this size and alignment (a
    /// detectable violation aborts with a report).
    #[inline(always)]
    pub(crate) unsafe fn dealloc<H: Host>(&mut self, host: &H, ptr: *mut u8, size: usize, align: usize) {
        if align > 8 || size > MAX_SMALL {
            return self.dealloc_other(host, ptr as usize, size, align);
        }
        self.dealloc_class(host, small_class(size), ptr as usize)
    }

    /// Frees an object of `class` (not 0): onto its stack if this cache
    /// owns its span and it is allocated.
    #[inline(always)]
    pub(crate) fn dealloc_class<H: Host>(&mut self, host: &H, class: usize, addr: usize) {
        // SAFETY: classes are below NUM_CLASSES.
        let b = unsafe { self.bins.get_unchecked(class) };
        if !b.is_full() && arena::small_object_in_arena(addr) {
            // SAFETY: in an arena.
            let meta = unsafe { arena::meta_unchecked(addr) };
            if meta.tag_at(addr) == b.tag && self.push_allocated(host, class, meta, addr) {
                return;
            }
        }
        self.dealloc_slow(host, class, addr)
    }

    /// The end of a fast free, once the object is known to be in a span
    /// this cache holds for `class` and its stack has room: if the object
    /// is allocated and no other thread freed it, clears its `alloc` bit
    /// and pushes it. False (and nothing changed) otherwise: the slow path
    /// reports which misuse it is.
    #[inline(always)]
    fn push_allocated<H: Host>(&mut self, host: &H, class: usize, meta: &ArenaMeta, addr: usize) -> bool {
        let (word, n) = meta.alloc_word(addr);
        // The remote word is read before the alloc word is written: it lies
        // a multiple of 4 KiB beyond, and a load that follows a store to
        // the same page offset waits for it (4K aliasing).
        let remote = meta.remote_word(addr).load(Ordering::Relaxed);
        let w = word.load(Ordering::Relaxed);
        if ((w & !remote) >> n) & 1 == 0 {
            return false;
        }
        word.store(w & !(1 << n), Ordering::Relaxed);
        // SAFETY: classes are below NUM_CLASSES.
        let b = unsafe { self.bins.get_unchecked_mut(class) };
        // SAFETY: the caller checked that the stack is not full.
        unsafe {
            b.top.write(addr);
            b.top = b.top.add(1);
        }
        // SAFETY: classes are below NUM_CLASSES.
        unsafe { host.stats().classes.get_unchecked(class) }.frees.bump(1);
        true
    }

    /// Allocations the size-class fast path does not take: alignments
    /// above 8, large objects, and zeroed memory.
    #[inline(never)]
    fn alloc_other<H: Host>(&mut self, host: &H, size: usize, align: usize, zero: bool) -> *mut u8 {
        match class_of(size, align) {
            0 if self.sampler.charge(size) => self.alloc_large_sampled(host, size, align, zero),
            0 => self.alloc_large(host, size, align, zero),
            class => {
                let p = self.alloc_class(host, class);
                if zero && !p.is_null() {
                    // SAFETY: the object holds at least `size` writable bytes.
                    unsafe { ptr::write_bytes(p, 0, size) };
                }
                p
            }
        }
    }

    /// Frees the fast path does not take (see [`CacheCore::alloc_other`]).
    #[inline(never)]
    fn dealloc_other<H: Host>(&mut self, host: &H, addr: usize, size: usize, align: usize) {
        match class_of(size, align) {
            0 => self.free_large(host, addr),
            class => self.dealloc_class(host, class, addr),
        }
    }

    // -----------------------------------------------------------------------
    // C's malloc family: no layout on free, 16-byte alignment from 16 bytes.

    /// `malloc(size)`: the C class of `size` (see `sizeclass::c_class`), or
    /// a large object; null when out of memory.
    #[inline(always)]
    pub(crate) fn alloc_c<H: Host>(&mut self, host: &H, size: usize) -> *mut u8 {
        if size > MAX_SMALL {
            return self.alloc_other(host, size, 16, false);
        }
        self.alloc_class(host, c_class(size))
    }

    /// `free(addr)` with no size: the page tag names the class.
    #[inline(always)]
    pub(crate) fn free_unsized<H: Host>(&mut self, host: &H, addr: usize) {
        if !self.free_unsized_fast(host, addr) {
            self.free_unsized_slow(host, addr)
        }
    }

    /// The fast path of [`CacheCore::free_unsized`]: pushes `addr` if it is
    /// an allocated object of a span this cache holds and its class's
    /// stack has room. False (nothing done) otherwise: no system call and
    /// no lock either way.
    #[inline(always)]
    pub(crate) fn free_unsized_fast<H: Host>(&mut self, host: &H, addr: usize) -> bool {
        if !arena::small_object_in_arena(addr) {
            return false;
        }
        // SAFETY: in an arena.
        let meta = unsafe { arena::meta_unchecked(addr) };
        let tag = meta.tag_at(addr);
        let class = arena::tag_class(tag);
        // SAFETY: classes are below NUM_CLASSES.
        let b = unsafe { self.bins.get_unchecked(class) };
        tag == b.tag && !b.is_full() && self.push_allocated(host, class, meta, addr)
    }

    /// The rest of an unsized free: a small object of another owner (or a
    /// full stack, or misuse), a large object, or a foreign pointer.
    #[cold]
    #[inline(never)]
    fn free_unsized_slow<H: Host>(&mut self, host: &H, addr: usize) {
        if arena::small_object_in_arena(addr) {
            // SAFETY: in an arena.
            let class = arena::tag_class(unsafe { arena::meta_unchecked(addr) }.tag_at(addr));
            if class != 0 {
                return self.dealloc_slow(host, class, addr);
            }
        }
        self.free_unsized_other(host, addr)
    }

    /// An unsized free that is not of a small object in an arena: a large
    /// object, or a pointer spanalloc did not hand out.
    #[cold]
    #[inline(never)]
    fn free_unsized_other<H: Host>(&mut self, host: &H, addr: usize) {
        match arena::span_of(addr) {
            // SAFETY: a non-null page entry points at a live record.
            Some((_, span)) if unsafe { span.as_ref() }.is_some_and(|s| s.kind == SpanKind::Large) => {
                self.free_large(host, addr)
            }
            _ => report::invalid_free(addr),
        }
    }

    /// `realloc(addr, size)` for `addr` not null and `size` not zero: in
    /// place when the object holds `size` and would not waste more than
    /// half of itself (or, for large objects, when the pages allow), else
    /// moved with its bytes.
    ///
    /// # Safety
    /// `addr` must be an object this heap handed out and not freed (what
    /// spanalloc can detect is reported).
    pub(crate) unsafe fn realloc_c<H: Host>(&mut self, host: &H, addr: usize, size: usize) -> *mut u8 {
        let heap = host.heap();
        let old = usable_size(addr);
        let (old_small, new_class) = (old <= MAX_SMALL, if size <= MAX_SMALL { c_class(size) } else { 0 });
        if old_small && new_class != 0 && size <= old && size >= old / 2 {
            check_live(heap, small_class(old), addr);
            return addr as *mut u8;
        }
        if !old_small && new_class == 0 && heap.shared().mheap.resize_large(addr, size) {
            return addr as *mut u8;
        }
        let new = self.alloc_c(host, size);
        if !new.is_null() {
            // SAFETY: both objects are live and distinct; we copy what both
            // hold.
            unsafe { ptr::copy_nonoverlapping(addr as *const u8, new, old.min(size)) };
            self.free_unsized(host, addr);
        }
        new
    }

    // -----------------------------------------------------------------------
    // The rest of the API.

    /// Allocates zeroed memory; skips the memset for large objects whose
    /// pages are fresh from the OS.
    pub(crate) fn alloc_zeroed<H: Host>(&mut self, host: &H, size: usize, align: usize) -> *mut u8 {
        self.alloc_other(host, size, align, true)
    }

    /// An allocation of `class` whose countdown ran out: sampled or not
    /// (the countdown is drawn again either way), then allocated.
    ///
    /// A class's countdown is the number of its allocations to leave
    /// unsampled before the next sampled one: `⌊G / size⌋` for an
    /// exponential gap `G` of mean `rate` bytes, so each allocation is a
    /// sample with probability `1 − e^(−size/rate)`, independently, and the
    /// sample stands for the inverse of that many objects (Go's weighting;
    /// see `profile`). A fresh or parked countdown starts the process with
    /// this allocation.
    #[cold]
    #[inline(never)]
    fn alloc_counted<H: Host>(&mut self, host: &H, class: usize) -> *mut u8 {
        let rate = profile::rate();
        let size = CLASSES[class].size as u64;
        let armed = self.spans[class].sample_rate;
        let (hit, left) = countdown(&mut self.sampler, armed, rate, size);
        self.spans[class].sample_rate = rate;
        self.bins[class].left = left;
        if !hit || profile::in_profiler() {
            return self.pop(host, class);
        }
        let sample = Sample { size, weight: profile::weight(size, rate) };
        let info = CLASSES[class];
        match host.sampled_alloc(sample, info.size as usize, info.align as usize, false) {
            Some(p) => p,
            None => self.pop(host, class),
        }
    }

    /// A large (or over-aligned) allocation the byte countdown picks as a
    /// heap-profile sample: its own span, flagged so its free drops the
    /// record.
    #[cold]
    #[inline(never)]
    fn alloc_large_sampled<H: Host>(&mut self, host: &H, size: usize, align: usize, zero: bool) -> *mut u8 {
        let p = self.alloc_large(host, size, align, zero);
        if let Some(sample) = self.sampler.sampled(size)
            && !p.is_null()
        {
            let (_, span) = host.heap().shared().mheap.large_span_of(p as usize);
            span.sampled = true;
            profile::record(sample, p as usize, 0, None);
        }
        p
    }

    /// Resizes in place when the new size has the same size class, or for
    /// large objects when the pages allow; otherwise moves. Either way the
    /// pointer is checked as a free checks it.
    ///
    /// # Safety
    /// As for [`CacheCore::dealloc`]; `new_size` rounded up to `align` must
    /// not overflow `isize`.
    pub(crate) unsafe fn realloc<H: Host>(
        &mut self,
        host: &H,
        ptr: *mut u8,
        size: usize,
        align: usize,
        new_size: usize,
    ) -> *mut u8 {
        let heap = host.heap();
        let old_class = class_of(size, align);
        let new_class = class_of(new_size, align);
        if old_class == new_class {
            if old_class != 0 {
                check_live(heap, old_class, ptr as usize);
                return ptr;
            }
            if heap.shared().mheap.resize_large(ptr as usize, new_size) {
                return ptr;
            }
        }
        let new = self.alloc(host, new_size, align);
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct; we copy what both hold.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, size.min(new_size));
                self.dealloc(host, ptr, size, align);
            }
        }
        new
    }

    /// Gives every object and span back to the heap: each stack emptied
    /// into its spans, every span to its mcentral, the large objects to the
    /// mheap.
    pub(crate) fn flush(&mut self, heap: &Heap) {
        if !self.slots.is_null() {
            for class in 1..NUM_CLASSES {
                self.give_back_class(heap, class);
            }
        }
        self.large.flush(heap);
    }

    /// Publishes what the cache holds, for `stats()`.
    pub(crate) fn publish(&self, stats: &CacheStats) {
        stats.owned_pages.set(self.owned_pages as u64);
        stats.large_kept.set(self.large.len() as u64);
        stats.large_kept_bytes.set(self.large.bytes() as u64);
    }

    // -----------------------------------------------------------------------
    // Slow paths: allocation.

    /// Refills `class` and allocates from it.
    #[cold]
    #[inline(never)]
    fn refill_alloc<H: Host>(&mut self, host: &H, class: usize) -> *mut u8 {
        if !self.ready(host) {
            let info = CLASSES[class];
            return host.fallback_alloc(info.size as usize, info.align as usize, false);
        }
        let heap = host.heap();
        self.sampler.refresh();
        if self.spans[class].sample_rate != profile::rate() {
            // The rate changed: the class's countdown starts again at its
            // next allocation.
            self.bins[class].left = 0;
        }
        self.maybe_trim(host, class);
        let refilled = self.refill(heap, class);
        self.publish(host.stats());
        if !refilled {
            return ptr::null_mut();
        }
        self.pop(host, class)
    }

    /// Whether the cache can serve (setting a fresh thread cache up first).
    #[inline]
    fn ready<H: Host>(&mut self, host: &H) -> bool {
        match self.mode {
            Mode::Explicit | Mode::ThreadActive => true,
            Mode::ThreadFresh => {
                host.activate(self);
                !matches!(self.mode, Mode::ThreadFresh | Mode::Exited)
            }
            Mode::Exited => false,
        }
    }

    /// Fills the empty stack of `class` with free objects: from the current
    /// span, its remote frees, the cache's other spans, or the mcentral.
    /// Returns false when the heap is out of memory.
    fn refill(&mut self, heap: &Heap, class: usize) -> bool {
        debug_assert!(self.bins[class].is_empty());
        let want = refill_objects(class);
        let base = self.bin_base(class);
        let sp = &mut self.spans[class];
        sp.busy = true;
        loop {
            // SAFETY: the current span is live and ours.
            if let Some(span) = unsafe { self.spans[class].current.as_ref() } {
                // SAFETY: the stack is empty: `want` slots from its base.
                let n = unsafe { span.carve(want, base) };
                if n > 0 {
                    self.bins[class].top = base.wrapping_add(n);
                    return true;
                }
                if merge(span) > 0 {
                    continue;
                }
                // Used up: every object is allocated (the stack is empty).
                self.spans[class].current = ptr::null_mut();
                self.park_full(heap, class, span);
            }
            let sp = &mut self.spans[class];
            // SAFETY: listed spans are live and ours.
            if let Some(span) = unsafe { sp.partial.as_ref() } {
                span.unlink(&mut sp.partial);
                sp.npartial -= 1;
                sp.current = span as *const Span as *mut Span;
                merge(span);
                continue;
            }
            let tag = self.bins[class].tag;
            let span = heap.shared().central[class].cache_span(&heap.shared().mheap, class, tag);
            if span.is_null() {
                return false;
            }
            // SAFETY: a live span, ours now.
            self.owned_pages += unsafe { (*span).npages };
            self.spans[class].current = span;
        }
    }

    /// Puts a used-up span on the list of full spans; hands the list to the
    /// mcentral once it holds a batch. The class's stack is empty.
    fn park_full(&mut self, heap: &Heap, class: usize, span: &Span) {
        let sp = &mut self.spans[class];
        span.link_front(&mut sp.full, ListId::CacheFull);
        sp.nfull += 1;
        if self.holds_too_much(class) && !self.keep_spans {
            self.give_back_full(heap, class);
        }
    }

    /// Whether the cache holds more spans of `class` than the class's
    /// budget, or more pages of spans in all than `OWNED_PAGES_SOFT`: then
    /// used-up and wholly free spans go back to the mcentral.
    fn holds_too_much(&self, class: usize) -> bool {
        let sp = &self.spans[class];
        sp.nfull + sp.npartial > hold_budget(class) || self.owned_pages > OWNED_PAGES_SOFT
    }

    /// Hands the full spans of `class` to the mcentral (its stack holds
    /// none of their objects).
    fn give_back_full(&mut self, heap: &Heap, class: usize) {
        let sp = &mut self.spans[class];
        let first = core::mem::replace(&mut sp.full, ptr::null_mut());
        sp.nfull = 0;
        self.owned_pages -= count_pages(first);
        heap.shared().central[class].uncache_list(&heap.shared().mheap, first, self.bins[class].tag);
    }

    /// A large object: the most recent one of its page count from the
    /// large-object cache, or one from the mheap.
    fn alloc_large<H: Host>(&mut self, host: &H, size: usize, align: usize, zero: bool) -> *mut u8 {
        if self.large.len() > 0
            && let Some(addr) = self.large.take(size.max(1).div_ceil(PAGE_SIZE), align, size)
        {
            host.stats().large_hits.bump(1);
            self.maybe_trim(host, 0);
            self.publish(host.stats());
            if zero {
                // SAFETY: the object holds at least `size` writable bytes.
                unsafe { ptr::write_bytes(addr as *mut u8, 0, size) };
            }
            return addr as *mut u8;
        }
        host.heap().alloc_large(size, align, zero)
    }

    // -----------------------------------------------------------------------
    // Slow paths: free.

    /// The free of `addr` when the fast path could not take it: a full
    /// stack, a span the cache does not own, or a pointer that is wrong.
    #[cold]
    #[inline(never)]
    fn dealloc_slow<H: Host>(&mut self, host: &H, class: usize, addr: usize) {
        if !self.ready(host) {
            let info = CLASSES[class];
            return host.fallback_dealloc(addr, info.size as usize, info.align as usize);
        }
        let heap = host.heap();
        // What the page tag says (no span record yet): a small span of the
        // class, and the object allocated (its start, not freed).
        if !arena::small_object_in_arena(addr) {
            bad_small_free(heap, addr, class);
        }
        // SAFETY: in an arena.
        let meta = unsafe { arena::meta_unchecked(addr) };
        let tag = meta.tag_at(addr);
        if arena::tag_class(tag) != class {
            bad_small_free(heap, addr, class);
        }
        let (alloc, bit) = meta.alloc_bit(addr);
        if alloc.load(Ordering::Acquire) & bit == 0 {
            not_allocated(heap, addr, class);
        }
        let (remote, _) = meta.remote_bit(addr);
        let mine = self.bins[class].tag;
        if tag == mine {
            return self.free_mine(host, class, addr, alloc, remote, bit);
        }
        if meta.heap_id != heap.shared().mheap.id.load(Ordering::Relaxed) {
            report::wrong_heap(addr);
        }
        if host.sampled_free(addr, tag) {
            host.stats().classes[class].frees.bump(1);
            return;
        }
        // SAFETY: the page's tag names a live small span, so its entry does.
        let span = unsafe { &*meta.span_at(addr) };
        if tag == central_tag(mine) && self.adopt(heap, class, span) {
            return self.free_mine(host, class, addr, alloc, remote, bit);
        }
        if span.free_remote(addr, alloc, remote, bit) {
            heap.shared().central[class].notify(&heap.shared().mheap, span);
            heap.note_central_free();
        }
        host.stats().classes[class].frees.bump(1);
        self.count_slow_free(host);
    }

    /// Frees an allocated object of a span this cache owns onto the stack
    /// of `class`, flushing half of a full stack first; a double free if
    /// another thread freed it already.
    fn free_mine<H: Host>(
        &mut self,
        host: &H,
        class: usize,
        addr: usize,
        alloc: &AtomicU64,
        remote: &AtomicU64,
        bit: u64,
    ) {
        if remote.load(Ordering::Relaxed) & bit != 0 {
            report::double_free(addr, CLASSES[class].size as usize);
        }
        alloc.store(alloc.load(Ordering::Relaxed) & !bit, Ordering::Relaxed);
        if self.bins[class].is_full() {
            self.flush_bin(host.heap(), class);
        }
        let b = &mut self.bins[class];
        // SAFETY: the stack is not full.
        unsafe {
            b.top.write(addr);
            b.top = b.top.add(1);
        }
        host.stats().classes[class].frees.bump(1);
        self.count_slow_free(host);
    }

    /// Takes back a span of `class` this cache gave to the mcentral.
    fn adopt(&mut self, heap: &Heap, class: usize, span: &Span) -> bool {
        if !heap.shared().central[class].adopt(&heap.shared().mheap, span, self.bins[class].tag) {
            return false;
        }
        self.owned_pages += span.npages;
        let sp = &mut self.spans[class];
        if span.nfree() > 0 {
            span.link_front(&mut sp.partial, ListId::CachePartial);
            sp.npartial += 1;
        } else {
            span.link_front(&mut sp.full, ListId::CacheFull);
            sp.nfull += 1;
        }
        true
    }

    /// Moves the older half of the full stack of `class` back into its
    /// spans. Spans that become wholly free go back to the mcentral.
    fn flush_bin(&mut self, heap: &Heap, class: usize) {
        let len = self.bin_len(class);
        self.return_objects(heap, class, len.div_ceil(2));
    }

    /// Returns the `n` oldest objects of the stack of `class` to their spans.
    /// Stacked objects come in runs of one span (they were freed, or carved,
    /// together), so each span's lists are settled once per run.
    fn return_objects(&mut self, heap: &Heap, class: usize, n: usize) {
        self.spans[class].busy = true;
        let base = self.bin_base(class);
        let len = self.bin_len(class);
        let mut empty: *mut Span = ptr::null_mut();
        let mut run: *const Span = ptr::null();
        for i in 0..n {
            // SAFETY: i < len: a pushed object, in an arena span this cache
            // owns (the free that pushed it checked that).
            let addr = unsafe { base.add(i).read() };
            let meta = unsafe { arena::meta_unchecked(addr) };
            let span = meta.span_at(addr);
            if !ptr::eq(span, run) {
                self.settle(class, run, &mut empty);
                run = span;
            }
            // SAFETY: as above, the span is live and ours.
            let span = unsafe { &*span };
            // The free that pushed it checked it is an object's start.
            let idx = (((addr - span.base) as u64 * span.div_magic as u64) >> 32) as usize;
            if !span.free_object(idx) {
                report::double_free(addr, span.elem_size as usize);
            }
        }
        self.settle(class, run, &mut empty);
        // SAFETY: n <= len; the rest of the stack moves down.
        unsafe {
            ptr::copy(base.add(n), base, len - n);
            self.bins[class].top = base.add(len - n);
        }
        if !empty.is_null() {
            // The spans whose last objects came back to them in this flush,
            // now wholly free.
            self.owned_pages -= count_pages(empty);
            let sh = heap.shared();
            sh.central[class].uncache_list(&sh.mheap, empty, self.bins[class].tag);
        }
    }

    /// After objects came back to `span` (null: none): a used-up span has
    /// free objects again; a wholly free one other than the current span
    /// goes on `empty`, to be given back, if the cache holds too much
    /// (`holds_too_much`).
    fn settle(&mut self, class: usize, span: *const Span, empty: &mut *mut Span) {
        // SAFETY: a span the cache owns.
        let Some(span) = (unsafe { span.as_ref() }) else {
            return;
        };
        let over = self.holds_too_much(class);
        let sp = &mut self.spans[class];
        match span.with_owned(|o, _| o.list) {
            ListId::CacheFull => {
                span.unlink(&mut sp.full);
                sp.nfull -= 1;
                if over && span.all_free() {
                    span.link_front(empty, ListId::None);
                } else {
                    span.link_front(&mut sp.partial, ListId::CachePartial);
                    sp.npartial += 1;
                }
            }
            ListId::CachePartial if over && span.all_free() => {
                span.unlink(&mut sp.partial);
                sp.npartial -= 1;
                span.link_front(empty, ListId::None);
            }
            _ => {}
        }
    }

    /// A busy class holds more spans with free objects than its budget:
    /// spans it took back from the mcentral as it freed objects of a peak,
    /// which still hold other threads' unmerged frees and so never look
    /// wholly free to it. Its stack goes back into its spans, and the
    /// spans beyond the budget go to the mcentral, which merges their
    /// remote frees, lends them to any cache and gives the empty ones to
    /// the mheap.
    fn shed_partial(&mut self, heap: &Heap, class: usize) {
        let len = self.bin_len(class);
        if len > 0 {
            self.return_objects(heap, class, len);
        }
        let keep = hold_budget(class);
        let sp = &mut self.spans[class];
        let mut at = sp.partial;
        for _ in 0..keep {
            // SAFETY: listed spans are live and ours.
            match unsafe { at.as_ref() } {
                Some(span) => at = span.with_owned(|o, _| o.next),
                None => return,
            }
        }
        let mut excess: *mut Span = ptr::null_mut();
        // SAFETY: as above.
        while let Some(span) = unsafe { at.as_ref() } {
            at = span.with_owned(|o, _| o.next);
            span.unlink(&mut sp.partial);
            sp.npartial -= 1;
            span.link_front(&mut excess, ListId::None);
        }
        self.owned_pages -= count_pages(excess);
        heap.shared().central[class].uncache_list(&heap.shared().mheap, excess, self.bins[class].tag);
    }

    /// Empties the stack of `class` into its spans and gives every span of
    /// the class back to the mcentral.
    fn give_back_class(&mut self, heap: &Heap, class: usize) {
        let len = self.bin_len(class);
        // Mutant: the spans go back with the stack's objects still in it.
        if len > 0 && cfg!(not(spanalloc_mutant = "handoff_keeps_stack")) {
            self.return_objects(heap, class, len);
        }
        let sp = &mut self.spans[class];
        let mut all = core::mem::replace(&mut sp.full, ptr::null_mut());
        sp.nfull = 0;
        // SAFETY: the current span and listed spans are live and ours.
        if let Some(cur) = unsafe { sp.current.as_ref() } {
            cur.link_front(&mut all, ListId::None);
            sp.current = ptr::null_mut();
        }
        while let Some(span) = unsafe { sp.partial.as_ref() } {
            span.unlink(&mut sp.partial);
            span.link_front(&mut all, ListId::None);
        }
        sp.npartial = 0;
        self.owned_pages -= count_pages(all);
        heap.shared().central[class].uncache_list(&heap.shared().mheap, all, self.bins[class].tag);
        self.spans[class].busy = false;
    }

    /// Frees a large object into the large-object cache, or to the mheap if
    /// it is too big to keep.
    fn free_large<H: Host>(&mut self, host: &H, addr: usize) {
        let (_, span) = host.heap().shared().mheap.large_span_of(addr);
        if span.sampled {
            // A profile sample: its record goes, and it is not kept.
            span.sampled = false;
            profile::unrecord(addr);
            return host.heap().free_large(addr);
        }
        match self.mode {
            Mode::Explicit | Mode::ThreadActive => {}
            // Kept objects need the exit flush.
            Mode::ThreadFresh => {
                if !self.ready(host) {
                    return host.fallback_dealloc(addr, MAX_SMALL + 1, 8);
                }
            }
            Mode::Exited => return host.heap().free_large(addr),
        }
        let heap = host.heap();
        if !self.large.put(heap, span) {
            return heap.free_large(addr);
        }
        self.maybe_trim(host, 0);
        self.publish(host.stats());
    }

    // -----------------------------------------------------------------------
    // Trimming.

    /// Counts a slow-path free; every so many, looks at the clock for a
    /// trim, so a thread that frees much and allocates little still trims.
    #[inline]
    fn count_slow_free<H: Host>(&mut self, host: &H) {
        self.slow_frees += 1;
        if self.slow_frees >= 16 {
            self.slow_frees = 0;
            self.maybe_trim(host, 0);
            self.publish(host.stats());
        }
    }

    /// Runs [`CacheCore::trim`] and the heap's scavenger tick when due (it
    /// reads the clock every 16th call).
    fn maybe_trim<H: Host>(&mut self, host: &H, keep: usize) {
        self.clock_skip = self.clock_skip.wrapping_add(1);
        if self.clock_skip % 16 != 1 {
            return;
        }
        let now = os::now_ms();
        if now >= self.next_trim {
            self.next_trim = now + TICK_MS;
            self.trim(host.heap(), keep);
        }
        host.heap().maybe_tick(now);
    }

    /// Gives back, at most once per scavenger tick, what the cache holds
    /// for nothing: every class but `keep` that neither refilled nor
    /// flushed since the last trim empties its stack into its spans and
    /// gives them all back; busy classes give back their used-up spans when
    /// their stack is empty, and the spans beyond their budget. So a thread
    /// that freed a peak lets the heap return it to the OS, while a busy
    /// thread keeps what it uses.
    #[cold]
    fn trim(&mut self, heap: &Heap, keep: usize) {
        self.large.trim(heap);
        if self.slots.is_null() || self.keep_spans {
            return;
        }
        for class in 1..NUM_CLASSES {
            let sp = self.spans[class];
            if sp.current.is_null() && sp.partial.is_null() && sp.full.is_null() {
                continue;
            }
            if !sp.busy && class != keep {
                self.give_back_class(heap, class);
            } else {
                if sp.npartial > hold_budget(class) && class != keep {
                    self.shed_partial(heap, class);
                }
                self.spans[class].busy = false;
                if self.spans[class].nfull > 0 && self.bins[class].is_empty() {
                    self.give_back_full(heap, class);
                }
            }
        }
    }
}

/// A class's countdown has run out: whether this allocation is a sample,
/// and the countdown for the next (see `CacheCore::alloc_counted`).
/// `armed` is the rate the run-out countdown was drawn with.
fn countdown(sampler: &mut Sampler, armed: u64, rate: u64, size: u64) -> (bool, i64) {
    if rate == 0 {
        return (false, PARKED_OBJECTS);
    }
    let k = (sampler.draw_gap(rate) / size) as i64;
    if armed != 0 && armed == rate {
        return (true, k);
    }
    // The process starts with this allocation: it is the sample if the
    // first gap leaves no allocation unsampled.
    if k == 0 { (true, (sampler.draw_gap(rate) / size) as i64) } else { (false, k - 1) }
}

/// Pages of the spans on the list from `first` (through `Owned::next`).
fn count_pages(first: *mut Span) -> usize {
    let mut n = 0;
    let mut at = first;
    // SAFETY: listed spans are live.
    while let Some(span) = unsafe { at.as_ref() } {
        n += span.npages;
        at = span.with_owned(|o, _| o.next);
    }
    n
}

/// Merges the remote frees of a span the cache owns.
fn merge(span: &Span) -> u32 {
    // SAFETY: small spans are in arenas.
    let meta = unsafe { arena::meta_unchecked(span.base) };
    let (alloc, remote) = meta.span_words(span.base, span.npages);
    span.collect(alloc, remote, false)
}

/// The span of a small object at `addr` of `class` (and its arena), or a
/// fatal report saying what is wrong with the pointer.
#[inline]
fn small_span_of(heap: &Heap, addr: usize, class: usize) -> (&'static ArenaMeta, &'static Span) {
    if arena::small_object_in_arena(addr) {
        // SAFETY: in an arena.
        let meta = unsafe { arena::meta_unchecked(addr) };
        // SAFETY: a non-null page entry points at a live record.
        if let Some(span) = unsafe { meta.span_at(addr).as_ref() }
            && span.kind == SpanKind::Small
            && span.class as usize == class
            && meta.heap_id == heap.shared().mheap.id.load(Ordering::Relaxed)
        {
            return (meta, span);
        }
    }
    bad_small_free(heap, addr, class)
}

/// Says what is wrong with a pointer freed as a small object of `class`.
#[cold]
#[inline(never)]
fn bad_small_free(heap: &Heap, addr: usize, class: usize) -> ! {
    let Some((meta, span)) = arena::span_of(addr) else {
        report::invalid_free(addr);
    };
    if meta.heap_id != heap.shared().mheap.id.load(Ordering::Relaxed) {
        report::wrong_heap(addr);
    }
    // SAFETY: a non-null page entry points at a live record.
    let Some(span) = (unsafe { span.as_ref() }) else {
        report::invalid_free(addr);
    };
    if span.kind == SpanKind::Small && span.class as usize == class {
        // In a small span of the class, but off the 8-byte granule.
        report::interior_free(addr, span.elem_size as usize);
    }
    let actual = if span.kind == SpanKind::Small { span.elem_size as usize } else { span.npages * PAGE_SIZE };
    report::layout_mismatch(addr, CLASSES[class].size as usize, actual)
}

/// The bytes the object at `addr` can hold (`malloc_usable_size`): its
/// class's size, or a large object's whole pages. Reads only metadata;
/// aborts if `addr` is not an object spanalloc handed out.
pub(crate) fn usable_size(addr: usize) -> usize {
    if arena::small_object_in_arena(addr) {
        // SAFETY: in an arena.
        let class = arena::tag_class(unsafe { arena::meta_unchecked(addr) }.tag_at(addr));
        if class != 0 {
            return CLASSES[class].size as usize;
        }
    }
    match arena::span_of(addr) {
        // SAFETY: a non-null page entry points at a live record.
        Some((_, span)) => match unsafe { span.as_ref() } {
            Some(s) if s.kind == SpanKind::Large && s.base == addr => s.npages * PAGE_SIZE,
            _ => report::invalid_free(addr),
        },
        None => report::invalid_free(addr),
    }
}

/// Reports the free of an address in a small span of `class` whose alloc
/// bit is clear: not an object's start, or an object already free.
#[cold]
#[inline(never)]
fn not_allocated(heap: &Heap, addr: usize, class: usize) -> ! {
    let (_, span) = small_span_of(heap, addr, class);
    if span.object_index(addr).is_none() {
        report::interior_free(addr, span.elem_size as usize);
    }
    report::double_free(addr, span.elem_size as usize)
}

/// Aborts unless `addr` is a live (allocated, not freed) object of `class`
/// (`realloc` in place).
fn check_live(heap: &Heap, class: usize, addr: usize) {
    let (meta, span) = small_span_of(heap, addr, class);
    if span.object_index(addr).is_none() {
        report::interior_free(addr, span.elem_size as usize);
    }
    let (alloc, bit) = meta.alloc_bit(addr);
    let (remote, _) = meta.remote_bit(addr);
    if alloc.load(Ordering::Acquire) & bit == 0 || remote.load(Ordering::Acquire) & bit != 0 {
        report::double_free(addr, span.elem_size as usize);
    }
}

/// The caches' slot arrays: mapped once, reused by later caches.
mod slot_arrays {
    use super::SLOT_BYTES;
    use crate::os;

    #[cfg(not(loom))]
    mod pool {
        use crate::sync::unmodelled::SpinLock;

        pub(super) static LOCK: SpinLock = SpinLock::new();
        /// Given-back arrays, linked through their first word (under LOCK).
        pub(super) static mut FREE: *mut usize = core::ptr::null_mut();
    }

    /// A slot array (zero or stale contents: stacks start empty).
    pub(super) fn take() -> Option<*mut usize> {
        #[cfg(not(loom))]
        {
            pool::LOCK.lock();
            // SAFETY: FREE is only touched under LOCK; listed arrays are ours.
            let got = unsafe {
                let head = *core::ptr::addr_of!(pool::FREE);
                if !head.is_null() {
                    *core::ptr::addr_of_mut!(pool::FREE) = head.read() as *mut usize;
                }
                head
            };
            // SAFETY: taken above.
            unsafe { pool::LOCK.unlock() };
            if !got.is_null() {
                return Some(got);
            }
        }
        os::map(SLOT_BYTES).map(|p| p.cast())
    }

    /// Gives a slot array back for the next cache.
    pub(super) fn give(slots: *mut usize) {
        #[cfg(not(loom))]
        {
            pool::LOCK.lock();
            // SAFETY: under LOCK; the array is ours and unused.
            unsafe {
                slots.write(*core::ptr::addr_of!(pool::FREE) as usize);
                *core::ptr::addr_of_mut!(pool::FREE) = slots;
                pool::LOCK.unlock();
            }
        }
        #[cfg(loom)]
        os::unmap(slots.cast(), SLOT_BYTES);
    }

    /// The pool's lock, for `fork`.
    #[cfg(not(loom))]
    pub(crate) fn lock_for_fork() -> &'static crate::sync::unmodelled::SpinLock {
        &pool::LOCK
    }
}

#[cfg(not(loom))]
pub(crate) use slot_arrays::lock_for_fork as slot_lock_for_fork;

#[cfg(all(test, not(loom)))]
mod tests {
    use core::alloc::Layout;

    use super::*;

    /// Runs `n` allocations of `size` bytes through the countdown at
    /// `rate`, as the fast path does; returns how many were samples.
    fn samples(n: u64, size: u64, rate: u64) -> u64 {
        let mut sampler = Sampler::with_seed(12345);
        let (mut left, mut armed, mut hits) = (0i64, 0u64, 0u64);
        for _ in 0..n {
            left -= 1;
            if left < 0 {
                let (hit, next) = countdown(&mut sampler, armed, rate, size);
                armed = rate;
                left = next;
                hits += hit as u64;
            }
        }
        hits
    }

    #[test]
    fn each_allocation_is_a_sample_with_probability_one_minus_e_to_the_minus_size_over_rate() {
        for (size, rate) in [(16u64, 64u64 << 10), (1152, 64 << 10), (8192, 16 << 10), (256, 512 << 10)] {
            let n = 4_000_000;
            let p = 1.0 - (-(size as f64) / rate as f64).exp();
            let want = n as f64 * p;
            let got = samples(n, size, rate) as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((got - want).abs() < 5.0 * sd, "size {size} at rate {rate}: {got} samples, {want:.0} expected");
        }
        assert_eq!(samples(1000, 64, 1), 1000, "rate 1 samples everything");
        assert_eq!(samples(1000, 64, 0), 0, "rate 0 samples nothing");
    }

    #[test]
    fn a_cache_that_freed_a_peak_of_many_classes_keeps_no_more_than_its_page_limit() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        let classes: Vec<usize> = (1..NUM_CLASSES).filter(|&c| CLASSES[c].size >= 4096).collect();
        let span_bytes = |c: usize| CLASSES[c].pages as usize * PAGE_SIZE;
        // What may stay besides the limit: per class its current span and
        // the spans of the objects its stack holds.
        let slack: usize = classes.iter().map(|&c| span_bytes(c) * (1 + stack_cap(c))).sum();
        let budgets: usize = classes.iter().map(|&c| span_bytes(c) * hold_budget(c)).sum();
        assert!(budgets > OWNED_PAGES_SOFT * PAGE_SIZE + slack, "the classes' budgets alone stay under the limit");
        let mut live = Vec::new();
        for &c in &classes {
            let l = Layout::from_size_align(CLASSES[c].size as usize, 8).unwrap();
            for _ in 0..(2 << 20) / CLASSES[c].size as usize {
                let p = cache.alloc(l);
                assert!(!p.is_null());
                live.push((p, l));
            }
        }
        // Freed class by class, most recent first.
        for (p, l) in live.into_iter().rev() {
            unsafe { cache.dealloc(p, l) };
        }
        let owned = cache.core.owned_pages * PAGE_SIZE;
        assert!(
            owned <= OWNED_PAGES_SOFT * PAGE_SIZE + slack,
            "the cache still owns {owned} bytes of spans (limit {} + {slack})",
            OWNED_PAGES_SOFT * PAGE_SIZE
        );
    }
}

/// Under loom there is no heap profile (its table is a static the model
/// cannot make): a countdown that never runs out.
#[cfg(loom)]
mod profile {
    pub(crate) struct Sampler;
    pub(crate) struct Sample {
        pub(crate) size: u64,
        pub(crate) weight: f64,
    }

    impl Sampler {
        pub(crate) const fn new() -> Self {
            Sampler
        }

        #[inline(always)]
        pub(crate) fn charge(&mut self, _size: usize) -> bool {
            false
        }

        pub(crate) fn sampled(&mut self, _size: usize) -> Option<Sample> {
            None
        }

        pub(crate) fn refresh(&mut self) {}

        pub(crate) fn draw_gap(&mut self, _rate: u64) -> u64 {
            0
        }
    }

    pub(crate) fn rate() -> u64 {
        0
    }

    pub(crate) fn in_profiler() -> bool {
        false
    }

    pub(crate) fn weight(_: u64, _: u64) -> f64 {
        1.0
    }

    pub(crate) fn record(_: Sample, _: usize, _: usize, _: Option<()>) {}

    pub(crate) fn unrecord(_: usize) -> bool {
        false
    }
}
#[cfg(loom)]
use profile::{Sample, Sampler};

// ---------------------------------------------------------------------------
// The explicit cache.

/// The host of an explicit cache: its heap and counters.
struct Explicit<'a> {
    heap: &'a Heap,
    stats: &'a CacheStats,
}

impl Host for Explicit<'_> {
    #[inline(always)]
    fn heap(&self) -> &Heap {
        self.heap
    }

    #[inline(always)]
    fn stats(&self) -> &CacheStats {
        self.stats
    }

    fn activate(&self, _core: &mut CacheCore) {}

    fn fallback_alloc(&self, _size: usize, _align: usize, _zero: bool) -> *mut u8 {
        ptr::null_mut()
    }

    fn fallback_dealloc(&self, addr: usize, _size: usize, _align: usize) {
        report::invalid_free(addr);
    }

    fn sampled_alloc(&self, _: Sample, _: usize, _: usize, _: bool) -> Option<*mut u8> {
        None
    }

    fn sampled_free(&self, _: usize, _: u32) -> bool {
        false
    }
}

/// A cache of free objects and spans bound to one [`Heap`]: the
/// allocation API for a thread, a worker of a runtime, or a test that
/// holds its cache explicitly.
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
/// Dropping the cache gives its objects and spans back to the heap.
/// Objects may be freed through any cache of the same heap, on any thread.
pub struct MCache<'h> {
    core: CacheCore,
    stats: CacheStats,
    heap: &'h Heap,
}

// SAFETY: the cache owns its spans; moving it moves that ownership.
unsafe impl Send for MCache<'_> {}

impl<'h> MCache<'h> {
    /// A new, empty cache for `heap`.
    ///
    /// Aborts with a report if the process has no cache index left (more
    /// than 16 million caches alive) or the kernel refuses the cache's few
    /// kilobytes of slots.
    pub fn new(heap: &'h Heap) -> Self {
        let mut core = CacheCore::new(Mode::Explicit);
        if !core.attach() {
            report::fatal_resource("a cache (no cache index or slot memory left)");
        }
        MCache { core, stats: CacheStats::new(), heap }
    }

    /// Allocates memory for `layout`; null when out of memory.
    #[inline]
    pub fn alloc(&mut self, layout: Layout) -> *mut u8 {
        let host = Explicit { heap: self.heap, stats: &self.stats };
        self.core.alloc(&host, layout.size(), layout.align())
    }

    /// Allocates zeroed memory for `layout`; null when out of memory.
    pub fn alloc_zeroed(&mut self, layout: Layout) -> *mut u8 {
        let host = Explicit { heap: self.heap, stats: &self.stats };
        self.core.alloc_zeroed(&host, layout.size(), layout.align())
    }

    /// Frees `ptr`.
    ///
    /// # Safety
    /// `ptr` must have been allocated from this cache's heap with `layout`
    /// and not freed since.
    #[inline]
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout) {
        let host = Explicit { heap: self.heap, stats: &self.stats };
        // SAFETY: forwarded from the caller.
        unsafe { self.core.dealloc(&host, ptr, layout.size(), layout.align()) }
    }

    /// Resizes `ptr` to `new_size` bytes, as `GlobalAlloc::realloc`.
    ///
    /// # Safety
    /// As for `GlobalAlloc::realloc`, with this cache's heap.
    pub unsafe fn realloc(&mut self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let host = Explicit { heap: self.heap, stats: &self.stats };
        // SAFETY: forwarded from the caller.
        unsafe { self.core.realloc(&host, ptr, layout.size(), layout.align(), new_size) }
    }

    /// Gives every cached object and span back to the heap now.
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
        self.core.detach();
        self.heap.absorb_stats(&self.stats);
    }
}

impl Heap {
    /// A new cache for this heap (see [`MCache`]).
    pub fn cache(&self) -> MCache<'_> {
        MCache::new(self)
    }
}
