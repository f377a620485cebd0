//! mcentral: the spans of one size class that no mcache holds.
//!
//! One `MCentral` per size class keeps, behind its lock, the spans that
//! have free objects (`partial`) and those whose objects are all free
//! (`empty`). Spans with no free object belong to it too but sit on no list
//! (`FULL` in their state): a free into one of them brings it back through
//! the notify stack (Go keeps a "full" list for its sweeper; we have no
//! sweeper).
//!
//! An mcache takes a whole span per refill ([`MCentral::cache_span`]) and
//! gives back, under one hold of the lock, the spans it used up, or all of
//! its spans when it is flushed ([`MCentral::uncache_list`]): the lock is
//! taken once per span, not per object. When the lists are dry, the span
//! comes fresh from the mheap.
//!
//! Frees into spans the mcentral owns do not take its lock: they land in
//! the arena's remote bitmap (see [`crate::mspan`]). Only the transition a
//! freer can observe, "a `FULL` span has a free object", comes here, as a
//! push on the lock-free notify stack followed by a drain under the lock
//! ([`MCentral::notify`]). Every holder of the lock drains the stack first,
//! so a span is never missed. The mcentral merges remote frees into its
//! spans when it lists them, when a cache takes one, and at scavenger ticks
//! ([`MCentral::release_empty`]), which is also when spans whose objects
//! have all come back are found.
//!
//! Every hand-over follows the order [`crate::mspan`] explains: the new
//! `state` first, then a swap of the span's remote words.
//!
//! A cache that frees into a span it gave back here (its tag on the span's
//! pages says so) takes the span back ([`MCentral::adopt`]), so a thread
//! that allocates much and then frees it all frees locally after one lock
//! per span.
//!
//! Empty spans stay here for reuse, up to a small budget per class; beyond
//! it, and at every scavenger tick, they go back to the mheap, which gives
//! their pages back to the OS after a decay.

use core::ptr;

use crate::arena::{self, TAG_CENTRAL};
use crate::mheap::MHeap;
use crate::mspan::{CENTRAL, FULL, ListId, NOTIFIED, NotifyStack, Span, flags};
use crate::sync::{Mutex, const_fn_unless_loom};

/// Empty spans an mcentral keeps for reuse between ticks: enough for
/// 128 KiB of objects, at least two spans.
#[cfg(not(loom))]
fn empty_budget(class: usize) -> usize {
    let span = crate::sizeclass::CLASSES[class].pages as usize * crate::sizeclass::PAGE_SIZE;
    ((128 << 10) / span).max(2)
}

#[cfg(loom)]
fn empty_budget(_class: usize) -> usize {
    1
}

/// One size class's central span lists.
pub(crate) struct MCentral {
    lists: Mutex<Lists>,
    /// Spans queued by freers (see [`crate::mspan`]).
    notify: NotifyStack,
}

/// The lists, under the lock.
pub(crate) struct Lists {
    partial: SpanList,
    empty: SpanList,
    /// Spans owned here with no free object (`FULL`, on no list).
    pub(crate) nfull: usize,
}

/// An intrusive doubly-linked queue through `Owned::prev` / `next`:
/// spans join at the back and leave from the front, so a cache takes the
/// span that became reusable longest ago. A span that has just received
/// its first remote free is usually still being freed into by the thread
/// that freed it; handing it out at once would have a producer allocate,
/// and write the object bitmaps of, the very objects its consumer is
/// freeing, and their cache lines would cross between cores at every
/// object.
struct SpanList {
    head: *mut Span,
    tail: *mut Span,
    len: usize,
}

// SAFETY: the lists hold pointers to span records, which live in heap
// metadata and are shared across threads by design; only the lock holder
// touches the lists.
unsafe impl Send for Lists {}

impl SpanList {
    const fn new() -> Self {
        SpanList { head: ptr::null_mut(), tail: ptr::null_mut(), len: 0 }
    }

    /// Adds `span` (owned by the lock holder) at the back.
    fn push(&mut self, span: &Span, id: ListId) {
        let me = span as *const Span as *mut Span;
        let tail = self.tail;
        span.with_owned(|o, _| {
            o.prev = tail;
            o.next = ptr::null_mut();
            o.list = id;
        });
        // SAFETY: list members are live records owned by the lock holder.
        match unsafe { tail.as_ref() } {
            Some(t) => t.with_owned(|o, _| o.next = me),
            None => self.head = me,
        }
        self.tail = me;
        self.len += 1;
    }

    /// Unlinks `span`, which is on this list.
    fn remove(&mut self, span: &Span) {
        if ptr::eq(self.tail, span) {
            self.tail = span.with_owned(|o, _| o.prev);
        }
        span.unlink(&mut self.head);
        self.len -= 1;
    }

    fn pop(&mut self) -> Option<&'static Span> {
        // SAFETY: list members are live records.
        let span = unsafe { self.head.as_ref() }?;
        self.remove(span);
        Some(span)
    }
}

/// The central tag of a span the cache with tag `cache_tag` gave back.
#[inline]
pub(crate) fn central_tag(cache_tag: u32) -> u32 {
    cache_tag | TAG_CENTRAL
}

impl MCentral {
    const_fn_unless_loom! {
        pub(crate) fn new() -> MCentral {
            MCentral {
                lists: Mutex::new(Lists { partial: SpanList::new(), empty: SpanList::new(), nfull: 0 }),
                notify: NotifyStack::new(),
            }
        }
    }

    /// A span with free objects for the mcache whose tag for this class is
    /// `tag`; the cache owns it from now on. Null when the heap is out of
    /// memory.
    pub(crate) fn cache_span(&self, mheap: &MHeap, class: usize, tag: u32) -> *mut Span {
        #[cfg(spanalloc_mutant = "refill_toctou")]
        {
            // Mutant: look at the partial list and take from it in two
            // critical sections, so two caches can take one span.
            let peek = {
                let mut lists = self.lists.lock();
                self.drain(&mut lists, mheap);
                lists.partial.head
            };
            if let Some(span) = unsafe { peek.as_ref() } {
                let mut lists = self.lists.lock();
                if span.with_owned(|o, _| o.list) == ListId::Partial {
                    lists.partial.remove(span);
                }
                span.change_flags(CENTRAL, 0);
                claim(span, tag);
                return peek;
            }
        }
        {
            let mut lists = self.lists.lock();
            self.drain(&mut lists, mheap);
            let found = lists.partial.pop().or_else(|| lists.empty.pop());
            if let Some(span) = found {
                // A listed span is never FULL, so no freer can change its
                // flags meanwhile.
                let taken = span.change_flags(CENTRAL, 0);
                debug_assert!(taken);
                claim(span, tag);
                return span as *const Span as *mut Span;
            }
        }
        mheap.alloc_span(class, tag)
    }

    /// Takes back a list of spans from an mcache (linked through
    /// `Owned::next`) under one hold of the lock. None of their objects is
    /// in the cache's stack any more.
    pub(crate) fn uncache_list(&self, mheap: &MHeap, first: *mut Span, cache_tag: u32) {
        if first.is_null() {
            return;
        }
        let mut lists = self.lists.lock();
        self.drain(&mut lists, mheap);
        let mut at = first;
        // SAFETY: the listed spans are live and the mcache's until published.
        while let Some(span) = unsafe { at.as_ref() } {
            at = span.with_owned(|o, _| {
                let next = o.next;
                o.prev = ptr::null_mut();
                o.next = ptr::null_mut();
                o.list = ListId::None;
                next
            });
            self.take_back(&mut lists, mheap, span, cache_tag);
        }
    }

    /// Makes an mcache's span the mcentral's: `FULL` first, then the remote
    /// words swapped, then the span placed where its free objects say.
    fn take_back(&self, lists: &mut Lists, mheap: &MHeap, span: &Span, cache_tag: u32) {
        if let Some(meta) = arena::meta_of(span.base) {
            meta.set_tags(span.base, span.npages, central_tag(cache_tag));
        }
        #[cfg(not(spanalloc_mutant = "handoff_merge_first"))]
        {
            let published = span.change_flags(0, CENTRAL | FULL);
            debug_assert!(published, "handing over a span the cache does not own");
            merge(span, true);
        }
        #[cfg(spanalloc_mutant = "handoff_merge_first")]
        {
            // Mutant: merge, then publish: a freer that comes between sees
            // the cache as owner and queues nothing, and its free is lost
            // in a span the mcentral believes full.
            merge(span, true);
            crate::sync::spin_point();
            span.change_flags(0, CENTRAL | FULL);
        }
        self.place_full(lists, mheap, span);
    }

    /// A span whose flags are `CENTRAL | FULL` (or `NOTIFIED` if a freer
    /// queued it meanwhile), on no list, its remote frees merged: puts it
    /// where its free objects say.
    fn place_full(&self, lists: &mut Lists, mheap: &MHeap, span: &Span) {
        let nfree = span.nfree();
        if nfree == 0 {
            span.with_owned(|o, _| o.list = ListId::Full);
            lists.nfull += 1;
            return;
        }
        // It has free objects: no longer FULL. If a freer queued it in the
        // meantime, it is on the notify stack and the next drain places it.
        if !span.change_flags(CENTRAL | FULL, CENTRAL) {
            return;
        }
        if span.all_free() {
            self.place_empty(lists, mheap, span);
        } else {
            lists.partial.push(span, ListId::Partial);
        }
    }

    /// An empty span (flags `CENTRAL`, on no list): on the empty list, or
    /// back to the mheap beyond the budget.
    fn place_empty(&self, lists: &mut Lists, mheap: &MHeap, span: &Span) {
        if lists.empty.len >= empty_budget(span.class as usize) && retire(mheap, span) {
            return;
        }
        lists.empty.push(span, ListId::Empty);
    }

    /// A cache that frees into a span it gave back takes it again (its
    /// frees into it are then local). Fails if the span is not the
    /// mcentral's any more, or is queued.
    pub(crate) fn adopt(&self, mheap: &MHeap, span: &Span, tag: u32) -> bool {
        let mut lists = self.lists.lock();
        self.drain(&mut lists, mheap);
        let list = span.with_owned(|o, _| o.list);
        let taken = match list {
            ListId::Partial | ListId::Empty => span.change_flags(CENTRAL, 0),
            ListId::Full => {
                span.change_flags(CENTRAL | FULL, 0)
                    // Mutant: a span a freer queued is taken as well.
                    || (cfg!(spanalloc_mutant = "adopt_queued") && span.change_flags(CENTRAL | NOTIFIED, 0))
            }
            _ => false,
        };
        if !taken {
            return false;
        }
        match list {
            ListId::Partial => lists.partial.remove(span),
            ListId::Empty => lists.empty.remove(span),
            _ => {
                lists.nfull -= 1;
                span.with_owned(|o, _| o.list = ListId::None);
            }
        }
        claim(span, tag);
        true
    }

    /// Queues `span` after a freer set its `NOTIFIED` bit, then drains.
    pub(crate) fn notify(&self, mheap: &MHeap, span: &Span) {
        self.notify.push(span);
        let mut lists = self.lists.lock();
        self.drain(&mut lists, mheap);
    }

    /// Merges the remote frees of every listed span and gives every empty
    /// span back to the mheap (scavenger ticks and `release()`). Returns
    /// the remote frees merged plus the spans given back: 0 when nothing
    /// came back here since the last call.
    pub(crate) fn release_empty(&self, mheap: &MHeap) -> usize {
        let mut lists = self.lists.lock();
        self.drain(&mut lists, mheap);
        let mut found = 0;
        let mut at = lists.partial.head;
        // SAFETY: listed spans are live records owned by the lock holder.
        while let Some(span) = unsafe { at.as_ref() } {
            at = span.with_owned(|o, _| o.next);
            found += merge(span, false) as usize;
            if span.all_free() {
                lists.partial.remove(span);
                if retire(mheap, span) {
                    found += 1;
                } else {
                    lists.empty.push(span, ListId::Empty);
                }
            }
        }
        let mut kept = SpanList::new();
        while let Some(span) = lists.empty.pop() {
            if retire(mheap, span) {
                found += 1;
            } else {
                kept.push(span, ListId::Empty);
            }
        }
        while let Some(span) = kept.pop() {
            lists.empty.push(span, ListId::Empty);
        }
        found
    }

    /// Runs `f` on every span on the lists, with the list it is on, under
    /// the lock (after draining the notify stack). Returns the full count.
    pub(crate) fn for_each_listed(&self, mheap: &MHeap, mut f: impl FnMut(&Span, ListId)) -> usize {
        let mut lists = self.lists.lock();
        self.drain(&mut lists, mheap);
        for (list, id) in [(&lists.partial, ListId::Partial), (&lists.empty, ListId::Empty)] {
            let mut at = list.head;
            // SAFETY: listed spans are live records owned by the lock holder.
            while let Some(span) = unsafe { at.as_ref() } {
                f(span, id);
                at = span.with_owned(|o, _| o.next);
            }
        }
        lists.nfull
    }

    /// Counts of the lists (for stats).
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let lists = self.lists.lock();
        (lists.partial.len, lists.empty.len, lists.nfull)
    }

    /// Handles every queued span. Caller holds the lock.
    fn drain(&self, lists: &mut Lists, mheap: &MHeap) {
        let mut next = self.notify.take_all();
        // SAFETY: queued spans are live records (NOTIFIED keeps them from
        // being retired until this drain has looked at them).
        while let Some(span) = unsafe { next.as_ref() } {
            next = span.next_notified();
            self.reevaluate(lists, mheap, span);
        }
    }

    /// A span a freer queued: `FULL` again (instead of `NOTIFIED`), its
    /// remote frees merged, placed where they say.
    fn reevaluate(&self, lists: &mut Lists, mheap: &MHeap, span: &Span) {
        debug_assert_eq!(flags(span.state.load(crate::sync::atomic::Ordering::Relaxed)), CENTRAL | NOTIFIED);
        match span.with_owned(|o, _| o.list) {
            ListId::Full => lists.nfull -= 1,
            ListId::Partial => lists.partial.remove(span),
            ListId::Empty => lists.empty.remove(span),
            ListId::None => {}
            other => debug_assert!(false, "a queued span on an mcache's list {other:?}"),
        }
        span.with_owned(|o, _| o.list = ListId::None);
        let requeued = span.change_flags(CENTRAL | NOTIFIED, CENTRAL | FULL);
        debug_assert!(requeued, "only the drain clears NOTIFIED");
        merge(span, true);
        self.place_full(lists, mheap, span);
    }

    /// Lock handle for `fork`.
    #[cfg(not(loom))]
    pub(crate) fn lock_for_fork(&self) -> &crate::sync::RawLock {
        self.lists.raw()
    }
}

/// The span's pages now say the cache with `tag` holds it; the remote frees
/// that came while the mcentral held it are merged into it.
fn claim(span: &Span, tag: u32) {
    if let Some(meta) = arena::meta_of(span.base) {
        meta.set_tags(span.base, span.npages, tag);
    }
    merge(span, false);
}

/// Merges a span's remote frees (see [`Span::collect`]).
fn merge(span: &Span, sync: bool) -> u32 {
    let Some(meta) = arena::meta_of(span.base) else {
        crate::report::invalid_free(span.base);
    };
    let (alloc, remote) = meta.span_words(span.base, span.npages);
    span.collect(alloc, remote, sync)
}

/// Gives an empty span (flags `CENTRAL`, on no list) back to the mheap;
/// false (the caller keeps it) if something still holds it.
fn retire(mheap: &MHeap, span: &Span) -> bool {
    if let Some(meta) = arena::meta_of(span.base) {
        span.check_no_remote(meta.span_words(span.base, span.npages).1);
    }
    if !span.retire() {
        return false;
    }
    mheap.free_span(span as *const Span as *mut Span);
    true
}
