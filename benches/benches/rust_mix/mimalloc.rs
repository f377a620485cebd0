//! rust_mix with mimalloc as the global allocator (see `workload.rs`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALLOCATOR: &str = "mimalloc";

include!("workload.rs");
