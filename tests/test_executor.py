"""ProcessPoolExecutor: the concurrent.futures interface on the Pool engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest

import procly
from procly.futures import ProcessPoolExecutor

from . import targets


def test_submit_map_and_exceptions(ctx):
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        assert executor.submit(targets.add, 2, b=3).result(timeout=30) == 5
        assert list(executor.map(targets.add, [1, 2], [10, 20])) == [11, 22]
        assert list(executor.map(targets.square, range(7), chunksize=3)) == [x * x for x in range(7)]
        future = executor.submit(targets.raise_value_error, 1)
        with pytest.raises(ValueError, match="bad value 1"):
            future.result(timeout=30)
        assert isinstance(future.exception(), ValueError)
        lost = executor.submit(targets.die_on, 1, 1)
        assert isinstance(lost.exception(timeout=30), procly.WorkerLostError)
        assert executor.submit(targets.square, 3).result(timeout=30) == 9
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(targets.square, 1)


def test_map_timeout_and_task_timeout():
    with ProcessPoolExecutor(1, task_timeout=0.3) as executor:
        results = executor.map(time.sleep, [5], timeout=0.1)
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        stopped = executor.submit(time.sleep, 10)
        assert isinstance(stopped.exception(timeout=30), procly.TaskTimeoutError)


def test_run_in_executor_and_as_completed():
    executor = ProcessPoolExecutor(2)
    try:

        async def main():
            loop = asyncio.get_running_loop()
            return await asyncio.gather(*(loop.run_in_executor(executor, targets.square, i) for i in range(4)))

        assert asyncio.run(main()) == [0, 1, 4, 9]
        futures = [executor.submit(targets.square, i) for i in range(5)]
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=30)) == [0, 1, 4, 9, 16]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_max_tasks_per_child_and_initializer():
    with ProcessPoolExecutor(1, initializer=targets.init_state, initargs=("x",), max_tasks_per_child=1) as ex:
        pids = {ex.submit(targets.worker_pid).result(timeout=30) for _ in range(3)}
        assert len(pids) == 3
        assert ex.submit(targets.read_state, 0).result(timeout=30) == "x"


def test_cancelled_futures_never_run(ctx):
    """A future cancelled before its call went to a worker (by cancel() or by
    shutdown(cancel_futures=True)) never runs; one that went to a worker is running and
    cannot be cancelled."""
    runs = ctx.Array("i", 40, lock=False)
    executor = ProcessPoolExecutor(1, mp_context=ctx, initializer=targets.keep_run_counts, initargs=(runs,))
    first = executor.submit(targets.counted_nap, 0, 0.5)
    rest = [executor.submit(targets.counted_nap, i, 0.0) for i in range(1, 40)]
    assert first.running() and not first.cancel()
    assert rest[-1].cancel() and rest[-1].cancelled()
    executor.shutdown(wait=True, cancel_futures=True)
    assert first.result(timeout=30) == 0 and runs[0] == 1
    assert sum(f.cancelled() for f in rest) >= 30
    for i, future in enumerate(rest, 1):
        if future.cancelled():
            assert runs[i] == 0, f"call {i} ran although its future was cancelled"
        else:
            assert future.result(timeout=30) == i * i and runs[i] == 1
