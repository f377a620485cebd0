//! What spanalloc's benchmarks share: the five allocators as `GlobalAlloc`
//! statics, calls into them that abort on null, worker threads that outlive
//! criterion's samples, and the program-like workloads that the criterion
//! suite (`benches/alloc.rs`), the memory harness (`examples/memory.rs`)
//! and the instruction counts (`examples/lifo_instructions.rs`) all run:
//!
//! - [`churn`]: glibc's bench-malloc-simple/thread pattern, random frees and
//!   random sizes in a small slot array per thread;
//! - [`larson`]: server-like churn whose slot arrays move between threads;
//! - [`mstress`]: mimalloc's stress test, objects kept, handed between
//!   threads and freed in rounds of short-lived threads;
//! - [`rptest`]: rpmalloc's benchmark, random sizes and lifetimes with
//!   batches freed by another thread.
//!
//! Every workload is generic over the allocator and calls it through
//! `GlobalAlloc` on a `&'static` instance; its own bookkeeping (random
//! tables, vectors, thread handles) goes to the binary's global allocator.
//! The definitions of the workloads, and where each differs from the
//! program it follows, are in `benches/alloc.rs`'s header.

pub mod allocators;
pub mod churn;
pub mod harness;
pub mod larson;
pub mod mstress;
pub mod rptest;

// The tests' support module; its `Rng::next` is not an iterator's.
#[allow(clippy::should_implement_trait)]
#[path = "../../tests/support/mod.rs"]
mod support;

pub use allocators::{ALLOCATORS, JEMALLOC, MIMALLOC, SNMALLOC, SPANALLOC, SYSTEM, WithAllocator, with_allocator};
pub use harness::{Crew, Job, Words, alloc, alloc_sized, alloc_zeroed, dealloc, free_sized, group, layout, null_from};
pub use support::{Rng, rss_kib};
