#!/usr/bin/env bash
# Runs the loom models in loom-tests/ against the shipping code (built with
# --cfg loom, in loom-tests' own target directory) and checks that every
# model ran: without --cfg loom the model files compile to nothing and would
# "pass" with zero tests.
set -euo pipefail
cd "$(dirname "$0")/../loom-tests"
export RUSTFLAGS="--cfg loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
expected=$(grep -l '^#\[test\]' tests/*.rs | wc -l)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release -- --nocapture 2>&1 | tee "$log"
passed=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log" | paste -sd+ | bc)
if [ "$passed" -lt "$expected" ]; then
  echo "loom: only $passed of $expected models ran" >&2
  exit 1
fi
echo "loom: all $passed models passed (LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS)"
