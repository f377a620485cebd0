//! mcentral: the spans of one size class that no mcache holds.
//!
//! One `MCentral` per size class keeps, behind its lock, the spans that
//! have free objects (`partial`) and those whose objects are all free
//! (`empty`). Spans with no free object belong to it too but sit on no list
//! (Go keeps a "full" list for its sweeper; we have no sweeper, and a full
//! span comes back through the notify stack when something in it is freed).
//!
//! An mcache takes a whole span per refill ([`MCentral::cache_span`]) and
//! gives it back when it has no free object left or its thread exits
//! ([`MCentral::uncache_span`]), so the lock is taken once per span, not per
//! object. When the lists are dry, the span comes fresh from the mheap.
//!
//! Frees into spans the mcentral owns do not take its lock: they land in the
//! span's remote bitmap (see [`crate::mspan`]). Only the two transitions a
//! freer can observe, "a full span has a free object" and "every object is
//! free", come here, as a push on the lock-free notify stack followed by a
//! drain under the lock ([`MCentral::notify`]). Every holder of the lock
//! drains the stack first, so a span is never missed.
//!
//! Empty spans stay here for reuse, up to a small budget per class; beyond
//! it, and at every scavenger tick, they go back to the mheap, which gives
//! their pages back to the OS after a decay.

use core::ptr;

use crate::heap::Heap;
use crate::mspan::{self, CENTRAL, ListId, NOTIFIED, NotifyStack, Span};
use crate::sync::atomic::Ordering;
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
    /// Spans owned here with no free object.
    pub(crate) nfull: usize,
}

/// An intrusive doubly-linked list through `Owned::prev` / `next`.
struct SpanList {
    head: *mut Span,
    len: usize,
}

// SAFETY: the lists hold pointers to span records, which live in heap
// metadata and are shared across threads by design; only the lock holder
// touches the lists.
unsafe impl Send for Lists {}

impl SpanList {
    const fn new() -> Self {
        SpanList { head: ptr::null_mut(), len: 0 }
    }

    /// Pushes `span` (owned by the lock holder) at the front.
    fn push(&mut self, span: &Span, id: ListId) {
        span.link_front(&mut self.head, id);
        self.len += 1;
    }

    /// Unlinks `span`, which is on this list.
    fn remove(&mut self, span: &Span) {
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

impl MCentral {
    const_fn_unless_loom! {
        pub(crate) fn new() -> MCentral {
            MCentral {
                lists: Mutex::new(Lists { partial: SpanList::new(), empty: SpanList::new(), nfull: 0 }),
                notify: NotifyStack::new(),
            }
        }
    }

    /// A span with free objects for the mcache with index `owner`, which
    /// owns it from now on. Null when the heap is out of memory.
    pub(crate) fn cache_span(&self, heap: &Heap, class: usize, owner: u32) -> *mut Span {
        #[cfg(spanalloc_mutant = "refill_toctou")]
        {
            // Mutant: look at the partial list and take from it in two
            // critical sections, so two caches can take one span.
            let peek = {
                let mut lists = self.lists.lock();
                self.drain(&mut lists, heap);
                lists.partial.head
            };
            if let Some(span) = unsafe { peek.as_ref() } {
                let mut lists = self.lists.lock();
                if span.with_owned(|o, _| o.list) == ListId::Partial {
                    lists.partial.remove(span);
                }
                span.claim_for_cache(owner);
                return peek;
            }
        }
        {
            let mut lists = self.lists.lock();
            self.drain(&mut lists, heap);
            let found = lists.partial.pop().or_else(|| lists.empty.pop());
            if let Some(span) = found {
                span.claim_for_cache(owner);
                return span as *const Span as *mut Span;
            }
        }
        heap.mheap.alloc_span(class, owner)
    }

    /// Takes back a span from an mcache (which has returned its window to
    /// the span's bitmap).
    pub(crate) fn uncache_span(&self, heap: &Heap, span: &Span) {
        let mut lists = self.lists.lock();
        let state = span.publish_central();
        let dest = classify(span, state);
        self.place(&mut lists, heap, span, dest);
    }

    /// Takes back a list of spans from an mcache (linked through
    /// `Owned::next`), under one hold of the lock.
    pub(crate) fn uncache_list(&self, heap: &Heap, first: *mut Span) {
        let mut lists = self.lists.lock();
        let mut at = first;
        // SAFETY: the listed spans are live and the mcache's until published.
        while let Some(span) = unsafe { at.as_ref() } {
            at = span.with_owned(|o, _| {
                let next = o.next;
                o.prev = ptr::null_mut();
                o.next = ptr::null_mut();
                o.list = ListId::None;
                o.has_free = false;
                next
            });
            let state = span.publish_central();
            let dest = classify(span, state);
            self.place(&mut lists, heap, span, dest);
        }
    }

    /// An mcache that frees into a span the mcentral owns takes the span
    /// (its frees into it are then local, with no atomics). Fails if the
    /// span is not the mcentral's any more, or has no object to free.
    pub(crate) fn adopt(&self, heap: &Heap, span: &Span, owner: u32) -> bool {
        let mut lists = self.lists.lock();
        self.drain(&mut lists, heap);
        if span.state.load(Ordering::Acquire) & CENTRAL == 0 {
            return false;
        }
        let list = span.with_owned(|o, _| o.list);
        if list == ListId::Empty {
            return false;
        }
        self.unlink(&mut lists, span, list);
        span.claim_for_cache(owner);
        true
    }

    /// Queues `span` after a freer set its `NOTIFIED` bit (or an mcache
    /// forwards one it does not own), then drains.
    pub(crate) fn notify(&self, heap: &Heap, span: &Span) {
        self.notify.push(span);
        let mut lists = self.lists.lock();
        self.drain(&mut lists, heap);
    }

    /// Gives every empty span back to the mheap (scavenger ticks and
    /// `release()`).
    pub(crate) fn release_empty(&self, heap: &Heap) {
        let mut lists = self.lists.lock();
        self.drain(&mut lists, heap);
        let mut kept = SpanList::new();
        while let Some(span) = lists.empty.pop() {
            if span.retire() {
                heap.mheap.free_span(span as *const Span as *mut Span);
            } else {
                kept.push(span, ListId::Empty);
            }
        }
        while let Some(span) = kept.pop() {
            lists.empty.push(span, ListId::Empty);
        }
    }

    /// Runs `f` on every span on the lists, with the list it is on, under
    /// the lock (after draining the notify stack). Returns the full count.
    pub(crate) fn for_each_listed(&self, heap: &Heap, mut f: impl FnMut(&Span, ListId)) -> usize {
        let mut lists = self.lists.lock();
        self.drain(&mut lists, heap);
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
    fn drain(&self, lists: &mut Lists, heap: &Heap) {
        let mut next = self.notify.take_all();
        // SAFETY: queued spans are live records (NOTIFIED keeps them from
        // being retired until this drain has looked at them).
        while let Some(span) = unsafe { next.as_ref() } {
            next = span.next_notified();
            self.reevaluate(lists, heap, span);
        }
    }

    /// Clears `NOTIFIED` and moves the span to the list its state asks for.
    fn reevaluate(&self, lists: &mut Lists, heap: &Heap, span: &Span) {
        loop {
            let state = span.state.load(Ordering::Acquire);
            debug_assert!(state & NOTIFIED != 0);
            if state & CENTRAL == 0 {
                // An mcache took it meanwhile; it will see the frees itself.
                if span.finish_notify(state, false) {
                    return;
                }
                continue;
            }
            let dest = classify(span, state);
            if span.finish_notify(state, dest == ListId::Full) {
                let from = span.with_owned(|o, _| o.list);
                self.unlink(lists, span, from);
                self.place(lists, heap, span, dest);
                return;
            }
        }
    }

    fn unlink(&self, lists: &mut Lists, span: &Span, from: ListId) {
        match from {
            ListId::Partial => lists.partial.remove(span),
            ListId::Empty => lists.empty.remove(span),
            ListId::Full => {
                lists.nfull -= 1;
                span.with_owned(|o, _| o.list = ListId::None);
            }
            ListId::None => {}
            ListId::Cache => debug_assert!(false, "an mcache's listed span in the mcentral"),
        }
    }

    /// Puts a span the mcentral owns (and that is on no list) where `dest`
    /// says; an empty span beyond the budget goes back to the mheap.
    fn place(&self, lists: &mut Lists, heap: &Heap, span: &Span, dest: ListId) {
        match dest {
            ListId::Partial => lists.partial.push(span, ListId::Partial),
            ListId::Full => {
                lists.nfull += 1;
                span.with_owned(|o, _| o.list = ListId::Full);
            }
            ListId::Empty => {
                if lists.empty.len >= empty_budget(span.class as usize) && span.retire() {
                    heap.mheap.free_span(span as *const Span as *mut Span);
                } else {
                    lists.empty.push(span, ListId::Empty);
                }
            }
            ListId::None | ListId::Cache => debug_assert!(false, "no destination for a span"),
        }
    }

    /// Lock handle for `fork`.
    #[cfg(not(loom))]
    pub(crate) fn lock_for_fork(&self) -> &crate::sync::RawLock {
        self.lists.raw()
    }
}

/// Which list a span the mcentral owns belongs on, from its state.
fn classify(span: &Span, state: u64) -> ListId {
    let pending = mspan::pending(state);
    if pending == mspan::nalloc(state) {
        ListId::Empty
    } else if pending > 0 || span.with_owned(|o, _| o.nfree) > 0 {
        ListId::Partial
    } else {
        ListId::Full
    }
}
