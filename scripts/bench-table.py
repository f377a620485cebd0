#!/usr/bin/env python3
"""Prints the benchmark table of the README from criterion's results.

Run the benchmarks in the benchmark crate first (`cd benches; cargo bench
--bench alloc`, the rust_mix binaries `--bench rust_mix_spanalloc ...`
and, for the stack rows, `--bench stacks`); this reads the median of every
benchmark in benches/target/criterion/ and prints, per benchmark,
spanalloc's time and its ratio to the fastest peer and to mimalloc (below
1.0 means spanalloc is faster). A group that lacks one of the five
allocators is reported on stderr. Groups that also ran spanalloc with its
heap profile on (`spanalloc_profiled`) get a second table: the profile's
cost as a ratio of times.

Given several criterion directories (copies of target/criterion from
repeated runs), it prints each ratio as the median over the runs with the
lowest and highest in brackets; times are the first run's.
"""

import json
import os
import statistics
import sys

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "benches", "target", "criterion")
PEERS = ["system", "mimalloc", "jemalloc", "snmalloc"]
ORDER = ["lifo_pair", "lifo_cycle", "batch_1000", "producer_consumer", "realloc_growth", "churn_simple",
         "churn_thread", "larson", "mstress", "rptest", "rust_mix", "xmalloc", "cache_scratch", "large"]
STACK_GROUPS = ["stack_get_drop_16KiB", "stack_get_drop_256KiB", "coroutine_create_run_drop"]


def median_ns(root, group, function):
    path = os.path.join(root, group, function, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except FileNotFoundError:
        return None


def fmt_time(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.2f} ns"


def groups(root):
    """Criterion group directories, in a stable, readable order."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        if "spanalloc" in dirnames and os.path.exists(os.path.join(dirpath, "spanalloc", "new", "estimates.json")):
            found.append(os.path.relpath(dirpath, root))

    def key(g):
        # criterion writes group "lifo_pair/16" as the directory lifo_pair_16.
        rank = next((i for i, o in enumerate(ORDER) if g.startswith(o)), len(ORDER))
        tail = g.rsplit("_", 1)[-1]
        return (rank, int(tail) if tail.isdigit() else 0, g)

    return sorted(found, key=key)


def spread(values):
    """One ratio, or the median of several with their range."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main():
    roots = sys.argv[1:] or [DEFAULT]
    for root in roots:
        if not os.path.isdir(root):
            sys.exit(f"no {root}: run `cargo bench --bench alloc` in benches/ first")
    print("| benchmark | spanalloc | best peer | spanalloc / best peer | spanalloc / mimalloc |")
    print("|---|---|---|---|---|")
    for group in groups(roots[0]):
        to_best, to_mi, first = [], [], None
        for root in roots:
            ours = median_ns(root, group, "spanalloc")
            peers = {p: median_ns(root, group, p) for p in PEERS}
            missing = [p for p, v in peers.items() if v is None]
            if missing and len(missing) < len(PEERS):
                print(f"{root}: {group} has no {', '.join(missing)}", file=sys.stderr)
            peers = {p: v for p, v in peers.items() if v is not None}
            if ours is None or not peers:
                continue
            best = min(peers, key=peers.get)
            first = first or (ours, best, peers[best])
            to_best.append(ours / peers[best])
            if "mimalloc" in peers:
                to_mi.append(ours / peers["mimalloc"])
        if first is None:
            continue
        ours, best, best_ns = first
        print(f"| {group} | {fmt_time(ours)} | {best} {fmt_time(best_ns)} "
              f"| {spread(to_best)} | {spread(to_mi) if to_mi else '-'} |")
    # The stack benchmarks compare spanalloc with a fresh mapping.
    for group in STACK_GROUPS:
        ours = median_ns(roots[0], group, "spanalloc")
        fresh = median_ns(roots[0], group, "fresh_mmap")
        if ours is not None and fresh is not None:
            print(f"| {group} | {fmt_time(ours)} | fresh mapping {fmt_time(fresh)} "
                  f"| {ours / fresh:.4f} ({fresh / ours:.0f}x faster) | - |")
    # The heap profile's cost: spanalloc with profiling on at 512 KiB
    # against spanalloc with it off, in the groups that run both.
    rows = []
    for group in groups(roots[0]):
        ratios = []
        for root in roots:
            on, off = median_ns(root, group, "spanalloc_profiled"), median_ns(root, group, "spanalloc")
            if on is not None and off is not None:
                ratios.append(on / off)
        if ratios:
            rows.append(f"| {group} | {spread(ratios)} |")
    if rows:
        print()
        print("| benchmark | profiling on (512 KiB) / off |")
        print("|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
