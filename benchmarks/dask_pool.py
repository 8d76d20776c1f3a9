"""The same map on procly's local Pool and on a 2-worker loopback Dask cluster.

    python -m benchmarks.dask_pool

The cluster is started with Dask's own CLIs (``dask scheduler``, ``dask worker``) on
127.0.0.1, as a user would, and stopped at the end. Times are medians of 3 rounds.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procly


def spin(n: int) -> int:
    """About 10 ms of pure-Python work for n = 60_000."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def trivial(x: int) -> int:
    return x + 1


CASES = [
    ("200 tasks of ~10 ms CPU", spin, [60_000] * 200),
    ("10,000 trivial tasks", trivial, list(range(10_000))),
]


def median_time(pool: procly.pool.Pool, func, items, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        pool.map(func, items)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def start_cluster(workdir: Path) -> tuple[list[subprocess.Popen], str]:
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = workdir / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    procs = [
        subprocess.Popen(
            [
                dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(scheduler_file),
            ],
            **quiet,
        )
    ]
    procs += [
        subprocess.Popen(
            [
                dask,
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--local-directory",
                str(workdir),
            ],
            **quiet,
        )
        for _ in range(2)
    ]
    while not scheduler_file.exists():
        time.sleep(0.1)
    import json

    return procs, json.loads(scheduler_file.read_text())["address"]


def main() -> int:
    from distributed import Client

    results = []
    with tempfile.TemporaryDirectory(prefix="procly-dask-bench-") as tmp:
        started = time.perf_counter()
        procs, address = start_cluster(Path(tmp))
        try:
            with Client(address, set_as_default=False) as client:
                client.wait_for_workers(2, timeout=120)
            print(f"2-worker loopback cluster up in {time.perf_counter() - started:.1f} s at {address}")
            with procly.Pool(2) as local, procly.Pool(backend="dask", address=address) as remote:
                local.map(trivial, range(10))
                remote.map(trivial, range(10))
                for name, func, items in CASES:
                    results.append((name, median_time(local, func, items), median_time(remote, func, items)))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    print(f"\n{'map':<28}{'local Pool(2)':>15}{'Dask, 2 workers':>17}{'Dask / local':>14}")
    for name, local_time, dask_time in results:
        print(f"{name:<28}{local_time * 1e3:>12.1f} ms{dask_time * 1e3:>14.1f} ms{dask_time / local_time:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
