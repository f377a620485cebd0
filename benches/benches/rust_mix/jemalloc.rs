//! rust_mix with jemalloc as the global allocator (see `workload.rs`).

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ALLOCATOR: &str = "jemalloc";

include!("workload.rs");
