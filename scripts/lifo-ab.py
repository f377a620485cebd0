#!/usr/bin/env python3
"""LIFO alloc+free pairs timed as whole processes, spanalloc and one peer in
turn (A B A B ...), so that a drift in the machine's speed hits both sides
alike. Each process runs PAIRS pairs (benches/examples/lifo_instructions.rs,
built in the benchmark crate) and
takes about half a second; start-up is under 0.5% of that.

Prints, per size and peer, spanalloc's and the peer's median nanoseconds
per pair and the median of the run-by-run ratios spanalloc / peer, with
its lowest and highest in brackets (below 1.0: spanalloc is faster).

Environment: SIZES (default "16 64 256"), PEERS (default "jemalloc
mimalloc snmalloc system"), ROUNDS (A/B rounds, default 7), PAIRS
(default 100000000).
"""

import os
import statistics
import subprocess
import sys
import time

CRATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benches")
BIN = os.path.join(CRATE, "target", "release", "examples", "lifo_instructions")


def run(alloc, size, pairs):
    """Seconds one process takes for `pairs` LIFO pairs of `size` bytes."""
    start = time.perf_counter()
    subprocess.run([BIN, alloc, str(size), str(pairs), "lifo"], check=True)
    return time.perf_counter() - start


def main():
    sizes = [int(s) for s in os.environ.get("SIZES", "16 64 256").split()]
    peers = os.environ.get("PEERS", "jemalloc mimalloc snmalloc system").split()
    rounds = int(os.environ.get("ROUNDS", "7"))
    pairs = int(os.environ.get("PAIRS", "100000000"))
    subprocess.run(["cargo", "build", "--quiet", "--release", "--example", "lifo_instructions"],
                   cwd=CRATE, check=True)
    print(f"| size | peer | spanalloc ns/pair | peer ns/pair | spanalloc / peer (run by run) |")
    print("|---|---|---|---|---|")
    for size in sizes:
        for peer in peers:
            run("spanalloc", size, pairs // 10)  # warm-up, not counted
            ours, theirs = [], []
            for _ in range(rounds):
                ours.append(run("spanalloc", size, pairs))
                theirs.append(run(peer, size, pairs))
            ratios = [a / b for a, b in zip(ours, theirs)]
            ns = lambda xs: statistics.median(xs) / pairs * 1e9
            print(f"| {size} | {peer} | {ns(ours):.2f} | {ns(theirs):.2f} "
                  f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
