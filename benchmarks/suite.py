"""procly against the standard library, side by side in one run.

    python3 tasks.py bench [--quick] [--only NAME]
    python -m benchmarks --only queue        (the Queue cases alone, every direction)

Each benchmark runs the same code with ``multiprocessing`` and with ``procly`` and
prints both times and the ratio (stdlib time / procly time: above 1 means procly is
faster). Timings are medians of several repetitions; the machine should be quiet.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import threading
import time
from typing import Callable

import procly
from benchmarks import children
from benchmarks import queues as queue_cases

MiB = 1024 * 1024


def _echo(conn) -> None:
    try:
        while (msg := conn.recv()) is not None:
            conn.send(msg)
    except EOFError:
        pass


def _drain_bytes(conn) -> None:
    total = 0
    while True:
        data = conn.recv_bytes()
        if not data:
            break
        total += len(data)
    conn.send(total)


def _queue_consumer(q, n: int, done) -> None:
    for _ in range(n):
        q.get()
    done.put(n)


def bench_start_join(lib, method: str, n: int) -> float:
    ctx = lib.get_context(method)

    def run() -> None:
        p = ctx.Process(target=children.noop)
        p.start()
        p.join()

    run()  # warm-up: the fork server, imports
    started = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - started) / n


def bench_roundtrip(lib, n: int) -> float:
    ctx = lib.get_context("fork")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo, args=(b,))
    p.start()
    obj = [1, "str", None]
    for _ in range(100):
        a.send(obj)
        a.recv()
    started = time.perf_counter()
    for _ in range(n):
        a.send(obj)
        a.recv()
    elapsed = (time.perf_counter() - started) / n
    a.send(None)
    p.join()
    return elapsed


def bench_bandwidth(lib, n: int) -> float:
    """Seconds per 1 MiB message, sender and receiver in two processes."""
    ctx = lib.get_context("fork")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_drain_bytes, args=(b,))
    p.start()
    payload = b"x" * MiB
    started = time.perf_counter()
    for _ in range(n):
        a.send_bytes(payload)
    a.send_bytes(b"")
    assert a.recv() == n * MiB
    elapsed = (time.perf_counter() - started) / n
    p.join()
    return elapsed


def bench_lock(lib, n: int) -> float:
    lock = lib.Lock()

    def run() -> None:
        acquire, release = lock.acquire, lock.release
        for _ in range(n):
            acquire()
            release()

    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / n


def bench_lock_contended(lib, n: int) -> float:
    """Two processes hammering one lock; seconds per acquire+release in the parent."""
    ctx = lib.get_context("fork")
    lock = ctx.Lock()
    counter = ctx.Value("i", 0, lock=False)
    stop = ctx.Event()

    def hammer(lock, stop) -> None:
        while not stop.is_set():
            with lock:
                pass

    p = ctx.Process(target=hammer, args=(lock, stop))
    p.start()
    started = time.perf_counter()
    for _ in range(n):
        with lock:
            counter.value += 1
    elapsed = (time.perf_counter() - started) / n
    stop.set()
    p.join()
    return elapsed


def bench_queue(lib, n: int, size: int) -> float:
    """Seconds per item through a Queue to a consumer process."""
    ctx = lib.get_context("fork")
    q, done = ctx.Queue(), ctx.Queue()
    item = b"x" * size
    p = ctx.Process(target=_queue_consumer, args=(q, n, done))
    p.start()
    started = time.perf_counter()
    for _ in range(n):
        q.put(item)
    done.get()
    elapsed = (time.perf_counter() - started) / n
    p.join()
    return elapsed


def _trivial(x):
    return x


def _double_array(a):
    return a * 2


def bench_pool_map(lib, n: int, chunksize: int | None) -> float:
    """Seconds per task for pool.map over n trivial tasks (2 workers, pool already up)."""
    with lib.get_context("fork").Pool(2) as pool:
        pool.map(_trivial, range(100))
        started = time.perf_counter()
        pool.map(_trivial, range(n), chunksize)
        return (time.perf_counter() - started) / n


def bench_pool_numpy(lib, n: int) -> float:
    """Seconds per 8 MiB numpy array sent to a worker and back, doubled."""
    import numpy as np

    arrays = [np.ones(MiB, dtype=np.float64) for _ in range(n)]
    with lib.get_context("fork").Pool(2) as pool:
        pool.map(_double_array, arrays[:2], 1)
        started = time.perf_counter()
        results = pool.map(_double_array, arrays, 1)
        elapsed = (time.perf_counter() - started) / n
    assert results[0][0] == 2.0
    return elapsed


def bench_pool_latency(lib, n: int) -> float:
    """Seconds per apply_async(...).get() round trip."""
    with lib.get_context("fork").Pool(2) as pool:
        pool.apply(_trivial, (0,))
        started = time.perf_counter()
        for i in range(n):
            pool.apply_async(_trivial, (i,)).get()
        return (time.perf_counter() - started) / n


def bench_pool_startup(lib, n: int) -> float:
    """Seconds from Pool() to the first result, then shut down."""
    started = time.perf_counter()
    for _ in range(n):
        with lib.get_context("fork").Pool(2) as pool:
            pool.apply(_trivial, (0,))
    return (time.perf_counter() - started) / n


def _proxy_work(d, n: int, out) -> None:
    started = time.perf_counter()
    for i in range(n):
        d[i % 100] = i
        d[i % 100]
    out.put((time.perf_counter() - started) / (2 * n))


def bench_manager_dict(lib, n: int) -> float:
    """Seconds per dict get or set through a proxy, from a child process."""
    ctx = lib.get_context("fork")
    with ctx.Manager() as manager:
        d = manager.dict()
        out = ctx.Queue()
        p = ctx.Process(target=_proxy_work, args=(d, n, out))
        p.start()
        elapsed = out.get()
        p.join()
    return elapsed


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.2f} µs"
    return f"{seconds * 1e3:8.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 tasks.py bench")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", action="append", help="run only benchmarks whose name contains this")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per benchmark (median kept)")
    args = parser.parse_args()
    k = 0.2 if args.quick else 1.0
    rounds = 3 if args.quick else args.rounds

    def scaled(n: int) -> int:
        return max(3, int(n * k))

    cases: list[tuple[str, Callable[[object], float], str]] = [
        ("process start+join (fork)", lambda lib: bench_start_join(lib, "fork", scaled(40)), "time"),
        ("process start+join (spawn)", lambda lib: bench_start_join(lib, "spawn", scaled(5)), "time"),
        ("process start+join (forkserver)", lambda lib: bench_start_join(lib, "forkserver", scaled(20)), "time"),
        ("Pipe round trip, small object", lambda lib: bench_roundtrip(lib, scaled(5000)), "time"),
        ("Pipe 1 MiB messages", lambda lib: bench_bandwidth(lib, scaled(500)), "bandwidth"),
        ("Lock acquire+release, uncontended", lambda lib: bench_lock(lib, scaled(200000)), "time"),
        ("Lock acquire+release, 2 processes", lambda lib: bench_lock_contended(lib, scaled(20000)), "time"),
        ("Queue put->get, 100-byte items", lambda lib: bench_queue(lib, scaled(20000), 100), "time"),
        ("Queue put->get, 1 MiB items", lambda lib: bench_queue(lib, scaled(200), MiB), "time"),
        ("Pool.map 100k trivial, default chunks", lambda lib: bench_pool_map(lib, scaled(100_000), None), "time"),
        ("Pool.map 10k trivial, chunksize=1", lambda lib: bench_pool_map(lib, scaled(10_000), 1), "time"),
        ("Pool.map 8 MiB numpy in and out", lambda lib: bench_pool_numpy(lib, scaled(40)), "time"),
        ("Pool apply_async().get() latency", lambda lib: bench_pool_latency(lib, scaled(2000)), "time"),
        ("Pool start-up + first result", lambda lib: bench_pool_startup(lib, scaled(10)), "time"),
        ("Manager dict get/set from a child", lambda lib: bench_manager_dict(lib, scaled(5000)), "time"),
    ]
    print(f"procly {procly.__version__} vs multiprocessing (Python {sys.version.split()[0]})")
    print(f"machine: {queue_cases.machine()}")
    print(f"{'benchmark':<36}{'stdlib':>14}{'procly':>14}{'ratio':>9}")
    for name, fn, kind in cases:
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        # Alternate the two libraries round by round so that drift on a busy machine
        # hits both alike; keep the median of each.
        std_times, our_times = [], []
        for _ in range(rounds):
            std_times.append(fn(multiprocessing))
            our_times.append(fn(procly))
        std, ours = statistics.median(std_times), statistics.median(our_times)
        ratio = std / ours
        if kind == "bandwidth":
            print(f"{name:<36}{1 / std:>8.0f} MiB/s{1 / ours:>8.0f} MiB/s{ratio:>8.2f}x")
        else:
            print(f"{name:<36}{_fmt(std):>14}{_fmt(ours):>14}{ratio:>8.2f}x")
        sys.stdout.flush()
    print("ratio = stdlib time / procly time (above 1: procly is faster)")
    if not args.only or any(o.lower() in name.lower() for name, _ in queue_cases.cases(k) for o in args.only):
        print()
        queue_cases.run(args.only, k, rounds, show_machine=False)
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join(5)
    return 0
