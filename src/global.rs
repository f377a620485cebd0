//! The global allocator: [`SpanAlloc`], and the process-wide `release` and
//! `stats`.
//!
//! `SpanAlloc` is a unit struct; its `GlobalAlloc` methods find the calling
//! thread's cache (see `thread`) and call the mcache fast paths, which
//! inline here: an allocation or a free is a few dozen instructions with no
//! call.

use core::alloc::{GlobalAlloc, Layout};

use crate::stats::Stats;
use crate::thread::{self, HEAP};

/// spanalloc as Rust's global allocator:
///
/// ```
/// #[global_allocator]
/// static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanAlloc;

// SAFETY: the mcache and mheap return blocks of at least the layout's size
// and alignment, disjoint from every other live block, or null.
unsafe impl GlobalAlloc for SpanAlloc {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: one operation on this thread's cache.
        let (c, h) = unsafe { thread::current() };
        c.alloc(&h, layout.size(), layout.align())
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: one operation on this thread's cache; GlobalAlloc's
        // contract: ptr came from us with this layout.
        unsafe {
            let (c, h) = thread::current();
            c.dealloc(&h, ptr, layout.size(), layout.align())
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: one operation on this thread's cache.
        let (c, h) = unsafe { thread::current() };
        c.alloc_zeroed(&h, layout.size(), layout.align())
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: one operation on this thread's cache; GlobalAlloc's
        // contract, forwarded.
        unsafe {
            let (c, h) = thread::current();
            c.realloc(&h, ptr, layout.size(), layout.align(), new_size)
        }
    }
}

/// Gives memory back to the OS now: flushes the calling thread's cache,
/// returns every empty span to the mheap and releases every free page
/// (`MADV_DONTNEED`). Without this call the same happens gradually, a
/// scavenger tick after memory was freed.
pub fn release() {
    thread::flush_current();
    HEAP.release();
}

/// Turns the background release of the global allocator's free memory on
/// (the default) or off.
///
/// While it is on, memory that stays free for the decay (see
/// [`crate::set_release_decay_ms`]) goes back to the OS even if the program
/// never calls the allocator again, from a thread spanalloc starts once
/// there is something to give back (named `spanalloc-bg`). While it is off,
/// the same happens only as the program keeps allocating (on the
/// allocator's slow paths, a few MiB at a time), or when it calls
/// [`release`].
pub fn set_background_release(on: bool) {
    crate::scavenger::set_background(&HEAP, on);
}

/// A snapshot of the global allocator's statistics (see [`Stats`]).
pub fn stats() -> Stats {
    let mut s = HEAP.stats();
    s.stacks = crate::stack::stats(s.stacks.cached);
    s
}
