//! Arenas: the address space the mheap carves pages from, and everything
//! that can be found from a pointer by arithmetic alone.
//!
//! An arena is a 64 MiB reservation aligned to 64 MiB, placed by the kernel
//! (`MAP_NORESERVE`: untouched pages cost nothing). Its first pages hold its
//! metadata ([`ArenaMeta`]), then a guard page, then the pages the mheap
//! hands out, then a guard page at the end. So the metadata is never inside
//! user memory, and a linear overflow off either end of the user pages
//! faults before it reaches any metadata.
//!
//! ```text
//!  arena base (64 MiB aligned)
//!  | ArenaMeta ... | guard | page FIRST_PAGE ... page ARENA_PAGES-2 | guard |
//! ```
//!
//! # What a pointer finds without a lookup
//!
//! Because arenas are aligned, `addr & !(ARENA_SIZE - 1)` is the metadata,
//! and every table in it is indexed by the address's offset in the arena:
//!
//! - the **page table**, `spans`: the span of each runtime page (one load);
//! - the **page tags**, `tags`: who holds the page's span and for which
//!   size class, in one `u32` (see [`cache_tag`]): the free fast path
//!   compares it with the freeing cache's tag for the class, so one compare
//!   says "this cache owns the object's span, and the layout names the
//!   right class";
//! - the **object bitmaps**, one bit per 8-byte granule (the smallest object
//!   and alignment), so that a bit is found from the address with a shift,
//!   not a division: `alloc` (the object starting there is handed out to the
//!   user; written only by the span's owner, with plain loads and stores)
//!   and `remote` (a thread that does not own the span freed that object and
//!   the owner has not merged it yet; set with `fetch_or`). The mcache and
//!   [`crate::mspan`] say how the bits are used. At 1/64 of the heap each,
//!   they are resident only where the heap is in use (and `remote` only
//!   where remote frees happened).
//!
//! Before any of that, a process-wide **registry** (a byte per 64 MiB of
//! address space, 2 MiB of zero pages) says whether the address is in a
//! spanalloc arena at all, so a foreign pointer is reported instead of read
//! through.
//!
//! Objects too large for an arena get a "huge" reservation of their own with
//! the same metadata header. A huge object aligned to 64 MiB or more cannot
//! have its metadata at its own slot's base; its metadata sits one slot
//! below and the registry marks the slot "far".
//!
//! The page bitmaps (`free`, `clean`, the age planes, `releasing`) are
//! guarded by the mheap lock; the page table and tags are atomic and read
//! without locks.
//!
//! # Giving pages back at the kernel's granularity
//!
//! The kernel releases whole kernel pages, which may be larger than the
//! 8 KiB runtime page (16 KiB on some arm64 kernels, 64 KiB on others and
//! on ppc64). So the scavenger works on *groups*: the runtime pages of one
//! kernel page ([`kernel_group`]), aligned, since arenas are. A group is
//! released only when every page of it is free, and its pages are marked
//! clean only after the kernel said yes. A page taken for a span or a large
//! object makes the rest of its group resident too (the kernel faults in
//! whole pages), so those neighbours stop counting as released; they still
//! read as zero, but are treated as dirty from then on.
//!
//! A release happens in batches ([`DataBatch`], [`MetaBatch`]): under the
//! mheap lock the pages go from `free` to `releasing`, so no allocation can
//! take them while the kernel zeroes them; the lock is let go for the
//! `madvise`, then taken again to put the pages back, clean where it
//! worked. At most one batch per heap is out at a time (the mheap's
//! release lock).
//!
//! # Decay
//!
//! A free page is released only once it has stayed free and dirty across
//! [`AGE_TICKS`] scavenger ticks: two bit planes per page count the ticks
//! (a saturating two-bit counter, updated for 64 pages at once), and taking
//! the page clears them. With ticks a third of the decay apart, a page goes
//! back between one and four thirds of the decay after its free.

use core::ptr;

use crate::mspan::Span;
use crate::os;
use crate::sizeclass::{PAGE_SHIFT, PAGE_SIZE};
use crate::sync::UnsafeCell;
use crate::sync::atomic::AtomicU64;
use crate::sync::unmodelled::{AtomicPtr, AtomicU8, AtomicU32, Ordering};

/// log2 of the arena size.
pub(crate) const ARENA_SHIFT: usize = 26;
/// Bytes per arena.
pub(crate) const ARENA_SIZE: usize = 1 << ARENA_SHIFT;
/// Runtime pages per arena.
pub(crate) const ARENA_PAGES: usize = ARENA_SIZE / PAGE_SIZE;
const BITMAP_WORDS: usize = ARENA_PAGES / 64;

/// log2 of the object bitmaps' granule: 8 bytes, the smallest object.
pub(crate) const GRANULE_SHIFT: usize = 3;
/// log2 of the bytes one bitmap word covers (64 granules: 512 bytes).
pub(crate) const WORD_SHIFT: usize = GRANULE_SHIFT + 6;
/// Object-bitmap words per arena (and per runtime page).
pub(crate) const OBJ_WORDS: usize = ARENA_SIZE >> WORD_SHIFT;
pub(crate) const OBJ_WORDS_PER_PAGE: usize = PAGE_SIZE >> WORD_SHIFT;

/// Pages the arena metadata occupies.
pub(crate) const META_PAGES: usize = size_of::<ArenaMeta>().div_ceil(PAGE_SIZE);
/// The first page the mheap hands out (after the metadata and a guard).
pub(crate) const FIRST_PAGE: usize = META_PAGES + 1;
/// One past the last page the mheap may hand out (the last page is a guard).
#[cfg(not(loom))]
pub(crate) const END_PAGE: usize = ARENA_PAGES - 1;
/// Under loom an arena is a handful of pages, so models reach "arena full".
#[cfg(loom)]
pub(crate) const END_PAGE: usize = FIRST_PAGE + 6;
/// Pages added to the heap at a time when it grows (Go: 4 MiB).
#[cfg(not(loom))]
pub(crate) const GROW_PAGES: usize = (4 << 20) / PAGE_SIZE;
#[cfg(loom)]
pub(crate) const GROW_PAGES: usize = 2;

static_assertions::const_assert!(FIRST_PAGE < END_PAGE);
static_assertions::const_assert_eq!(ARENA_PAGES % 64, 0);
static_assertions::const_assert_eq!(OBJ_WORDS_PER_PAGE, 16);

// ---------------------------------------------------------------------------
// Page tags.

/// The tag of a page whose span the mcentral holds (with the class and the
/// index of the cache that held it last), or of a large object's first page
/// (class 0). No cache's tag has this bit.
pub(crate) const TAG_CENTRAL: u32 = 1 << 31;
/// The tag of a large object's first page.
pub(crate) const TAG_LARGE: u32 = TAG_CENTRAL;
/// Bits of a tag that hold the size class.
pub(crate) const TAG_CLASS_MASK: u32 = 0x7f;
/// The largest cache index a tag can name (0 names none).
pub(crate) const MAX_TAG_INDEX: u32 = (TAG_CENTRAL >> 7) - 1;

/// The tag of the pages of a span of `class` that the cache with index
/// `index` (not 0) holds.
#[inline]
pub(crate) const fn cache_tag(index: u32, class: usize) -> u32 {
    (index << 7) | class as u32
}

/// The size class a page tag names (0: large, free, or not a small span).
#[inline(always)]
pub(crate) const fn tag_class(tag: u32) -> usize {
    (tag & TAG_CLASS_MASK) as usize
}

static_assertions::const_assert!(crate::sizeclass::NUM_CLASSES <= TAG_CLASS_MASK as usize + 1);

/// Metadata at the base of every arena (and of every huge reservation).
#[repr(C)]
pub(crate) struct ArenaMeta {
    /// Bit `g` (of the whole arena): the object starting at granule `g` is
    /// allocated. Written by its span's owner only. Under loom only the
    /// words of the pages the mheap hands out are constructed.
    pub(crate) alloc: [AtomicU64; OBJ_WORDS],
    /// Bit `g`: the object at granule `g` was freed by a thread that does
    /// not own its span, and the owner has not merged the free yet.
    pub(crate) remote: [AtomicU64; OBJ_WORDS],
    /// The span of each page: set for every page of a small span, for the
    /// first page of a large one; null for free pages.
    pub(crate) spans: [AtomicPtr<Span>; ARENA_PAGES],
    /// The tag of each page's span (see [`cache_tag`]); 0 for free pages.
    pub(crate) tags: [AtomicU32; ARENA_PAGES],
    /// The heap that owns the arena.
    pub(crate) heap_id: u64,
    /// Start of the reservation (the metadata itself, except far huge).
    pub(crate) map_base: usize,
    /// A huge reservation holding one object.
    pub(crate) huge: bool,
    /// The registry slot this metadata is found through.
    pub(crate) slot: usize,
    /// Page state, guarded by the mheap lock.
    pub(crate) pages: UnsafeCell<PageState>,
}

/// The page allocator's view of one arena (under the mheap lock).
pub(crate) struct PageState {
    /// Next arena in the heap's list.
    pub(crate) next: *mut ArenaMeta,
    /// Bytes reserved from the kernel, starting at `map_base`.
    pub(crate) reserved: usize,
    /// Pages `[FIRST_PAGE, grown)` belong to the heap; the rest are not used yet.
    pub(crate) grown: usize,
    /// Free pages in `[FIRST_PAGE, grown)`.
    pub(crate) nfree: usize,
    /// Bit set: page is free.
    pub(crate) free: [u64; BITMAP_WORDS],
    /// Bit set: page holds only zeros and is not resident (never touched, or
    /// given back with `MADV_DONTNEED`).
    pub(crate) clean: [u64; BITMAP_WORDS],
    /// The ticks a free dirty page has stayed so, 0 to 3, in two bit
    /// planes (low and high bit); 0 for every other page.
    pub(crate) age0: [u64; BITMAP_WORDS],
    pub(crate) age1: [u64; BITMAP_WORDS],
    /// Bit set: page is free, but out of the free set while a release
    /// batch gives it (or metadata describing it) back to the kernel.
    pub(crate) releasing: [u64; BITMAP_WORDS],
    /// Per metadata table (`TABLES`), bit `g` set: the table's `g`-th OS
    /// page may be resident (it describes a page handed out since it was
    /// last given back).
    pub(crate) meta_resident: [[u64; 4]; 4],
}

/// The per-page metadata tables whose OS pages are given back when they
/// describe only free pages: (offset in `ArenaMeta`, bytes per runtime
/// page). Every table starts on a 64 KiB boundary, so any kernel page size
/// up to 64 KiB divides it.
const TABLES: [(usize, usize); 4] = [
    (core::mem::offset_of!(ArenaMeta, alloc), OBJ_WORDS_PER_PAGE * 8),
    (core::mem::offset_of!(ArenaMeta, remote), OBJ_WORDS_PER_PAGE * 8),
    (core::mem::offset_of!(ArenaMeta, spans), 8),
    (core::mem::offset_of!(ArenaMeta, tags), 4),
];
#[cfg(not(loom))]
static_assertions::const_assert!(
    TABLES[0].0.is_multiple_of(64 << 10)
        && TABLES[1].0.is_multiple_of(64 << 10)
        && TABLES[2].0.is_multiple_of(64 << 10)
        && TABLES[3].0.is_multiple_of(64 << 10)
);
// OS pages of 4 KiB (the smallest) per table, at most: the resident masks'
// size.
#[cfg(not(loom))]
static_assertions::const_assert!(ARENA_PAGES * OBJ_WORDS_PER_PAGE * 8 / 4096 <= 256);

// ---------------------------------------------------------------------------
// The fast paths: from an address to its tables, by arithmetic.

/// Bits that must be clear in the address of a small object: beyond the
/// registry's reach, and below the 8-byte granule.
const SMALL_OBJECT_CHECK: usize = !((1 << ADDRESS_BITS) - 1) | ((1 << GRANULE_SHIFT) - 1);

/// Whether `addr` may be a small object in a spanalloc arena (not a far
/// huge slot, and on an 8-byte granule): then its arena's metadata is at
/// `addr & !(ARENA_SIZE - 1)`. One test and one load.
#[inline(always)]
pub(crate) fn small_object_in_arena(addr: usize) -> bool {
    // SAFETY: the mask keeps addr >> ARENA_SHIFT below SLOTS.
    addr & SMALL_OBJECT_CHECK == 0
        && unsafe { REGISTRY.get_unchecked(addr >> ARENA_SHIFT) }.load(Ordering::Relaxed) == KIND_ARENA
}

/// The metadata of the arena `addr` lies in.
///
/// # Safety
/// [`small_object_in_arena`]`(addr)` must hold (and the arena must stay mapped while the
/// reference is used: true while any object in it is live).
#[inline(always)]
pub(crate) unsafe fn meta_unchecked(addr: usize) -> &'static ArenaMeta {
    // SAFETY: the caller checked that an arena's metadata is there.
    unsafe { &*((addr & !(ARENA_SIZE - 1)) as *const ArenaMeta) }
}

impl ArenaMeta {
    /// The tag of the page holding `addr` (an address in this arena).
    #[inline(always)]
    pub(crate) fn tag_at(&self, addr: usize) -> u32 {
        // SAFETY: the page index is below ARENA_PAGES.
        unsafe { self.tags.get_unchecked((addr >> PAGE_SHIFT) & (ARENA_PAGES - 1)) }.load(Ordering::Relaxed)
    }

    /// The span of the page holding `addr` (an address in this arena).
    #[inline(always)]
    pub(crate) fn span_at(&self, addr: usize) -> *mut Span {
        // SAFETY: the page index is below ARENA_PAGES.
        unsafe { self.spans.get_unchecked((addr >> PAGE_SHIFT) & (ARENA_PAGES - 1)) }.load(Ordering::Acquire)
    }

    /// The `alloc` bitmap word holding the bit of the object at `addr`, and
    /// the bit.
    #[inline(always)]
    pub(crate) fn alloc_bit(&self, addr: usize) -> (&AtomicU64, u64) {
        let (w, bit) = bit_of(addr);
        // SAFETY: w < OBJ_WORDS.
        (unsafe { self.alloc.get_unchecked(w) }, bit)
    }

    /// The `alloc` word of the object at `addr` and its bit's number in it
    /// (the fast paths test and flip the bit by number: `bt`, `btr`).
    #[inline(always)]
    pub(crate) fn alloc_word(&self, addr: usize) -> (&AtomicU64, u32) {
        let w = (addr & (ARENA_SIZE - 1)) >> WORD_SHIFT;
        // SAFETY: w < OBJ_WORDS.
        (unsafe { self.alloc.get_unchecked(w) }, ((addr >> GRANULE_SHIFT) & 63) as u32)
    }

    /// The `remote` word of the object at `addr` (its bit number as for
    /// [`ArenaMeta::alloc_word`]).
    #[inline(always)]
    pub(crate) fn remote_word(&self, addr: usize) -> &AtomicU64 {
        // SAFETY: the index is below OBJ_WORDS.
        unsafe { self.remote.get_unchecked((addr & (ARENA_SIZE - 1)) >> WORD_SHIFT) }
    }

    /// The `remote` bitmap word holding the bit of the object at `addr`.
    #[inline(always)]
    pub(crate) fn remote_bit(&self, addr: usize) -> (&AtomicU64, u64) {
        let (w, bit) = bit_of(addr);
        // SAFETY: w < OBJ_WORDS.
        (unsafe { self.remote.get_unchecked(w) }, bit)
    }

    /// The object-bitmap words (`alloc`, `remote`) of the `npages` pages
    /// from `base`, a page-aligned address in this arena.
    pub(crate) fn span_words(&self, base: usize, npages: usize) -> (&[AtomicU64], &[AtomicU64]) {
        let first = (base & (ARENA_SIZE - 1)) >> WORD_SHIFT;
        let n = npages * OBJ_WORDS_PER_PAGE;
        (&self.alloc[first..first + n], &self.remote[first..first + n])
    }
}

/// The bitmap word index in its arena and the bit of the granule at `addr`.
#[inline(always)]
pub(crate) fn bit_of(addr: usize) -> (usize, u64) {
    ((addr & (ARENA_SIZE - 1)) >> WORD_SHIFT, 1u64 << ((addr >> GRANULE_SHIFT) & 63))
}

// ---------------------------------------------------------------------------
// The registry: which 64 MiB slots of the address space are ours.

/// Address bits the registry covers (the x86-64 / aarch64 user space).
const ADDRESS_BITS: usize = 47;
const SLOTS: usize = 1 << (ADDRESS_BITS - ARENA_SHIFT);
/// One byte per slot (2 MiB of zero pages, touched only where arenas are).
static REGISTRY: [AtomicU8; SLOTS] = [const { AtomicU8::new(0) }; SLOTS];

/// Registry kinds.
const KIND_NONE: u8 = 0;
/// The slot starts with an `ArenaMeta`.
const KIND_ARENA: u8 = 1;
/// The slot starts a huge object whose `ArenaMeta` is one slot below.
const KIND_FAR: u8 = 2;

fn set_kind(slot: usize, kind: u8) {
    REGISTRY[slot].store(kind, Ordering::Release);
}

#[inline]
fn kind_of(addr: usize) -> u8 {
    let slot = addr >> ARENA_SHIFT;
    if slot >= SLOTS {
        return KIND_NONE;
    }
    REGISTRY[slot].load(Ordering::Acquire)
}

/// The arena metadata for `addr`, if `addr` lies in a slot spanalloc
/// registered (in any heap).
#[inline]
pub(crate) fn meta_of(addr: usize) -> Option<&'static ArenaMeta> {
    let slot_base = addr & !(ARENA_SIZE - 1);
    let meta = match kind_of(addr) {
        KIND_ARENA => slot_base,
        KIND_FAR => slot_base - ARENA_SIZE,
        _ => return None,
    };
    // SAFETY: a registered slot's metadata stays mapped until it is
    // unregistered, which happens only when no live object is in it.
    Some(unsafe { &*(meta as *const ArenaMeta) })
}

/// The span holding `addr` (null for a free page), and the metadata it was
/// found in, or `None` if `addr` is not in a spanalloc arena.
#[inline]
pub(crate) fn span_of(addr: usize) -> Option<(&'static ArenaMeta, *mut Span)> {
    let meta = meta_of(addr)?;
    let page = (addr >> PAGE_SHIFT) & (ARENA_PAGES - 1);
    // SAFETY: page < ARENA_PAGES.
    let span = unsafe { meta.spans.get_unchecked(page) }.load(Ordering::Acquire);
    Some((meta, span))
}

impl ArenaMeta {
    /// Reserves a new arena for heap `heap_id`. Returns `None` if the kernel
    /// refuses (or places it beyond the registry's reach).
    pub(crate) fn reserve(heap_id: u64) -> Option<*mut ArenaMeta> {
        let base = os::map_aligned(ARENA_SIZE, ARENA_SIZE)?;
        // SAFETY: base is a fresh ARENA_SIZE reservation.
        let slot = base as usize >> ARENA_SHIFT;
        match unsafe { Self::init(base, base as usize, ARENA_SIZE, heap_id, false, slot) } {
            Some(meta) => {
                set_kind(slot, KIND_ARENA);
                Some(meta)
            }
            None => {
                os::unmap(base, ARENA_SIZE);
                None
            }
        }
    }

    /// Reserves a huge region for one object of `bytes` bytes aligned to
    /// `align`. Returns the metadata and the object's address.
    pub(crate) fn reserve_huge(heap_id: u64, bytes: usize, align: usize) -> Option<(*mut ArenaMeta, usize)> {
        let align = align.max(PAGE_SIZE);
        let guard = PAGE_SIZE;
        if align < ARENA_SIZE {
            // Metadata at the base of the object's own slot.
            let offset = (FIRST_PAGE * PAGE_SIZE).next_multiple_of(align);
            let len = offset.checked_add(bytes)?.checked_add(guard)?;
            let base = os::map_aligned(len, ARENA_SIZE)?;
            let slot = base as usize >> ARENA_SHIFT;
            // SAFETY: base is a fresh reservation of len bytes.
            let Some(meta) = (unsafe { Self::init(base, base as usize, len, heap_id, true, slot) }) else {
                os::unmap(base, len);
                return None;
            };
            set_kind(slot, KIND_ARENA);
            Some((meta, base as usize + offset))
        } else {
            // The object starts a slot; its metadata is the slot below.
            let len = ARENA_SIZE.checked_add(bytes)?.checked_add(guard)?;
            let padded = len.checked_add(align)?;
            let raw = os::map(padded)? as usize;
            let object = (raw + ARENA_SIZE).next_multiple_of(align);
            let meta_base = object - ARENA_SIZE;
            // Trim what lies outside [meta_base, meta_base + len).
            if meta_base > raw {
                os::unmap(raw as *mut u8, meta_base - raw);
            }
            let end = meta_base + len;
            if raw + padded > end {
                os::unmap(end as *mut u8, raw + padded - end);
            }
            let slot = object >> ARENA_SHIFT;
            // SAFETY: [meta_base, meta_base + len) is a fresh reservation.
            let Some(meta) = (unsafe { Self::init(meta_base as *mut u8, meta_base, len, heap_id, true, slot) }) else {
                os::unmap(meta_base as *mut u8, len);
                return None;
            };
            set_kind(slot, KIND_FAR);
            Some((meta, object))
        }
    }

    /// Writes the metadata and guards into a fresh reservation.
    ///
    /// # Safety
    /// `[map_base, map_base + reserved)` must be a fresh reservation and
    /// `meta_at` 64 MiB-aligned inside it.
    unsafe fn init(
        meta_at: *mut u8,
        map_base: usize,
        reserved: usize,
        heap_id: u64,
        huge: bool,
        slot: usize,
    ) -> Option<*mut ArenaMeta> {
        if (meta_at as usize + reserved) >> ADDRESS_BITS != 0 {
            return None;
        }
        let meta = meta_at.cast::<ArenaMeta>();
        // SAFETY: the reservation is zeroed, mapped and ours; the metadata
        // fits in META_PAGES pages of it. Zero bytes are valid atomics and a
        // valid all-zero bitmap, so only the header fields need writing.
        unsafe {
            ptr::addr_of_mut!((*meta).heap_id).write(heap_id);
            ptr::addr_of_mut!((*meta).map_base).write(map_base);
            ptr::addr_of_mut!((*meta).huge).write(huge);
            ptr::addr_of_mut!((*meta).slot).write(slot);
            ptr::addr_of_mut!((*meta).pages).write(UnsafeCell::new(PageState {
                next: ptr::null_mut(),
                reserved,
                grown: FIRST_PAGE,
                nfree: 0,
                free: [0; BITMAP_WORDS],
                clean: [0; BITMAP_WORDS],
                age0: [0; BITMAP_WORDS],
                age1: [0; BITMAP_WORDS],
                releasing: [0; BITMAP_WORDS],
                meta_resident: [[0; 4]; 4],
            }));
            // loom's atomics are not plain words: build those of the pages
            // a model can use.
            #[cfg(loom)]
            for w in FIRST_PAGE * OBJ_WORDS_PER_PAGE..END_PAGE * OBJ_WORDS_PER_PAGE {
                ptr::addr_of_mut!((*meta).alloc[w]).write(AtomicU64::new(0));
                ptr::addr_of_mut!((*meta).remote[w]).write(AtomicU64::new(0));
            }
        }
        // Guard between the metadata and the first user page, and after
        // the last one. A failed guard costs protection, not correctness.
        let guard_at = meta_at as usize + META_PAGES * PAGE_SIZE;
        let _ = os::guard(guard_at as *mut u8, PAGE_SIZE);
        if !huge {
            let _ = os::guard((meta_at as usize + (ARENA_PAGES - 1) * PAGE_SIZE) as *mut u8, PAGE_SIZE);
        } else {
            let _ = os::guard((map_base + reserved - PAGE_SIZE) as *mut u8, PAGE_SIZE);
        }
        Some(meta)
    }

    /// The arena's base address (its metadata).
    #[inline]
    pub(crate) fn base(&self) -> usize {
        self as *const ArenaMeta as usize
    }

    /// Address of page `page` of this arena.
    #[inline]
    pub(crate) fn page_addr(&self, page: usize) -> usize {
        self.base() + page * PAGE_SIZE
    }

    /// The page index of `addr` in this arena.
    #[inline]
    pub(crate) fn page_of(addr: usize) -> usize {
        (addr >> PAGE_SHIFT) & (ARENA_PAGES - 1)
    }

    /// Points pages `[page, page + n)` at `span` (or at null).
    pub(crate) fn set_spans(&self, page: usize, n: usize, span: *mut Span) {
        for entry in &self.spans[page..page + n] {
            entry.store(span, Ordering::Release);
        }
    }

    /// Tags the `npages` pages from `base` (an address in this arena) with
    /// `tag`.
    pub(crate) fn set_tags(&self, base: usize, npages: usize, tag: u32) {
        let page = Self::page_of(base);
        for t in &self.tags[page..page + npages] {
            t.store(tag, Ordering::Release);
        }
    }

    /// Unregisters and unmaps the arena.
    ///
    /// # Safety
    /// The arena and everything in it must be dead.
    pub(crate) unsafe fn destroy(meta: *mut ArenaMeta) {
        // SAFETY: the caller guarantees the arena is still mapped and dead.
        let (map_base, slot) = unsafe { ((*meta).map_base, (*meta).slot) };
        let reserved = unsafe { &*meta }.pages.with(|p| unsafe { (*p).reserved });
        set_kind(slot, KIND_NONE);
        os::unmap(map_base as *mut u8, reserved);
    }
}

// ---------------------------------------------------------------------------
// The page allocator over one arena's bitmaps.

/// The part of word `w` that falls in bits `[from, to)`.
#[inline]
fn word_mask(w: usize, from: usize, to: usize) -> u64 {
    let lo = from.max(w * 64) - w * 64;
    let hi = to.min(w * 64 + 64) - w * 64;
    if hi <= lo {
        0
    } else if hi - lo == 64 {
        !0
    } else {
        ((1u64 << (hi - lo)) - 1) << lo
    }
}

/// Sets bits `[from, to)`.
fn set_range(bits: &mut [u64], from: usize, to: usize) {
    let words = from / 64..to.div_ceil(64);
    for (w, word) in words.clone().zip(&mut bits[words]) {
        *word |= word_mask(w, from, to);
    }
}

/// Clears bits `[from, to)`.
fn clear_range(bits: &mut [u64], from: usize, to: usize) {
    let words = from / 64..to.div_ceil(64);
    for (w, word) in words.clone().zip(&mut bits[words]) {
        *word &= !word_mask(w, from, to);
    }
}

/// Counts set bits in `[from, to)`.
fn count_range(bits: &[u64], from: usize, to: usize) -> usize {
    (from / 64..to.div_ceil(64)).map(|w| (bits[w] & word_mask(w, from, to)).count_ones() as usize).sum()
}

/// First index in `[from, to)` whose bit equals `want`, or `to`.
fn next_bit(bits: &[u64], from: usize, to: usize, want: bool) -> usize {
    let mut i = from;
    while i < to {
        let w = i / 64;
        let word = if want { bits[w] } else { !bits[w] };
        let masked = word & (!0u64 << (i % 64));
        if masked != 0 {
            return (w * 64 + masked.trailing_zeros() as usize).min(to);
        }
        i = (w + 1) * 64;
    }
    to
}

impl PageState {
    /// First run of `n` free pages whose first page is a multiple of
    /// `align` pages, lowest address first.
    ///
    /// Unaligned runs are found a bitmap word at a time, whatever the
    /// fragmentation: a run carried over from the words below, a run inside
    /// the word (shift-and doubling: bit `i` survives when pages `i..i+n`
    /// are all free), and the free top of the word carried up.
    pub(crate) fn find_run(&self, n: usize, align: usize) -> Option<usize> {
        if align > 1 {
            return self.find_aligned_run(n, align);
        }
        let mut carried = 0;
        for w in FIRST_PAGE / 64..self.grown.div_ceil(64) {
            let word = self.free[w] & word_mask(w, FIRST_PAGE, self.grown);
            if word == !0 {
                carried += 64;
                if carried >= n {
                    return Some(w * 64 + 64 - carried);
                }
                continue;
            }
            if carried + (!word).trailing_zeros() as usize >= n {
                return Some(w * 64 - carried);
            }
            if n < 64 {
                let mut x = word;
                let mut have = 1;
                while have < n && x != 0 {
                    let k = have.min(n - have);
                    x &= x >> k;
                    have += k;
                }
                if x != 0 {
                    return Some(w * 64 + x.trailing_zeros() as usize);
                }
            }
            carried = (!word).leading_zeros() as usize;
        }
        None
    }

    /// [`PageState::find_run`] with an alignment: run by run.
    fn find_aligned_run(&self, n: usize, align: usize) -> Option<usize> {
        let mut i = FIRST_PAGE;
        while i < self.grown {
            let start = next_bit(&self.free, i, self.grown, true);
            if start >= self.grown {
                return None;
            }
            let end = next_bit(&self.free, start, self.grown, false);
            let aligned = start.next_multiple_of(align);
            if aligned + n <= end {
                return Some(aligned);
            }
            i = end;
        }
        None
    }

    /// Whether the run `[page, page + n)` is free (for growing in place).
    pub(crate) fn is_free(&self, page: usize, n: usize) -> bool {
        page + n <= self.grown && next_bit(&self.free, page, page + n, false) == page + n
    }

    /// Adds up to `want` more pages (at least `GROW_PAGES` if room allows)
    /// to the heap. Returns how many were added (all clean).
    pub(crate) fn grow(&mut self, want: usize) -> usize {
        let room = END_PAGE - self.grown;
        let n = want.next_multiple_of(GROW_PAGES).min(room);
        if n < want {
            return 0;
        }
        let (from, to) = (self.grown, self.grown + n);
        set_range(&mut self.free, from, to);
        set_range(&mut self.clean, from, to);
        self.grown = to;
        self.nfree += n;
        n
    }

    /// Takes the free run `[page, page + n)`. Returns how many of its pages
    /// were clean, and how many clean free pages beside it share a kernel
    /// page with it (they are resident from now on, so no longer clean).
    pub(crate) fn take(&mut self, page: usize, n: usize) -> (usize, usize) {
        debug_assert!(self.is_free(page, n));
        let clean = count_range(&self.clean, page, page + n);
        clear_range(&mut self.free, page, page + n);
        clear_range(&mut self.clean, page, page + n);
        clear_range(&mut self.age0, page, page + n);
        clear_range(&mut self.age1, page, page + n);
        let mut lost = 0;
        if let Some(r) = kernel_group()
            && r > 1
        {
            let (lo, hi) = (page & !(r - 1), (page + n).next_multiple_of(r).min(ARENA_PAGES));
            for (from, to) in [(lo, page), (page + n, hi)] {
                for w in from / 64..to.div_ceil(64) {
                    let m = self.free[w] & self.clean[w] & word_mask(w, from, to);
                    self.clean[w] &= !m;
                    lost += m.count_ones() as usize;
                }
            }
        }
        for (t, &(_, per_page)) in TABLES.iter().enumerate() {
            // In 4 KiB units, whatever the OS page (release_meta reads the
            // mask a kernel page at a time).
            let first = page * per_page / 4096;
            let last = ((page + n) * per_page - 1) / 4096;
            for g in first..=last {
                self.meta_resident[t][g / 64] |= 1 << (g % 64);
            }
        }
        self.nfree -= n;
        (clean, lost)
    }

    /// Gives back the run `[page, page + n)` (its pages dirty).
    pub(crate) fn put(&mut self, page: usize, n: usize) {
        debug_assert!(count_range(&self.free, page, page + n) == 0);
        debug_assert!(count_range(&self.releasing, page, page + n) == 0);
        set_range(&mut self.free, page, page + n);
        self.nfree += n;
    }

    /// Whether page `page` is free, or out of the free set for a release.
    pub(crate) fn is_idle(&self, page: usize) -> bool {
        (self.free[page / 64] | self.releasing[page / 64]) & (1 << (page % 64)) != 0
    }

    /// Picks a batch of groups to release ([`DataBatch`]): groups wholly
    /// free with a dirty page, every dirty page of them old enough (any age
    /// when `all`), lowest first, up to [`BATCH_PAGES`] pages. Takes them
    /// out of the free set. Returns whether it found any.
    pub(crate) fn pick_data(&mut self, all: bool, out: &mut DataBatch) -> bool {
        let Some(r) = kernel_group() else {
            return false;
        };
        // Pages taken so far: whole groups, as BATCH_PAGES is.
        let mut taken = 0;
        for w in FIRST_PAGE / 64..self.grown.div_ceil(64) {
            let free = self.free[w];
            let dirty = free & !self.clean[w];
            if dirty == 0 {
                continue;
            }
            let old = if all { !0 } else { self.clean[w] | (self.age0[w] & self.age1[w]) };
            let mut cand = whole_groups(free & old, r) & any_groups(dirty, r);
            while cand != 0 {
                let start = cand.trailing_zeros() as usize;
                let len = ((!(cand >> start)).trailing_zeros() as usize).min(BATCH_PAGES - taken);
                let mask = if len == 64 { !0 } else { ((1u64 << len) - 1) << start };
                if !out.push((w * 64 + start) as u32, (w * 64 + start + len) as u32) {
                    return true;
                }
                self.free[w] &= !mask;
                self.releasing[w] |= mask;
                self.nfree -= len;
                taken += len;
                cand &= !mask;
                if taken == BATCH_PAGES {
                    return true;
                }
            }
        }
        out.n > 0
    }

    /// After the kernel answered for each run of `batch` (`ok`, bit `i` for
    /// run `i`): the runs it released are clean, and every page of the
    /// batch is free again. Returns the pages that were dirty and are clean
    /// now.
    pub(crate) fn commit_data(&mut self, batch: &DataBatch, ok: u64) -> usize {
        let mut cleaned = 0;
        for (i, &(from, to)) in batch.runs[..batch.n].iter().enumerate() {
            let (from, to) = (from as usize, to as usize);
            if ok & (1 << i) != 0 {
                cleaned += (to - from) - count_range(&self.clean, from, to);
                set_range(&mut self.clean, from, to);
                clear_range(&mut self.age0, from, to);
                clear_range(&mut self.age1, from, to);
            }
        }
        self.restore();
        cleaned
    }

    /// Picks a batch of metadata to release ([`MetaBatch`]): OS pages of
    /// the per-page tables (object bitmaps, page table, tags) that may be
    /// resident and describe only free, clean pages (their entries are all
    /// zero then, which is what a released page reads as). Takes the pages
    /// they describe out of the free set, so that no allocation writes the
    /// entries while the kernel zeroes them. Returns whether it found any.
    pub(crate) fn pick_meta(&mut self, out: &mut MetaBatch) -> bool {
        let os_page = os::page_size();
        if cfg!(loom) || !(4096..=64 << 10).contains(&os_page) {
            return false;
        }
        let mut pages = 0;
        for (t, &(_, per_page)) in TABLES.iter().enumerate() {
            // Runtime pages one OS page of the table describes.
            let span = (os_page / per_page).max(1);
            let groups = (ARENA_PAGES * per_page).div_ceil(os_page);
            // The resident masks count in 4 KiB units.
            let units = os_page / 4096;
            for g in 0..groups {
                let (lo, hi) = (g * units, (g + 1) * units);
                if count_range(&self.meta_resident[t], lo, hi) == 0 {
                    continue;
                }
                // Only pages the heap has handed out can have entries.
                let from = (g * span).max(FIRST_PAGE);
                let to = ((g + 1) * span).min(self.grown);
                if from < to && !self.quiet(from, to) {
                    continue;
                }
                if !out.push(t, lo as u32, hi as u32) {
                    return true;
                }
                if from < to {
                    for w in from / 64..to.div_ceil(64) {
                        let m = self.free[w] & word_mask(w, from, to);
                        self.free[w] &= !m;
                        self.releasing[w] |= m;
                        self.nfree -= m.count_ones() as usize;
                    }
                    pages += to - from;
                }
                if pages >= META_BATCH_PAGES {
                    return true;
                }
            }
        }
        out.n > 0
    }

    /// Whether every page of `[from, to)` is free and clean, or already out
    /// for this batch.
    fn quiet(&self, from: usize, to: usize) -> bool {
        (from / 64..to.div_ceil(64)).all(|w| {
            let m = word_mask(w, from, to);
            (self.free[w] & self.clean[w] | self.releasing[w]) & m == m
        })
    }

    /// After the kernel answered for each range of `batch`: the ranges it
    /// released are no longer resident, and the pages are free again.
    pub(crate) fn commit_meta(&mut self, batch: &MetaBatch, ok: u64) {
        for (i, &(t, lo, hi)) in batch.ranges[..batch.n].iter().enumerate() {
            if ok & (1 << i) != 0 {
                clear_range(&mut self.meta_resident[t as usize], lo as usize, hi as usize);
            }
        }
        self.restore();
    }

    /// Puts every page out for a release back in the free set.
    fn restore(&mut self) {
        for w in FIRST_PAGE / 64..self.grown.div_ceil(64) {
            let m = self.releasing[w];
            if m != 0 {
                self.free[w] |= m;
                self.releasing[w] = 0;
                self.nfree += m.count_ones() as usize;
            }
        }
    }

    /// A scavenger tick: every free dirty page ages by one tick (up to 3).
    /// Returns the free dirty pages whose whole group is free: those a
    /// later tick will release (a page whose group is partly in use waits
    /// until the rest is freed, which wakes the scavenger anyway).
    pub(crate) fn age(&mut self) -> usize {
        let Some(r) = kernel_group() else {
            return 0;
        };
        let mut waiting = 0;
        for w in FIRST_PAGE / 64..self.grown.div_ceil(64) {
            let m = self.free[w] & !self.clean[w];
            let (a0, a1) = (self.age0[w], self.age1[w]);
            // A saturating two-bit counter, plus one where `m` is set.
            let full = a0 & a1;
            self.age0[w] = (a0 ^ (m & !full)) & m;
            self.age1[w] = (a1 | (m & a0)) & m;
            waiting += (whole_groups(self.free[w], r) & m).count_ones() as usize;
        }
        waiting
    }
}

// ---------------------------------------------------------------------------
// Release batches.

/// Ticks a free page must stay free and dirty before it is released.
pub(crate) const AGE_TICKS: u64 = 3;
/// Pages one data batch releases at most (4 MiB, whole kernel pages of up
/// to 512 KiB): what an allocation may find missing from the free set
/// meanwhile, and a bound on each `madvise` call.
pub(crate) const BATCH_PAGES: usize = if cfg!(loom) { 2 } else { 512 };
/// Runs one data batch releases at most (one `madvise` each).
pub(crate) const BATCH_RUNS: usize = 32;
/// Pages a metadata batch takes out of the free set at most (8 MiB), unless
/// one OS page of a table describes more.
const META_BATCH_PAGES: usize = 1024;
/// Ranges one metadata batch releases at most.
pub(crate) const META_RANGES: usize = 16;

/// Runtime pages per kernel page (1 where the kernel's pages are smaller),
/// or `None` when the kernel's pages are over 512 KiB, beyond what one
/// bitmap word describes: then no page is released.
pub(crate) fn kernel_group() -> Option<usize> {
    let r = (os::page_size() / PAGE_SIZE).max(1);
    if r > 64 { None } else { Some(r) }
}

/// The first bit of every aligned group of `r` bits.
#[inline]
fn group_starts(r: usize) -> u64 {
    if r >= 64 { 1 } else { !0 / ((1u64 << r) - 1) }
}

/// Sets every bit of each aligned group of `r` bits whose bit `group
/// start` is set.
#[inline]
fn spread(mut g: u64, r: usize) -> u64 {
    let mut s = 1;
    while s < r {
        g |= g << s;
        s <<= 1;
    }
    g
}

/// The aligned groups of `r` bits of `x` that are all set.
#[inline]
pub(crate) fn whole_groups(x: u64, r: usize) -> u64 {
    let mut g = x;
    let mut s = 1;
    while s < r {
        g &= g >> s;
        s <<= 1;
    }
    spread(g & group_starts(r), r)
}

/// The aligned groups of `r` bits of `x` that have a bit set.
#[inline]
pub(crate) fn any_groups(x: u64, r: usize) -> u64 {
    let mut g = x;
    let mut s = 1;
    while s < r {
        g |= g >> s;
        s <<= 1;
    }
    spread(g & group_starts(r), r)
}

/// Runs of runtime pages of one arena, whole kernel pages, on their way
/// back to the kernel (see [`PageState::pick_data`]).
pub(crate) struct DataBatch {
    /// `[from, to)` page runs, in address order.
    pub(crate) runs: [(u32, u32); BATCH_RUNS],
    pub(crate) n: usize,
}

impl DataBatch {
    pub(crate) const fn new() -> Self {
        DataBatch { runs: [(0, 0); BATCH_RUNS], n: 0 }
    }

    /// Adds a run (merged with the last if they touch); false when full.
    fn push(&mut self, from: u32, to: u32) -> bool {
        if self.n > 0 && self.runs[self.n - 1].1 == from {
            self.runs[self.n - 1].1 = to;
            return true;
        }
        if self.n == BATCH_RUNS {
            return false;
        }
        self.runs[self.n] = (from, to);
        self.n += 1;
        true
    }
}

/// OS pages of one arena's metadata tables on their way back to the kernel
/// (see [`PageState::pick_meta`]).
pub(crate) struct MetaBatch {
    /// (table, first 4 KiB unit, end unit) of each range, in table order.
    pub(crate) ranges: [(u8, u32, u32); META_RANGES],
    pub(crate) n: usize,
}

impl MetaBatch {
    pub(crate) const fn new() -> Self {
        MetaBatch { ranges: [(0, 0, 0); META_RANGES], n: 0 }
    }

    fn push(&mut self, table: usize, lo: u32, hi: u32) -> bool {
        if self.n > 0 && self.ranges[self.n - 1].0 == table as u8 && self.ranges[self.n - 1].2 == lo {
            self.ranges[self.n - 1].2 = hi;
            return true;
        }
        if self.n == META_RANGES {
            return false;
        }
        self.ranges[self.n] = (table as u8, lo, hi);
        self.n += 1;
        true
    }

    /// The address and length of range `i` in the arena whose metadata is
    /// at `base`.
    pub(crate) fn range(&self, base: usize, i: usize) -> (usize, usize) {
        let (t, lo, hi) = self.ranges[i];
        (base + TABLES[t as usize].0 + lo as usize * 4096, (hi - lo) as usize * 4096)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn state() -> PageState {
        PageState {
            next: ptr::null_mut(),
            reserved: 0,
            grown: FIRST_PAGE,
            nfree: 0,
            free: [0; BITMAP_WORDS],
            clean: [0; BITMAP_WORDS],
            age0: [0; BITMAP_WORDS],
            age1: [0; BITMAP_WORDS],
            releasing: [0; BITMAP_WORDS],
            meta_resident: [[0; 4]; 4],
        }
    }

    #[test]
    fn runs_are_found_lowest_first_and_coalesce_when_freed() {
        let mut s = state();
        assert_eq!(s.find_run(1, 1), None);
        assert_eq!(s.grow(3), GROW_PAGES);
        let a = s.find_run(3, 1).unwrap();
        assert_eq!(a, FIRST_PAGE);
        assert_eq!(s.take(a, 3), (3, 0), "fresh pages are clean");
        let b = s.find_run(2, 1).unwrap();
        assert_eq!(b, FIRST_PAGE + 3);
        assert_eq!(s.take(b, 2), (2, 0), "grown pages are clean");
        s.put(a, 3);
        // a's run (3 pages) is free again but a 4-page run must come later.
        assert_eq!(s.find_run(3, 1), Some(a));
        assert_eq!(s.find_run(4, 1), Some(b + 2));
        s.put(b, 2);
        // Coalesced: one run from FIRST_PAGE to the end.
        assert_eq!(s.find_run(GROW_PAGES, 1), Some(FIRST_PAGE));
        assert_eq!(s.nfree, GROW_PAGES);
    }

    #[test]
    fn aligned_runs_start_on_the_alignment() {
        let mut s = state();
        s.grow(GROW_PAGES * 2);
        let p = s.find_run(5, 64).unwrap();
        assert_eq!(p % 64, 0);
        assert!(p >= FIRST_PAGE);
    }

    #[test]
    fn grow_stops_at_the_end_of_the_arena() {
        let mut s = state();
        let mut total = 0;
        loop {
            let n = s.grow(1);
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, END_PAGE - FIRST_PAGE);
        assert_eq!(s.grow(1), 0);
        assert!(s.find_run(END_PAGE - FIRST_PAGE, 1).is_some());
        assert!(s.find_run(END_PAGE - FIRST_PAGE + 1, 1).is_none());
    }

    #[test]
    fn word_scan_finds_the_first_fit_in_a_fragmented_arena() {
        let mut s = state();
        s.grow(GROW_PAGES * 4);
        let total = s.grown - FIRST_PAGE;
        s.take(FIRST_PAGE, total);
        // Free runs of every length 1..70 separated by one used page; the
        // first fit for n is the first run of length >= n.
        let mut runs = Vec::new();
        let mut at = FIRST_PAGE + 1;
        for len in 1..70 {
            if at + len >= s.grown {
                break;
            }
            s.put(at, len);
            runs.push((at, len));
            at += len + 1;
        }
        for n in 1..70 {
            let want = runs.iter().find(|&&(_, len)| len >= n).map(|&(start, _)| start);
            assert_eq!(s.find_run(n, 1), want, "n = {n}");
            // The slow search agrees.
            assert_eq!(s.find_aligned_run(n, 1), want, "n = {n}");
        }
    }

    #[test]
    fn group_masks_keep_only_whole_or_touched_aligned_groups() {
        let x = 0b0110_1111_0011u64;
        assert_eq!(whole_groups(x, 1), x);
        assert_eq!(any_groups(x, 1), x);
        assert_eq!(whole_groups(x, 2), 0b0000_1111_0011);
        assert_eq!(any_groups(x, 2), 0b1111_1111_0011);
        assert_eq!(whole_groups(x, 4), 0b0000_1111_0000);
        assert_eq!(any_groups(x, 4), 0b1111_1111_1111);
        assert_eq!(whole_groups(!0 >> 1, 64), 0);
        assert_eq!(whole_groups(!0, 64), !0);
        assert_eq!(any_groups(1 << 63, 64), !0);
        assert_eq!(whole_groups(0xff00_0000_0000_0000, 8), 0xff00_0000_0000_0000);
    }

    /// Grows `s` and dirties every page: taken once and given back.
    fn dirty_state() -> PageState {
        let mut s = state();
        s.grow(2 * GROW_PAGES);
        let n = s.grown - FIRST_PAGE;
        s.take(FIRST_PAGE, n);
        s.put(FIRST_PAGE, n);
        s
    }

    #[test]
    fn a_free_page_is_picked_only_after_it_stayed_free_for_three_ticks() {
        let mut s = dirty_state();
        for tick in 0..AGE_TICKS {
            let mut b = DataBatch::new();
            assert!(!s.pick_data(false, &mut b), "picked after {tick} ticks");
            assert!(s.age() > 0, "free dirty pages are waiting");
        }
        // Taking and giving back a page starts its count again.
        s.take(FIRST_PAGE + 3, 1);
        s.put(FIRST_PAGE + 3, 1);
        let mut b = DataBatch::new();
        assert!(s.pick_data(false, &mut b));
        assert_eq!(b.runs[0], (FIRST_PAGE as u32, FIRST_PAGE as u32 + 3), "the young page ends the first run");
        assert_eq!(b.runs[1].0, FIRST_PAGE as u32 + 4);
    }

    #[test]
    fn a_batch_keeps_its_pages_from_allocation_and_cleans_only_what_the_kernel_released() {
        let mut s = dirty_state();
        let free_before = s.nfree;
        let mut b = DataBatch::new();
        assert!(s.pick_data(true, &mut b));
        let (from, to) = (b.runs[0].0 as usize, b.runs[0].1 as usize);
        assert_eq!(from, FIRST_PAGE);
        assert_eq!(to - from, BATCH_PAGES, "a batch is bounded");
        // Out of the free set: no allocation finds them meanwhile.
        assert_eq!(s.find_run(1, 1), Some(to));
        assert!(!s.is_free(from, 1) && s.is_idle(from));
        assert_eq!(s.nfree, free_before - BATCH_PAGES);
        // The kernel refused: all back, none clean.
        assert_eq!(s.commit_data(&b, 0), 0);
        assert_eq!((s.nfree, count_range(&s.clean, from, to)), (free_before, 0));
        assert_eq!(s.find_run(1, 1), Some(from));
        // Released: clean.
        let mut b = DataBatch::new();
        assert!(s.pick_data(true, &mut b));
        assert_eq!(s.commit_data(&b, 1), BATCH_PAGES);
        assert_eq!(count_range(&s.clean, from, to), BATCH_PAGES);
        assert_eq!(s.take(from, 2), (2, 0), "released pages come back clean");
    }

    #[test]
    fn at_16_kib_kernel_pages_only_whole_free_pairs_are_released_and_taking_one_dirties_its_partner() {
        os::pretend_page_size(16 << 10);
        let mut s = dirty_state();
        // Keep every third page in use: no pair is wholly free except
        // where two free pages share one kernel page.
        let (lo, hi) = (FIRST_PAGE.next_multiple_of(2), FIRST_PAGE.next_multiple_of(2) + 60);
        for p in (lo..hi).step_by(3) {
            s.take(p, 1);
        }
        let mut b = DataBatch::new();
        assert!(s.pick_data(true, &mut b));
        for &(from, to) in &b.runs[..b.n] {
            assert!(from % 2 == 0 && to % 2 == 0, "run {from}..{to} is not whole kernel pages");
            for p in from as usize..to as usize {
                assert!(s.is_idle(p), "a page in use is in the batch");
            }
        }
        s.commit_data(&b, !0);
        // A clean page whose partner is taken is dirty from then on.
        let pair = (lo..hi).step_by(2).find(|&p| count_range(&s.clean, p, p + 2) == 2).unwrap();
        assert_eq!(s.take(pair, 1), (1, 1));
        assert_eq!(count_range(&s.clean, pair + 1, pair + 2), 0);
        os::pretend_page_size(0);
    }

    #[test]
    fn metadata_goes_back_only_where_it_describes_free_released_pages() {
        let mut s = dirty_state();
        let mut m = MetaBatch::new();
        assert!(!s.pick_meta(&mut m), "dirty pages keep their metadata");
        let mut b = DataBatch::new();
        while {
            b.n = 0;
            s.pick_data(true, &mut b)
        } {
            s.commit_data(&b, !0);
        }
        // One page in use keeps the table pages that describe it.
        s.take(FIRST_PAGE + 100, 1);
        assert!(s.pick_meta(&mut m));
        assert!(!s.is_free(FIRST_PAGE + 200, 1), "the pages described are out meanwhile");
        s.commit_meta(&m, !0);
        for (t, &(_, per_page)) in TABLES.iter().enumerate() {
            let unit = (FIRST_PAGE + 100) * per_page / 4096;
            assert_ne!(s.meta_resident[t][unit / 64] & (1 << (unit % 64)), 0, "table {t}");
        }
        assert!(s.is_free(FIRST_PAGE + 200, 1));
    }

    #[test]
    fn is_free_checks_the_whole_run() {
        let mut s = state();
        s.grow(1);
        s.take(FIRST_PAGE + 2, 1);
        assert!(s.is_free(FIRST_PAGE, 2));
        assert!(!s.is_free(FIRST_PAGE, 3));
        assert!(!s.is_free(s.grown - 1, 2), "beyond grown");
    }
}
