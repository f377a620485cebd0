//! The five allocators under test, as `static` instances called through
//! `GlobalAlloc`, and a way to pick one by name at run time.

use std::alloc::{GlobalAlloc, System};

pub static SPANALLOC: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
pub static SYSTEM: System = System;
pub static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
pub static SNMALLOC: snmalloc_rs::SnMalloc = snmalloc_rs::SnMalloc;

/// Their names, in the order every table lists them.
pub const ALLOCATORS: [&str; 5] = ["spanalloc", "system", "mimalloc", "jemalloc", "snmalloc"];

/// Something to run with one allocator, chosen by name at run time
/// ([`with_allocator`]): a generic function written as a trait, so each
/// allocator gets its own monomorphised copy of the workload.
pub trait WithAllocator {
    type Output;
    fn run<A: GlobalAlloc + Sync + 'static>(self, a: &'static A, name: &'static str) -> Self::Output;
}

/// Runs `w` with the allocator named `name`; `None` for an unknown name.
pub fn with_allocator<W: WithAllocator>(name: &str, w: W) -> Option<W::Output> {
    Some(match name {
        "spanalloc" => w.run(&SPANALLOC, "spanalloc"),
        "system" => w.run(&SYSTEM, "system"),
        "mimalloc" => w.run(&MIMALLOC, "mimalloc"),
        "jemalloc" => w.run(&JEMALLOC, "jemalloc"),
        "snmalloc" => w.run(&SNMALLOC, "snmalloc"),
        _ => return None,
    })
}
