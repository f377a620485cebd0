#!/usr/bin/env bash
# Instructions per alloc+free pair, counted by callgrind, for spanalloc and
# its peers through the same GlobalAlloc harness
# (benches/examples/lifo_instructions.rs, built in the benchmark crate). PATTERN=lifo (default) or batch (1,000
# allocations, then 1,000 frees). Prints one row per allocator and size.
set -euo pipefail
cd "$(dirname "$0")/../benches"
cargo build --release --example lifo_instructions >/dev/null 2>&1
bin=target/release/examples/lifo_instructions
sizes=${SIZES:-"16 64 256"}
pattern=${PATTERN:-lifo}
allocators=${ALLOCATORS:-"spanalloc system mimalloc jemalloc snmalloc"}
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" "$3" "$pattern" 2>&1 |
    sed -n 's/.*Collected : *\([0-9]*\).*/\1/p; s/.*I *refs: *\([0-9,]*\).*/\1/p' | tr -d , | head -1
}
printf '%-10s %6s %12s   (%s)\n' allocator size instr/pair "$pattern"
for a in $allocators; do
  for s in $sizes; do
    lo=$(count "$a" "$s" 200000)
    hi=$(count "$a" "$s" 1200000)
    printf '%-10s %6s %12s\n' "$a" "$s" "$(echo "scale=1; ($hi - $lo) / 1000000" | bc)"
  done
done
