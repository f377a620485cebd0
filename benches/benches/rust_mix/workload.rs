// rust_mix: a Rust program's mix of allocations through std collections,
// included by one bench binary per allocator (`spanalloc.rs`, `system.rs`,
// ...). Each of them installs its allocator as `#[global_allocator]` and
// names it in `ALLOCATOR` before including this file, so every
// allocation of the program (criterion's own included) goes through it.
// The binaries (one more, `spanalloc_profiled.rs`, with spanalloc's heap
// profile on) fill the same criterion groups, with the allocator as
// the function id:
//
// - `rust_mix/hashmap_words`: 200,000 generated words (3–10 lowercase
//   letters, each a `String`) grouped by their first three letters into a
//   `HashMap<String, Vec<String>>` (a key `String` made per word, as
//   `entry` wants one), then the map dropped; per map.
// - `rust_mix/btree_churn`: 200,000 operations on a `BTreeMap<u32,
//   Box<[u8]>>` over 16,384 keys: an absent key gets a new boxed slice of
//   8–256 bytes, a present key is removed and its slice dropped, so the map
//   churns around half full; then the map dropped; per 200,000 operations.
// - `rust_mix/format_sort`: 100,000 `format!`ed strings (a word, a hex
//   number, a counter) pushed to a `Vec`, sorted, dropped; per batch.
//
// The input comes from the same seeded generator for every allocator; the
// generator itself does not allocate.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use spanalloc_benches::{Rng, group};

/// Words grouped by `hashmap_words`.
const WORDS: usize = 200_000;
/// Operations of `btree_churn` and the keys they draw from.
const BTREE_OPS: usize = 200_000;
const BTREE_KEYS: u64 = 16_384;
/// Strings formatted and sorted by `format_sort`.
const STRINGS: usize = 100_000;

/// A word of 3–10 lowercase letters.
fn word(rng: &mut Rng) -> String {
    let len = 3 + rng.below(8) as usize;
    (0..len).map(|_| (b'a' + rng.below(26) as u8) as char).collect()
}

fn hashmap_words() -> usize {
    let mut rng = Rng::new(1);
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..WORDS {
        let w = word(&mut rng);
        groups.entry(w[..3].to_string()).or_default().push(w);
    }
    black_box(&groups);
    groups.len()
}

fn btree_churn() -> usize {
    let mut rng = Rng::new(2);
    let mut map: BTreeMap<u32, Box<[u8]>> = BTreeMap::new();
    for i in 0..BTREE_OPS {
        let key = rng.below(BTREE_KEYS) as u32;
        if map.remove(&key).is_none() {
            let len = 8 + rng.below(249) as usize;
            map.insert(key, vec![i as u8; len].into_boxed_slice());
        }
    }
    black_box(&map);
    map.len()
}

fn format_sort() -> usize {
    let mut rng = Rng::new(3);
    let mut all: Vec<String> = Vec::new();
    for i in 0..STRINGS {
        let w = word(&mut rng);
        all.push(format!("{w}-{:08x}-{i}", rng.next() as u32));
    }
    all.sort_unstable();
    black_box(&all);
    all.len()
}

/// A workload: runs once, returns a figure of what it built.
type Workload = fn() -> usize;

fn benches(c: &mut Criterion) {
    // The binary that measures the heap profile's cost: spanalloc with
    // profiling on at its default rate (a sample per 512 KiB on average).
    if ALLOCATOR == "spanalloc_profiled" {
        spanalloc::profile::set_rate(512 << 10);
    }
    let workloads: [(&str, Workload); 3] =
        [("hashmap_words", hashmap_words), ("btree_churn", btree_churn), ("format_sort", format_sort)];
    for (name, workload) in workloads {
        // Tens of milliseconds per iteration: equal samples.
        let mut g = group(c, &format!("rust_mix/{name}"), 10, 3, None);
        g.sampling_mode(SamplingMode::Flat);
        g.bench_function(ALLOCATOR, |b| b.iter(workload));
        g.finish();
    }
}

criterion_group!(rust_mix, benches);
criterion_main!(rust_mix);
