//! Invariant checks of a quiescent heap, for tests and loom models.
//!
//! [`Heap::audit`] walks every mcentral list and every arena page and
//! checks that what the levels believe agrees: each small span is owned by
//! its mcentral and sits on the list its state asks for, a span the
//! mcentral believes full has no free waiting in it, its counts match its
//! bitmaps, the object bitmaps mark allocated exactly the objects the span
//! does not hold free, every page is either free or in exactly one span,
//! page tags agree with the page table, and the objects the spans hold
//! allocated are the objects the statistics call live. It panics (it is
//! for tests) on the first violation, and it allocates nothing.
//!
//! It takes `&mut Heap`: every [`crate::MCache`] borrows its heap, so none
//! can be alive, and no thread can be inside the heap.

use crate::arena::{self, TAG_CENTRAL, TAG_LARGE, tag_class};
use crate::heap::Heap;
use crate::mspan::{self, CENTRAL, FULL, ListId, Span, SpanKind};
use crate::sizeclass::{NUM_CLASSES, PAGE_SIZE};
use crate::sync::atomic::Ordering;

/// What an audit found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Small spans, all owned by their mcentral.
    pub small_spans: usize,
    /// Spans on the mcentrals' partial, empty lists and without free objects.
    pub partial: usize,
    /// See `partial`.
    pub empty: usize,
    /// See `partial`.
    pub full: usize,
    /// Live large objects.
    pub large_objects: usize,
    /// Freed large objects kept by caches for reuse.
    pub large_kept: usize,
    /// Objects the small spans hold allocated.
    pub allocated_objects: u64,
    /// Free pages in the arenas.
    pub free_pages: usize,
}

impl Heap {
    /// Checks the heap's invariants and returns what it counted. Panics on
    /// the first violation.
    #[doc(hidden)]
    pub fn audit(&mut self) -> Audit {
        let heap: &Heap = self;
        let mut audit = Audit::default();
        for class in 1..NUM_CLASSES {
            let full = heap.shared().central[class].for_each_listed(&heap.shared().mheap, |span, list| {
                let state = span.state.load(Ordering::Acquire);
                assert_eq!(span.kind, SpanKind::Small, "listed span is not small");
                assert_eq!(span.class as usize, class, "span on another class's list");
                assert_eq!(mspan::flags(state), CENTRAL, "listed span state {state:#x}");
                assert_eq!(span.with_owned(|o, _| o.list), list, "span's list field disagrees");
                let nfree = span.nfree();
                match list {
                    ListId::Partial => {
                        // Remote frees are merged lazily, so a partial span
                        // may have become empty since it was listed.
                        assert!(nfree > 0 || pending(span) > 0, "span on the partial list with no free object");
                        audit.partial += 1;
                    }
                    _ => {
                        assert_eq!(nfree, span.nelems, "span on the empty list with allocated objects");
                        audit.empty += 1;
                    }
                }
            });
            audit.full += full;
        }

        let (mut full_found, mut partial_found, mut empty_found) = (0, 0, 0);
        heap.shared().mheap.for_each_page(|addr, span, free| {
            let meta = arena::meta_of(addr).expect("a heap page outside any arena");
            let tag = meta.tag_at(addr);
            if free {
                assert!(span.is_null(), "free page {addr:#x} maps to a span");
                assert_eq!(tag, 0, "free page {addr:#x} has tag {tag:#x}");
                audit.free_pages += 1;
                return;
            }
            // SAFETY: non-null entries point at live records.
            let Some(s) = (unsafe { span.as_ref() }) else {
                return; // an interior page of a large object
            };
            match s.kind {
                SpanKind::Large => {
                    assert_eq!(s.base, addr, "large span entry on a page that is not its first");
                    assert_eq!(tag, TAG_LARGE, "large object {addr:#x} has tag {tag:#x}");
                    match s.state.load(Ordering::Relaxed) {
                        mspan::LARGE_LIVE => audit.large_objects += 1,
                        mspan::LARGE_CACHED => audit.large_kept += 1,
                        other => panic!("large span {addr:#x} in the page table in state {other}"),
                    }
                }
                SpanKind::Small => {
                    assert!(addr >= s.base && addr < s.base + s.npages * PAGE_SIZE, "page maps to a span elsewhere");
                    assert!(
                        tag & TAG_CENTRAL != 0 && tag_class(tag) == s.class as usize,
                        "page {addr:#x} of a central span of class {} has tag {tag:#x}",
                        s.class
                    );
                    if s.base != addr {
                        return; // counted at its first page
                    }
                    audit.small_spans += 1;
                    let state = s.state.load(Ordering::Acquire);
                    let list = s.with_owned(|o, _| o.list);
                    match list {
                        ListId::Full => {
                            assert_eq!(mspan::flags(state), CENTRAL | FULL, "full span {addr:#x}: state {state:#x}");
                            assert_eq!(s.nfree(), 0, "full span {addr:#x} has free objects");
                            assert_eq!(pending(s), 0, "a free is stranded in full span {addr:#x}");
                            full_found += 1;
                        }
                        ListId::Partial => partial_found += 1,
                        ListId::Empty => empty_found += 1,
                        other => panic!("central span {addr:#x} on list {other:?}"),
                    }
                    audit.allocated_objects += check_bitmaps(s);
                }
                SpanKind::Free => panic!("page {addr:#x} maps to a freed span record"),
            }
        });
        // Each span found in the arenas is on the list it names, once.
        assert_eq!(full_found, audit.full, "full count disagrees with the spans found");
        assert_eq!(partial_found, audit.partial, "partial list disagrees with the spans found");
        assert_eq!(empty_found, audit.empty, "empty list disagrees with the spans found");
        let stats = heap.stats();
        let live_small = stats.live_objects() - (stats.large_mallocs - stats.large_frees);
        assert_eq!(audit.allocated_objects, live_small, "spans and counters disagree on live objects");
        // The page table holds every large object the mheap handed out and
        // did not get back: live ones, and freed ones caches keep.
        let k = &heap.shared().mheap.counters;
        assert_eq!((audit.large_objects + audit.large_kept) as u64, k.large_allocs.get() - k.large_frees.get());
        audit
    }
}

impl Heap {
    /// Live large objects, and freed ones caches keep, from the page table
    /// (for tests that hold caches meanwhile, so cannot audit).
    #[cfg(test)]
    pub(crate) fn large_census(&self) -> (usize, usize) {
        let (mut live, mut kept) = (0, 0);
        self.shared().mheap.for_each_page(|_, span, _| {
            // SAFETY: non-null entries point at live records.
            if let Some(s) = unsafe { span.as_ref() }
                && s.kind == SpanKind::Large
            {
                match s.state.load(Ordering::Relaxed) {
                    mspan::LARGE_LIVE => live += 1,
                    mspan::LARGE_CACHED => kept += 1,
                    _ => {}
                }
            }
        });
        (live, kept)
    }
}

/// Remote frees waiting in `span` (set `remote` bits).
fn pending(span: &Span) -> u32 {
    let meta = arena::meta_of(span.base).expect("a span outside any arena");
    let (_, remote) = meta.span_words(span.base, span.npages);
    remote.iter().map(|w| w.load(Ordering::Acquire).count_ones()).sum()
}

/// Checks a quiescent central span's bitmaps against each other; returns
/// how many of its objects are allocated (and not freed remotely).
fn check_bitmaps(span: &Span) -> u64 {
    let meta = arena::meta_of(span.base).expect("a span outside any arena");
    let (alloc, remote) = meta.span_words(span.base, span.npages);
    let (nfree, bits) = span.with_owned(|o, b| {
        let mut copy = [0u64; 16];
        copy[..b.len()].copy_from_slice(b);
        (o.nfree, copy)
    });
    let first = arena::bit_of(span.base).0;
    let mut allocated = 0u64;
    let mut freed_remotely = 0u32;
    for idx in 0..span.nelems as usize {
        let addr = span.object_addr(idx);
        let (w, bit) = arena::bit_of(addr);
        let a = alloc[w - first].load(Ordering::Acquire) & bit != 0;
        let r = remote[w - first].load(Ordering::Acquire) & bit != 0;
        let free = bits[idx / 64] & (1 << (idx % 64)) != 0;
        assert!(!(free && a), "object {addr:#x} is free in its span and marked allocated");
        assert!(!r || a, "object {addr:#x} freed remotely but not allocated");
        assert!(free || a, "object {addr:#x} is neither free nor allocated (lost)");
        if r {
            freed_remotely += 1;
        } else if a {
            allocated += 1;
        }
    }
    let set: u32 = bits.iter().map(|w| w.count_ones()).sum();
    assert_eq!(nfree, set, "nfree disagrees with the free bitmap");
    // No bit outside an object start.
    let starts: u32 = alloc.iter().map(|w| w.load(Ordering::Acquire).count_ones()).sum();
    assert_eq!(starts as u64, allocated + freed_remotely as u64, "alloc bits set off object starts");
    allocated
}
