//! mheap: pages from the OS, spans to the mcentrals and to large objects.
//!
//! The mheap owns every page that is not in a span. It reserves arenas from
//! the kernel (64 MiB, grown into in 4 MiB steps, see [`crate::arena`]),
//! finds runs of free pages first-fit by address in each arena's free
//! bitmap (freeing a run coalesces it with its neighbours for free: the
//! bitmap has no run boundaries), and keeps the span records in a pool of
//! its own metadata (Go's `fixalloc`), never in the heap it manages.
//!
//! Who calls it: an mcentral that needs a fresh span ([`MHeap::alloc_span`])
//! or gives an empty one back ([`MHeap::free_span`]); the mcache's large
//! path for objects over 32 KiB, which get a span of their own; and the
//! scavenger. Objects too big for an arena get a huge reservation of their
//! own, unmapped as soon as they are freed.
//!
//! # The scavenger
//!
//! Free pages hold dirty memory until they are given back with
//! `MADV_DONTNEED` ([`MHeap::scavenge`]). A page is given back once it has
//! stayed free for the decay ([`decay_ms`], 500 ms unless the program sets
//! it): scavenger ticks come a third of the decay apart and a page must
//! stay free across three of them (the age planes in [`crate::arena`]), so
//! a program that frees and reallocates within the decay never pays for a
//! page fault. The ticks run on the background releaser of the global heap
//! (`scavenger`), or, for other heaps and when it is off, from the
//! allocator's slow paths; `spanalloc::release()` gives back everything at
//! once. Given-back pages are "clean": they read as zero, so `alloc_zeroed`
//! skips the memset for them (Go's `needzero`). Metadata pages that
//! describe only released pages, and span-record chunks with no record in
//! use, go back too.
//!
//! The `madvise` calls never run under the heap lock. A release goes in
//! batches of a few MiB: under the lock it takes the pages out of the free
//! set (Go's scavenger does the same), without it it calls the kernel, and
//! under the lock again it puts the pages back, clean where the kernel said
//! yes. An allocation meanwhile finds other pages (or grows the heap), and
//! never waits for the kernel. The release lock keeps one batch out at a
//! time, so `release()` finds everything back when it returns and `fork`
//! (which takes it first) never leaves a batch out in the child.
//!
//! Everything else here runs under the one mheap lock. Callers that also
//! hold an mcentral lock take it first (lock order: release lock, mcentral,
//! mheap).

use core::ptr;

use crate::arena::{self, AGE_TICKS, ArenaMeta, DataBatch, END_PAGE, FIRST_PAGE, MetaBatch, PageState, TAG_LARGE};
use crate::fixalloc::SpanPool;
use crate::mspan::{LARGE_LIVE, LARGE_RETURNED, Span, SpanKind, bucket_for};
use crate::os;
use crate::sizeclass::{CLASSES, PAGE_SIZE};
use crate::sync::unmodelled::{AtomicU32, AtomicU64, Counter, Ordering};
use crate::sync::{Mutex, const_fn_unless_loom};

/// Milliseconds between the caches' trims (see `mcache`); the scavenger's
/// own ticks follow the decay ([`tick_period_ms`]).
pub(crate) const TICK_MS: u64 = 250;

/// The decay unless the program sets another: free pages go back to the
/// OS after about this long.
pub(crate) const DEFAULT_DECAY_MS: u64 = 500;
/// The shortest decay: ticks at least a millisecond apart.
const MIN_DECAY_MS: u64 = AGE_TICKS;
static DECAY_MS: AtomicU64 = AtomicU64::new(DEFAULT_DECAY_MS);

/// How long a free page stays dirty before the scavenger releases it.
pub(crate) fn decay_ms() -> u64 {
    DECAY_MS.load(Ordering::Relaxed)
}

/// Sets the decay (process-wide, every heap), at least a few milliseconds.
pub(crate) fn set_decay_ms(ms: u64) {
    DECAY_MS.store(ms.max(MIN_DECAY_MS), Ordering::Relaxed);
}

/// Milliseconds between scavenger ticks: a page is released after
/// [`AGE_TICKS`] of them.
pub(crate) fn tick_period_ms() -> u64 {
    decay_ms() / AGE_TICKS
}

/// Release batches an allocation's slow path runs at most per tick (when
/// no background releaser does it): about 16 MiB, a millisecond or two.
pub(crate) const INLINE_BATCHES: usize = 4;

/// Who released memory (for the statistics).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Releaser {
    /// The background releaser of the global heap.
    Background,
    /// `release()`, or a tick on an allocation's slow path.
    Other,
}

/// Objects larger than this get a huge reservation of their own (and give
/// it back at once when freed). Below it they come from arenas, whose free
/// pages stay mapped for the decay: a program that frees and allocates
/// buffers of tens of MiB in turn then reuses pages instead of faulting in
/// fresh ones for each buffer (about 8× faster on mimalloc-bench's
/// malloc-large than with a 16 MiB threshold). Half an arena at most.
pub(crate) const HUGE_THRESHOLD: usize = 32 << 20;
/// Large objects aligned beyond this get a huge reservation of their own.
const HUGE_ALIGN: usize = 8 << 20;

/// The heap's page allocator and span pool.
pub(crate) struct MHeap {
    state: Mutex<HeapState>,
    /// One release batch out at a time; taken before the heap lock (and
    /// before any mcentral lock), never by an allocation that would wait.
    release_lock: Mutex<()>,
    /// This heap's id (0 until its first arena), compared with
    /// `ArenaMeta::heap_id` to tell our pointers from another heap's.
    pub(crate) id: AtomicU64,
    /// When the last scavenger tick ran (`os::now_ms`).
    last_tick: AtomicU64,
    /// The futex word the background releaser sleeps on (`SLEEP_*`).
    pub(crate) sleep: AtomicU32,
    /// Counters readable without the lock.
    pub(crate) counters: HeapCounters,
}

/// Statistics the mheap keeps as it goes.
#[derive(Debug)]
pub(crate) struct HeapCounters {
    pub(crate) large_allocs: Counter,
    pub(crate) large_frees: Counter,
    /// Bytes in live large objects (whole pages).
    pub(crate) large_bytes: Counter,
    /// Pages in small spans.
    pub(crate) small_pages: Counter,
    /// Pages the arenas have grown into, plus huge reservations.
    pub(crate) sys_pages: Counter,
    /// Free pages in arenas.
    pub(crate) free_pages: Counter,
    /// Free pages that are not resident.
    pub(crate) released_pages: Counter,
    /// Bytes of span records and arena metadata.
    pub(crate) meta_bytes: Counter,
    /// Pages the scavenger released, ever; of them by the background
    /// releaser.
    pub(crate) released_total: Counter,
    pub(crate) released_background: Counter,
    /// Bytes of metadata (tables, span records) released, ever.
    pub(crate) meta_released: Counter,
    /// Release batches done, and `madvise` calls the kernel refused.
    pub(crate) release_batches: Counter,
    pub(crate) release_failures: Counter,
    /// When the last batch released something (`os::now_ms`), 0: never.
    pub(crate) last_release_ms: Counter,
}

/// Ids for heaps; the global heap takes the first.
static NEXT_HEAP_ID: AtomicU64 = AtomicU64::new(1);

struct HeapState {
    /// Arenas in the order they were reserved (first-fit scans them so).
    arenas: *mut ArenaMeta,
    last: *mut ArenaMeta,
    /// Live huge reservations (listed for `Drop`).
    huge: *mut ArenaMeta,
    pool: SpanPool,
    /// Counts runs given back to the free set (the background releaser
    /// sleeps only if none came since it last looked).
    put_seq: u64,
}

// SAFETY: the raw pointers are to metadata this heap owns; the state is
// only reached through the heap's lock.
unsafe impl Send for HeapState {}

/// Where a run of pages was found.
struct Run {
    meta: *mut ArenaMeta,
    page: usize,
    /// How many of its pages were clean.
    clean: usize,
}

/// What `PageState::take` reports: clean pages taken, clean neighbours
/// made resident.
type Taken = (usize, usize);

impl HeapState {
    /// Takes a run of `n` free pages aligned to `align` pages, growing the
    /// heap if needed.
    fn take_pages(&mut self, id: u64, n: usize, align: usize, counters: &HeapCounters) -> Option<Run> {
        let mut meta = self.arenas;
        while !meta.is_null() {
            // SAFETY: listed arenas are live; the heap lock guards `pages`.
            let m = unsafe { &*meta };
            let found = m.pages.with_mut(|p| {
                // SAFETY: under the heap lock.
                let p = unsafe { &mut *p };
                let page = if p.nfree >= n { p.find_run(n, align) } else { None };
                page.map(|page| (page, p.take(page, n)))
            });
            if let Some((page, taken)) = found {
                return Some(self.took(meta, page, n, taken, counters));
            }
            meta = m.pages.with(|p| unsafe { (*p).next });
        }
        // Grow the newest arena, or reserve another.
        loop {
            if !self.last.is_null() {
                // SAFETY: the last arena is live; under the heap lock.
                let m = unsafe { &*self.last };
                let got = m.pages.with_mut(|p| {
                    // SAFETY: under the heap lock.
                    let p = unsafe { &mut *p };
                    // Grow enough for the run to fit after an aligned start.
                    let want = n + align - 1;
                    let added = p.grow(want);
                    let page = if added > 0 { p.find_run(n, align) } else { None };
                    (added, page.map(|page| (page, p.take(page, n))))
                });
                counters.sys_pages.add_shared(got.0 as u64);
                counters.free_pages.add_shared(got.0 as u64);
                counters.released_pages.add_shared(got.0 as u64);
                if let Some((page, taken)) = got.1 {
                    return Some(self.took(self.last, page, n, taken, counters));
                }
            }
            if n + align - 1 > END_PAGE - FIRST_PAGE {
                return None;
            }
            let fresh = ArenaMeta::reserve(id)?;
            counters.meta_bytes.add_shared((arena::FIRST_PAGE * PAGE_SIZE) as u64);
            if self.last.is_null() {
                self.arenas = fresh;
            } else {
                // SAFETY: under the heap lock.
                unsafe { &*self.last }.pages.with_mut(|p| unsafe { (*p).next = fresh });
            }
            self.last = fresh;
        }
    }

    fn took(&mut self, meta: *mut ArenaMeta, page: usize, n: usize, (clean, lost): Taken, c: &HeapCounters) -> Run {
        c.free_pages.sub_shared(n as u64);
        c.released_pages.sub_shared((clean + lost) as u64);
        Run { meta, page, clean }
    }

    /// Gives back pages `[page, page + n)` of `meta`.
    fn put_pages(&mut self, meta: &ArenaMeta, page: usize, n: usize, counters: &HeapCounters) {
        // SAFETY: under the heap lock.
        meta.pages.with_mut(|p| unsafe { (*p).put(page, n) });
        counters.free_pages.add_shared(n as u64);
        self.put_seq += 1;
    }

    /// The first arena for which `f` (on its page state) says yes.
    fn find_arena(&self, mut f: impl FnMut(&mut PageState) -> bool) -> Option<&'static ArenaMeta> {
        let mut meta = self.arenas;
        while !meta.is_null() {
            // SAFETY: listed arenas are live until the heap is dropped;
            // the caller holds the heap lock.
            let m = unsafe { &*meta };
            if m.pages.with_mut(|p| f(unsafe { &mut *p })) {
                return Some(m);
            }
            meta = m.pages.with(|p| unsafe { (*p).next });
        }
        None
    }
}

impl MHeap {
    const_fn_unless_loom! {
        pub(crate) fn new() -> MHeap {
            MHeap {
                state: Mutex::new(HeapState {
                    arenas: ptr::null_mut(),
                    last: ptr::null_mut(),
                    huge: ptr::null_mut(),
                    pool: SpanPool::new(),
                    put_seq: 0,
                }),
                release_lock: Mutex::new(()),
                id: AtomicU64::new(0),
                last_tick: AtomicU64::new(0),
                sleep: AtomicU32::new(SLEEP_AWAKE),
                counters: HeapCounters {
                    large_allocs: Counter::new(),
                    large_frees: Counter::new(),
                    large_bytes: Counter::new(),
                    small_pages: Counter::new(),
                    sys_pages: Counter::new(),
                    free_pages: Counter::new(),
                    released_pages: Counter::new(),
                    meta_bytes: Counter::new(),
                    released_total: Counter::new(),
                    released_background: Counter::new(),
                    meta_released: Counter::new(),
                    release_batches: Counter::new(),
                    release_failures: Counter::new(),
                    last_release_ms: Counter::new(),
                },
            }
        }
    }

    /// This heap's id, assigned on first use.
    fn id(&self) -> u64 {
        let id = self.id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        let fresh = NEXT_HEAP_ID.fetch_add(1, Ordering::Relaxed);
        match self.id.compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => fresh,
            Err(existing) => existing,
        }
    }

    /// A fresh span of `class`, every object free, owned by the mcache whose
    /// tag for the class is `tag` (its pages are tagged so). Null when the
    /// kernel gives no more memory.
    pub(crate) fn alloc_span(&self, class: usize, tag: u32) -> *mut Span {
        let info = CLASSES[class];
        let n = info.pages as usize;
        let bucket = bucket_for(info.nelems.div_ceil(64) as usize);
        let id = self.id();
        let mut st = self.state.lock();
        let Some(span) = st.pool.get(bucket, &self.counters.meta_bytes) else {
            return ptr::null_mut();
        };
        let Some(run) = st.take_pages(id, n, 1, &self.counters) else {
            st.pool.put(span);
            return ptr::null_mut();
        };
        // SAFETY: the run's arena is live; the record is ours alone.
        let meta = unsafe { &*run.meta };
        let base = meta.page_addr(run.page);
        unsafe { (*span).init_small(base, class) };
        meta.set_tags(base, n, tag);
        meta.set_spans(run.page, n, span);
        self.counters.small_pages.add_shared(n as u64);
        span
    }

    /// Takes back a small span whose objects are all free (retired: its
    /// state is `POOL`).
    pub(crate) fn free_span(&self, span: *mut Span) {
        // SAFETY: the caller hands over a retired span; its fields are stable.
        let (base, n) = unsafe { ((*span).base, (*span).npages) };
        let Some(meta) = arena::meta_of(base) else {
            crate::report::invalid_free(base);
        };
        let page = ArenaMeta::page_of(base);
        let mut st = self.state.lock();
        meta.set_tags(base, n, 0);
        meta.set_spans(page, n, ptr::null_mut());
        st.put_pages(meta, page, n, &self.counters);
        st.pool.put(span);
        drop(st);
        self.counters.small_pages.sub_shared(n as u64);
        self.note_free();
    }

    /// Allocates a large object of `size` bytes aligned to `align`. Returns
    /// the address and whether its memory may hold old data; null when the
    /// request cannot be served.
    pub(crate) fn alloc_large(&self, size: usize, align: usize) -> (*mut u8, bool) {
        let Some(bytes) = size.max(1).checked_next_multiple_of(PAGE_SIZE) else {
            return (ptr::null_mut(), false);
        };
        if bytes > HUGE_THRESHOLD || align > HUGE_ALIGN {
            return self.alloc_huge(bytes, align);
        }
        let n = bytes / PAGE_SIZE;
        let align_pages = (align / PAGE_SIZE).max(1);
        let id = self.id();
        let mut st = self.state.lock();
        let Some(span) = st.pool.get(0, &self.counters.meta_bytes) else {
            return (ptr::null_mut(), false);
        };
        let Some(run) = st.take_pages(id, n, align_pages, &self.counters) else {
            st.pool.put(span);
            return (ptr::null_mut(), false);
        };
        #[cfg(spanalloc_mutant = "grow_toctou")]
        let st = {
            // Mutant: find the run, let go of the lock, then take it: two
            // threads growing the heap can take the same pages.
            // SAFETY: the run's arena is live.
            let m = unsafe { &*run.meta };
            st.put_pages(m, run.page, n, &self.counters);
            drop(st);
            crate::sync::spin_point();
            let st = self.state.lock();
            m.pages.with_mut(|p| unsafe { (*p).take(run.page, n) });
            st
        };
        // SAFETY: the run's arena is live; the record is ours alone.
        let meta = unsafe { &*run.meta };
        let base = meta.page_addr(run.page);
        let needzero = run.clean != n;
        unsafe { (*span).init_large(base, n, size, needzero) };
        meta.set_tags(base, 1, TAG_LARGE);
        meta.set_spans(run.page, 1, span);
        drop(st);
        self.counters.large_allocs.add_shared(1);
        self.counters.large_bytes.add_shared(bytes as u64);
        (base as *mut u8, needzero)
    }

    #[cold]
    fn alloc_huge(&self, bytes: usize, align: usize) -> (*mut u8, bool) {
        let id = self.id();
        let Some((meta, object)) = ArenaMeta::reserve_huge(id, bytes, align) else {
            return (ptr::null_mut(), false);
        };
        let mut st = self.state.lock();
        let Some(span) = st.pool.get(0, &self.counters.meta_bytes) else {
            drop(st);
            // SAFETY: nothing refers to the fresh reservation yet.
            unsafe { ArenaMeta::destroy(meta) };
            return (ptr::null_mut(), false);
        };
        // SAFETY: fresh metadata and record, ours alone; under the lock.
        let m = unsafe { &*meta };
        m.pages.with_mut(|p| unsafe { (*p).next = st.huge });
        st.huge = meta;
        unsafe { (*span).init_large(object, bytes / PAGE_SIZE, bytes, false) };
        m.set_spans(ArenaMeta::page_of(object), 1, span);
        m.set_tags(object, 1, TAG_LARGE);
        drop(st);
        let sys = m.pages.with(|p| unsafe { (*p).reserved }) / PAGE_SIZE;
        self.counters.sys_pages.add_shared(sys as u64);
        self.counters.meta_bytes.add_shared((FIRST_PAGE * PAGE_SIZE) as u64);
        self.counters.large_allocs.add_shared(1);
        self.counters.large_bytes.add_shared(bytes as u64);
        (object as *mut u8, false)
    }

    /// The live large span starting at `addr`, or a fatal report.
    pub(crate) fn large_span_of(&self, addr: usize) -> (&'static ArenaMeta, &'static mut Span) {
        let Some((meta, span)) = arena::span_of(addr) else {
            crate::report::invalid_free(addr);
        };
        if meta.heap_id != self.id.load(Ordering::Relaxed) {
            crate::report::wrong_heap(addr);
        }
        // SAFETY: a non-null entry points at a live record of this heap.
        match unsafe { span.as_mut() } {
            Some(s) if s.kind == SpanKind::Large && s.base == addr => (meta, s),
            Some(s) if s.kind == SpanKind::Small => {
                crate::report::layout_mismatch(addr, usize::MAX, s.elem_size as usize)
            }
            _ => crate::report::invalid_free(addr),
        }
    }

    /// Frees the large object at `addr`.
    pub(crate) fn free_large(&self, addr: usize) {
        let (_, span) = self.large_span_of(addr);
        self.return_large(span, LARGE_LIVE);
    }

    /// Gives the pages of large `span` back: a user's free (`expect` is
    /// `LARGE_LIVE`) or a thread's large-object cache letting go of a freed
    /// object (`LARGE_CACHED`). Anything else is a double free.
    pub(crate) fn return_large(&self, span: &Span, expect: u64) {
        let record = span as *const Span as *mut Span;
        let addr = span.base;
        let bytes = span.npages * PAGE_SIZE;
        let Some(meta) = arena::meta_of(addr) else {
            crate::report::invalid_free(addr);
        };
        let page = ArenaMeta::page_of(addr);
        let mut st = self.state.lock();
        // Re-check under the lock: a racing double free finds the entry gone,
        // or the object cached by another thread.
        if !ptr::eq(meta.spans[page].load(Ordering::Acquire), span) {
            drop(st);
            crate::report::invalid_free(addr);
        }
        if span.state.compare_exchange(expect, LARGE_RETURNED, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            drop(st);
            crate::report::double_free(addr, bytes);
        }
        meta.set_spans(page, 1, ptr::null_mut());
        meta.tags[page].store(0, Ordering::Release);
        if meta.huge {
            let target = meta as *const ArenaMeta as *mut ArenaMeta;
            // Unlink from the huge list.
            let mut link: *mut *mut ArenaMeta = &mut st.huge;
            // SAFETY: listed reservations are live; under the lock.
            unsafe {
                while !(*link).is_null() && *link != target {
                    link = (**link).pages.with_mut(|p| ptr::addr_of_mut!((*p).next));
                }
                if !(*link).is_null() {
                    *link = (*target).pages.with(|p| (*p).next);
                }
            }
            st.pool.put(record);
            drop(st);
            let reserved = meta.pages.with(|p| unsafe { (*p).reserved });
            self.counters.sys_pages.sub_shared((reserved / PAGE_SIZE) as u64);
            self.counters.meta_bytes.sub_shared((FIRST_PAGE * PAGE_SIZE) as u64);
            // SAFETY: the object was the reservation's only content.
            unsafe { ArenaMeta::destroy(target) };
        } else {
            st.put_pages(meta, page, span.npages, &self.counters);
            st.pool.put(record);
            drop(st);
            self.note_free();
        }
        self.counters.large_frees.add_shared(1);
        self.counters.large_bytes.sub_shared(bytes as u64);
    }

    /// Resizes the large object at `addr` to `new_size` bytes without moving
    /// it, if it can: shrinking gives the tail pages back, growing takes the
    /// pages right after it if they are free. Returns whether it did.
    pub(crate) fn resize_large(&self, addr: usize, new_size: usize) -> bool {
        let (meta, span) = self.large_span_of(addr);
        if span.state.load(Ordering::Relaxed) != LARGE_LIVE {
            crate::report::invalid_free(addr); // freed, and kept by a cache
        }
        let Some(bytes) = new_size.checked_next_multiple_of(PAGE_SIZE) else {
            return false;
        };
        let (old_n, new_n) = (span.npages, bytes / PAGE_SIZE);
        if meta.huge {
            return self.resize_huge(meta, span, new_n);
        }
        if bytes > HUGE_THRESHOLD {
            return false;
        }
        let page = ArenaMeta::page_of(addr);
        let mut st = self.state.lock();
        if new_n <= old_n {
            if new_n < old_n {
                st.put_pages(meta, page + new_n, old_n - new_n, &self.counters);
            }
        } else {
            let extra = new_n - old_n;
            let at = page + old_n;
            let taken = meta.pages.with_mut(|p| {
                // SAFETY: under the heap lock.
                let p = unsafe { &mut *p };
                if at + extra > p.grown && at + extra <= END_PAGE && at <= p.grown {
                    let added = p.grow(at + extra - p.grown);
                    self.counters.sys_pages.add_shared(added as u64);
                    self.counters.free_pages.add_shared(added as u64);
                    self.counters.released_pages.add_shared(added as u64);
                }
                if p.is_free(at, extra) { Some(p.take(at, extra)) } else { None }
            });
            let Some(taken) = taken else {
                return false;
            };
            st.took(meta as *const _ as *mut _, at, extra, taken, &self.counters);
        }
        drop(st);
        if new_n < old_n {
            self.note_free();
        }
        span.npages = new_n;
        span.elem_size = new_size.min(u32::MAX as usize) as u32;
        self.counters.large_bytes.add_shared((new_n * PAGE_SIZE) as u64);
        self.counters.large_bytes.sub_shared((old_n * PAGE_SIZE) as u64);
        true
    }

    /// Huge objects grow in place with `mremap` when the address space after
    /// them is free, and shrink in place by keeping their reservation.
    fn resize_huge(&self, meta: &ArenaMeta, span: &mut Span, new_n: usize) -> bool {
        if new_n <= span.npages {
            return true;
        }
        let _st = self.state.lock();
        let extra = (new_n - span.npages) * PAGE_SIZE;
        // SAFETY: under the heap lock.
        let (base, len) = (meta.map_base, meta.pages.with(|p| unsafe { (*p).reserved }));
        let Some(new_len) = len.checked_add(extra) else {
            return false;
        };
        let old_guard = (base + len - PAGE_SIZE) as *mut u8;
        if !os::unguard(old_guard, PAGE_SIZE) {
            return false;
        }
        if !os::grow_in_place(base as *mut u8, len, new_len) {
            let _ = os::guard(old_guard, PAGE_SIZE);
            return false;
        }
        let _ = os::guard((base + new_len - PAGE_SIZE) as *mut u8, PAGE_SIZE);
        // SAFETY: under the heap lock.
        meta.pages.with_mut(|p| unsafe { (*p).reserved = new_len });
        self.counters.sys_pages.add_shared((extra / PAGE_SIZE) as u64);
        self.counters.large_bytes.add_shared(extra as u64);
        span.npages = new_n;
        true
    }

    /// Whether a scavenger tick is due at `now` (never under loom, where
    /// time stands still and the models call `release`).
    pub(crate) fn tick_peek(&self, now: u64) -> bool {
        !cfg!(loom) && now >= self.last_tick.load(Ordering::Relaxed).saturating_add(tick_period_ms())
    }

    /// Whether a scavenger tick is due at `now`; if so, claims it (only one
    /// caller gets `true` per tick).
    pub(crate) fn tick_due(&self, now: u64) -> bool {
        let last = self.last_tick.load(Ordering::Relaxed);
        !cfg!(loom)
            && now >= last.saturating_add(tick_period_ms())
            && self.last_tick.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Milliseconds from `now` until the next tick is due.
    pub(crate) fn until_next_tick(&self, now: u64) -> u64 {
        self.last_tick.load(Ordering::Relaxed).saturating_add(tick_period_ms()).saturating_sub(now)
    }

    /// Takes the release lock: waiting for it, or only if it is free.
    fn release_lock(&self, wait: bool) -> Option<ReleaseGuard<'_>> {
        #[cfg(not(loom))]
        {
            let raw = self.release_lock.raw();
            if wait {
                raw.lock();
            } else if !raw.try_lock() {
                return None;
            }
            Some(ReleaseGuard(raw))
        }
        #[cfg(loom)]
        {
            let _ = wait;
            Some(self.release_lock.lock())
        }
    }

    /// Gives free memory back to the OS, a batch at a time (see the module
    /// docs): free pages, all of them (`all`) or those past the decay; then
    /// the metadata that describes only released pages; then span-record
    /// chunks with no record in use. `wait` for the release lock, or stop
    /// when another releaser holds it; at most `max_batches`. Returns the
    /// bytes of heap pages released.
    pub(crate) fn scavenge(&self, all: bool, who: Releaser, wait: bool, max_batches: usize) -> usize {
        let mut batches = 0;
        let mut released = 0;
        while batches < max_batches {
            let Some(_one) = self.release_lock(wait) else {
                return released;
            };
            let mut batch = DataBatch::new();
            let Some(meta) = self.state.lock().find_arena(|p| p.pick_data(all, &mut batch)) else {
                break;
            };
            let bytes = self.release_data(meta, &batch, who);
            released += bytes;
            batches += 1;
            if bytes == 0 {
                break; // the kernel refused it all: the same pages would come again
            }
        }
        while batches < max_batches {
            let Some(_one) = self.release_lock(wait) else {
                return released;
            };
            let mut batch = MetaBatch::new();
            let Some(meta) = self.state.lock().find_arena(|p| p.pick_meta(&mut batch)) else {
                break;
            };
            batches += 1;
            if !self.release_meta(meta, &batch) {
                break;
            }
        }
        while batches < max_batches {
            let Some(_one) = self.release_lock(wait) else {
                return released;
            };
            if !self.release_records() {
                break;
            }
            batches += 1;
        }
        released
    }

    /// Releases the runs of `batch` (pages of `meta` out of the free set)
    /// without the heap lock, then puts them back. Returns the bytes that
    /// became clean. Caller holds the release lock.
    fn release_data(&self, meta: &ArenaMeta, batch: &DataBatch, who: Releaser) -> usize {
        let mut ok = 0u64;
        for (i, &(from, to)) in batch.runs[..batch.n].iter().enumerate() {
            let (addr, len) = (meta.page_addr(from as usize), (to - from) as usize * PAGE_SIZE);
            match os::release_pages(addr as *mut u8, len) {
                Ok(()) => ok |= 1 << i,
                Err(_) => self.counters.release_failures.add_shared(1),
            }
        }
        let cleaned = {
            let _st = self.state.lock();
            // SAFETY: under the heap lock.
            meta.pages.with_mut(|p| unsafe { (*p).commit_data(batch, ok) })
        };
        let k = &self.counters;
        k.released_pages.add_shared(cleaned as u64);
        k.released_total.add_shared(cleaned as u64);
        if who == Releaser::Background {
            k.released_background.add_shared(cleaned as u64);
        }
        self.count_batch(cleaned > 0);
        cleaned * PAGE_SIZE
    }

    /// Releases the metadata ranges of `batch` without the heap lock, then
    /// puts the pages they describe back. Returns whether the kernel
    /// released any. Caller holds the release lock.
    fn release_meta(&self, meta: &ArenaMeta, batch: &MetaBatch) -> bool {
        let mut ok = 0u64;
        let mut bytes = 0;
        for i in 0..batch.n {
            let (addr, len) = batch.range(meta.base(), i);
            match os::release_pages(addr as *mut u8, len) {
                Ok(()) => {
                    ok |= 1 << i;
                    bytes += len;
                }
                Err(_) => self.counters.release_failures.add_shared(1),
            }
        }
        {
            let _st = self.state.lock();
            // SAFETY: under the heap lock.
            meta.pages.with_mut(|p| unsafe { (*p).commit_meta(batch, ok) });
        }
        self.counters.meta_released.add_shared(bytes as u64);
        self.count_batch(bytes > 0);
        ok != 0
    }

    /// Releases span-record chunks with no record in use, a few at a time
    /// and without the heap lock. Returns whether there were any. Caller
    /// holds the release lock.
    fn release_records(&self) -> bool {
        let mut chunks = [(0, 0); 16];
        let n = self.state.lock().pool.take_idle(&mut chunks);
        if n == 0 {
            return false;
        }
        let mut bytes = 0;
        for &(chunk, _) in &chunks[..n] {
            let (addr, len) = SpanPool::releasable(chunk);
            match os::release_pages(addr as *mut u8, len) {
                Ok(()) => bytes += len,
                Err(_) => self.counters.release_failures.add_shared(1),
            }
        }
        let mut st = self.state.lock();
        for &c in &chunks[..n] {
            st.pool.restore(c);
        }
        drop(st);
        self.counters.meta_released.add_shared(bytes as u64);
        self.count_batch(bytes > 0);
        true
    }

    fn count_batch(&self, released: bool) {
        self.counters.release_batches.add_shared(1);
        if released {
            self.counters.last_release_ms.set(os::now_ms().max(1));
        }
    }

    /// A scavenger tick's aging step: every free dirty page ages a tick.
    /// Returns the free dirty pages later ticks will release (0: nothing
    /// left to wait for). Skipped (0) if another releaser holds the release
    /// lock and `wait` is false.
    pub(crate) fn age(&self, wait: bool) -> usize {
        let Some(_one) = self.release_lock(wait) else {
            return 0;
        };
        let st = self.state.lock();
        let mut waiting = 0;
        st.find_arena(|p| {
            waiting += p.age();
            false
        });
        waiting
    }

    /// Runs `f` on the page → span entries of every arena, under the lock:
    /// `f(page address, span, page is free)`.
    pub(crate) fn for_each_page(&self, mut f: impl FnMut(usize, *mut Span, bool)) {
        let st = self.state.lock();
        let mut meta = st.arenas;
        while !meta.is_null() {
            // SAFETY: listed arenas are live; under the heap lock.
            let m = unsafe { &*meta };
            m.pages.with(|p| {
                // SAFETY: under the heap lock.
                let p = unsafe { &*p };
                for page in arena::FIRST_PAGE..p.grown {
                    f(m.page_addr(page), m.spans[page].load(Ordering::Acquire), p.is_idle(page));
                }
            });
            meta = m.pages.with(|p| unsafe { (*p).next });
        }
    }

    /// Lock handles for `fork`.
    #[cfg(not(loom))]
    pub(crate) fn lock_for_fork(&self) -> &crate::sync::RawLock {
        self.state.raw()
    }

    /// The release lock, for `fork` (taken before the mcentrals' locks).
    #[cfg(not(loom))]
    pub(crate) fn release_lock_for_fork(&self) -> &crate::sync::RawLock {
        self.release_lock.raw()
    }
}

/// Holds the release lock; unlocks when dropped.
#[cfg(not(loom))]
struct ReleaseGuard<'a>(&'a crate::sync::RawLock);

#[cfg(not(loom))]
impl Drop for ReleaseGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: taken by `MHeap::release_lock` on this thread.
        unsafe { self.0.unlock() }
    }
}

#[cfg(loom)]
type ReleaseGuard<'a> = crate::sync::MutexGuard<'a, ()>;

// ---------------------------------------------------------------------------
// The background releaser's sleep (see `scavenger`).

/// Awake (or not started).
pub(crate) const SLEEP_AWAKE: u32 = 0;
/// Asleep until pages are freed (nothing was left to release).
pub(crate) const SLEEP_PARKED: u32 = 1;
/// Asleep until the next tick.
pub(crate) const SLEEP_NAPPING: u32 = 2;
/// Asleep until background release is turned on again.
pub(crate) const SLEEP_OFF: u32 = 3;

impl MHeap {
    /// After pages went back to the free set: wakes the background
    /// releaser if it sleeps waiting for them (one relaxed load otherwise).
    #[inline]
    fn note_free(&self) {
        #[cfg(not(loom))]
        if self.sleep.load(Ordering::Relaxed) == SLEEP_PARKED {
            self.wake(SLEEP_PARKED);
        }
    }

    /// Wakes the background releaser if it sleeps in state `from`.
    #[cfg(not(loom))]
    pub(crate) fn wake(&self, from: u32) {
        if self.sleep.load(Ordering::SeqCst) == from
            && self.sleep.compare_exchange(from, SLEEP_AWAKE, Ordering::SeqCst, Ordering::Relaxed).is_ok()
        {
            os::futex_wake_one(&self.sleep);
        }
    }

    /// The count of runs given back so far (see [`MHeap::park`]).
    pub(crate) fn put_seq(&self) -> u64 {
        self.state.lock().put_seq
    }

    /// Sleeps until pages are freed, if none were since `seq` was read;
    /// false (at once) if some were. The word is set under the heap lock,
    /// which every free of pages takes before it looks at the word, so no
    /// free is missed.
    #[cfg(not(loom))]
    pub(crate) fn park(&self, seq: u64) -> bool {
        {
            let st = self.state.lock();
            if st.put_seq != seq {
                return false;
            }
            self.sleep.store(SLEEP_PARKED, Ordering::SeqCst);
        }
        while self.sleep.load(Ordering::SeqCst) == SLEEP_PARKED {
            os::futex_wait(&self.sleep, SLEEP_PARKED);
        }
        true
    }

    /// Sleeps in state `state` (napping: at most `ms`; off: until woken)
    /// unless `still()` turns false once the word is set: whoever changes
    /// what `still` reads changes it first and then wakes this state.
    #[cfg(not(loom))]
    pub(crate) fn doze(&self, state: u32, ms: u64, still: impl Fn() -> bool) {
        self.sleep.store(state, Ordering::SeqCst);
        if still() {
            if state == SLEEP_NAPPING {
                os::futex_wait_ms(&self.sleep, state, ms);
            } else {
                while self.sleep.load(Ordering::SeqCst) == state && still() {
                    os::futex_wait(&self.sleep, state);
                }
            }
        }
        self.sleep.store(SLEEP_AWAKE, Ordering::SeqCst);
    }

    /// A forked child has no background releaser: nobody sleeps.
    #[cfg(not(loom))]
    pub(crate) fn forget_sleeper(&self) {
        self.sleep.store(SLEEP_AWAKE, Ordering::SeqCst);
    }
}

impl Drop for MHeap {
    fn drop(&mut self) {
        let st = self.state.lock();
        let mut lists = [st.arenas, st.huge];
        drop(st);
        for head in &mut lists {
            while !head.is_null() {
                let meta = *head;
                // SAFETY: the heap is being dropped: no cache, object or
                // pending free can refer to its memory any more.
                unsafe {
                    *head = (*meta).pages.with(|p| (*p).next);
                    ArenaMeta::destroy(meta);
                }
            }
        }
        self.state.lock().pool.unmap_all();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use core::alloc::Layout;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::heap::Heap;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    /// Addresses of the free pages the heap counts as clean.
    fn clean_pages(heap: &Heap) -> Vec<usize> {
        let mh = &heap.shared().mheap;
        let st = mh.state.lock();
        let mut out = Vec::new();
        st.find_arena(|p| {
            let base = (p as *const PageState as usize) & !(arena::ARENA_SIZE - 1);
            for page in FIRST_PAGE..p.grown {
                if p.free[page / 64] & p.clean[page / 64] & (1 << (page % 64)) != 0 {
                    out.push(base + page * PAGE_SIZE);
                }
            }
            false
        });
        out
    }

    /// At a kernel page of `kernel_page` bytes: large objects of 5 runtime
    /// pages side by side (their ends fall inside kernel pages), holes of
    /// one to four objects freed among them, everything released. Live
    /// neighbours keep their bytes, every page counted clean reads as zero,
    /// and `alloc_zeroed` in the holes returns zeros.
    fn release_is_true_at(kernel_page: usize) {
        os::pretend_page_size(kernel_page);
        let heap = Heap::new();
        let mut cache = heap.cache();
        let l = layout(5 * PAGE_SIZE);
        let objs: Vec<*mut u8> = (0..120).map(|_| cache.alloc(l)).collect();
        for (i, &p) in objs.iter().enumerate() {
            unsafe { p.write_bytes(i as u8 | 1, l.size()) };
        }
        // Free runs of 1, 2, 3 and 4 objects, each followed by a live one.
        let mut live = vec![true; objs.len()];
        let mut i = 0;
        for run in (1..=4).cycle() {
            if i + run >= objs.len() {
                break;
            }
            for j in i..i + run {
                unsafe { cache.dealloc(objs[j], l) };
                live[j] = false;
            }
            i += run + 1;
        }
        cache.flush();
        heap.release();
        for (i, &p) in objs.iter().enumerate().filter(|&(i, _)| live[i]) {
            let bytes = unsafe { core::slice::from_raw_parts(p, l.size()) };
            assert!(bytes.iter().all(|&b| b == i as u8 | 1), "live object {i} at {p:?} lost its bytes");
        }
        let clean = clean_pages(&heap);
        assert!(!clean.is_empty(), "nothing was released");
        for &page in &clean {
            let bytes = unsafe { core::slice::from_raw_parts(page as *const u8, PAGE_SIZE) };
            assert!(bytes.iter().all(|&b| b == 0), "page {page:#x} is counted clean but holds old data");
        }
        assert_eq!(heap.stats().heap_released, (clean.len() * PAGE_SIZE) as u64);
        let again: Vec<*mut u8> = (0..60).map(|_| cache.alloc_zeroed(l)).collect();
        for &p in &again {
            let bytes = unsafe { core::slice::from_raw_parts(p, l.size()) };
            assert!(bytes.iter().all(|&b| b == 0), "alloc_zeroed at {p:?} returned old data");
        }
        for (i, &p) in objs.iter().enumerate().filter(|&(i, _)| live[i]) {
            let bytes = unsafe { core::slice::from_raw_parts(p, l.size()) };
            assert!(bytes.iter().all(|&b| b == i as u8 | 1), "live object {i} lost its bytes");
        }
        for p in again.into_iter().chain(objs.iter().enumerate().filter(|&(i, _)| live[i]).map(|(_, &p)| p)) {
            unsafe { cache.dealloc(p, l) };
        }
        drop(cache);
        os::pretend_page_size(0);
    }

    #[test]
    fn release_at_16_kib_kernel_pages_keeps_live_neighbours_and_cleans_only_what_it_released() {
        release_is_true_at(16 << 10);
    }

    #[test]
    fn release_at_64_kib_kernel_pages_keeps_live_neighbours_and_cleans_only_what_it_released() {
        release_is_true_at(64 << 10);
    }

    static HEAP_UNDER_TEST: AtomicUsize = AtomicUsize::new(0);
    static CALLS: AtomicUsize = AtomicUsize::new(0);

    /// During each `madvise` of a release: the heap lock is free, and a
    /// large object allocated now gets pages outside the range.
    fn allocate_during_release(addr: usize, len: usize) -> bool {
        // SAFETY: the test's heap outlives its release.
        let heap = unsafe { &*(HEAP_UNDER_TEST.load(Ordering::Relaxed) as *const Heap) };
        let mh = &heap.shared().mheap;
        assert!(mh.state.raw().try_lock(), "the heap lock is held while the kernel releases");
        // SAFETY: taken just above.
        unsafe { mh.state.raw().unlock() };
        let (p, _) = mh.alloc_large(3 * PAGE_SIZE, 8);
        assert!(!p.is_null());
        let p = p as usize;
        assert!(p + 3 * PAGE_SIZE <= addr || p >= addr + len, "pages being released were handed out");
        CALLS.fetch_add(1, Ordering::Relaxed);
        true
    }

    #[test]
    fn release_calls_the_kernel_without_the_heap_lock_and_allocations_meanwhile_get_other_pages() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        let l = layout(1 << 20);
        let objs: Vec<*mut u8> = (0..64).map(|_| cache.alloc(l)).collect();
        for &p in &objs {
            unsafe { p.write_bytes(7, l.size()) };
            unsafe { cache.dealloc(p, l) };
        }
        cache.flush();
        HEAP_UNDER_TEST.store(&heap as *const Heap as usize, Ordering::Relaxed);
        os::set_release_hook(Some(allocate_during_release));
        heap.release();
        os::set_release_hook(None);
        assert!(CALLS.load(Ordering::Relaxed) > 0);
        let s = heap.stats();
        assert!(s.release.released_bytes >= 60 << 20, "{s}");
    }

    #[test]
    fn pages_the_kernel_refused_to_release_stay_dirty() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        let l = layout(2 << 20);
        let p = cache.alloc(l);
        unsafe { p.write_bytes(0xee, l.size()) };
        unsafe { cache.dealloc(p, l) };
        let before = heap.stats();
        os::set_release_hook(Some(|_, _| false));
        heap.release();
        os::set_release_hook(None);
        let after = heap.stats();
        assert_eq!(after.heap_released, before.heap_released, "refused pages counted as released");
        assert!(after.release.failures > 0);
        let z = cache.alloc_zeroed(l);
        assert_eq!(z, p, "the same pages");
        assert!(unsafe { core::slice::from_raw_parts(z, l.size()) }.iter().all(|&b| b == 0));
        unsafe { cache.dealloc(z, l) };
    }

    #[test]
    fn the_decay_sets_the_tick_period() {
        let saved = decay_ms();
        set_decay_ms(900);
        assert_eq!(tick_period_ms(), 300);
        set_decay_ms(0);
        assert_eq!(decay_ms(), MIN_DECAY_MS);
        assert_eq!(tick_period_ms(), 1);
        set_decay_ms(saved);
    }
}
