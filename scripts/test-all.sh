#!/usr/bin/env bash
# Every test spanalloc has: unit and whole-allocator tests (tests/, and
# capi/tests/ for libspanalloc.so), doc tests, the memory-return figures
# (scripts/release-figures.sh, spanalloc alone), real programs under the
# preload (scripts/capi-programs.sh), the loom models (loom-tests/) and the
# proof that each model catches the fault it guards against
# (scripts/loom-mutants.sh); and a build of the benchmark crate (benches/),
# so that it cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== unit, integration and doc tests"
cargo build --release --workspace
# Among them the double-free fuzz (tests/misuse_fuzz.rs), which prints its
# per-kind summary; SPANALLOC_FUZZ_TRIALS=n runs n trials of each kind.
cargo test --all-features --all-targets
cargo test --all-features --doc
# The heap profile with frame pointers (the stack walk needs them).
scripts/profile-fp-tests.sh
# libspanalloc.so (its one feature only shows the hazard its guard removes)
cargo test -p spanalloc-c --all-targets
echo "== memory back to the OS, as figures (printed, not asserted: tests/release.rs asserts)"
FIGURES_PEERS=spanalloc scripts/release-figures.sh
echo "== libspanalloc.so under real programs"
scripts/capi-programs.sh
echo "== loom models"
scripts/loom.sh
echo "== loom models catch their mutants"
scripts/loom-mutants.sh
echo "== the benchmark crate builds (benches/: criterion and the comparison allocators)"
(cd benches && cargo build --release --benches --examples)
echo "== all tests passed"
