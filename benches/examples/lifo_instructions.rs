//! Runs one allocation pattern `n` times, for spanalloc and its peers
//! through the same `GlobalAlloc` calls, to be counted under callgrind or
//! cachegrind (or timed as a whole process):
//!
//! - `lifo`: an alloc+free pair of `size` bytes;
//! - `batch`: 1,000 allocations of `size` bytes followed by 1,000 frees, `n`
//!   counting pairs;
//! - `remote`: an allocation of `size` bytes here and its free on another
//!   thread (rounds of 100,000: this thread allocates them, a new thread
//!   frees them all), `n` counting objects;
//! - `simple-touched`, `simple-alone`: a step of `churn_simple` (64 slots,
//!   a random slot's object freed and one of 16–512 B allocated in its
//!   place; see `benches/alloc.rs`), `size` ignored.
//!
//! ```text
//! cd benches
//! cargo build --release --example lifo_instructions
//! valgrind --tool=callgrind target/release/examples/lifo_instructions spanalloc 64 1000000
//! valgrind --tool=callgrind target/release/examples/lifo_instructions spanalloc - 1000000 simple-touched
//! ```
//!
//! `scripts/lifo-instructions.sh` (callgrind: instructions) and
//! `scripts/churn-cachegrind.sh` (cachegrind: instructions, cache misses,
//! mispredicted branches) run every allocator at two counts and print the
//! difference per operation, which cancels start-up and set-up.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

use spanalloc_benches::{ALLOCATORS, WithAllocator, churn, with_allocator};

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

/// `n / 100,000` rounds: 100,000 allocations of `size` bytes on this
/// thread, then all of them freed on a thread of their own.
#[inline(never)]
fn remote<A: GlobalAlloc + Sync>(a: &A, size: usize, n: usize) {
    const ROUND: usize = 100_000;
    let layout = black_box(Layout::from_size_align(size, 8).unwrap());
    let mut ptrs = vec![0usize; ROUND];
    for _ in 0..n / ROUND {
        for p in ptrs.iter_mut() {
            // SAFETY: a non-zero size.
            *p = unsafe { a.alloc(layout) } as usize;
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                for &p in &ptrs {
                    // SAFETY: freed with the layout it was allocated with.
                    unsafe { a.dealloc(black_box(p as *mut u8), layout) };
                }
            });
        });
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
            "remote" => remote(a, self.size(), self.n),
            "simple-touched" => churn::Churn::new(a, 1).steps::<true>(self.n as u64),
            "simple-alone" => churn::Churn::new(a, 1).steps::<false>(self.n as u64),
            other => {
                eprintln!("lifo_instructions: unknown pattern {other} (lifo, batch, remote, simple-touched, simple-alone)");
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
            eprintln!(
                "usage: lifo_instructions <{}> <size> <count> [lifo|batch|remote|simple-touched|simple-alone]",
                ALLOCATORS.join("|")
            );
            std::process::exit(2);
        }
    };
    let n = n.parse().expect("count");
    if with_allocator(which, Pattern { name, size, n }).is_none() {
        eprintln!("lifo_instructions: unknown allocator {which}");
        std::process::exit(2);
    }
}
