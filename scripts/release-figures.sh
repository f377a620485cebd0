#!/usr/bin/env bash
# What happens to freed memory, as figures (tests/release_figures.rs): RSS
# after a 1 GiB peak is freed and the program idles (one thread, and two
# threads freeing each other's blocks), after release(), the parked-producer
# program, and the longest small allocation while another thread releases
# 1 GiB. Each case runs under spanalloc and under the peers found on this
# machine (FIGURES_PEERS="spanalloc glibc mimalloc jemalloc snmalloc";
# FIGURES_CASES="idle1 idle2 release1 release2 parked latency"; snmalloc runs
# when SNMALLOC_SO names its shim, built locally).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test release_figures -- --ignored --nocapture --test-threads=1 figures
