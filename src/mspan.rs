//! mspan: a run of pages and the state of the objects in it.
//!
//! A span is a run of runtime pages handed out by the mheap. A small span is
//! cut into `nelems` objects of one size class; a large span is one object.
//! The `Span` record lives in allocator metadata (the mheap's span pool),
//! never in the pages it describes, so nothing a user writes into an object
//! can corrupt it (invariant 2).
//!
//! # Where an object's state lives
//!
//! A small object is in exactly one of these states, and each state is
//! written by one party:
//!
//! | state | where it shows | written by |
//! |---|---|---|
//! | free in the span | its bit in the record's `free_bits` | the span's owner |
//! | free in a cache's stack | a pointer in the stack, no bit set | that cache, which owns the span |
//! | allocated | its bit in the arena's `alloc` bitmap | the span's owner |
//! | freed by a non-owner, not merged | `alloc` and `remote` bits both set | the freer sets `remote` |
//!
//! The **owner** is the mcache that holds the span or, for a span no cache
//! holds, its mcentral under its lock (invariant 1). Only the owner writes
//! `free_bits` and the span's `alloc` bits, so it needs no atomic
//! read-modify-write for them; anyone may read `alloc` bits.
//!
//! # Frees that are not the owner's
//!
//! A thread that frees an object of a span it does not own checks that the
//! object is allocated, sets its `remote` bit with one `fetch_or` (which
//! also says whether another free got there first: a double free), and
//! leaves the rest to the owner, which merges remote frees into its view
//! ([`Span::collect`]) when it runs out of objects. The free is published
//! at once, so a second free of the object, by anyone, in any order, finds
//! it already free; nothing is batched in the freeing thread.
//!
//! `state` packs, in one atomic word:
//!
//! | bits  | field      | meaning |
//! |-------|------------|---------|
//! | 0     | `CENTRAL`  | the mcentral owns the span (no mcache does) |
//! | 1     | `FULL`     | ... and it sits on no list: it had no free object when listed |
//! | 2     | `NOTIFIED` | a freer has queued the span on its mcentral's notify stack |
//! | 3     | `POOL`     | the record describes no span (it is in the span pool) |
//! | 32-63 | `gen`      | the record's life: bumped each time it describes a new span |
//!
//! A span an mcache owns has no flag set. Freers read `state` only to find
//! the one transition somebody must hear of: a `FULL` span got a free
//! object. That freer swaps `FULL` for `NOTIFIED` (a CAS) and pushes the
//! span on its mcentral's notify stack; the mcentral lists it again under
//! its lock. `NOTIFIED` is cleared only by the mcentral that pops the span,
//! so a span is on at most one stack, and a span that is `NOTIFIED` is
//! never retired.
//!
//! # Hand-overs and late frees
//!
//! Whoever changes a span's owner or marks it `FULL` does it in this order:
//! first the new `state` (a CAS), then a `SeqCst` fence, then it reads the
//! span's remote words and merges what they hold ([`Span::collect`] with
//! `sync`). A freer does the opposite: its `fetch_or` on its word, then its
//! read of `state`, both `SeqCst`. Either the merge sees the freer's bit, or
//! the freer sees the new state (so it queues a span that became `FULL`):
//! the fence forbids both reading the old values (C++20's rules for
//! `SeqCst` fences, which Rust follows). No free is stranded in a span that
//! its owner believes full. On x86 the freer's side costs nothing beyond
//! its `lock or`; under loom, which orders fences but not `SeqCst`
//! accesses among themselves, the freer's pair carries an explicit fence.
//!
//! # Retiring
//!
//! A span whose objects are all free goes back to the mheap from its
//! mcentral ([`Span::retire`]): `state` becomes `POOL` with the next `gen`.
//! A freer whose free was merged may still be between its `fetch_or` and
//! its look at `state`; it compares the `gen` it read before freeing, finds
//! another life, and does nothing.

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
    /// On no list: an mcache's current span, a `FULL` mcentral span, or
    /// the mheap's.
    None,
    /// On its mcache's list of spans with free objects (not the current one).
    CachePartial,
    /// On its mcache's list of spans with no free object, waiting to go to
    /// the mcentral.
    CacheFull,
    /// On the mcentral's list of spans with free objects.
    Partial,
    /// On the mcentral's list of spans whose objects are all free.
    Empty,
    /// The mcentral's, with no free object: `FULL`, on no list.
    Full,
}

/// The owner's view of a span (see the module docs for who the owner is).
#[derive(Debug)]
pub(crate) struct Owned {
    /// Objects free in `free_bits`.
    pub(crate) nfree: u32,
    /// List links: the mcentral's lists, an mcache's lists, the mheap's
    /// span pool.
    pub(crate) prev: *mut Span,
    pub(crate) next: *mut Span,
    pub(crate) list: ListId,
}

pub(crate) const CENTRAL: u64 = 1;
pub(crate) const FULL: u64 = 2;
pub(crate) const NOTIFIED: u64 = 4;
pub(crate) const POOL: u64 = 8;
const FLAGS: u64 = CENTRAL | FULL | NOTIFIED | POOL;
const GEN_SHIFT: u32 = 32;
/// Where a record's first life starts in `gen`: its chunk's epoch, shifted.
const EPOCH_SHIFT: u32 = 20;

// The `state` of a large span: its object is in use; kept in a thread's
// large-object cache (freed by the user); or on its way back to the mheap.
// A free that does not find `LARGE_LIVE` is a double free.
pub(crate) const LARGE_LIVE: u64 = 0;
pub(crate) const LARGE_CACHED: u64 = 1;
pub(crate) const LARGE_RETURNED: u64 = 2;

/// The record's life in a `state` word.
#[inline]
pub(crate) fn generation(state: u64) -> u32 {
    (state >> GEN_SHIFT) as u32
}

/// The flags of a `state` word.
#[inline]
pub(crate) fn flags(state: u64) -> u64 {
    state & FLAGS
}

/// How a merge takes remote frees: it must acquire, so that the object's
/// next user happens after its freer (mutant `merge_relaxed` weakens the
/// owner's own merges), and a hand-over's also releases the new state to a
/// freer whose `fetch_or` comes after the swap (module docs).
const MERGE: Ordering = Ordering::AcqRel;
#[cfg(not(spanalloc_mutant = "merge_relaxed"))]
const OWNER_MERGE: Ordering = Ordering::AcqRel;
#[cfg(spanalloc_mutant = "merge_relaxed")]
const OWNER_MERGE: Ordering = Ordering::Relaxed;

/// A span record. See the module docs.
///
/// The first cache line holds what a free from another thread reads (the
/// span's geometry and `state`); the owner's view, which its refills and
/// merges write, starts the second, so remote frees do not miss on the
/// owner's writes.
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
    /// Free-bitmap words (capacity of the storage after the record).
    pub(crate) words: u8,
    /// Span-pool bucket this record came from.
    pub(crate) bucket: u8,
    /// Large spans: some page may hold old data (see `alloc_zeroed`).
    pub(crate) needzero: bool,
    /// Large spans: the object is a heap-profile sample (its free drops
    /// the record; it never enters a large-object cache).
    pub(crate) sampled: bool,
    /// Small spans: the object carving starts from (see `carve`).
    colour: u16,
    /// Free bitmap storage (`words` words, owner view; read only through
    /// `owned`). Bit `i` set: object `i` is free in the span.
    free_bits: *mut u64,
    /// The packed word of the module docs (small spans). Large spans:
    /// `LARGE_LIVE`, `LARGE_CACHED` or `LARGE_RETURNED`.
    pub(crate) state: AtomicU64,
    /// Link on the mcentral's notify stack.
    pub(crate) notify_next: UnsafeCell<*mut Span>,
    pub(crate) owned: UnsafeCell<Owned>,
}

#[cfg(not(loom))]
static_assertions::const_assert!(core::mem::offset_of!(Span, state) < 64 && core::mem::offset_of!(Span, owned) >= 64);

// SAFETY: a span is shared between threads by design; every mutable field
// is an atomic or sits behind `UnsafeCell` with the ownership rules above.
unsafe impl Send for Span {}
unsafe impl Sync for Span {}

/// A lock-free stack of spans, linked through `Span::notify_next`: an
/// mcentral's notify stack. Any thread pushes a span whose `NOTIFIED` bit
/// it set; the stack's holder takes them all at once, so there is no ABA.
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

/// Bytes of a span record plus its bitmap in `bucket`.
pub(crate) fn record_bytes(bucket: usize) -> usize {
    let raw = size_of::<Span>() + 8 * BUCKET_WORDS[bucket];
    (raw + 63) & !63
}

impl Span {
    /// Builds a record in place in fresh metadata memory, its lives
    /// counted from `epoch` (see `fixalloc`).
    ///
    /// # Safety
    /// `at` must be valid for `record_bytes(bucket)` bytes, 64-aligned, and
    /// not in use.
    pub(crate) unsafe fn create(at: *mut Span, bucket: usize, epoch: u32) -> *mut Span {
        let words = BUCKET_WORDS[bucket];
        // SAFETY: the caller gives us the whole record; the bitmap follows
        // the struct inside it.
        unsafe {
            let free_bits = at.add(1).cast::<u64>();
            for i in 0..words {
                free_bits.add(i).write(0);
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
                sampled: false,
                colour: 0,
                owned: UnsafeCell::new(Owned {
                    nfree: 0,
                    prev: ptr::null_mut(),
                    next: ptr::null_mut(),
                    list: ListId::None,
                }),
                free_bits,
                state: AtomicU64::new(POOL | ((epoch as u64) << (GEN_SHIFT + EPOCH_SHIFT))),
                notify_next: UnsafeCell::new(ptr::null_mut()),
            });
        }
        at
    }

    /// Makes this record describe a small span of `class` at `base`, every
    /// object free, owned by the mcache that asked for it (no flags), in a
    /// new life.
    ///
    /// # Safety
    /// The caller (the mheap, under its lock) must be the record's only user.
    pub(crate) unsafe fn init_small(&mut self, base: usize, class: usize) {
        let info = CLASSES[class];
        self.base = base;
        self.npages = info.pages as usize;
        self.elem_size = info.size;
        self.div_magic = info.div_magic;
        self.nelems = info.nelems;
        self.colour = Span::colour_of(base, info.nelems);
        self.class = class as u8;
        self.kind = SpanKind::Small;
        self.needzero = false;
        let words = info.nelems.div_ceil(64) as usize;
        debug_assert!(words <= self.words as usize);
        let free_bits = self.free_bits;
        self.owned.with_mut(|o| {
            // SAFETY: the caller is the only user of the record.
            let o = unsafe { &mut *o };
            o.nfree = info.nelems;
            o.prev = ptr::null_mut();
            o.next = ptr::null_mut();
            o.list = ListId::None;
            for w in 0..words {
                let left = info.nelems as usize - w * 64;
                let bits = if left >= 64 { !0 } else { (1u64 << left) - 1 };
                // SAFETY: w < words <= capacity.
                unsafe { free_bits.add(w).write(bits) };
            }
        });
        let life = generation(self.state.load(Ordering::Relaxed)).wrapping_add(1);
        self.state.store((life as u64) << GEN_SHIFT, Ordering::Release);
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
        self.sampled = false;
        self.state.store(LARGE_LIVE, Ordering::Relaxed);
    }

    /// Words of free bitmap in use for this span's objects.
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

    /// Bytes the span's objects cover.
    #[inline]
    pub(crate) fn object_bytes(&self) -> usize {
        self.nelems as usize * self.elem_size as usize
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

    /// Objects free in the span (owner view).
    #[inline]
    pub(crate) fn nfree(&self) -> u32 {
        self.with_owned(|o, _| o.nfree)
    }

    /// The object a span's carving starts from: its *colour*, spread by
    /// the span's address. Every span starts on a page, so if every span
    /// handed out its first object first, the objects a program uses most
    /// in each size class would all sit at the same page offset, in the
    /// same few sets of a set-associative cache, and evict each other.
    fn colour_of(base: usize, nelems: u32) -> u16 {
        let h = ((base >> 13) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        (h % nelems.max(1) as u64) as u16
    }

    /// Takes up to `max` free objects, in address order from the span's
    /// colour (see `colour_of`) round to the objects below it, and writes
    /// their addresses to `dst` so that the first is written last:
    /// `dst[n - 1]`, `dst[n - 2]`, ... (a stack popped from its top then
    /// hands them out in that order). Returns `n`.
    ///
    /// # Safety
    /// `dst` must be valid for `max` writes.
    pub(crate) unsafe fn carve(&self, max: usize, dst: *mut usize) -> usize {
        let (base, size) = (self.base, self.elem_size as usize);
        let start = self.colour as usize;
        self.with_owned(|o, bits| {
            let n = max.min(o.nfree as usize);
            let mut left = n;
            let (first, shift) = (start / 64, start % 64);
            let words = bits.len();
            // The start word from the colour up, the words after it, round
            // to the words before it, and the start word below the colour.
            for k in 0..=words {
                if left == 0 {
                    break;
                }
                let w = (first + k) % words;
                let mask = match k {
                    0 => !0u64 << shift,
                    _ if k == words => !(!0u64 << shift),
                    _ => !0,
                };
                let mut avail = bits[w] & mask;
                while avail != 0 && left > 0 {
                    let i = avail.trailing_zeros() as usize;
                    avail &= avail - 1;
                    bits[w] &= !(1 << i);
                    left -= 1;
                    // SAFETY: left < n <= max.
                    unsafe { dst.add(left).write(base + (w * 64 + i) * size) };
                }
            }
            o.nfree -= n as u32;
            n
        })
    }

    /// Frees object `idx` in the owner view; returns false (and changes
    /// nothing) if it is already free.
    #[inline]
    pub(crate) fn free_object(&self, idx: usize) -> bool {
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

    /// Frees, in the owner view, the objects that start at the granules set
    /// in `granules`, the span's object-bitmap word `w` (relative to its
    /// first). Every granule must be an object's start (its `alloc` bit
    /// was set). Returns how many it freed, or the address of one that was
    /// free already.
    fn free_granules(&self, w: usize, granules: u64) -> Result<u32, usize> {
        let bits = self.free_bits;
        let magic = self.div_magic as u64;
        self.owned.with_mut(|o| {
            let mut g = granules;
            while g != 0 {
                let off = w * 512 + g.trailing_zeros() as usize * 8;
                g &= g - 1;
                let idx = ((off as u64 * magic) >> 32) as usize;
                debug_assert_eq!(Some(idx), self.object_index(self.base + off));
                // SAFETY: the caller owns the span; an object's start gives
                // an index below nelems, inside the bitmap.
                unsafe {
                    let word = bits.add(idx / 64);
                    if *word & (1 << (idx % 64)) != 0 {
                        return Err(self.base + off);
                    }
                    *word |= 1 << (idx % 64);
                }
            }
            let n = granules.count_ones();
            // SAFETY: as above.
            unsafe { (*o).nfree += n };
            Ok(n)
        })
    }

    /// Runs `f` on the index of every object-bitmap word (relative to the
    /// span's first word) that can hold the bit of one of the span's
    /// objects: every word for objects under 512 bytes, one per object
    /// above.
    #[inline]
    fn for_each_object_word(&self, mut f: impl FnMut(usize)) {
        let size = self.elem_size as usize;
        if size < 512 {
            for w in 0..self.object_bytes().div_ceil(512) {
                f(w);
            }
        } else {
            for i in 0..self.nelems as usize {
                f(i * size / 512);
            }
        }
    }

    /// Merges the remote frees into the owner view: each object whose
    /// `remote` bit is set becomes free in the span (its `alloc` bit
    /// cleared). `alloc` and `remote` are the span's object-bitmap words
    /// (`ArenaMeta::span_words`). With `sync`, the caller has just changed
    /// `state`: a `SeqCst` fence first orders the reads of the words after
    /// it, against the freers' (module docs). Returns how many objects it
    /// merged. Aborts on an object freed twice.
    pub(crate) fn collect(&self, alloc: &[AtomicU64], remote: &[AtomicU64], sync: bool) -> u32 {
        if sync {
            crate::sync::atomic::fence(Ordering::SeqCst);
        }
        let mut merged = 0;
        let mut bad = 0usize;
        self.for_each_object_word(|w| {
            if bad != 0 {
                return;
            }
            let r = &remote[w];
            if r.load(Ordering::Relaxed) == 0 {
                return;
            }
            let got = r.swap(0, if sync { MERGE } else { OWNER_MERGE });
            if got == 0 {
                return;
            }
            let a = alloc[w].load(Ordering::Relaxed);
            if got & !a != 0 {
                // Freed remotely, yet not allocated: the object was free
                // already (or freed twice remotely around a merge).
                bad = self.base + w * 512 + (got & !a).trailing_zeros() as usize * 8;
                return;
            }
            alloc[w].store(a & !got, Ordering::Relaxed);
            match self.free_granules(w, got) {
                Ok(n) => merged += n,
                Err(addr) => bad = addr,
            }
        });
        if bad != 0 {
            report::double_free(bad, self.elem_size as usize);
        }
        merged
    }

    /// Aborts if a remote free is still unmerged: the span is about to be
    /// retired with every object free, so such a bit is a second free of a
    /// free object.
    pub(crate) fn check_no_remote(&self, remote: &[AtomicU64]) {
        let mut bad = 0;
        self.for_each_object_word(|w| {
            let r = remote[w].load(Ordering::Acquire);
            if r != 0 && bad == 0 {
                bad = self.base + w * 512 + r.trailing_zeros() as usize * 8;
            }
        });
        if bad != 0 {
            report::double_free(bad, self.elem_size as usize);
        }
    }

    // -----------------------------------------------------------------------
    // Frees from anyone but the owner.

    /// Frees the object at `addr` (the start of an object of this span)
    /// from a thread that does not own the span: `alloc` and `remote` are
    /// the object's bitmap words, `bit` its bit. Returns true when the
    /// caller must push the span on its mcentral's notify stack (a `FULL`
    /// span got a free object; `NOTIFIED` is set for the caller). Aborts on
    /// a double free.
    #[inline]
    pub(crate) fn free_remote(&self, addr: usize, alloc: &AtomicU64, remote: &AtomicU64, bit: u64) -> bool {
        // The life the object belongs to: the span cannot be retired while
        // it is allocated, so this is the span's current life.
        let life = generation(self.state.load(Ordering::Acquire));
        if alloc.load(Ordering::Acquire) & bit == 0 {
            report::double_free(addr, self.elem_size as usize);
        }
        // Publishes the user's last writes to the object to whoever merges
        // the free (the owner's swap acquires).
        let prev = remote.fetch_or(bit, Ordering::SeqCst);
        if prev & bit != 0 {
            report::double_free(addr, self.elem_size as usize);
        }
        // The SeqCst pair this model of memory has no total order for.
        #[cfg(loom)]
        crate::sync::atomic::fence(Ordering::SeqCst);
        let mut s = self.state.load(Ordering::SeqCst);
        loop {
            let other_life = generation(s) != life && cfg!(not(spanalloc_mutant = "freer_ignores_life"));
            if other_life || flags(s) != CENTRAL | FULL {
                return false;
            }
            #[cfg(spanalloc_mutant = "notice_dropped")]
            return false;
            #[allow(unreachable_code)]
            match self.state.compare_exchange_weak(s, (s & !FULL) | NOTIFIED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(x) => s = x,
            }
        }
    }

    /// The next span on the notify stack this one was taken from.
    pub(crate) fn next_notified(&self) -> *mut Span {
        // SAFETY: the taker of the stack reads the links its pushers wrote.
        self.notify_next.with(|p| unsafe { *p })
    }

    // -----------------------------------------------------------------------
    // Changes of hands (the mcentral, under its lock).

    /// Sets the flags of `state` to `to` if they are `from` (same life).
    /// Returns whether it did.
    pub(crate) fn change_flags(&self, from: u64, to: u64) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if flags(s) != from {
                return false;
            }
            match self.state.compare_exchange_weak(s, (s & !FLAGS) | to, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(x) => s = x,
            }
        }
    }

    /// Whether every object is free in the span (owner view): nothing is
    /// allocated, and nothing is in a cache's stack.
    #[inline]
    pub(crate) fn all_free(&self) -> bool {
        #[cfg(not(spanalloc_mutant = "retire_ignores_live"))]
        return self.nfree() == self.nelems;
        // Mutant: one object still allocated is overlooked.
        #[cfg(spanalloc_mutant = "retire_ignores_live")]
        return self.nfree() + 1 >= self.nelems;
    }

    /// Retires an mcentral span whose objects are all free so the mheap can
    /// take it back (`POOL`). Fails if the span is not the mcentral's and
    /// unqueued.
    pub(crate) fn retire(&self) -> bool {
        debug_assert!(self.all_free());
        self.change_flags(CENTRAL, POOL)
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
            let s = Span::create(rec as *mut Record as *mut Span, bucket, 0);
            (*s).init_small(0x10000, class);
            &mut *s
        }
    }

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn new_span_has_every_object_free_in_a_new_life() {
        let mut rec = Record([0; 512]);
        let s = span_of_class(3, &mut rec); // 24 B: 341 objects, 6 words
        assert_eq!(s.with_owned(|o, b| (o.nfree, b.iter().map(|w| w.count_ones()).sum::<u32>())), (341, 341));
        let st = s.state.load(Ordering::Relaxed);
        assert_eq!((flags(st), generation(st)), (0, 1));
        unsafe { s.init_small(0x10000, 3) };
        assert_eq!(generation(s.state.load(Ordering::Relaxed)), 2);
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
    fn carve_hands_out_objects_from_the_colour_round_and_first_written_last() {
        let mut rec = Record([0; 512]);
        let s = span_of_class(6, &mut rec); // 64 B, 128 objects
        let c = s.colour as usize;
        let at = |i: usize| 0x10000 + (i % 128) * 64;
        let mut out = [0usize; 70];
        assert_eq!(unsafe { s.carve(70, out.as_mut_ptr()) }, 70);
        assert_eq!(out[69], at(c), "the colour's object is on top");
        assert_eq!(out[0], at(c + 69));
        assert_eq!(s.nfree(), 58);
        let mut rest = [0usize; 100];
        assert_eq!(unsafe { s.carve(100, rest.as_mut_ptr()) }, 58);
        assert_eq!(rest[57], at(c + 70));
        assert_eq!(rest[0], at(c + 127));
        assert_eq!(unsafe { s.carve(1, out.as_mut_ptr()) }, 0);
        // Every object exactly once.
        let mut all: Vec<usize> = out.iter().chain(&rest[..58]).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 128);
    }

    #[test]
    fn colours_spread_over_the_span() {
        let mut seen = std::collections::BTreeSet::new();
        for page in 0..64usize {
            let mut rec = Record([0; 512]);
            let s = span_of_class(6, &mut rec);
            // SAFETY: the record is the test's own.
            unsafe { s.init_small(0x10000 + page * 8192, 6) };
            seen.insert(s.colour);
        }
        assert!(seen.len() > 32, "64 spans got only {} colours", seen.len());
    }

    #[test]
    fn remote_frees_are_merged_by_collect_and_a_second_one_is_caught() {
        let mut rec = Record([0; 512]);
        let s = span_of_class(6, &mut rec); // 64 B: 8 objects per bitmap word
        let (alloc, remote) = (words(16), words(16));
        let mut out = [0usize; 128];
        unsafe { s.carve(128, out.as_mut_ptr()) };
        // Every object allocated: its alloc bit set.
        for &p in &out {
            let (w, bit) = ((p - 0x10000) / 512, 1u64 << (((p - 0x10000) / 8) % 64));
            alloc[w].fetch_or(bit, Ordering::Relaxed);
        }
        let p = 0x10000 + 9 * 64; // word 1, granule 8 of it
        let bit = 1u64 << 8;
        assert!(!s.free_remote(p, &alloc[1], &remote[1], bit), "an owned span needs no notice");
        assert_eq!(s.collect(&alloc, &remote, false), 1);
        assert_eq!(s.nfree(), 1);
        assert_eq!(alloc[1].load(Ordering::Relaxed) & bit, 0, "the merge clears the alloc bit");
        assert_eq!(remote[1].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn first_remote_free_of_a_full_central_span_asks_for_a_notice_once() {
        let mut rec = Record([0; 512]);
        let s = span_of_class(10, &mut rec); // 128 B, 64 objects
        let (alloc, remote) = (words(16), words(16));
        let mut out = [0usize; 64];
        unsafe { s.carve(64, out.as_mut_ptr()) };
        for a in &alloc {
            a.store(0x0001_0001_0001_0001, Ordering::Relaxed); // a start every 128 B
        }
        assert!(s.change_flags(0, CENTRAL | FULL));
        assert!(s.free_remote(0x10000, &alloc[0], &remote[0], 1), "first free of a full span");
        assert_eq!(flags(s.state.load(Ordering::Relaxed)), CENTRAL | NOTIFIED);
        assert!(!s.free_remote(0x10080, &alloc[0], &remote[0], 1 << 16), "already notified");
        assert!(s.change_flags(CENTRAL | NOTIFIED, CENTRAL));
        assert!(!s.all_free(), "objects still allocated");
        assert_eq!(s.collect(&alloc, &remote, true), 2);
    }
}
