"""Queue throughput in every direction, procly beside the standard library.

    python -m benchmarks --only queue        (part of the suite)
    python -m benchmarks.queues [--quick]    (these cases alone)

Directions: parent -> child, child -> parent, child -> child, and 4 producer
processes -> the parent. Payloads: small items ``(i, "x")``, and a mix of small items
with a 1 MiB ``bytes`` every ``MIX_EVERY`` items. Each case is timed by its consumer,
from the first item it gets to the last, and reported in items per second. The lower
bound for small items is what pickling and unpickling one item costs in one process
(printed beside the figures as ``pickle+unpickle``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import resource
import statistics
import sys
import time
from typing import Any

MiB = 1024 * 1024
MIX_EVERY = 50  # one 1 MiB item in this many, in the mix
BIG = b"b" * MiB


def machine() -> str:
    """One line naming the machine: CPU model, cores usable, Python."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    python = f"Python {platform.python_version()} ({sys.implementation.name})"
    system = f"{platform.system()} {platform.release()}"
    return f"{model}, {usable} cores usable ({os.cpu_count()} online), {python}, {system}"


def _item(i: int, mix: bool) -> Any:
    if mix and i % MIX_EVERY == MIX_EVERY - 1:
        return BIG
    return (i, "x")


def _produce(q: Any, n: int, mix: bool, go: Any) -> None:
    go.wait()
    for i in range(n):
        q.put(_item(i, mix))


def _consume(q: Any, n: int, out: Any, ready: Any) -> None:
    ready.set()
    q.get()
    started = time.perf_counter()
    for _ in range(n - 1):
        q.get()
    out.put((n - 1) / (time.perf_counter() - started))


def _consume_here(q: Any, n: int) -> float:
    q.get()
    started = time.perf_counter()
    for _ in range(n - 1):
        q.get()
    return (n - 1) / (time.perf_counter() - started)


def _cpu_seconds() -> float:
    """CPU time of this process and of the children it has joined."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def queue_cost(lib: Any, direction: str, n: int, mix: bool) -> tuple[float, float]:
    """(items per second, CPU µs per item spent by every process involved) for queue_rate().

    The CPU figure includes starting and joining the processes; it does not depend on
    what else the machine runs, where the rate does."""
    before = _cpu_seconds()
    rate = queue_rate(lib, direction, n, mix)
    items = n * 4 if direction == "4c2p" else n
    return rate, (_cpu_seconds() - before) / items * 1e6


def queue_rate(lib: Any, direction: str, n: int, mix: bool, method: str = "fork") -> float:
    """Items per second through a ``lib.Queue`` in *direction*, timed by the consumer.

    *direction*: ``p2c`` (the parent puts), ``c2p`` (a child puts), ``c2c`` (a child
    puts, another gets) or ``4c2p`` (4 children put *n* items each, the parent gets).
    """
    ctx = lib.get_context(method)
    q, out = ctx.Queue(), ctx.Queue()
    go, ready = ctx.Event(), ctx.Event()
    procs = []
    if direction == "p2c":
        consumer = ctx.Process(target=_consume, args=(q, n, out, ready))
        consumer.start()
        ready.wait()
        for i in range(n):
            q.put(_item(i, mix))
        rate = out.get()
        procs.append(consumer)
    elif direction == "c2c":
        consumer = ctx.Process(target=_consume, args=(q, n, out, ready))
        producer = ctx.Process(target=_produce, args=(q, n, mix, go))
        consumer.start()
        producer.start()
        ready.wait()
        go.set()
        rate = out.get()
        procs += [consumer, producer]
    else:
        producers = 4 if direction == "4c2p" else 1
        procs = [ctx.Process(target=_produce, args=(q, n, mix, go)) for _ in range(producers)]
        for p in procs:
            p.start()
        go.set()
        rate = _consume_here(q, n * producers)
    for p in procs:
        p.join()
    q.close()
    getattr(q, "join_thread", lambda: None)()
    return rate


class FasterFifo:
    """faster-fifo's Queue (a ring buffer in shared memory) dressed as a library for
    queue_rate(): its processes and events are the standard library's."""

    def __init__(self) -> None:
        import faster_fifo

        self._queue = faster_fifo.Queue

    def get_context(self, method: str) -> Any:
        import multiprocessing
        import types

        ctx = multiprocessing.get_context(method)
        return types.SimpleNamespace(Process=ctx.Process, Event=ctx.Event,
                                     Queue=lambda: self._queue(max_size_bytes=64 * MiB))  # fmt: skip


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _shmem_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    return 0


def _put_and_report(q: Any, n: int, mix: bool, before: Any, after: Any, done: Any) -> None:
    before.put(_rss_kib(os.getpid()))
    for i in range(n):
        q.put(_item(i, mix))
    after.put(_rss_kib(os.getpid()))
    done.wait()


def stalled_memory(lib: Any, n: int, mix: bool) -> tuple[float, float]:
    """MiB a producer process grows by (resident) after putting *n* items that nobody reads,
    and MiB of shared memory (memfds, system-wide) that grew meanwhile."""
    ctx = lib.get_context("fork")
    q, before, after, done = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    p = ctx.Process(target=_put_and_report, args=(q, n, mix, before, after, done))
    shmem = _shmem_kib()
    p.start()
    start = before.get()
    end = after.get()
    shared = _shmem_kib() - shmem
    done.set()
    for _ in range(n):
        q.get()
    p.join()
    q.close()
    q.join_thread()
    return (end - start) / 1024, shared / 1024


def pickle_rate(n: int = 200_000) -> float:
    """Items ``(i, "x")`` per second that one process can pickle and unpickle (the lower bound)."""
    dumps, loads, protocol = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for i in range(n):
            loads(dumps((i, "x"), protocol))
        best = max(best, n / (time.perf_counter() - started))
    return best


DIRECTIONS = [("p2c", "parent -> child"), ("c2p", "child -> parent"), ("c2c", "child -> child"),
              ("4c2p", "4 children -> parent")]  # fmt: skip


def cases(scale: float) -> list[tuple[str, Any]]:
    """(name, fn(lib) -> items/s) for each direction and payload."""
    small, mixed = max(1000, int(50_000 * scale)), max(200, int(5_000 * scale))
    out = []
    for key, label in DIRECTIONS:
        per = small // 4 if key == "4c2p" else small
        out.append((f"Queue {label}, (i, 'x')", lambda lib, k=key, m=per: queue_cost(lib, k, m, False)))
        per = mixed // 4 if key == "4c2p" else mixed
        out.append((f"Queue {label}, mix 1 MiB", lambda lib, k=key, m=per: queue_cost(lib, k, m, True)))
    return out


def run(only: list[str] | None, scale: float, rounds: int, show_machine: bool = True) -> None:
    """Print each case: stdlib and procly items/s (medians of alternating rounds) and the ratio."""
    import multiprocessing

    import procly

    if show_machine:
        print(f"machine: {machine()}")
    lower = pickle_rate(max(20_000, int(200_000 * scale)))
    print(f"lower bound, pickle+unpickle of (i, 'x') in one process: {lower / 1000:.0f}k items/s")
    try:
        fifo: Any = FasterFifo()
    except ImportError:
        fifo = None  # pip install faster-fifo for its column
    print(f"{'queue case':<40}{'stdlib':>12}{'procly':>12}{'ratio':>8}{'of bound':>10}{'CPU µs/item':>16}"
          + (f"{'faster-fifo':>14}" if fifo else ""))  # fmt: skip
    for name, fn in cases(scale):
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        std, ours, peer = [], [], []
        for _ in range(rounds):
            std.append(fn(multiprocessing))
            ours.append(fn(procly))
            if fifo is not None:
                peer.append(fn(fifo))
        s, o = statistics.median(r for r, _ in std), statistics.median(r for r, _ in ours)
        cpu = f"{statistics.median(c for _, c in std):>8.1f} /{statistics.median(c for _, c in ours):>6.1f}"
        bound = f"{o / lower:>9.0%}" if "mix" not in name else ""
        extra = f"{statistics.median(r for r, _ in peer) / 1000:>11.1f}k/s" if peer else ""
        print(f"{name:<40}{s / 1000:>9.1f}k/s{o / 1000:>9.1f}k/s{o / s:>7.2f}x{bound:>10}{cpu:>16}{extra}")
        sys.stdout.flush()
    print("ratio = procly items/s / stdlib items/s (above 1: procly is faster); timed by the consumer;")
    print("CPU µs/item = stdlib / procly, all processes, start and join included")
    if only and not any(o.lower() in "queue memory" for o in only):
        return
    small, mixed = max(10_000, int(300_000 * scale)), max(500, int(5_000 * scale))
    big = mixed // MIX_EVERY
    print(f"producer memory growth, consumer stopped: {small} small items; {mixed} mixed ({big} MiB big)")
    for label, n, mix in (("small", small, False), ("mix", mixed, True)):
        (sr, ss), (pr, ps) = stalled_memory(multiprocessing, n, mix), stalled_memory(procly, n, mix)
        std, ours = f"RSS +{sr:6.1f} MiB, shmem +{ss:6.1f} MiB", f"RSS +{pr:6.1f} MiB, shmem +{ps:6.1f} MiB"
        print(f"  {label:<6} stdlib {std}   procly {ours}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.queues")
    parser.add_argument("--quick", action="store_true", help="fewer items and rounds")
    parser.add_argument("--only", action="append", help="run only cases whose name contains this")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run(args.only, 0.3 if args.quick else 1.0, 1 if args.quick else args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
