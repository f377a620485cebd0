#!/usr/bin/env bash
# Proves the loom models can fail: for each model, builds spanalloc with a
# known fault (cfg spanalloc_mutant = "...") and expects the model to catch
# it. A mutant that compiles and passes its model means the model has gone
# blind; a mutant that does not compile is an error too.
set -euo pipefail
cd "$(dirname "$0")/../loom-tests"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
export CARGO_TARGET_DIR=target/mutant
# mutant            model        the fault
mutants=(
  "refill_toctou        refill         the mcentral takes and claims a span in two critical sections"
  "merge_relaxed        remote_free    the owner merges remote frees without acquiring them"
  "notice_dropped       central_notice the first free into a full central span queues nothing"
  "notify_push_relaxed  central_notice a notify-stack push does not publish the span's link"
  "handoff_merge_first  handoff        a span is handed over by merging its remote frees before publishing its state"
  "retire_ignores_live  live_object    a span with one object still allocated counts as all free"
  "adopt_queued         late_notice    a cache takes back a span a freer has queued"
  "handoff_keeps_stack  stack_flush    a cache hands its spans over before its stack gave their objects back"
  "freer_ignores_life   retire         a late freer acts on a record that describes another span now"
  "grow_toctou          grow           the mheap finds a run, lets go of its lock, then takes it"
  "lock_relaxed         lock           the lock acquires and releases with relaxed ordering"
  "pool_unlocked_refill stack_pool     a stack cache counts the pool's stacks and takes them in two critical sections"
  "pool_unlocked_drain  stack_pool     a drain finds a free place in the pool and fills it in two critical sections"
)
failed=0
for line in "${mutants[@]}"; do
  read -r mutant model fault <<<"$line"
  export RUSTFLAGS="--cfg loom --cfg spanalloc_mutant=\"$mutant\""
  if ! cargo test --release --test "$model" --no-run >/dev/null 2>&1; then
    echo "mutant $mutant: does not compile" >&2
    failed=1
    continue
  fi
  log=$(mktemp)
  if cargo test --release --test "$model" >"$log" 2>&1; then
    echo "mutant $mutant ($fault): model $model PASSED - it should have failed" >&2
    failed=1
  else
    why=$(grep -m1 -E "panicked at|Causality|deadlock|SIGABRT|signal" "$log" || echo "exit status $?")
    echo "mutant $mutant: caught by $model -- ${why}"
    grep -m1 -A1 "panicked at" "$log" | tail -1 | sed 's/^/    /' || true
  fi
  rm -f "$log"
done
exit $failed
