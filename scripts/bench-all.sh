#!/usr/bin/env bash
# Everything behind the README's benchmark section, in one go (about 30
# minutes on a 2-core machine): the allocation benchmarks RUNS times (each
# run's criterion results copied to target/bench-runs/N), the stack
# benchmarks once, then the ratio table over all runs, the instruction
# counts, the LIFO pairs timed process against process, and the memory
# figures.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
rm -rf target/bench-runs
mkdir -p target/bench-runs
for n in $(seq 1 "$runs"); do
  rm -rf target/criterion
  cargo bench --bench alloc >"target/bench-runs/alloc-$n.log" 2>&1
  cp -r target/criterion "target/bench-runs/$n"
done
# The stack groups join the first run's results (and only they: the last
# run's allocation results must not overwrite the first's).
rm -rf target/criterion
cargo bench --features corosensei --bench stacks >target/bench-runs/stacks.log 2>&1
cp -r target/criterion/. target/bench-runs/1/
dirs=()
for n in $(seq 1 "$runs"); do dirs+=("target/bench-runs/$n"); done
scripts/bench-table.py "${dirs[@]}"
echo
grep -h "RSS per suspended coroutine" target/bench-runs/stacks.log || true
echo
scripts/lifo-instructions.sh
PATTERN=batch SIZES="64 1024" scripts/lifo-instructions.sh
echo
scripts/lifo-ab.py
echo
scripts/memory.sh
