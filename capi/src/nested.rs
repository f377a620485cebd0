//! Calls that arrive while the thread is already inside spanalloc.
//!
//! Two things can re-enter an entry point on the same thread before the
//! outer call has returned: glibc's TLS bookkeeping (the core's thread
//! cache is a general-dynamic `thread_local!` today, and `__tls_get_addr`'s
//! slow path after a `dlopen` grows the DTV with `malloc`/`realloc` and
//! drops stale entries with `free`), and a signal handler that allocates.
//! The outer call may hold the thread's cache as `&mut`, or a lock, so the
//! nested one must not touch the core at all:
//!
//! - an allocation comes from the *emergency region*, a static 4 MiB in
//!   `.bss` (committed page by page on first touch) in 16 chunks, each
//!   carved by an atomic bump pointer with a count of its live blocks: no
//!   lock, no TLS, no syscall, so a signal handler may use it. A chunk
//!   whose blocks are all freed starts over. Each block has a 16-byte
//!   header before it holding its size (the one place where metadata sits
//!   beside user memory: this path serves a few objects at a time). When no
//!   chunk has room, or for a block over 256 KiB, the nested call fails
//!   (NULL, `ENOMEM`);
//! - a free of a core object is *deferred*: kept in the thread's
//!   [`ThreadState`](crate::tls::ThreadState) and done when the outermost
//!   call leaves; past [`DEFERRED`](crate::tls::DEFERRED) pending frees the
//!   object is leaked (counted in `dropped`);
//! - `malloc_usable_size` and `realloc`'s size lookup read only the core's
//!   page tables (`raw::usable_size` takes no TLS and no lock).
//!
//! The depth counter costs one TLS add on entry and one subtract and
//! compare on exit ([`enter`], [`leave`]).

use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use spanalloc_core::raw;

use crate::tls::{self, DEFERRED, DEFERRED_ONE, DEPTH_MASK};

/// Size of the emergency region.
const REGION: usize = 4 << 20;
/// The region is carved in chunks; a chunk whose blocks are all free again
/// starts over, so long-lived blocks pin only their own chunk.
const CHUNK: usize = 256 << 10;
const CHUNKS: usize = REGION / CHUNK;
/// Bytes before each emergency block (its size).
const HEADER: usize = 16;

#[repr(C, align(4096))]
struct Region(UnsafeCell<[u8; REGION]>);

// SAFETY: disjoint parts are handed out through the chunk words below;
// each part belongs to one caller.
unsafe impl Sync for Region {}

static EMERGENCY: Region = Region(UnsafeCell::new([0; REGION]));
/// Per chunk: live blocks in the high 32 bits, bytes carved in the low 32.
/// One word, so "the last block is freed" and "start over" are one CAS.
static CHUNK_STATE: [AtomicU64; CHUNKS] = [const { AtomicU64::new(0) }; CHUNKS];
/// The chunk new blocks come from first.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// Nested allocations and frees served here, for tests and diagnosis.
static NESTED: AtomicUsize = AtomicUsize::new(0);

/// The number of nested allocations and frees served so far (exported for
/// tests as `spanalloc_nested_calls`).
pub(crate) fn nested_calls() -> usize {
    NESTED.load(Ordering::Relaxed)
}

/// Marks the thread as inside spanalloc. Returns whether it already was
/// (the call is nested and must not reach the core).
#[inline(always)]
pub(crate) fn enter() -> bool {
    let s = tls::state();
    let old = s.word.get();
    s.word.set(old + 1);
    !cfg!(feature = "unguarded") && old & DEPTH_MASK != 0
}

/// Undoes [`enter`]; the outermost call also does the frees deferred
/// meanwhile.
#[inline(always)]
pub(crate) fn leave() {
    let s = tls::state();
    let w = s.word.get() - 1;
    s.word.set(w);
    if w != 0 {
        leave_slow(w);
    }
}

#[cold]
#[inline(never)]
fn leave_slow(w: usize) {
    if w & DEPTH_MASK != 0 {
        return;
    }
    let s = tls::state();
    // Free the deferred objects as a call of our own, so that anything
    // nested in these frees is handled as above.
    s.word.set(s.word.get() + 1);
    loop {
        let w = s.word.get();
        if w < DEFERRED_ONE {
            break;
        }
        let n = w / DEFERRED_ONE - 1;
        let p = s.deferred[n].replace(0);
        s.word.set(w - DEFERRED_ONE);
        // SAFETY: the object was handed to `free` while the thread was
        // inside spanalloc; it is ours (checked before deferring) and dead.
        unsafe { raw::free(p as *mut u8) };
    }
    s.word.set(s.word.get() - 1);
}

/// Defers the free of core object `p` until the outermost call leaves.
#[cold]
pub(crate) fn defer_free(p: *mut u8) {
    NESTED.fetch_add(1, Ordering::Relaxed);
    let s = tls::state();
    let w = s.word.get();
    let n = w / DEFERRED_ONE;
    if n < DEFERRED {
        s.deferred[n].set(p as usize);
        s.word.set(w + DEFERRED_ONE);
    } else {
        s.dropped.set(s.dropped.get() + 1);
    }
}

/// Whether `p` is an emergency block.
#[inline(always)]
pub(crate) fn is_emergency(p: *const u8) -> bool {
    (p as usize).wrapping_sub(EMERGENCY.0.get() as usize) < REGION
}

/// A zeroed emergency block of `size` bytes aligned to `align` (a power of
/// two); null when no chunk has room.
#[cold]
pub(crate) fn alloc(size: usize, align: usize) -> *mut u8 {
    NESTED.fetch_add(1, Ordering::Relaxed);
    let align = align.max(HEADER);
    let Some(need) = size.max(1).checked_next_multiple_of(HEADER) else {
        return ptr::null_mut();
    };
    if need > CHUNK || align > CHUNK / 2 {
        return ptr::null_mut();
    }
    let first = CURRENT.load(Ordering::Relaxed);
    for k in 0..CHUNKS {
        let c = (first + k) % CHUNKS;
        if let Some(p) = carve(c, need, align) {
            if k != 0 {
                CURRENT.store(c, Ordering::Relaxed);
            }
            return p;
        }
    }
    ptr::null_mut()
}

/// Carves `need` bytes aligned to `align` from chunk `c`, if they fit.
fn carve(c: usize, need: usize, align: usize) -> Option<*mut u8> {
    let base = EMERGENCY.0.get() as usize + c * CHUNK;
    let state = &CHUNK_STATE[c];
    let mut w = state.load(Ordering::Relaxed);
    loop {
        let used = (w & 0xffff_ffff) as usize;
        let start = (base + used + HEADER).next_multiple_of(align) - base;
        let end = start + need;
        if end > CHUNK {
            return None;
        }
        let new = (((w >> 32) + 1) << 32) | end as u64;
        match state.compare_exchange_weak(w, new, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => {
                let p = (base + start) as *mut u8;
                // SAFETY: [start - HEADER, end) of the chunk is ours alone.
                // A chunk that starts over may hand out dirty bytes: clear.
                unsafe {
                    p.sub(HEADER).cast::<usize>().write(need);
                    p.write_bytes(0, need);
                }
                return Some(p);
            }
            Err(now) => w = now,
        }
    }
}

/// Frees emergency block `p`; the chunk starts over when it was its last.
#[cold]
pub(crate) fn free(p: *mut u8) {
    let c = (p as usize - EMERGENCY.0.get() as usize) / CHUNK;
    let state = &CHUNK_STATE[c];
    let mut w = state.load(Ordering::Relaxed);
    loop {
        let live = w >> 32;
        let new = if live <= 1 { 0 } else { ((live - 1) << 32) | (w & 0xffff_ffff) };
        match state.compare_exchange_weak(w, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => w = now,
        }
    }
}

/// The usable size of emergency block `p`.
pub(crate) fn usable(p: *const u8) -> usize {
    // SAFETY: `p` is an emergency block; its header precedes it.
    unsafe { p.sub(HEADER).cast::<usize>().read() }
}

/// `realloc` of an object while the thread is inside spanalloc: a new
/// emergency block with the bytes copied; a core object is freed later.
#[cold]
pub(crate) unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    let old = if is_emergency(p) { usable(p) } else { raw::usable_size(p) };
    let q = alloc(size, 16);
    if !q.is_null() {
        // SAFETY: both blocks are live and disjoint.
        unsafe { core::ptr::copy_nonoverlapping(p, q, old.min(size)) };
        if is_emergency(p) {
            free(p);
        } else {
            defer_free(p);
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emergency_blocks_are_aligned_zeroed_and_sized() {
        for (size, align) in [(1, 8), (24, 16), (100, 64), (5000, 4096)] {
            let p = alloc(size, align);
            assert!(!p.is_null());
            assert!(is_emergency(p));
            assert_eq!(p as usize % align, 0);
            assert!(usable(p) >= size);
            assert!(unsafe { core::slice::from_raw_parts(p, size) }.iter().all(|&b| b == 0));
        }
        assert!(alloc(CHUNK + 1, 8).is_null(), "a block larger than a chunk fails");
        assert!(!is_emergency(core::ptr::null()));
    }

    #[test]
    fn a_chunk_whose_blocks_are_all_freed_starts_over() {
        // Far more than the region in all, but never much live at once.
        for i in 0..10_000 {
            let p = alloc(3000, 16);
            assert!(!p.is_null(), "round {i}");
            unsafe { p.write_bytes(0xee, 3000) };
            let q = alloc(100, 64);
            assert!(!q.is_null() && (q as usize).is_multiple_of(64));
            assert!(unsafe { core::slice::from_raw_parts(q, 100) }.iter().all(|&b| b == 0));
            free(p);
            free(q);
        }
    }

    #[test]
    #[cfg_attr(feature = "unguarded", ignore = "the feature turns nesting off")]
    fn depth_counts_nesting_and_leaving_does_the_deferred_frees() {
        assert!(!enter());
        assert!(enter(), "second entry is nested");
        let p = raw::malloc(40);
        defer_free(p);
        leave();
        assert_eq!(tls::state().word.get(), 1 + DEFERRED_ONE);
        leave();
        assert_eq!(tls::state().word.get(), 0, "outermost leave freed the deferred object");
        let q = raw::malloc(40);
        assert!(raw::owns(q));
        unsafe { raw::free(q) };
    }
}
