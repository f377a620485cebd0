//! mspan: a run of pages and the state of the objects in it.
//!
//! A span is a run of runtime pages handed out by the mheap. A small span is
//! cut into `nelems` objects of one size class; a large span is one object.
//! The `Span` record lives in allocator metadata (the mheap's span pool),
//! never in the pages it describes, so nothing a user writes into an object
//! can corrupt it (invariant 2).
//!
//! # Who may touch what
//!
//! - **Identity** (`base`, `class`, `nelems`, ...) is written by the mheap
//!   while it alone holds the span and read by anyone holding a pointer into
//!   it.
//! - **The owner view** (`owned`: the free bitmap, the list links) belongs
//!   to the span's single owner: the mcache that holds it, or its mcentral
//!   under the mcentral's lock (invariant 1). A bit set in `free_bits` is a
//!   free object.
//! - **The shared part** (`state`, `remote_bits`) is where frees from
//!   anyone but the owner land, lock-free.
//!
//! # Frees that are not the owner's
//!
//! A thread that frees an object of a span it does not own sets the
//! object's bit in `remote_bits` (`fetch_or`), *then* adds the number of
//! bits it set to `pending` in `state` (a CAS). The owner merges remote bits
//! into its bitmap when it runs out of free objects ([`Span::collect`]).
//! The free itself takes no lock; callers batch frees of one bitmap word so
//! a stream of frees into one span costs one `fetch_or` and one CAS per
//! word.
//!
//! `state` packs, in one atomic word:
//!
//! | bits  | field      | meaning |
//! |-------|------------|---------|
//! | 0     | `CENTRAL`  | the mcentral owns the span (no mcache does) |
//! | 1     | `FULL`     | ... and it sits on no list: no free object at hand-over |
//! | 2     | `NOTIFIED` | a freer has queued the span on a notify stack |
//! | 4-20  | `owner`    | the index of the mcache that owns the span (0: none) |
//! | 21-31 | `nalloc`   | objects allocated when the mcentral took the span |
//! | 32-63 | `pending`  | remote frees counted and not yet merged (signed) |
//!
//! A freer's CAS sees the whole story and decides who must hear of it:
//!
//! - **An mcache owns the span.** The owner merges remote frees when the
//!   span is its current one, but it also keeps spans with no free object
//!   aside. So when `pending` rises above zero, the freer sets `NOTIFIED`
//!   and pushes the span on the owner's notify stack (in the [`Heap`]'s
//!   table, by index); the owner pops it on its next refill and puts it
//!   back among its spans with free objects.
//! - **The mcentral owns the span.** Nobody allocates from it, so when
//!   `pending` rises above zero on a `FULL` span the span has become
//!   reusable, and when `pending` reaches `nalloc` every object is free. In
//!   either case the freer sets `NOTIFIED` and pushes the span on its
//!   mcentral's notify stack; the mcentral moves it (to the partial list, or
//!   the empty list and on to the mheap) under its lock.
//!
//! `NOTIFIED` is cleared only by whoever pops the span, so a span is on at
//! most one stack at a time; a stack holder that finds a span it does not
//! own forwards it to the mcentral. A span is given back to the mheap only
//! when it is the mcentral's, not `NOTIFIED`, and `pending == nalloc`: then
//! no freer can still be touching it.
//!
//! [`Heap`]: crate::Heap
//!
//! `pending` may dip below zero: the owner merges every bit it finds, and a
//! freer whose bits were merged may not have counted them yet. Such a freer
//! brings `pending` back up; the `pending == nalloc` test above can only
//! succeed once every freer has counted.

use core::ptr;

use crate::report;
use crate::sizeclass::CLASSES;
use crate::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use crate::sync::{UnsafeCell, const_fn_unless_loom};

/// What a span is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SpanKind {
    /// In the mheap's span pool, describing nothing.
    Free = 0,
    /// Objects of one size class.
    Small = 1,
    /// One large object.
    Large = 2,
}

/// Which list a span is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListId {
    /// On no list: an mcache's current span, a floating span, or the mheap's.
    None,
    /// On its owning mcache's list of spans (all but its current ones).
    Cache,
    /// Has free objects.
    Partial,
    /// Every object is free.
    Empty,
    /// Owned by the mcentral with no free object, on no list; a remote free
    /// brings it back through the notify stack.
    Full,
}

/// The owner's view of a span (see the module docs for who the owner is).
#[derive(Debug)]
pub(crate) struct Owned {
    /// Free objects in `free_bits` (the owner's own count; an mcache's
    /// current window is held outside the bitmap and not counted here).
    pub(crate) nfree: u32,
    /// List links: the mcentral's lists, an mcache's list of the spans it
    /// owns, the mheap's span pool.
    pub(crate) prev: *mut Span,
    pub(crate) next: *mut Span,
    pub(crate) list: ListId,
    /// An mcache's stack of its spans with free objects.
    pub(crate) next_free: *mut Span,
    /// On that stack.
    pub(crate) has_free: bool,
}

pub(crate) const CENTRAL: u64 = 1;
pub(crate) const FULL: u64 = 2;
pub(crate) const NOTIFIED: u64 = 4;

// The `state` of a large span: its object is in use; kept in a thread's
// large-object cache (freed by the user); or on its way back to the mheap.
// A free that does not find `LARGE_LIVE` is a double free.
pub(crate) const LARGE_LIVE: u64 = 0;
pub(crate) const LARGE_CACHED: u64 = 1;
pub(crate) const LARGE_RETURNED: u64 = 2;
const OWNER_SHIFT: u32 = 4;
const OWNER_MASK: u64 = (MAX_OWNER as u64) << OWNER_SHIFT;
const NALLOC_SHIFT: u32 = 21;
const NALLOC_MASK: u64 = 0x7ff << NALLOC_SHIFT;
const PENDING_SHIFT: u32 = 32;
/// The largest mcache index a span state can name (0 names none).
pub(crate) const MAX_OWNER: u32 = (1 << 17) - 1;

static_assertions::const_assert!(crate::sizeclass::MAX_NELEMS < 0x7ff);
static_assertions::const_assert_eq!(OWNER_MASK & NALLOC_MASK, 0);

/// The mcache index in a state word.
#[inline]
pub(crate) fn owner(state: u64) -> u32 {
    ((state & OWNER_MASK) >> OWNER_SHIFT) as u32
}

#[inline]
fn with_owner(state: u64, owner: u32) -> u64 {
    (state & !OWNER_MASK) | ((owner as u64) << OWNER_SHIFT)
}

/// The state of a span owned by mcache `owner` (no flags, nothing pending).
#[inline]
pub(crate) fn owned_by(owner: u32) -> u64 {
    with_owner(0, owner)
}

/// Decoders for the packed `state` word.
#[inline]
pub(crate) fn pending(state: u64) -> i32 {
    (state >> PENDING_SHIFT) as u32 as i32
}

#[inline]
pub(crate) fn nalloc(state: u64) -> i32 {
    ((state & NALLOC_MASK) >> NALLOC_SHIFT) as i32
}

#[inline]
fn with_nalloc(state: u64, n: u32) -> u64 {
    (state & !NALLOC_MASK) | ((n as u64) << NALLOC_SHIFT)
}

#[inline]
fn add_pending(state: u64, k: i32) -> u64 {
    state.wrapping_add(((k as i64) << PENDING_SHIFT) as u64)
}

/// A span record. See the module docs.
#[repr(C, align(64))]
pub(crate) struct Span {
    /// First byte of the span's pages.
    pub(crate) base: usize,
    /// Number of runtime pages.
    pub(crate) npages: usize,
    /// Object size (small) or bytes requested (large).
    pub(crate) elem_size: u32,
    pub(crate) div_magic: u32,
    pub(crate) nelems: u32,
    pub(crate) class: u8,
    pub(crate) kind: SpanKind,
    /// Bitmap words (capacity of the storage after the record).
    pub(crate) words: u8,
    /// Span-pool bucket this record came from.
    pub(crate) bucket: u8,
    /// Large spans: some page may hold old data (see `alloc_zeroed`).
    pub(crate) needzero: bool,
    pub(crate) owned: UnsafeCell<Owned>,
    /// Free bitmap storage (`words` words, owner view; read only through
    /// `owned`).
    free_bits: *mut u64,
    /// Remote-free bitmap storage (`words` words).
    remote_bits: *const AtomicU64,
    /// Small spans: the packed word of the module docs. Large spans:
    /// `LARGE_LIVE`, `LARGE_CACHED` or `LARGE_RETURNED`.
    pub(crate) state: AtomicU64,
    /// Link on the mcentral's notify stack.
    pub(crate) notify_next: UnsafeCell<*mut Span>,
}

// SAFETY: a span is shared between threads by design; every mutable field
// is an atomic or sits behind `UnsafeCell` with the ownership rules above.
unsafe impl Send for Span {}
unsafe impl Sync for Span {}

/// A lock-free stack of spans, linked through `Span::notify_next`: the
/// notify stacks of the mcentrals and of the mcaches. Any thread pushes a
/// span whose `NOTIFIED` bit it set; the stack's holder takes them all at
/// once, so there is no ABA.
#[repr(transparent)]
pub(crate) struct NotifyStack(AtomicPtr<Span>);

impl NotifyStack {
    const_fn_unless_loom! {
        pub(crate) fn new() -> NotifyStack {
            NotifyStack(AtomicPtr::new(ptr::null_mut()))
        }
    }

    /// Pushes `span`, whose `NOTIFIED` bit the caller set.
    pub(crate) fn push(&self, span: &Span) {
        let me = span as *const Span as *mut Span;
        let mut head = self.0.load(Ordering::Relaxed);
        loop {
            // SAFETY: NOTIFIED makes us the only writer of the link until the
            // holder takes the span, which happens after our push.
            span.notify_next.with_mut(|p| unsafe { *p = head });
            match self.0.compare_exchange_weak(head, me, PUSH, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => head = x,
            }
        }
    }

    /// Whether the stack looks empty (a hint, for skipping `take_all`).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.load(Ordering::Relaxed).is_null()
    }

    /// Takes every span; returns the first (walk with [`Span::next_notified`]).
    pub(crate) fn take_all(&self) -> *mut Span {
        self.0.swap(ptr::null_mut(), Ordering::Acquire)
    }
}

/// A push publishes the span's link and state to the stack's holder.
#[cfg(not(spanalloc_mutant = "notify_push_relaxed"))]
const PUSH: Ordering = Ordering::Release;
#[cfg(spanalloc_mutant = "notify_push_relaxed")]
const PUSH: Ordering = Ordering::Relaxed;

/// Bitmap storage per span-pool bucket (words). Bucket 0 (no bitmap) is for
/// large spans.
pub(crate) const BUCKET_WORDS: [usize; 6] = [0, 1, 2, 4, 8, 16];

/// The bucket whose bitmaps hold `words` words.
pub(crate) fn bucket_for(words: usize) -> usize {
    let mut b = 0;
    while BUCKET_WORDS[b] < words {
        b += 1;
    }
    b
}

/// Bytes of a span record plus its bitmaps in `bucket`.
pub(crate) fn record_bytes(bucket: usize) -> usize {
    let raw = size_of::<Span>() + 2 * 8 * BUCKET_WORDS[bucket];
    (raw + 63) & !63
}

/// Who must hear of a remote free (see [`Span::free_remote`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Nobody.
    None,
    /// The mcentral: push the span on its notify stack.
    Central,
    /// The mcache with this index: push the span on its notify stack.
    Owner(u32),
}

impl Span {
    /// Builds a record in place in fresh metadata memory.
    ///
    /// # Safety
    /// `at` must be valid for `record_bytes(bucket)` bytes, 64-aligned, and
    /// not in use.
    pub(crate) unsafe fn create(at: *mut Span, bucket: usize) -> *mut Span {
        let words = BUCKET_WORDS[bucket];
        // SAFETY: the caller gives us the whole record; the bitmaps follow
        // the struct inside it.
        unsafe {
            let free_bits = at.add(1).cast::<u64>();
            let remote_bits = free_bits.add(words).cast::<AtomicU64>();
            for i in 0..words {
                free_bits.add(i).write(0);
                remote_bits.add(i).write(AtomicU64::new(0));
            }
            at.write(Span {
                base: 0,
                npages: 0,
                elem_size: 0,
                div_magic: 0,
                nelems: 0,
                class: 0,
                kind: SpanKind::Free,
                words: words as u8,
                bucket: bucket as u8,
                needzero: false,
                owned: UnsafeCell::new(Owned {
                    nfree: 0,
                    prev: ptr::null_mut(),
                    next: ptr::null_mut(),
                    list: ListId::None,
                    next_free: ptr::null_mut(),
                    has_free: false,
                }),
                free_bits,
                remote_bits,
                state: AtomicU64::new(0),
                notify_next: UnsafeCell::new(ptr::null_mut()),
            });
        }
        at
    }

    /// Makes this record describe a small span of `class` at `base`, every
    /// object free, owned by the mcache with index `owner`.
    ///
    /// # Safety
    /// The caller (the mheap, under its lock) must be the record's only user.
    pub(crate) unsafe fn init_small(&mut self, base: usize, class: usize, owner: u32) {
        let info = CLASSES[class];
        self.base = base;
        self.npages = info.pages as usize;
        self.elem_size = info.size;
        self.div_magic = info.div_magic;
        self.nelems = info.nelems;
        self.class = class as u8;
        self.kind = SpanKind::Small;
        self.needzero = false;
        let words = info.nelems.div_ceil(64) as usize;
        debug_assert!(words <= self.words as usize);
        let (free_bits, remote) = (self.free_bits, self.remote_bits);
        self.owned.with_mut(|o| {
            // SAFETY: the caller is the only user of the record.
            let o = unsafe { &mut *o };
            o.nfree = info.nelems;
            o.prev = ptr::null_mut();
            o.next = ptr::null_mut();
            o.list = ListId::None;
            o.next_free = ptr::null_mut();
            o.has_free = false;
            for w in 0..words {
                let left = info.nelems as usize - w * 64;
                let bits = if left >= 64 { !0 } else { (1u64 << left) - 1 };
                // SAFETY: w < words <= capacity.
                unsafe {
                    free_bits.add(w).write(bits);
                    (*remote.add(w)).store(0, Ordering::Relaxed);
                }
            }
        });
        self.state.store(owned_by(owner), Ordering::Relaxed);
    }

    /// Makes this record describe one large object of `npages` pages.
    pub(crate) fn init_large(&mut self, base: usize, npages: usize, size: usize, needzero: bool) {
        self.base = base;
        self.npages = npages;
        self.elem_size = size.min(u32::MAX as usize) as u32;
        self.div_magic = 0;
        self.nelems = 1;
        self.class = 0;
        self.kind = SpanKind::Large;
        self.needzero = needzero;
        self.state.store(LARGE_LIVE, Ordering::Relaxed);
    }

    /// Words of bitmap in use for this span's objects.
    #[inline]
    pub(crate) fn used_words(&self) -> usize {
        (self.nelems as usize).div_ceil(64)
    }

    /// The object index of `addr`, or `None` if `addr` is not the start of
    /// one of the span's objects.
    #[inline]
    pub(crate) fn object_index(&self, addr: usize) -> Option<usize> {
        let off = addr.wrapping_sub(self.base);
        if off >= self.nelems as usize * self.elem_size as usize {
            return None;
        }
        let idx = ((off as u64 * self.div_magic as u64) >> 32) as usize;
        if idx * self.elem_size as usize == off { Some(idx) } else { None }
    }

    /// Address of object `idx`.
    #[inline]
    pub(crate) fn object_addr(&self, idx: usize) -> usize {
        self.base + idx * self.elem_size as usize
    }

    // -----------------------------------------------------------------------
    // The owner view. Callers must own the span (be its mcache, or hold its
    // mcentral's lock while the mcentral owns it).

    /// Pushes the span (owned by the caller) at the front of the intrusive
    /// list `head` (through `Owned::prev` / `next`), marked as on list `id`.
    pub(crate) fn link_front(&self, head: &mut *mut Span, id: ListId) {
        let old = *head;
        self.with_owned(|o, _| {
            o.prev = ptr::null_mut();
            o.next = old;
            o.list = id;
        });
        let me = self as *const Span as *mut Span;
        // SAFETY: list members are live records owned by the caller.
        if let Some(h) = unsafe { old.as_ref() } {
            h.with_owned(|o, _| o.prev = me);
        }
        *head = me;
    }

    /// Takes the span (owned by the caller) off the intrusive list `head`
    /// it is on.
    pub(crate) fn unlink(&self, head: &mut *mut Span) {
        let (prev, next) = self.with_owned(|o, _| {
            let links = (o.prev, o.next);
            o.prev = ptr::null_mut();
            o.next = ptr::null_mut();
            o.list = ListId::None;
            links
        });
        // SAFETY: list members are live records owned by the caller.
        match unsafe { prev.as_ref() } {
            Some(p) => p.with_owned(|o, _| o.next = next),
            None => *head = next,
        }
        // SAFETY: as above.
        if let Some(n) = unsafe { next.as_ref() } {
            n.with_owned(|o, _| o.prev = prev);
        }
    }

    /// Runs `f` on the owner view and the free bitmap.
    #[inline]
    pub(crate) fn with_owned<R>(&self, f: impl FnOnce(&mut Owned, &mut [u64]) -> R) -> R {
        let words = self.used_words();
        let bits = self.free_bits;
        self.owned.with_mut(|o| {
            // SAFETY: the caller owns the span, so nobody else touches the
            // owner view or the bitmap (loom checks this through `owned`).
            unsafe { f(&mut *o, core::slice::from_raw_parts_mut(bits, words)) }
        })
    }

    /// Takes the free objects of the first bitmap word at or after `from`
    /// (cyclically) that has any, clearing it. Returns (word, bits).
    pub(crate) fn take_word(&self, from: usize) -> Option<(usize, u64)> {
        self.with_owned(|o, bits| {
            if o.nfree == 0 {
                return None;
            }
            let n = bits.len();
            let mut w = if from < n { from } else { 0 };
            for _ in 0..n {
                let b = bits[w];
                if b != 0 {
                    bits[w] = 0;
                    o.nfree -= b.count_ones();
                    return Some((w, b));
                }
                w += 1;
                if w == n {
                    w = 0;
                }
            }
            None
        })
    }

    /// Puts free objects back into bitmap word `w` (an mcache's window, or a
    /// local free). Returns the bits that were already free (a double free)
    /// — zero when all is well; nothing is changed in that case.
    pub(crate) fn give_back(&self, w: usize, mask: u64) -> u64 {
        self.with_owned(|o, bits| {
            let dup = bits[w] & mask;
            if dup == 0 {
                bits[w] |= mask;
                o.nfree += mask.count_ones();
            }
            dup
        })
    }

    /// Frees object `idx` in the owner's view; returns false (and changes
    /// nothing) if it is already free. The one-object [`Span::give_back`] of
    /// the free path: no slice, no bounds check (`idx < nelems`).
    #[inline]
    pub(crate) fn free_one(&self, idx: usize) -> bool {
        debug_assert!(idx < self.nelems as usize);
        let (word, bit) = (idx / 64, 1u64 << (idx % 64));
        let bits = self.free_bits;
        self.owned.with_mut(|o| {
            // SAFETY: the caller owns the span; idx < nelems, so the word is
            // inside the bitmap.
            unsafe {
                let w = bits.add(word);
                if *w & bit != 0 {
                    return false;
                }
                *w |= bit;
                (*o).nfree += 1;
                true
            }
        })
    }

    /// Merges the remote frees into the owner's bitmap. Returns how many
    /// objects it merged. Aborts on an object freed twice.
    pub(crate) fn collect(&self) -> u32 {
        if pending(self.state.load(Ordering::Acquire)) <= 0 {
            return 0;
        }
        let remote = self.remote_bits;
        let (merged, dup) = self.with_owned(|o, bits| {
            let mut merged = 0;
            for (w, word) in bits.iter_mut().enumerate() {
                // SAFETY: w < used_words <= capacity.
                let r = unsafe { &*remote.add(w) };
                if r.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let got = r.swap(0, Ordering::Acquire);
                if *word & got != 0 {
                    return (merged, Some((w, *word & got)));
                }
                *word |= got;
                merged += got.count_ones();
            }
            o.nfree += merged;
            (merged, None)
        });
        if let Some((w, dup)) = dup {
            report::double_free(self.object_addr(w * 64 + dup.trailing_zeros() as usize), self.elem_size as usize);
        }
        // Subtract what was merged, not the count read above: a freer may
        // have set its bits and not counted them yet.
        #[cfg(spanalloc_mutant = "collect_trusts_count")]
        let merged = merged.min(pending(self.state.load(Ordering::Acquire)).max(0) as u32);
        if merged > 0 {
            self.state.fetch_sub((merged as u64) << PENDING_SHIFT, Ordering::AcqRel);
        }
        merged
    }

    /// Remote frees landed and not yet merged (bits set in `remote_bits`).
    pub(crate) fn remote_count(&self) -> u32 {
        (0..self.used_words())
            // SAFETY: w < used_words <= capacity.
            .map(|w| unsafe { &*self.remote_bits.add(w) }.load(Ordering::Acquire).count_ones())
            .sum()
    }

    /// Hands the span from its mcache to the mcentral: the caller holds the
    /// mcentral's lock and has put its window back. Returns the state now
    /// published (with `CENTRAL` set).
    pub(crate) fn publish_central(&self) -> u64 {
        let nfree = self.with_owned(|o, _| o.nfree);
        let nalloc_now = self.nelems - nfree;
        let mut s = self.state.load(Ordering::Relaxed);
        #[cfg(spanalloc_mutant = "publish_store")]
        {
            // Mutant: a plain store loses a remote free counted meanwhile.
            let mut n = with_owner(with_nalloc(s, nalloc_now), 0) | CENTRAL;
            if nfree == 0 && pending(s) <= 0 {
                n |= FULL;
            }
            crate::sync::spin_point();
            self.state.store(n, Ordering::Release);
            return n;
        }
        #[allow(unreachable_code)]
        loop {
            debug_assert_eq!(s & CENTRAL, 0, "publishing a span the mcache does not own");
            let mut n = with_owner(with_nalloc(s, nalloc_now), 0) | CENTRAL;
            n &= !FULL;
            if nfree == 0 && pending(s) <= 0 {
                n |= FULL;
            }
            match self.state.compare_exchange_weak(s, n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return n,
                Err(x) => s = x,
            }
        }
    }

    /// Whether mcache `owner` (not 0) owns the span, as of `state`: only
    /// that mcache writes states naming it as owner, so it cannot see a
    /// stale one.
    #[inline]
    pub(crate) fn owned_by_cache(state: u64, owner: u32) -> bool {
        owner != 0 && state & CENTRAL == 0 && self::owner(state) == owner
    }

    /// Takes the span from the mcentral for the mcache with index `owner`
    /// (caller holds the mcentral's lock). Keeps `pending` and `NOTIFIED`.
    pub(crate) fn claim_for_cache(&self, owner: u32) {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            let n = with_owner(with_nalloc(s, 0), owner) & !(CENTRAL | FULL);
            match self.state.compare_exchange_weak(s, n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => s = x,
            }
        }
    }

    // -----------------------------------------------------------------------
    // Frees from anyone but the owner.

    /// Frees the objects `mask` of bitmap word `w` from a thread that does
    /// not own the span. Returns who the caller must push the span to: its
    /// mcentral (a central span became reusable or empty) or its owning
    /// mcache (an owned span got its first remote free). Aborts on an object
    /// freed twice.
    pub(crate) fn free_remote(&self, w: usize, mask: u64) -> Wake {
        debug_assert!(w < self.used_words());
        // SAFETY: w < used_words <= capacity.
        let word = unsafe { &*self.remote_bits.add(w) };
        // The bits land before the count: once the count says every object
        // is free, nobody touches the span any more (see the module docs).
        #[cfg(not(spanalloc_mutant = "count_before_bits"))]
        let prev = word.fetch_or(mask, Ordering::Release);
        #[cfg(spanalloc_mutant = "count_before_bits")]
        let prev = 0;
        if prev & mask != 0 {
            let dup = prev & mask;
            report::double_free(self.object_addr(w * 64 + dup.trailing_zeros() as usize), self.elem_size as usize);
        }
        let k = mask.count_ones() as i32;
        let mut s = self.state.load(Ordering::Relaxed);
        #[cfg(spanalloc_mutant = "count_before_bits")]
        let mut late = Some((word, mask));
        loop {
            let n = add_pending(s, k);
            let crossing = pending(s) <= 0 && pending(n) > 0;
            let wake = if s & NOTIFIED != 0 {
                Wake::None
            } else if s & CENTRAL != 0 {
                if (s & FULL != 0 && crossing) || pending(n) == nalloc(n) { Wake::Central } else { Wake::None }
            } else if crossing && owner(s) != 0 && cfg!(not(spanalloc_mutant = "owner_not_told")) {
                // The owner may hold the span among its full ones: tell it.
                Wake::Owner(owner(s))
            } else {
                Wake::None
            };
            let n = if wake == Wake::None { n } else { n | NOTIFIED };
            match self.state.compare_exchange_weak(s, n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    #[cfg(spanalloc_mutant = "count_before_bits")]
                    if let Some((word, mask)) = late.take() {
                        word.fetch_or(mask, Ordering::Release);
                    }
                    return wake;
                }
                Err(x) => s = x,
            }
        }
    }

    /// The next span on the notify stack this one was taken from.
    pub(crate) fn next_notified(&self) -> *mut Span {
        // SAFETY: the taker of the stack reads the links its pushers wrote.
        self.notify_next.with(|p| unsafe { *p })
    }

    /// Clears `NOTIFIED` (the owning mcache, after taking the span off its
    /// notify stack). Returns the new state.
    pub(crate) fn clear_notified(&self) -> u64 {
        self.state.fetch_and(!NOTIFIED, Ordering::AcqRel) & !NOTIFIED
    }

    /// Clears `NOTIFIED` if the state is still `s`, optionally updating
    /// `FULL` (the mcentral's drain, under its lock).
    pub(crate) fn finish_notify(&self, s: u64, full: bool) -> bool {
        let mut n = s & !(NOTIFIED | FULL);
        if full {
            n |= FULL;
        }
        self.state.compare_exchange(s, n, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Retires an mcentral span whose objects are all free so the mheap can
    /// take it back. Fails if a free is still on its way (or queued).
    pub(crate) fn retire(&self) -> bool {
        let s = self.state.load(Ordering::Acquire);
        if s & (CENTRAL | NOTIFIED) != CENTRAL || pending(s) != nalloc(s) {
            return false;
        }
        self.state.compare_exchange(s, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Record([u8; 512]);

    fn span_of_class(class: usize, rec: &mut Record) -> &mut Span {
        let words = CLASSES[class].nelems.div_ceil(64) as usize;
        let bucket = bucket_for(words);
        assert!(record_bytes(bucket) <= 512);
        // SAFETY: the record is large enough and aligned.
        unsafe {
            let s = Span::create(rec as *mut Record as *mut Span, bucket);
            (*s).init_small(0x10000, class, 1);
            &mut *s
        }
    }

    #[test]
    fn new_span_has_every_object_free_and_nothing_pending() {
        let mut rec = Record([0; 512]);
        let s = span_of_class(3, &mut rec); // 24 B: 341 objects, 6 words
        assert_eq!(s.with_owned(|o, b| (o.nfree, b.iter().map(|w| w.count_ones()).sum::<u32>())), (341, 341));
        assert_eq!(pending(s.state.load(Ordering::Relaxed)), 0);
    }

    #[test]
    fn object_index_accepts_only_object_starts() {
        let mut rec = Record([0; 512]);
        let s = span_of_class(7, &mut rec); // 80 B, 102 objects
        assert_eq!(s.object_index(0x10000), Some(0));
        assert_eq!(s.object_index(0x10000 + 80 * 101), Some(101));
        assert_eq!(s.object_index(0x10000 + 80 * 102), None, "tail waste");
        assert_eq!(s.object_index(0x10000 + 81), None);
        assert_eq!(s.object_index(0x10000 - 80), None);
    }

    #[test]
    fn remote_frees_are_merged_by_collect() {
        let mut rec = Record([0; 512]);
        let s = span_of_class(6, &mut rec); // 64 B, 128 objects
        let (w, bits) = s.take_word(0).unwrap();
        assert_eq!((w, bits), (0, !0));
        assert_eq!(s.free_remote(0, 0b1010), Wake::Owner(1), "the owner hears of the first remote free");
        assert_eq!(s.free_remote(0, 0b0100), Wake::None, "already notified");
        assert_eq!(pending(s.state.load(Ordering::Relaxed)), 3);
        assert_eq!(s.collect(), 3);
        assert_eq!(s.with_owned(|_, b| b[0]), 0b1110);
        assert_eq!(pending(s.state.load(Ordering::Relaxed)), 0);
    }

    #[test]
    fn remote_free_into_full_central_span_asks_for_notify_once() {
        let mut rec = Record([0; 512]);
        let s = span_of_class(10, &mut rec); // 128 B, 64 objects
        s.take_word(0).unwrap();
        let st = s.publish_central();
        assert_eq!(st & (CENTRAL | FULL), CENTRAL | FULL);
        assert_eq!(nalloc(st), 64);
        assert_eq!(s.free_remote(0, 1), Wake::Central, "first free of a full span wakes the mcentral");
        assert_eq!(s.free_remote(0, 2), Wake::None, "already notified");
        assert!(s.finish_notify(s.state.load(Ordering::Relaxed), false));
        assert_eq!(s.free_remote(0, 4), Wake::None, "partial now: no wake until empty");
        assert!(!s.retire());
        assert_eq!(s.free_remote(0, !7), Wake::Central, "last free wakes the mcentral");
        let st = s.state.load(Ordering::Relaxed);
        assert!(s.finish_notify(st, false));
        assert!(s.retire(), "every object free and nothing queued");
    }
}
