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
//! stayed free across a whole scavenger tick, so a program that frees and
//! reallocates within a tick never pays for a page fault; ticks run from
//! the allocator's slow paths at most every [`TICK_MS`], and
//! `spanalloc::release()` gives back everything at once. Given-back pages
//! are "clean": they read as zero, so `alloc_zeroed` skips the memset for
//! them (Go's `needzero`).
//!
//! Everything here runs under the one mheap lock. Callers that also hold an
//! mcentral lock take it first (lock order: mcentral, then mheap).

use core::ptr;

use crate::arena::{self, ArenaMeta, END_PAGE, FIRST_PAGE, TAG_LARGE};
use crate::fixalloc::SpanPool;
use crate::mspan::{LARGE_LIVE, LARGE_RETURNED, Span, SpanKind, bucket_for};
use crate::os;
use crate::sizeclass::{CLASSES, PAGE_SIZE};
use crate::sync::unmodelled::{AtomicU64, Counter, Ordering};
use crate::sync::{Mutex, const_fn_unless_loom};

/// Milliseconds between scavenger ticks.
pub(crate) const TICK_MS: u64 = 250;

/// Objects larger than this get a huge reservation of their own.
pub(crate) const HUGE_THRESHOLD: usize = 16 << 20;
/// Large objects aligned beyond this get a huge reservation of their own.
const HUGE_ALIGN: usize = 8 << 20;

/// The heap's page allocator and span pool.
pub(crate) struct MHeap {
    state: Mutex<HeapState>,
    /// This heap's id (0 until its first arena), compared with
    /// `ArenaMeta::heap_id` to tell our pointers from another heap's.
    pub(crate) id: AtomicU64,
    /// When the next scavenger tick is due (`os::now_ms`).
    next_tick: AtomicU64,
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
                page.map(|page| (page, p.take(page, n), p.next))
            });
            if let Some((page, clean, _)) = found {
                return Some(self.took(meta, page, n, clean, counters));
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
                if let Some((page, clean)) = got.1 {
                    return Some(self.took(self.last, page, n, clean, counters));
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

    fn took(&mut self, meta: *mut ArenaMeta, page: usize, n: usize, clean: usize, counters: &HeapCounters) -> Run {
        counters.free_pages.sub_shared(n as u64);
        counters.released_pages.sub_shared(clean as u64);
        Run { meta, page, clean }
    }

    /// Gives back pages `[page, page + n)` of `meta`.
    fn put_pages(&mut self, meta: &ArenaMeta, page: usize, n: usize, counters: &HeapCounters) {
        // SAFETY: under the heap lock.
        meta.pages.with_mut(|p| unsafe { (*p).put(page, n) });
        counters.free_pages.add_shared(n as u64);
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
                }),
                id: AtomicU64::new(0),
                next_tick: AtomicU64::new(os::FIRST_DEADLINE),
                counters: HeapCounters {
                    large_allocs: Counter::new(),
                    large_frees: Counter::new(),
                    large_bytes: Counter::new(),
                    small_pages: Counter::new(),
                    sys_pages: Counter::new(),
                    free_pages: Counter::new(),
                    released_pages: Counter::new(),
                    meta_bytes: Counter::new(),
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
        self.counters.small_pages.sub_shared(n as u64);
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
            let Some(clean) = taken else {
                return false;
            };
            st.took(meta as *const _ as *mut _, at, extra, clean, &self.counters);
        }
        drop(st);
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

    /// Whether a scavenger tick is due at `now`; if so, claims it (only one caller
    /// gets `true` per tick).
    pub(crate) fn tick_due(&self, now: u64) -> bool {
        let due = self.next_tick.load(Ordering::Relaxed);
        now >= due && self.next_tick.compare_exchange(due, now + TICK_MS, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Gives free pages back to the OS: all of them (`all`), or those that
    /// stayed free since the last tick. Returns the pages released.
    pub(crate) fn scavenge(&self, all: bool) -> usize {
        let mut st = self.state.lock();
        st.pool.release();
        let mut released = 0;
        let mut meta = st.arenas;
        while !meta.is_null() {
            // SAFETY: listed arenas are live; under the heap lock.
            let m = unsafe { &*meta };
            let base = m.base();
            released += m.pages.with_mut(|p| unsafe { (*p).scavenge(base, all) });
            m.release_meta();
            meta = m.pages.with(|p| unsafe { (*p).next });
        }
        drop(st);
        self.counters.released_pages.add_shared(released as u64);
        released
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
                    let free = p.free[page / 64] & (1 << (page % 64)) != 0;
                    f(m.page_addr(page), m.spans[page].load(Ordering::Acquire), free);
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
