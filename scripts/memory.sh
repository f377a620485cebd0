#!/usr/bin/env bash
# Resident memory of spanalloc and its peers (benches/examples/memory.rs,
# built in the benchmark crate): every allocator and workload in a process
# of its own. Prints one row per run:
# RSS before, peak RSS, RSS after the free and ~1 s of further activity, that
# as a share of the peak, the peak against mimalloc's on the same workload,
# and for spanalloc RSS after spanalloc::release(). Sizes in MiB.
set -euo pipefail
cd "$(dirname "$0")/../benches"
cargo build --quiet --release --example memory
bin=target/release/examples/memory
allocators=${ALLOCATORS:-"spanalloc system mimalloc jemalloc snmalloc"}
workloads=${WORKLOADS:-"peak1g churn"}
declare -A line
for w in $workloads; do
  for a in $allocators; do
    line[$a,$w]=$("$bin" "$a" "$w")
    echo "${line[$a,$w]}" >&2
  done
done
# field <line> <key>: the value of key=value in a run's line.
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }
mib() { [[ $1 == na ]] && echo - || awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
printf '%-10s %-8s %10s %10s %12s %8s %10s %12s\n' \
  allocator workload before peak after_1s after/pk peak/mi after_release
for w in $workloads; do
  mi_peak=
  [[ -n ${line[mimalloc,$w]:-} ]] && mi_peak=$(field "${line[mimalloc,$w]}" peak_kib)
  for a in $allocators; do
    l=${line[$a,$w]}
    before=$(field "$l" rss_before_kib)
    peak=$(field "$l" peak_kib)
    after=$(field "$l" after_activity_kib)
    released=$(field "$l" after_release_kib)
    share=$(awk -v a="$after" -v p="$peak" 'BEGIN { printf "%.1f%%", 100 * a / p }')
    ratio=-
    [[ -n $mi_peak ]] && ratio=$(awk -v p="$peak" -v m="$mi_peak" 'BEGIN { printf "%.2f", p / m }')
    printf '%-10s %-8s %10s %10s %12s %8s %10s %12s\n' \
      "$a" "$w" "$(mib "$before")" "$(mib "$peak")" "$(mib "$after")" "$share" "$ratio" "$(mib "$released")"
  done
done
