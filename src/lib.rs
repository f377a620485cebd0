//! spanalloc: Go's runtime allocator, rebuilt for Rust.
//!
//! A three-level span allocator that a Rust program installs with one line:
//!
//! ```
//! #[global_allocator]
//! static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
//! ```
//!
//! # The levels
//!
//! ```text
//!  alloc(layout) ─► size class ─► mcache (this thread) ─miss─► mcentral[class] ─empty─► mheap ─grow─► os (mmap)
//!  dealloc(ptr, layout) ─► span of ptr ─► ours? window bit : deferred remote free (no lock)
//! ```
//!
//! - [`sizeclass`]: Go's 67 size classes up to 32 KiB and the O(1) lookup.
//! - `mcache`: one per thread (or an explicit [`MCache`] value); a 64-object
//!   window per class makes alloc and free a few instructions with no lock
//!   and no atomic read-modify-write.
//! - `mcentral`: per size class, the spans no mcache holds, behind a lock;
//!   an mcache takes a whole span per refill.
//! - `mheap`: pages from 64 MiB arenas, first-fit over bitmaps, span
//!   records off the user's memory, an O(1) pointer → span map; objects over
//!   32 KiB are spans of their own; free pages go back to the OS after a
//!   decay ([`set_release_decay_ms`]), from a background thread while the
//!   program idles ([`set_background_release`]), or at once with
//!   [`release`].
//! - `mspan`: a span's objects, with lock-free frees from other threads.
//! - [`Heap`]: mheap + mcentrals as a value; the global allocator is one
//!   static `Heap`.
//!
//! `ARCHITECTURE.md` in the repository is the map: the data that moves
//! between the levels, the invariants, and where each lives.
//!
//! Misuse that can be detected (freeing a foreign pointer, a double free, a
//! layout of the wrong size class) aborts with a message that names
//! spanalloc, the fault and the address.

#![warn(missing_docs)]
// Under loom only the modelled core is built (no global allocator, no C
// entry points, no thread glue), so what only those callers use lies idle.
#![cfg_attr(loom, allow(dead_code))]

mod arena;
#[doc(hidden)]
pub mod audit;
mod fixalloc;
#[cfg(not(loom))]
mod global;
mod heap;
mod index;
mod largecache;
mod mcache;
mod mcentral;
mod mheap;
mod mspan;
mod os;
#[cfg(not(loom))]
pub mod profile;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod raw;
mod report;
#[cfg(not(loom))]
mod scavenger;
pub mod sizeclass;
pub mod stack;
mod stats;
mod sync;
#[cfg(not(loom))]
mod thread;

#[cfg(not(loom))]
pub use global::{SpanAlloc, release, set_background_release, stats};
#[cfg(not(loom))]
pub use scavenger::{release_decay_ms, set_release_decay_ms};

/// Hooks for the whole-allocator tests in `tests/release_hooks.rs` (the
/// `test-hooks` feature). Not API.
#[cfg(all(feature = "test-hooks", not(loom)))]
#[doc(hidden)]
pub mod test_hooks {
    /// Makes the allocator see kernel pages of `size` bytes (a power of two
    /// at least the real page; 0 undoes it): each release then behaves as
    /// `madvise` on such a kernel. Set it before the memory under test is
    /// allocated.
    pub fn pretend_page_size(size: usize) {
        crate::os::hooks::pretend_page_size(size);
    }

    /// Has `f(address, length)` called before each release of memory to
    /// the OS, on whichever thread releases; where it says false, the
    /// release fails as if the kernel refused. `f` must not allocate.
    pub fn set_release_hook(f: Option<fn(usize, usize) -> bool>) {
        crate::os::hooks::set_release_hook(f);
    }

    /// Whether every lock of the global heap that an allocation may take
    /// can be taken within `ms` (false when the caller holds one).
    pub fn allocation_locks_free_within(ms: u64) -> bool {
        crate::thread::HEAP.allocation_locks_free_within(ms)
    }
}

/// Internals the loom models in `loom-tests/` check directly. Not API.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_api {
    pub use crate::stack::pool::{StackCache, StackPools, class_size};
    pub use crate::sync::RawLock;

    /// The addresses the mheap can hand out in the arena holding `p`.
    pub fn usable_range(p: usize) -> (usize, usize) {
        let base = p & !(crate::arena::ARENA_SIZE - 1);
        let page = crate::sizeclass::PAGE_SIZE;
        (base + crate::arena::FIRST_PAGE * page, base + crate::arena::END_PAGE * page)
    }
}
pub use heap::Heap;
pub use mcache::MCache;
pub use stats::{ClassStats, ReleaseStats, StackStats, Stats};
