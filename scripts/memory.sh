#!/usr/bin/env bash
# Resident memory of spanalloc and its peers (benches/examples/memory.rs,
# built in the benchmark crate): every allocator and workload in a process
# of its own. Sizes in MiB.
#
# First table (WORKLOADS, default "peak1g churn"; empty for none): RSS before, peak RSS,
# RSS after the free and ~1 s of further activity, that as a share of the
# peak, the peak against mimalloc's on the same workload, and for spanalloc
# RSS after spanalloc::release().
#
# Second table (PEAK_WORKLOADS, default "churn_simple churn_thread4 larson
# mstress rptest", empty for none: the churn workloads of the criterion
# suite, run for a fixed number of steps): RSS before, peak RSS (VmHWM), and
# the peak against the leanest of mimalloc, jemalloc and snmalloc on the
# same workload.
set -euo pipefail
cd "$(dirname "$0")/../benches"
cargo build --quiet --release --example memory
bin=target/release/examples/memory
allocators=${ALLOCATORS:-"spanalloc system mimalloc jemalloc snmalloc"}
workloads=${WORKLOADS-"peak1g churn"}
peak_workloads=${PEAK_WORKLOADS-"churn_simple churn_thread4 larson mstress rptest"}
declare -A line
for w in $workloads $peak_workloads; do
  for a in $allocators; do
    line[$a,$w]=$("$bin" "$a" "$w")
    echo "${line[$a,$w]}" >&2
  done
done
# field <line> <key>: the value of key=value in a run's line.
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }
mib() { [[ $1 == na ]] && echo - || awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
ratio() { awk -v p="$1" -v m="$2" 'BEGIN { printf "%.2f", p / m }'; }
if [[ -n $workloads ]]; then
  printf '%-10s %-8s %10s %10s %12s %8s %10s %12s\n' \
    allocator workload before peak after_1s after/pk peak/mi after_release
fi
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
    r=-
    [[ -n $mi_peak ]] && r=$(ratio "$peak" "$mi_peak")
    printf '%-10s %-8s %10s %10s %12s %8s %10s %12s\n' \
      "$a" "$w" "$(mib "$before")" "$(mib "$peak")" "$(mib "$after")" "$share" "$r" "$(mib "$released")"
  done
done
if [[ -n $peak_workloads ]]; then
  [[ -n $workloads ]] && echo
  printf '%-10s %-14s %10s %10s %14s\n' allocator workload before peak 'peak/leanest'
fi
for w in $peak_workloads; do
  # The leanest peer that ran: the lowest peak of mimalloc, jemalloc, snmalloc.
  lean= lean_peak=
  for p in mimalloc jemalloc snmalloc; do
    [[ -n ${line[$p,$w]:-} ]] || continue
    pk=$(field "${line[$p,$w]}" peak_kib)
    if [[ -z $lean_peak ]] || ((pk < lean_peak)); then lean=$p lean_peak=$pk; fi
  done
  for a in $allocators; do
    l=${line[$a,$w]}
    peak=$(field "$l" peak_kib)
    r=-
    [[ -n $lean_peak ]] && r="$(ratio "$peak" "$lean_peak") ($lean)"
    printf '%-10s %-14s %10s %10s %14s\n' "$a" "$w" "$(mib "$(field "$l" rss_before_kib)")" "$(mib "$peak")" "$r"
  done
done
