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
//! - an allocation comes from the *emergency region*, a static 1 MiB in
//!   `.bss` carved by an atomic bump pointer (no lock, no TLS, no syscall;
//!   the pages are committed on first touch and fresh memory is zero, so
//!   `calloc` needs no clearing). Each block has a 16-byte header before it
//!   holding its size. Freed emergency blocks are not reused: the path is
//!   for a handful of objects per process. When the region is exhausted,
//!   the nested call fails (NULL, `ENOMEM`);
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
use core::sync::atomic::{AtomicUsize, Ordering};

use spanalloc_core::raw;

use crate::tls::{self, DEFERRED, DEFERRED_ONE, DEPTH_MASK};

/// Size of the emergency region.
const REGION: usize = 1 << 20;
/// Bytes before each emergency block (its size).
const HEADER: usize = 16;

#[repr(C, align(4096))]
struct Region(UnsafeCell<[u8; REGION]>);

// SAFETY: disjoint parts are handed out by an atomic bump pointer; each
// part belongs to one caller.
unsafe impl Sync for Region {}

static EMERGENCY: Region = Region(UnsafeCell::new([0; REGION]));
/// Bytes of the region handed out so far.
static USED: AtomicUsize = AtomicUsize::new(0);
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
/// two); null when the region is exhausted.
#[cold]
pub(crate) fn alloc(size: usize, align: usize) -> *mut u8 {
    NESTED.fetch_add(1, Ordering::Relaxed);
    let base = EMERGENCY.0.get() as usize;
    let align = align.max(HEADER);
    let mut used = USED.load(Ordering::Relaxed);
    loop {
        let start = (base + used + HEADER).next_multiple_of(align) - base;
        let Some(end) = start.checked_add(size.max(1).next_multiple_of(HEADER)) else {
            return core::ptr::null_mut();
        };
        if end > REGION {
            return core::ptr::null_mut();
        }
        match USED.compare_exchange_weak(used, end, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                let p = (base + start) as *mut u8;
                // SAFETY: [start - HEADER, end) is ours alone now.
                unsafe { p.sub(HEADER).cast::<usize>().write(end - start) };
                return p;
            }
            Err(now) => used = now,
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
        if !is_emergency(p) {
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
        assert!(alloc(REGION, 8).is_null(), "a block larger than the region fails");
        assert!(!is_emergency(core::ptr::null()));
    }

    #[test]
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
