//! Invariant checks of a quiescent heap, for tests and loom models.
//!
//! [`Heap::audit`] walks every mcentral list and every arena page and
//! checks that what the levels believe agrees: each small span is owned by
//! its mcentral and sits on the list its state asks for, its counters
//! match its bitmaps, every page is either free or in exactly one span, and
//! the objects the spans hold allocated are the objects the statistics call
//! live. It panics (it is for tests) on the first violation, and it
//! allocates nothing, so it may audit the global heap too.

use crate::heap::Heap;
use crate::mspan::{self, CENTRAL, ListId, NOTIFIED, Span, SpanKind};
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
    /// Checks the heap's invariants and returns what it counted.
    ///
    /// The heap must be quiescent: no cache alive (every span back in its
    /// mcentral), no thread inside it. Panics on the first violation.
    #[doc(hidden)]
    pub fn audit(&self) -> Audit {
        self.forward_idle_notices();
        let mut audit = Audit::default();
        for class in 1..NUM_CLASSES {
            let full = self.central[class].for_each_listed(self, |span, list| {
                let state = span.state.load(Ordering::Acquire);
                assert_eq!(span.kind, SpanKind::Small, "listed span is not small");
                assert_eq!(span.class as usize, class, "span on another class's list");
                assert_eq!(state & (CENTRAL | NOTIFIED), CENTRAL, "listed span state {state:#x}");
                assert_eq!(span.with_owned(|o, _| o.list), list, "span's list field disagrees");
                check_counts(span, state);
                let empty = mspan::pending(state) == mspan::nalloc(state);
                assert_eq!(list == ListId::Empty, empty, "span on {list:?} list, pending == nalloc is {empty}");
                match list {
                    ListId::Partial => audit.partial += 1,
                    _ => audit.empty += 1,
                }
            });
            audit.full += full;
        }

        let (mut full_found, mut partial_found, mut empty_found) = (0, 0, 0);
        self.mheap.for_each_page(|addr, span, free| {
            if free {
                assert!(span.is_null(), "free page {addr:#x} maps to a span");
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
                    match s.state.load(Ordering::Relaxed) {
                        mspan::LARGE_LIVE => audit.large_objects += 1,
                        mspan::LARGE_CACHED => audit.large_kept += 1,
                        other => panic!("large span {addr:#x} in the page table in state {other}"),
                    }
                }
                SpanKind::Small => {
                    assert!(addr >= s.base && addr < s.base + s.npages * PAGE_SIZE, "page maps to a span elsewhere");
                    if s.base != addr {
                        return; // counted at its first page
                    }
                    audit.small_spans += 1;
                    let state = s.state.load(Ordering::Acquire);
                    assert_eq!(state & (CENTRAL | NOTIFIED), CENTRAL, "span not owned by its mcentral: {state:#x}");
                    match s.with_owned(|o, _| o.list) {
                        ListId::Full => {
                            assert_eq!(state & mspan::FULL, mspan::FULL);
                            check_counts(s, state);
                            full_found += 1;
                        }
                        ListId::Partial => partial_found += 1,
                        ListId::Empty => empty_found += 1,
                        ListId::None | ListId::Cache => panic!("central span {addr:#x} on no list"),
                    }
                    let allocated = mspan::nalloc(state) - mspan::pending(state);
                    assert!(allocated >= 0);
                    audit.allocated_objects += allocated as u64;
                }
                SpanKind::Free => panic!("page {addr:#x} maps to a freed span record"),
            }
        });
        // Each span found in the arenas is on the list it names, once.
        assert_eq!(full_found, audit.full, "full count disagrees with the spans found");
        assert_eq!(partial_found, audit.partial, "partial list disagrees with the spans found");
        assert_eq!(empty_found, audit.empty, "empty list disagrees with the spans found");
        let stats = self.stats();
        let live_small = stats.live_objects() - (stats.large_mallocs - stats.large_frees);
        assert_eq!(audit.allocated_objects, live_small, "spans and counters disagree on live objects");
        // The page table holds every large object the mheap handed out and
        // did not get back: live ones, and freed ones caches keep.
        let k = &self.mheap.counters;
        assert_eq!((audit.large_objects + audit.large_kept) as u64, k.large_allocs.get() - k.large_frees.get());
        audit
    }
}

/// A quiescent central span's counters match its bitmaps.
fn check_counts(span: &Span, state: u64) {
    let (nfree, bits) = span.with_owned(|o, b| (o.nfree, b.iter().map(|w| w.count_ones()).sum::<u32>()));
    assert_eq!(nfree, bits, "nfree disagrees with the free bitmap");
    assert_eq!(mspan::pending(state), span.remote_count() as i32, "pending disagrees with the remote bitmap");
    assert_eq!(mspan::nalloc(state) as u32, span.nelems - nfree, "nalloc disagrees with the free bitmap");
}
