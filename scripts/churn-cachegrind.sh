#!/usr/bin/env bash
# Where a churn_simple step's time goes, per allocator: cachegrind with its
# cache and branch simulation (valgrind --tool=cachegrind --cache-sim=yes
# --branch-sim=yes) on benches/examples/lifo_instructions.rs. Per step:
# instructions, first-level data cache misses (D1, reads and writes),
# last-level misses (LL, instructions and data), and mispredicted branches
# (conditional + indirect). Each figure is the difference between runs of
# 200,000 and 1,200,000 steps, which cancels start-up and set-up.
# PATTERNS (default "simple-touched simple-alone"), ALLOCATORS.
set -euo pipefail
cd "$(dirname "$0")/../benches"
cargo build --release --example lifo_instructions >/dev/null 2>&1
bin=target/release/examples/lifo_instructions
patterns=${PATTERNS:-"simple-touched simple-alone"}
allocators=${ALLOCATORS:-"spanalloc system mimalloc jemalloc snmalloc"}
# counts <allocator> <pattern> <steps>: "instructions d1 ll mispredicts".
counts() {
  valgrind --tool=cachegrind --cache-sim=yes --branch-sim=yes --cachegrind-out-file=/dev/null \
    "$bin" "$1" - "$3" "$2" 2>&1 | tr -d , | awk '
      /I *refs:/ { i = $(NF) }
      /D1 *misses:/ { for (f = 1; f <= NF; f++) if ($f == "misses:") d1 = $(f + 1) }
      /LL misses:/ { for (f = 1; f <= NF; f++) if ($f == "misses:") ll = $(f + 1) }
      /Mispredicts:/ { for (f = 1; f <= NF; f++) if ($f == "Mispredicts:") mp = $(f + 1) }
      END { print i, d1, ll, mp }'
}
printf '%-15s %-10s %12s %10s %10s %12s\n' pattern allocator instr/step D1miss/step LLmiss/step mispred/step
for p in $patterns; do
  for a in $allocators; do
    read -r i0 d0 l0 m0 <<<"$(counts "$a" "$p" 200000)"
    read -r i1 d1 l1 m1 <<<"$(counts "$a" "$p" 1200000)"
    awk -v p="$p" -v a="$a" -v i="$((i1 - i0))" -v d="$((d1 - d0))" -v l="$((l1 - l0))" -v m="$((m1 - m0))" \
      'BEGIN { printf "%-15s %-10s %12.1f %10.2f %10.3f %12.2f\n", p, a, i / 1e6, d / 1e6, l / 1e6, m / 1e6 }'
  done
done
