#!/usr/bin/env python3
"""Prints the benchmark table of the README from criterion's results.

Run `cargo bench --bench alloc` (and, for the stack rows,
`cargo bench --features corosensei --bench stacks`) first; this reads the
median of every benchmark in target/criterion/ and prints, per benchmark,
spanalloc's time and its ratio to the best peer and to mimalloc (below 1.0
means spanalloc is faster).
"""

import json
import os
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "target", "criterion")
PEERS = ["system", "mimalloc", "jemalloc", "snmalloc"]


def median_ns(group, function):
    path = os.path.join(ROOT, group, function, "new", "estimates.json")
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


def groups():
    """Criterion group directories, in a stable, readable order."""
    found = []
    for dirpath, dirnames, _ in os.walk(ROOT):
        if "spanalloc" in dirnames and os.path.exists(os.path.join(dirpath, "spanalloc", "new", "estimates.json")):
            found.append(os.path.relpath(dirpath, ROOT))
    order = ["lifo_pair", "batch_1000", "producer_consumer", "realloc_growth", "larson", "xmalloc", "cache_scratch", "large"]

    def key(g):
        # criterion writes group "lifo_pair/16" as the directory lifo_pair_16.
        rank = next((i for i, o in enumerate(order) if g.startswith(o)), len(order))
        tail = g.rsplit("_", 1)[-1]
        return (rank, int(tail) if tail.isdigit() else 0, g)

    return sorted(found, key=key)


def main():
    if not os.path.isdir(ROOT):
        sys.exit("no target/criterion: run `cargo bench --bench alloc` first")
    print("| benchmark | spanalloc | best peer | spanalloc / best peer | spanalloc / mimalloc |")
    print("|---|---|---|---|---|")
    for group in groups():
        ours = median_ns(group, "spanalloc")
        peers = {p: median_ns(group, p) for p in PEERS}
        peers = {p: v for p, v in peers.items() if v is not None}
        if ours is None or not peers:
            continue
        best = min(peers, key=peers.get)
        mi = peers.get("mimalloc")
        ratio_mi = f"{ours / mi:.2f}" if mi else "-"
        print(f"| {group} | {fmt_time(ours)} | {best} {fmt_time(peers[best])} "
              f"| {ours / peers[best]:.2f} | {ratio_mi} |")
    # The stack benchmarks compare spanalloc with a fresh mapping.
    for group in ["stack_get_drop_16KiB", "stack_get_drop_256KiB", "coroutine_create_run_drop"]:
        ours = median_ns(group, "spanalloc")
        fresh = median_ns(group, "fresh_mmap")
        if ours is not None and fresh is not None:
            print(f"| {group} | {fmt_time(ours)} | fresh mapping {fmt_time(fresh)} "
                  f"| {ours / fresh:.4f} ({fresh / ours:.0f}x faster) | - |")


if __name__ == "__main__":
    main()
