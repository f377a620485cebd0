#!/usr/bin/env bash
# Instructions per operation, counted by callgrind, for spanalloc and its
# peers through the same GlobalAlloc harness
# (benches/examples/lifo_instructions.rs, built in the benchmark crate).
# PATTERN=lifo (default: an alloc+free pair), batch (1,000 allocations, then
# 1,000 frees; per pair), remote (allocated here, freed on another thread;
# per object), simple-touched or simple-alone (a churn_simple
# step: a random slot of 64 freed and refilled with 16-512 B; per step, the
# size column is "-"). Prints one row per allocator and size: the
# difference between two counts, which cancels start-up and set-up.
set -euo pipefail
cd "$(dirname "$0")/../benches"
cargo build --release --example lifo_instructions >/dev/null 2>&1
bin=target/release/examples/lifo_instructions
pattern=${PATTERN:-lifo}
case $pattern in
  simple-*) sizes=-; per=instr/step ;;
  *) sizes=${SIZES:-"16 64 256"}; per=instr/pair ;;
esac
allocators=${ALLOCATORS:-"spanalloc system mimalloc jemalloc snmalloc"}
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" "$3" "$pattern" 2>&1 |
    sed -n 's/.*Collected : *\([0-9]*\).*/\1/p; s/.*I *refs: *\([0-9,]*\).*/\1/p' | tr -d , | head -1
}
printf '%-10s %6s %12s   (%s)\n' allocator size "$per" "$pattern"
for a in $allocators; do
  for s in $sizes; do
    lo=$(count "$a" "$s" 200000)
    hi=$(count "$a" "$s" 1200000)
    printf '%-10s %6s %12s\n' "$a" "$s" "$(echo "scale=1; ($hi - $lo) / 1000000" | bc)"
  done
done
