//! Counts the instructions of an alloc+free pair under callgrind, for
//! spanalloc and its peers through the same `GlobalAlloc` calls: a LIFO pair,
//! or a pair of 1,000 allocations followed by 1,000 frees (`batch`).
//!
//! ```text
//! cd benches
//! cargo build --release --example lifo_instructions
//! valgrind --tool=callgrind target/release/examples/lifo_instructions spanalloc 64 1000000
//! ```
//!
//! `scripts/lifo-instructions.sh` runs every allocator at two iteration
//! counts and prints the difference per pair, which cancels start-up.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

use spanalloc_benches::{ALLOCATORS, WithAllocator, with_allocator};

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

/// A pattern, its size and its count.
struct Pattern<'a> {
    name: &'a str,
    size: &'a str,
    n: usize,
}

impl Pattern<'_> {
    fn size(&self) -> usize {
        self.size.parse().unwrap_or_else(|_| {
            eprintln!("lifo_instructions: the {} pattern needs a size in bytes, not {:?}", self.name, self.size);
            std::process::exit(2);
        })
    }
}

impl WithAllocator for Pattern<'_> {
    type Output = ();

    fn run<A: GlobalAlloc + Sync + 'static>(self, a: &'static A, _: &'static str) {
        match self.name {
            "lifo" => lifo(a, self.size(), self.n),
            "batch" => batch(a, self.size(), self.n),
            other => {
                eprintln!("lifo_instructions: unknown pattern {other} (lifo or batch)");
                std::process::exit(2);
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (which, size, n, name) = match args.as_slice() {
        [_, w, s, n] => (w, s, n, "lifo"),
        [_, w, s, n, p] => (w, s, n, p.as_str()),
        _ => {
            eprintln!("usage: lifo_instructions <{}> <size> <pairs> [lifo|batch]", ALLOCATORS.join("|"));
            std::process::exit(2);
        }
    };
    let n = n.parse().expect("count");
    if with_allocator(which, Pattern { name, size, n }).is_none() {
        eprintln!("lifo_instructions: unknown allocator {which}");
        std::process::exit(2);
    }
}
