"""The everyday costs a new user notices first, procly beside the standard library.

    python -m benchmarks.everyday [--quick]

Each case runs the same code with ``multiprocessing`` and with ``procly``, alternating
round by round, and prints the medians and the ratio (stdlib / procly for times: above 1
means procly is faster; procly / stdlib for memory: below 1 means procly uses less):

* ``import`` in a fresh interpreter (compiled bytecode present);
* start + join of an empty Process, per start method;
* 4 processes x N ``with lock: v.value += 1`` on a Lock and a Value('i');
* a Queue pipeline: 3 workers, N items, one sentinel each to stop;
* the parent's peak resident memory while ``imap`` streams 256x256 float32 arrays through
  a Pool, and a child's resident memory once started.

The machine (CPU model, cores, Python) is printed first: a figure from one machine is
not a claim about another.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

import procly
from benchmarks import children
from benchmarks.semlock_backends import machine_line

LIBS = {"stdlib": multiprocessing, "procly": procly}


def _add(lock: Any, value: Any, n: int) -> None:
    for _ in range(n):
        with lock:
            value.value += 1


def _pipeline_worker(tasks: Any, results: Any) -> None:
    while True:
        item = tasks.get()
        if item is None:
            break
        results.put(item * 2)


def _double(a: Any) -> Any:
    return a * 2


def _rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def bench_import(name: str, n: int) -> float:
    code = f"import time; t = time.perf_counter(); import {name}; print(time.perf_counter() - t)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", f"import {name}"], check=True, env=env)  # compiles the .pyc
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                  check=True).stdout) for _ in range(n)]  # fmt: skip
    return statistics.median(times)


COLD_POOL = """
import sys, time
began = time.perf_counter()
import {name} as lib

def square(x):
    return x * x

if __name__ == "__main__":
    with lib.get_context(sys.argv[1]).Pool(2) as pool:
        pool.apply(square, (3,))
    print(time.perf_counter() - began)
"""


def bench_cold_pool(name: str, method: str, n: int, workdir: str) -> float:
    """A fresh interpreter's import, Pool(2), first result and shutdown (a script's own function)."""
    script = os.path.join(workdir, f"cold_{name}.py")
    with open(script, "w") as f:
        f.write(COLD_POOL.format(name=name))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run = [sys.executable, script, method]
    subprocess.run(run, check=True, env=env, capture_output=True)  # compiles the .pyc files
    times = [float(subprocess.run(run, capture_output=True, text=True, env=env, check=True).stdout) for _ in range(n)]
    return statistics.median(times)


def bench_start(lib: Any, method: str, n: int) -> float:
    ctx = lib.get_context(method)
    times = []
    for _ in range(n):
        began = time.perf_counter()
        p = ctx.Process(target=children.noop)
        p.start()
        p.join()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def bench_lock_value(lib: Any, n: int) -> float:
    ctx = lib.get_context("fork")
    lock, value = ctx.Lock(), ctx.Value("i", 0)
    workers = [ctx.Process(target=_add, args=(lock, value, n)) for _ in range(4)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    assert value.value == 4 * n
    return elapsed


def bench_pipeline(lib: Any, method: str, n: int) -> float:
    ctx = lib.get_context(method)
    tasks, results = ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=_pipeline_worker, args=(tasks, results)) for _ in range(3)]
    for w in workers:
        w.start()
    began = time.perf_counter()
    for i in range(n):
        tasks.put(i)
    for _ in workers:
        tasks.put(None)
    total = sum(results.get() for _ in range(n))
    elapsed = time.perf_counter() - began
    for w in workers:
        w.join()
    assert total == n * (n - 1)
    return elapsed


def measure_memory(name: str, method: str, arrays: int) -> dict[str, int]:
    """Run in a fresh interpreter (``--memory NAME METHOD``): the parent's peak RSS while
    imap streams *arrays* 256x256 float32 arrays through a 2-worker Pool, and a child's RSS."""
    lib = LIBS[name]
    ctx = lib.get_context(method)
    p = ctx.Process(target=time.sleep, args=(2,))
    p.start()
    time.sleep(1)
    child = _rss_kib(p.pid)
    p.join()
    base = _rss_kib()
    data = (np.full((256, 256), i, dtype=np.float32) for i in range(arrays))
    with ctx.Pool(2) as pool:
        for _ in pool.imap(_double, data, chunksize=4):
            pass
    return {"peak_kib": _peak_kib(), "before_kib": base, "child_kib": child}


def _memory(name: str, method: str, arrays: int) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.everyday", "--memory", name, method, str(arrays)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own dict literal


def _row(name: str, stdlib: float, procly_: float, unit: str, scale: float, better: str = "time") -> None:
    ratio = stdlib / procly_ if better == "time" else procly_ / stdlib
    label = "x faster" if better == "time" else "x the stdlib"
    print(f"  {name:46s} stdlib {stdlib * scale:9.2f} {unit}  procly {procly_ * scale:9.2f} {unit}  "
          f"{ratio:5.2f}{label}", flush=True)  # fmt: skip


def _alternate(fn: Callable[[Any], float], rounds: int) -> tuple[float, float]:
    results: dict[str, list[float]] = {"stdlib": [], "procly": []}
    for _ in range(rounds):
        for name, lib in LIBS.items():
            results[name].append(fn(lib))
    return statistics.median(results["stdlib"]), statistics.median(results["procly"])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.everyday")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        name, method, arrays = args.memory
        print(measure_memory(name, method, int(arrays)))
        return 0
    rounds = 3 if args.quick else 5
    print(machine_line(), flush=True)
    stdlib_import = bench_import("multiprocessing", 9)
    procly_import = bench_import("procly", 9)
    _row("import, fresh interpreter", stdlib_import, procly_import, "ms", 1e3)
    for method in ("fork", "spawn", "forkserver"):
        s, p = _alternate(lambda lib, m=method: bench_start(lib, m, 5 if args.quick else 10), rounds)
        _row(f"start + join, {method}", s, p, "ms", 1e3)
    with tempfile.TemporaryDirectory(prefix="procly-cold-") as workdir:
        for method in ("fork", "spawn"):
            count = 5 if args.quick else 9
            s = bench_cold_pool("multiprocessing", method, count, workdir)
            p = bench_cold_pool("procly", method, count, workdir)
            _row(f"cold Pool(2): import to first result, {method}", s, p, "ms", 1e3)
    n = 20_000 if args.quick else 100_000
    s, p = _alternate(lambda lib: bench_lock_value(lib, n), rounds)
    _row(f"4 processes x {n} 'with lock: v.value += 1'", s, p, "s", 1)
    n = 10_000 if args.quick else 50_000
    for method in ("fork", "spawn"):
        s, p = _alternate(lambda lib, m=method: bench_pipeline(lib, m, n), rounds)
        _row(f"Queue pipeline, 3 workers, {n} items, {method}", s, p, "s", 1)
    arrays = 2_000 if args.quick else 10_000
    for method in ("fork", "spawn"):
        stdlib_mem, procly_mem = _memory("stdlib", method, arrays), _memory("procly", method, arrays)
        _row(f"parent peak RSS, imap {arrays} arrays, {method}", stdlib_mem["peak_kib"], procly_mem["peak_kib"],
             "MiB", 1 / 1024, better="memory")  # fmt: skip
        _row(f"child RSS once started, {method}", stdlib_mem["child_kib"], procly_mem["child_kib"], "MiB",
             1 / 1024, better="memory")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
