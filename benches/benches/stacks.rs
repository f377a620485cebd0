//! Coroutine stacks: spanalloc's pooled [`Stack`] against a freshly mapped
//! guarded stack per coroutine (corosensei's `DefaultStack`: `mmap`,
//! `mprotect`, and `munmap` on drop).
//!
//! ```text
//! cd benches
//! cargo bench --bench stacks
//! cargo bench --bench stacks -- --quick    # a smoke run
//! ```
//!
//! The groups:
//!
//! - `stack_get_drop/<size>` (16 KiB, 256 KiB): a stack taken, its top
//!   byte written (as any coroutine's first frame would), and dropped, per
//!   pair; `spanalloc` reuses a pooled stack (warmed up first), `fresh_mmap`
//!   maps a `DefaultStack` (its first touch faults a page in) and unmaps it.
//! - `coroutine_create_run_drop`: a corosensei coroutine on a 16 KiB stack
//!   created, resumed once to completion (it does a few arithmetic
//!   operations and returns) and dropped, per coroutine; on a `spanalloc`
//!   stack or on a `DefaultStack` mapped for it.
//! - `suspended_coroutines/100000`: 100,000 coroutines on 16 KiB spanalloc
//!   stacks created and resumed once each, so that every one is suspended
//!   with a touched stack, then all dropped (dropping a suspended coroutine
//!   unwinds it), per batch of 100,000.
//!
//! Before timing `suspended_coroutines` (when it is selected), the bench
//! prints to stderr the resident memory (`VmRSS`) each suspended coroutine
//! costs, for spanalloc stacks and for `DefaultStack`s. The figure includes the coroutine handles
//! in their vector, alike for both. A `DefaultStack` is two memory mappings
//! (guard and stack), so the default `vm.max_map_count` (65,530) holds only
//! about 32,000 of them: the `DefaultStack` figure is measured at as many as
//! fit, and the line says how many that was.
//!
//! The benchmark binary keeps the default global allocator (glibc): the
//! stacks are what is compared, and neither kind of stack comes from the
//! global allocator.

use std::hint::black_box;
use std::time::{Duration, Instant};

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use spanalloc::stack::Stack;

/// The coroutine stack size of every group but `stack_get_drop/256KiB`.
const SMALL: usize = 16 << 10;
/// Coroutines suspended at once in `suspended_coroutines`.
const SUSPENDED: usize = 100_000;

fn stack_get_drop(c: &mut Criterion) {
    for (size, name) in [(16 << 10, "16KiB"), (256 << 10, "256KiB")] {
        let mut g = c.benchmark_group(format!("stack_get_drop/{name}"));
        // Carve the class's first slab outside the measurement.
        drop(Stack::new(size).unwrap());
        g.bench_function("spanalloc", |b| {
            b.iter(|| {
                let s = Stack::new(black_box(size)).unwrap();
                touch_top(s.top());
                drop(s)
            })
        });
        g.bench_function("fresh_mmap", |b| {
            b.iter(|| {
                let s = DefaultStack::new(black_box(size)).unwrap();
                touch_top(corosensei::stack::Stack::base(&s).get());
                drop(s)
            })
        });
        g.finish();
    }
}

/// Writes the byte just below a stack's top, as a coroutine's first frame
/// would.
fn touch_top(top: usize) {
    // SAFETY: the byte below the top of a live stack is writable.
    unsafe { ((top - 1) as *mut u8).write_volatile(1) };
}

/// The coroutine of `coroutine_create_run_drop`: a little arithmetic on its
/// input, then return.
fn tiny(_: &Yielder<u64, ()>, x: u64) -> u64 {
    mix(x)
}

fn mix(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ x
}

/// Resumes `co` once; it must return `tiny(x)`.
fn run_to_end<S: corosensei::stack::Stack>(mut co: Coroutine<u64, (), u64, S>, x: u64) {
    match co.resume(x) {
        CoroutineResult::Return(v) => assert_eq!(v, mix(x)),
        CoroutineResult::Yield(()) => unreachable!("the coroutine does not yield"),
    }
}

fn coroutine_create_run_drop(c: &mut Criterion) {
    let mut g = c.benchmark_group("coroutine_create_run_drop");
    let mut x = 0u64;
    g.bench_function("spanalloc", |b| {
        b.iter(|| {
            x += 1;
            run_to_end(Coroutine::with_stack(Stack::new(SMALL).unwrap(), tiny), black_box(x));
        })
    });
    g.bench_function("fresh_mmap", |b| {
        b.iter(|| {
            x += 1;
            run_to_end(Coroutine::with_stack(DefaultStack::new(SMALL).unwrap(), tiny), black_box(x));
        })
    });
    g.finish();
}

/// A coroutine that writes a little to its stack, suspends, and returns
/// what it is resumed with plus its own index.
type Suspending<S> = Coroutine<u64, u64, u64, S>;

/// `n` coroutines, each resumed once so that it is suspended with a touched
/// stack, in a vector of capacity `n`.
fn suspend_many<S: corosensei::stack::Stack + 'static>(n: usize, mut stack: impl FnMut() -> S) -> Vec<Suspending<S>> {
    let mut all = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let mut co = Coroutine::with_stack(stack(), move |y: &Yielder<u64, u64>, x: u64| {
            // A few dozen bytes of locals on the coroutine's stack.
            let scratch = black_box([i; 8]);
            let got = y.suspend(x + scratch[7]);
            got + black_box(scratch)[0]
        });
        match co.resume(1) {
            CoroutineResult::Yield(v) => assert_eq!(v, 1 + i),
            CoroutineResult::Return(_) => unreachable!("the coroutine suspends first"),
        }
        all.push(co);
    }
    all
}

/// `VmRSS` of this process, in bytes.
fn rss() -> u64 {
    spanalloc_benches::rss_kib() * 1024
}

/// Resident bytes per suspended coroutine: the growth of `VmRSS` while `n`
/// coroutines are suspended, divided by `n`.
fn rss_per_suspended<S: corosensei::stack::Stack + 'static>(n: usize, stack: impl FnMut() -> S) -> u64 {
    let before = rss();
    let all = suspend_many(n, stack);
    let after = rss();
    drop(all);
    after.saturating_sub(before) / n as u64
}

/// How many `DefaultStack`s fit under `vm.max_map_count` next to this
/// process's mappings: two mappings each, with room to spare.
fn default_stacks_that_fit() -> usize {
    let max: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530);
    let now = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    max.saturating_sub(now + 2_000) / 2
}

/// Prints the resident memory per suspended coroutine, spanalloc stacks
/// against `DefaultStack`s.
fn print_rss_per_suspended() {
    // Carve the slabs (and install their guards) outside the measurement.
    let warm: Vec<Stack> = (0..SUSPENDED).map(|_| Stack::new(SMALL).unwrap()).collect();
    drop(warm);
    let spanalloc = rss_per_suspended(SUSPENDED, || Stack::new(SMALL).unwrap());
    let n_default = SUSPENDED.min(default_stacks_that_fit());
    let default = rss_per_suspended(n_default, || DefaultStack::new(SMALL).unwrap());
    let note = if n_default < SUSPENDED {
        format!(" (DefaultStack at {n_default}: two mappings each, as many as vm.max_map_count allows)")
    } else {
        String::new()
    };
    eprintln!(
        "RSS per suspended coroutine at {SUSPENDED}: spanalloc {spanalloc} bytes, DefaultStack {default} bytes{note}"
    );
}

fn suspended_coroutines(c: &mut Criterion) {
    let mut g = c.benchmark_group("suspended_coroutines");
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    let mut rss_printed = false;
    g.bench_function(SUSPENDED.to_string(), |b| {
        // Criterion calls this only when the benchmark is selected: the RSS
        // figures come first, outside the timed part.
        if !rss_printed {
            print_rss_per_suspended();
            rss_printed = true;
        }
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let all = suspend_many(SUSPENDED, || Stack::new(SMALL).unwrap());
                drop(black_box(all));
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(stack_benches, stack_get_drop, coroutine_create_run_drop, suspended_coroutines);
criterion_main!(stack_benches);
