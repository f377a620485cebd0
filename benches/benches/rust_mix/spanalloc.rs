//! rust_mix with spanalloc as the global allocator (see `workload.rs`).

#[global_allocator]
static GLOBAL: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

const ALLOCATOR: &str = "spanalloc";

include!("workload.rs");
