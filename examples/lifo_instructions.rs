//! Counts the instructions of a LIFO alloc+free pair under callgrind, for
//! spanalloc and its peers through the same `GlobalAlloc` calls.
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
    let (which, size, n) = match args.as_slice() {
        [_, w, s, n] => (w.as_str(), s.parse().expect("size"), n.parse().expect("count")),
        _ => {
            eprintln!("usage: lifo_instructions <spanalloc|system|mimalloc|jemalloc|snmalloc> <size> <pairs>");
            std::process::exit(2);
        }
    };
    match which {
        "spanalloc" => lifo(&SPANALLOC, size, n),
        "system" => lifo(&System, size, n),
        "mimalloc" => lifo(&MIMALLOC, size, n),
        "jemalloc" => lifo(&JEMALLOC, size, n),
        "snmalloc" => lifo(&SNMALLOC, size, n),
        other => {
            eprintln!("unknown allocator {other}");
            std::process::exit(2);
        }
    }
}
