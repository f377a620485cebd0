//! spanalloc in one program: installed as the global allocator, it runs a
//! multithreaded std workload, then times one allocation workload through
//! spanalloc and through the system allocator side by side, and prints the
//! allocator's statistics.
//!
//! ```text
//! cargo run --release --example demo
//! ```

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const THREADS: usize = 4;

/// std collections, strings and channels on several threads: every
/// allocation here goes through spanalloc.
fn std_workload() -> usize {
    let (tx, rx) = mpsc::channel::<Vec<String>>();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut index: HashMap<String, Vec<u32>> = HashMap::new();
                for i in 0..100_000u32 {
                    index.entry(format!("key-{}", (i * 7919 + t as u32) % 5000)).or_default().push(i);
                    if i % 1000 == 0 {
                        let batch: Vec<String> = (0..50).map(|j| format!("{t}:{i}:{j}")).collect();
                        tx.send(batch).unwrap();
                    }
                }
                index.values().map(Vec::len).sum::<usize>()
            })
        })
        .collect();
    drop(tx);
    // Messages are freed on this thread: cross-thread frees.
    let received: usize = rx.iter().map(|batch| batch.len()).sum();
    workers.into_iter().map(|w| w.join().unwrap()).sum::<usize>() + received
}

/// Objects of 16 B to 2 KiB allocated and freed in a churn on several
/// threads, half of them freed by another thread than the one that made
/// them, through allocator `a`.
fn churn<A: GlobalAlloc + Sync>(a: &'static A) -> Duration {
    let start = Instant::now();
    thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Vec<(usize, usize)>>(64);
        for t in 0..THREADS - 1 {
            let tx = tx.clone();
            s.spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                let mut live: Vec<(usize, usize)> = Vec::with_capacity(4096);
                let mut outgoing = Vec::with_capacity(256);
                for _ in 0..400_000 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let size = 16 + (seed % 2032) as usize;
                    // SAFETY: non-zero size; freed below with this layout.
                    let p = unsafe { a.alloc(Layout::from_size_align(size, 8).unwrap()) };
                    assert!(!p.is_null());
                    unsafe { p.write(size as u8) };
                    live.push((p as usize, size));
                    if live.len() == 4096 {
                        for (i, obj) in live.drain(..).enumerate() {
                            if i % 2 == 0 {
                                outgoing.push(obj);
                            } else {
                                // SAFETY: allocated above with this size.
                                unsafe { a.dealloc(obj.0 as *mut u8, Layout::from_size_align(obj.1, 8).unwrap()) };
                            }
                            if outgoing.len() == 256 {
                                tx.send(std::mem::replace(&mut outgoing, Vec::with_capacity(256))).unwrap();
                            }
                        }
                    }
                }
                for (p, size) in live.into_iter().chain(outgoing) {
                    // SAFETY: as above.
                    unsafe { a.dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
                }
            });
        }
        drop(tx);
        // The remote freer.
        for batch in rx {
            for (p, size) in batch {
                // SAFETY: allocated by a producer with this size.
                unsafe { a.dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
            }
        }
    });
    start.elapsed()
}

static SPANALLOC: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
static SYSTEM: System = System;

fn main() {
    let t = Instant::now();
    let n = std_workload();
    println!("std workload on {THREADS} threads (HashMap, String, channels): {n} items in {:.0?}", t.elapsed());

    // Alternate the two allocators, best of three each.
    let mut best = [Duration::MAX; 2];
    for _ in 0..3 {
        best[0] = best[0].min(churn(&SPANALLOC));
        best[1] = best[1].min(churn(&SYSTEM));
    }
    println!("churn, 1.2 M objects of 16 B-2 KiB on {THREADS} threads, half freed remotely (best of 3):");
    println!("  spanalloc {:>8.1?}", best[0]);
    println!(
        "  system    {:>8.1?}   (spanalloc takes {:.2}x the system allocator's time)",
        best[1],
        best[0].as_secs_f64() / best[1].as_secs_f64()
    );

    println!("\n{}", spanalloc::stats());
    spanalloc::release();
    let s = spanalloc::stats();
    println!(
        "after spanalloc::release(): {:.1} MiB idle, {:.1} MiB of it released to the OS",
        s.heap_idle as f64 / (1 << 20) as f64,
        s.heap_released as f64 / (1 << 20) as f64
    );
}
