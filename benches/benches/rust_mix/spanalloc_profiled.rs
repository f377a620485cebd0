//! rust_mix with spanalloc as the global allocator and its heap profile on
//! (see `workload.rs`): against `spanalloc.rs`, the profile's cost.

#[global_allocator]
static GLOBAL: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

const ALLOCATOR: &str = "spanalloc_profiled";

include!("workload.rs");
