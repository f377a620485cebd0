#!/usr/bin/env bash
# Everything behind the README's benchmark section, in one go (about 45
# minutes on a 2-core machine with RUNS=3). The benchmarks are the crate in benches/
# (a workspace of its own, target directory benches/target). In order: the
# allocation benchmarks (benches/benches/alloc.rs and the six rust_mix
# binaries) RUNS times, each run's criterion results copied to
# benches/target/bench-runs/N; the stack benchmarks once; the ratio table
# over all runs; the instruction counts (callgrind: LIFO, batch and
# churn_simple; cachegrind: churn_simple's misses and mispredicts); the LIFO
# pairs timed process against process; the memory figures.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/benches"
runs=${RUNS:-3}
out=target/bench-runs
rm -rf "$out"
mkdir -p "$out"
for n in $(seq 1 "$runs"); do
  rm -rf target/criterion
  cargo bench --bench alloc --bench 'rust_mix_*' >"$out/alloc-$n.log" 2>&1
  cp -r target/criterion "$out/$n"
done
# The stack groups join the first run's results (and only they: the last
# run's allocation results must not overwrite the first's).
rm -rf target/criterion
cargo bench --bench stacks >"$out/stacks.log" 2>&1
cp -r target/criterion/. "$out/1/"
dirs=()
for n in $(seq 1 "$runs"); do dirs+=("$out/$n"); done
"$root/scripts/bench-table.py" "${dirs[@]}"
echo
grep -h "RSS per suspended coroutine" "$out/stacks.log" || true
echo
cd "$root"
scripts/lifo-instructions.sh
PATTERN=batch SIZES="64 1024" scripts/lifo-instructions.sh
PATTERN=remote SIZES=64 scripts/lifo-instructions.sh
PATTERN=simple-touched scripts/lifo-instructions.sh
PATTERN=simple-alone scripts/lifo-instructions.sh
echo
scripts/churn-cachegrind.sh
echo
scripts/lifo-ab.py
echo
scripts/memory.sh
