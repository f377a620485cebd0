//! What spanalloc's benchmarks share: the five allocators as `GlobalAlloc`
//! statics, calls into them that abort on null, worker threads that outlive
//! criterion's samples, and the workloads that more than one target runs
//! ([`larson`]).
//!
//! Every workload is generic over the allocator and calls it through
//! `GlobalAlloc` on a `&'static` instance; its own bookkeeping (vectors,
//! thread handles) goes to the binary's global allocator.

pub mod allocators;
pub mod harness;
pub mod larson;

#[path = "../../tests/support/mod.rs"]
mod support;

pub use allocators::{ALLOCATORS, JEMALLOC, MIMALLOC, SNMALLOC, SPANALLOC, SYSTEM, WithAllocator, with_allocator};
pub use harness::{Crew, Job, alloc, alloc_sized, dealloc, free_sized, group, layout, null_from};
pub use support::{Rng, rss_kib};
