//! The large-object cache of an mcache: the last few large objects its
//! thread freed, kept whole for the thread's next allocation of the same
//! page count.
//!
//! A large object costs the mheap's lock, a search of the page bitmap and a
//! handful of shared counter updates on each allocation and free. Programs
//! that allocate and free buffers of one size over and over (I/O buffers, a
//! scratch vector per request) pay that every time. Kept here, such an
//! object keeps its pages, its span record and its page-table entry, so
//! reuse touches nothing shared.
//!
//! A cached span's `state` is [`LARGE_CACHED`]: a second free of the object
//! (from any thread) finds it so and reports a double free, and the mheap
//! refuses it. Only objects up to [`MAX_PAGES`] pages are kept, at most
//! [`SLOTS`] of them and [`MAX_BYTES`] in all; the oldest goes back to the
//! mheap when a new one does not fit. An mcache's trim (each scavenger
//! tick) gives everything back when no large object came or went since the
//! previous trim, and its flush (thread exit, `release()`) gives everything
//! back at once.

use core::ptr;

use crate::heap::Heap;
use crate::mspan::{LARGE_CACHED, LARGE_LIVE, Span};
use crate::report;
use crate::sizeclass::PAGE_SIZE;
use crate::sync::atomic::Ordering;

/// Objects kept at most.
pub(crate) const SLOTS: usize = 8;
/// The largest object kept, in pages (1 MiB).
pub(crate) const MAX_PAGES: usize = (1 << 20) / PAGE_SIZE;
/// Bytes kept at most.
pub(crate) const MAX_BYTES: usize = 4 << 20;

pub(crate) struct LargeCache {
    /// The kept spans, oldest first.
    spans: [*mut Span; SLOTS],
    len: usize,
    /// Bytes of the kept spans.
    bytes: usize,
    /// The cache took or gave an object since the last trim.
    used: bool,
}

impl LargeCache {
    pub(crate) const fn new() -> Self {
        LargeCache { spans: [ptr::null_mut(); SLOTS], len: 0, bytes: 0, used: false }
    }

    /// Objects kept.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes kept.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the most recently kept object of exactly `npages` pages whose
    /// address is a multiple of `align`, live again, with `size` as its
    /// requested size. Its pages are dirty.
    #[inline]
    pub(crate) fn take(&mut self, npages: usize, align: usize, size: usize) -> Option<usize> {
        let mut i = self.len;
        while i > 0 {
            i -= 1;
            // SAFETY: kept spans are live records the cache owns.
            let span = unsafe { &mut *self.spans[i] };
            if span.npages == npages && span.base % align == 0 {
                self.spans.copy_within(i + 1..self.len, i);
                self.len -= 1;
                self.bytes -= npages * PAGE_SIZE;
                self.used = true;
                span.elem_size = size.min(u32::MAX as usize) as u32;
                span.needzero = true;
                span.state.store(LARGE_LIVE, Ordering::Release);
                return Some(span.base);
            }
        }
        None
    }

    /// Keeps the freed large object of `span` if it is small enough;
    /// returns false if it is not (the caller gives it to the mheap).
    /// Aborts with a report if the object is already free.
    pub(crate) fn put(&mut self, heap: &Heap, span: &mut Span) -> bool {
        let bytes = span.npages * PAGE_SIZE;
        if span.npages > MAX_PAGES {
            return false;
        }
        if span.state.compare_exchange(LARGE_LIVE, LARGE_CACHED, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            report::double_free(span.base, bytes);
        }
        while self.len == SLOTS || self.bytes + bytes > MAX_BYTES {
            self.evict_oldest(heap);
        }
        self.spans[self.len] = span;
        self.len += 1;
        self.bytes += bytes;
        self.used = true;
        true
    }

    /// Gives everything back if the cache was idle since the last call.
    pub(crate) fn trim(&mut self, heap: &Heap) {
        if !core::mem::replace(&mut self.used, false) {
            self.flush(heap);
        }
    }

    /// Gives everything back to the mheap.
    pub(crate) fn flush(&mut self, heap: &Heap) {
        while self.len > 0 {
            self.evict_oldest(heap);
        }
    }

    fn evict_oldest(&mut self, heap: &Heap) {
        let span = self.spans[0];
        self.spans.copy_within(1..self.len, 0);
        self.len -= 1;
        // SAFETY: kept spans are live records the cache owns.
        let span = unsafe { &*span };
        self.bytes -= span.npages * PAGE_SIZE;
        heap.shared().mheap.return_large(span, LARGE_CACHED);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A large object from the mheap, and its span.
    fn object(heap: &Heap, size: usize) -> &'static mut Span {
        let p = heap.alloc_large(size, 8, false);
        assert!(!p.is_null());
        heap.shared().mheap.large_span_of(p as usize).1
    }

    #[test]
    fn an_idle_cache_gives_everything_back_at_its_next_trim() {
        let heap = Heap::new();
        let mut cache = LargeCache::new();
        assert!(cache.put(&heap, object(&heap, 64 << 10)));
        assert!(cache.put(&heap, object(&heap, 64 << 10)));
        assert!(cache.take(8, 8, 64 << 10).is_some());
        cache.trim(&heap); // busy since the last trim: keeps the other one
        assert_eq!((cache.len(), heap.large_census().1), (1, 1));
        cache.trim(&heap); // idle
        assert_eq!((cache.len(), heap.large_census().1), (0, 0));
    }

    #[test]
    fn objects_over_1_mib_are_not_kept_and_the_byte_budget_holds() {
        let heap = Heap::new();
        let mut cache = LargeCache::new();
        let big = object(&heap, (1 << 20) + 1);
        assert!(!cache.put(&heap, big));
        heap.shared().mheap.return_large(big, LARGE_LIVE);
        for _ in 0..6 {
            assert!(cache.put(&heap, object(&heap, 1 << 20)));
            assert!(cache.bytes() <= MAX_BYTES);
        }
        assert_eq!(cache.len(), MAX_BYTES >> 20);
        cache.flush(&heap);
        assert_eq!((heap.stats().large_bytes, heap.large_census().1), (0, 0));
    }
}
