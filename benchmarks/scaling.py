"""How Pool.map scales with workers: procly and the standard library, same run.

    python -m benchmarks.scaling [--max-workers N]

A CPU-bound task (a pure-Python loop of about 2 ms) is mapped over 20 tasks per worker;
the table shows seconds and speed-up over one worker for each library.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import procly


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def run(lib, workers: int, tasks: int, size: int) -> float:
    with lib.get_context("fork").Pool(workers) as pool:
        pool.map(burn, [10] * workers)  # warm up every worker
        started = time.perf_counter()
        pool.map(burn, [size] * tasks, 1)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--size", type=int, default=40_000)
    args = parser.parse_args()
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= args.max_workers]
    print(f"{len(os.sched_getaffinity(0))} CPUs; 20 tasks per worker, each burn({args.size})")
    print(f"{'workers':>8}{'stdlib s':>10}{'speed-up':>10}{'procly s':>10}{'speed-up':>10}")
    base: dict[str, float] = {}
    for n in counts:
        row = []
        for lib in (multiprocessing, procly):
            per_task = run(lib, n, 20 * n, args.size) / (20 * n)
            base.setdefault(lib.__name__, per_task)
            row += [per_task * 20 * n, base[lib.__name__] / per_task]
        print(f"{n:>8}{row[0]:>10.3f}{row[1]:>9.1f}x{row[2]:>10.3f}{row[3]:>9.1f}x", flush=True)


if __name__ == "__main__":
    main()
