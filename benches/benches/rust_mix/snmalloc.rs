//! rust_mix with snmalloc as the global allocator (see `workload.rs`).

#[global_allocator]
static GLOBAL: snmalloc_rs::SnMalloc = snmalloc_rs::SnMalloc;

const ALLOCATOR: &str = "snmalloc";

include!("workload.rs");
