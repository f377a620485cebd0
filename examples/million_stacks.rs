//! A million guarded 16 KiB stacks alive at once in one process, under the
//! default `vm.max_map_count` (65,530 mappings). Not run in CI.
//!
//! ```text
//! cargo run --release --example million_stacks
//! cargo run --release --example million_stacks -- 2000000
//! cargo run --release --example million_stacks -- --touch   # 4 GiB resident
//! ```
//!
//! With `MADV_GUARD_INSTALL` (Linux 6.13 and later) a slab of stacks is one
//! mapping however many guards it holds, so a million stacks take about a
//! thousand mappings. On older kernels each guard splits its slab, and
//! `Stack::new` fails with an error naming `vm.max_map_count` long before a
//! million; the example prints it and exits with status 1.
//!
//! By default the stacks are only reserved (address space, nothing
//! resident). `--touch` writes one byte at the top of every stack, so each
//! has one resident page: 4 GiB for a million.

use std::process::ExitCode;
use std::time::Instant;

use spanalloc::stack::Stack;

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

fn main() -> ExitCode {
    let mut count = 1_000_000usize;
    let mut touch = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--touch" => touch = true,
            n => count = n.parse().expect("usage: million_stacks [count] [--touch]"),
        }
    }

    let mut stacks = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        match Stack::new(16 << 10) {
            Ok(s) => stacks.push(s),
            Err(e) => {
                eprintln!("stack {} of {count}: {e}", stacks.len() + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    let took = start.elapsed();
    println!(
        "{count} guarded 16 KiB stacks created in {took:.2?} ({:.0} ns per stack)",
        took.as_nanos() as f64 / count.max(1) as f64
    );

    if touch {
        let start = Instant::now();
        for s in &stacks {
            let top_byte = std::ptr::with_exposed_provenance_mut::<u8>(s.top() - 1);
            // SAFETY: the byte below a stack's top is read-write memory that
            // belongs to the stack, which nothing else uses while `stacks`
            // holds it.
            unsafe { top_byte.write_volatile(1) };
        }
        println!("touched the top page of every stack in {:.2?}", start.elapsed());
    }

    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map_or_else(|e| format!("unreadable ({e})"), |s| s.trim().to_owned());
    let mappings = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    println!("vm.max_map_count: {max_map_count}");
    println!("mappings in /proc/self/maps with all stacks alive: {mappings}");
    println!();
    println!("{}", spanalloc::stats());

    let start = Instant::now();
    drop(stacks);
    println!("dropped them all in {:.2?}", start.elapsed());
    ExitCode::SUCCESS
}
