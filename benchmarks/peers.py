"""procly against its peers in one run: mpire, joblib, loky, concurrent.futures, faster-fifo.

    python -m benchmarks.peers            (peers: pip install mpire joblib loky faster-fifo)

Every pool has 2 workers and is started before the clock runs; each figure is the median
of 3 rounds, libraries alternating round by round. A peer that is not installed is
skipped with a line saying so. Ratios are peer time / procly time (above 1: procly is
faster).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable

import procly

from .suite import _trivial as trivial
from .suite import bench_pool_map, bench_queue


def _consume_faster_fifo(q, n: int, done) -> None:
    got = 0
    while got < n:
        got += len(q.get_many(max_messages_to_get=1000))
    done.put(True)


# procly and the standard library run the suite's own cases (seconds per item there).


def procly_map(n: int, chunksize: int | None) -> float:
    return bench_pool_map(procly, n, chunksize) * n


def stdlib_map(n: int, chunksize: int | None) -> float:
    return bench_pool_map(multiprocessing, n, chunksize) * n


def mpire_map(n: int, chunksize: int | None) -> float:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2, start_method="fork") as pool:
        pool.map(trivial, range(100))
        started = time.perf_counter()
        pool.map(trivial, range(n), chunk_size=chunksize)
        return time.perf_counter() - started


def joblib_map(n: int, chunksize: int | None) -> float:
    from joblib import Parallel, delayed

    with Parallel(n_jobs=2, batch_size="auto" if chunksize is None else chunksize) as parallel:
        parallel(delayed(trivial)(x) for x in range(100))
        started = time.perf_counter()
        parallel(delayed(trivial)(x) for x in range(n))
        return time.perf_counter() - started


def loky_map(n: int, chunksize: int | None) -> float:
    from loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=2)
    list(executor.map(trivial, range(100)))
    started = time.perf_counter()
    list(executor.map(trivial, range(n), chunksize=chunksize or 1))
    elapsed = time.perf_counter() - started
    executor.shutdown(wait=True)
    return elapsed


def futures_map(n: int, chunksize: int | None) -> float:
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as executor:
        list(executor.map(trivial, range(100)))
        started = time.perf_counter()
        list(executor.map(trivial, range(n), chunksize=chunksize or 1))
        return time.perf_counter() - started


def procly_queue(n: int, size: int) -> float:
    return bench_queue(procly, n, size) * n


def stdlib_queue(n: int, size: int) -> float:
    return bench_queue(multiprocessing, n, size) * n


def faster_fifo_queue(n: int, size: int) -> float:
    from faster_fifo import Queue

    ctx = multiprocessing.get_context("fork")
    q, done = Queue(max_size_bytes=64 * 1024 * 1024), ctx.Queue()
    item = b"x" * size
    consumer = ctx.Process(target=_consume_faster_fifo, args=(q, n, done))
    consumer.start()
    started = time.perf_counter()
    for _ in range(n):
        q.put(item, timeout=30)
    done.get()
    elapsed = time.perf_counter() - started
    consumer.join()
    return elapsed


def _cases() -> list[tuple[str, int, dict[str, Callable[[], float]]]]:
    map_peers = {
        "procly": procly_map,
        "stdlib": stdlib_map,
        "mpire": mpire_map,
        "joblib": joblib_map,
        "loky": loky_map,
        "ProcessPoolExecutor": futures_map,
    }
    return [
        (
            "map 100k trivial, default chunks",
            100_000,
            {
                name: (lambda f=f: f(100_000, None))
                for name, f in map_peers.items()
                if name not in ("loky", "ProcessPoolExecutor")
            },
        ),
        ("map 10k trivial, chunksize=1", 10_000, {name: (lambda f=f: f(10_000, 1)) for name, f in map_peers.items()}),
        (
            "Queue 20k items of 100 bytes",
            20_000,
            {
                "procly": lambda: procly_queue(20_000, 100),
                "stdlib": lambda: stdlib_queue(20_000, 100),
                "faster-fifo": lambda: faster_fifo_queue(20_000, 100),
            },
        ),
        (
            "Queue 200 items of 1 MiB",
            200,
            {
                "procly": lambda: procly_queue(200, 1 << 20),
                "stdlib": lambda: stdlib_queue(200, 1 << 20),
                "faster-fifo": lambda: faster_fifo_queue(200, 1 << 20),
            },
        ),
    ]


_MODULES = {"mpire": "mpire", "joblib": "joblib", "loky": "loky", "faster-fifo": "faster_fifo"}


def main() -> int:
    rounds = 3
    print(f"procly {procly.__version__} against its peers (Python {sys.version.split()[0]}, 2 workers)")
    for title, count, runners in _cases():
        available = {}
        for name, run in runners.items():
            module = _MODULES.get(name)
            if module and importlib.util.find_spec(module) is None:
                print(f"  {name}: not installed, skipped")
                continue
            available[name] = run
        times: dict[str, list[float]] = {name: [] for name in available}
        for _ in range(rounds):
            for name, run in available.items():
                times[name].append(run())
        medians = {name: statistics.median(values) for name, values in times.items()}
        ours = medians["procly"]
        print(f"\n{title}")
        print(f"  {'library':<22}{'per item':>12}{'vs procly':>12}")
        for name, seconds in sorted(medians.items(), key=lambda item: item[1]):
            print(f"  {name:<22}{seconds / count * 1e6:>9.2f} µs{seconds / ours:>11.2f}x")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
