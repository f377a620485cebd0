//! Counts the instructions of an alloc+free pair under callgrind, for
//! spanalloc and its peers through the same `GlobalAlloc` calls: a LIFO pair,
//! or a pair of 1,000 allocations followed by 1,000 frees (`batch`).
//!
//! ```text
//! cargo build --release --example lifo_instructions
//! valgrind --tool=callgrind target/release/examples/lifo_instructions spanalloc 64 1000000
//! ```
//!
//! `scripts/lifo-instructions.sh` runs every allocator at two iteration
//! counts and prints the difference per pair, which cancels start-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

static SPANALLOC: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static SNMALLOC: snmalloc_rs::SnMalloc = snmalloc_rs::SnMalloc;

/// `n / 1000` rounds of 1,000 allocations then 1,000 frees in allocation
/// order, of `size` bytes.
#[inline(never)]
fn batch<A: GlobalAlloc>(a: &A, size: usize, n: usize) {
    let layout = black_box(Layout::from_size_align(size, 8).unwrap());
    let mut ptrs = vec![std::ptr::null_mut(); 1000];
    for _ in 0..n / 1000 {
        for p in ptrs.iter_mut() {
            // SAFETY: a non-zero size.
            *p = unsafe { a.alloc(layout) };
        }
        for &p in &ptrs {
            // SAFETY: freed with the layout it was allocated with.
            unsafe { a.dealloc(black_box(p), layout) };
        }
    }
}

/// `n` LIFO pairs of `size` bytes; the layout is opaque to the optimiser.
#[inline(never)]
fn lifo<A: GlobalAlloc>(a: &A, size: usize, n: usize) {
    let layout = black_box(Layout::from_size_align(size, 8).unwrap());
    for _ in 0..n {
        // SAFETY: the block is freed with the layout it was allocated with.
        unsafe {
            let p = a.alloc(layout);
            black_box(p);
            a.dealloc(p, layout);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (which, size, n, pattern) = match args.as_slice() {
        [_, w, s, n] => (w.as_str(), s.parse().expect("size"), n.parse().expect("count"), "lifo"),
        [_, w, s, n, p] => (w.as_str(), s.parse().expect("size"), n.parse().expect("count"), p.as_str()),
        _ => {
            eprintln!(
                "usage: lifo_instructions <spanalloc|system|mimalloc|jemalloc|snmalloc> <size> <pairs> [lifo|batch]"
            );
            std::process::exit(2);
        }
    };
    match (which, pattern) {
        ("spanalloc", "lifo") => lifo(&SPANALLOC, size, n),
        ("system", "lifo") => lifo(&System, size, n),
        ("mimalloc", "lifo") => lifo(&MIMALLOC, size, n),
        ("jemalloc", "lifo") => lifo(&JEMALLOC, size, n),
        ("snmalloc", "lifo") => lifo(&SNMALLOC, size, n),
        ("spanalloc", "batch") => batch(&SPANALLOC, size, n),
        ("system", "batch") => batch(&System, size, n),
        ("mimalloc", "batch") => batch(&MIMALLOC, size, n),
        ("jemalloc", "batch") => batch(&JEMALLOC, size, n),
        ("snmalloc", "batch") => batch(&SNMALLOC, size, n),
        other => {
            eprintln!("unknown allocator or pattern {other:?}");
            std::process::exit(2);
        }
    }
}
