#!/usr/bin/env bash
# The heap-profile tests in a build with frame pointers, where the stack
# walk sees whole call chains (the default build omits them, and those
# tests then check only the first frame). A separate target directory keeps
# the normal build's artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/frame-pointers"
cargo test --lib profile
SPANALLOC_FP_TESTS=1 cargo test --test profile_pprof --test profile_sampling --test profile_env --test profile_heap
