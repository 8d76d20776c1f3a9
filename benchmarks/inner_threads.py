"""A numpy matrix-product map with and without the worker thread limit (Pool(inner_threads=)).

    python -m benchmarks.inner_threads [--size N] [--tasks N]

N workers each running a BLAS that starts one thread per core oversubscribe the CPUs;
procly's default gives each worker cores // workers threads. The standard library's Pool
(no limit) runs the same map for reference. Prints the machine and the seconds per map.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import numpy as np

import procly
from benchmarks.semlock_backends import machine_line


def _product(seed: int, size: int) -> float:
    rng = np.random.default_rng(seed)
    a = rng.random((size, size))
    return float((a @ a).trace())


def _timed(pool, size: int, tasks: int, rounds: int) -> float:
    pool.starmap(_product, [(0, 64)] * 4)  # warm up every worker
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        pool.starmap(_product, [(seed, size) for seed in range(tasks)])
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=600)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    print(machine_line())
    print(f"{args.tasks} products of {args.size}x{args.size} float64 matrices, {workers} workers, spawn")
    rows = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        rows.append(("multiprocessing.Pool (no limit)", _timed(pool, args.size, args.tasks, args.rounds)))
    with procly.get_context("spawn").Pool(workers, inner_threads=0) as pool:
        rows.append(("procly Pool, inner_threads=0 (no limit)", _timed(pool, args.size, args.tasks, args.rounds)))
    with procly.get_context("spawn").Pool(workers) as pool:
        rows.append(("procly Pool, default inner_threads", _timed(pool, args.size, args.tasks, args.rounds)))
    base = rows[0][1]
    for name, seconds in rows:
        print(f"  {name:42s} {seconds * 1000:8.1f} ms   {base / seconds:5.2f}x the stdlib")


if __name__ == "__main__":
    main()
