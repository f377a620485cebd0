//! rust_mix with glibc's malloc (`System`) as the global allocator (see
//! `workload.rs`).

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

const ALLOCATOR: &str = "system";

include!("workload.rs");
