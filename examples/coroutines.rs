//! 100,000 corosensei coroutines suspended at once on 16 KiB spanalloc
//! stacks, then all resumed to completion.
//!
//! ```text
//! cargo run --release --features corosensei --example coroutines
//! cargo run --release --features corosensei --example coroutines -- 500000
//! ```
//!
//! Prints the process's resident memory (`VmRSS`) before the coroutines are
//! created and while they are all suspended, what that is per coroutine
//! (its stack's touched page plus its handle in a vector), and
//! `spanalloc::stats()`, whose stack figures count the stacks in use.

use std::time::Instant;

use corosensei::{Coroutine, CoroutineResult, Yielder};
use spanalloc::stack::Stack;

#[path = "../tests/support/mod.rs"]
mod support;

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

/// `VmRSS` of this process, in bytes.
fn rss() -> u64 {
    support::rss_kib() * 1024
}

fn main() {
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().ok().filter(|&n| n > 0).expect("usage: coroutines [count > 0]"),
        None => 100_000,
    };

    let before = rss();
    let start = Instant::now();
    let mut coroutines = Vec::with_capacity(n as usize);
    for i in 0..n {
        let stack = Stack::new(16 << 10).expect("a coroutine stack");
        let mut co = Coroutine::with_stack(stack, move |y: &Yielder<u64, u64>, x: u64| {
            // Suspend with one value, finish with another.
            let resumed_with = y.suspend(x + i);
            resumed_with * 2 + i
        });
        match co.resume(1) {
            CoroutineResult::Yield(v) => assert_eq!(v, 1 + i),
            CoroutineResult::Return(_) => panic!("coroutine {i} returned without suspending"),
        }
        coroutines.push(co);
    }
    let created = start.elapsed();
    let suspended = rss();

    println!("{n} coroutines suspended on 16 KiB stacks in {created:.2?}");
    println!("RSS before:                  {:>8} KiB", before / 1024);
    println!("RSS with all suspended:      {:>8} KiB", suspended / 1024);
    println!("RSS per suspended coroutine: {:>8} bytes", suspended.saturating_sub(before) / n.max(1));
    println!();
    println!("{}", spanalloc::stats());

    let start = Instant::now();
    for (i, co) in (0..).zip(coroutines.iter_mut()) {
        match co.resume(i) {
            CoroutineResult::Return(v) => assert_eq!(v, 3 * i),
            CoroutineResult::Yield(_) => panic!("coroutine {i} suspended twice"),
        }
    }
    drop(coroutines);
    println!("all {n} resumed to completion and dropped in {:.2?}", start.elapsed());
    println!("stacks after: {:?}", spanalloc::stats().stacks);
}
