"""Pool: the standard API, and the failures it must survive — under every start method."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

import procly
from procly import _pool_supervisor
from procly.pool import RemoteTraceback

from . import targets
from .conftest import NAP, pid_state, raising, record_settling_threads, reducer_registered, shift_complex, wait_until


@pytest.fixture
def pool(ctx):
    p = ctx.Pool(2)
    yield p
    p.terminate()
    p.join()


def test_seed_example(pool):
    assert pool.map(targets.square, range(10)) == [x * x for x in range(10)]
    assert sorted(pool.imap_unordered(targets.square, range(10))) == [x * x for x in range(10)]
    assert pool.apply_async(targets.square, (20,)).get(timeout=10) == 400
    pids = {pool.apply_async(os.getpid).get(timeout=10) for _ in range(4)}
    assert pids and os.getpid() not in pids
    res = pool.apply_async(time.sleep, (3,))
    with pytest.raises(procly.TimeoutError):
        res.get(timeout=0.2)
    assert isinstance(procly.TimeoutError(), TimeoutError)


def test_api_shapes(pool):
    assert pool.apply(targets.add, (1, 2)) == 3
    assert pool.apply(targets.add, (), {"a": 1, "b": 5}) == 6
    assert pool.starmap(targets.add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.starmap_async(targets.add, [(1, 1)]).get(10) == [2]
    assert list(pool.imap(targets.square, range(20), chunksize=3)) == [x * x for x in range(20)]
    assert pool.map(targets.square, []) == []
    assert pool.map(targets.square, range(100), chunksize=7) == [x * x for x in range(100)]
    r = pool.map_async(targets.square, range(5))
    r.wait(10)
    assert r.ready() and r.successful() and r.get() == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError):
        pool.apply_async(time.sleep, (1,)).successful()
    with pytest.raises(ValueError):
        pool.map(targets.square, [1], chunksize=0)


def test_callbacks(pool):
    got, errors = [], []
    done = threading.Event()
    first = pool.apply_async(targets.square, (3,), callback=got.append)
    pool.apply_async(targets.raise_value_error, (1,), error_callback=lambda e: (errors.append(e), done.set()))
    assert done.wait(10)
    pool.map_async(targets.square, [2], callback=got.append).wait(10)
    first.wait(10)  # the two tasks may run in different workers: in either order
    assert 9 in got and [4] in got
    assert isinstance(errors[0], ValueError)


def test_exception_keeps_type_and_remote_traceback(pool):
    with pytest.raises(ValueError, match="bad value 7") as info:
        pool.apply(targets.raise_value_error, (7,))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "raise_value_error" in str(cause)
    with pytest.raises(ValueError):
        pool.map(targets.raise_value_error, range(3))


def test_unpicklable_things_never_hang(pool):
    with pytest.raises(procly.PicklingError):
        pool.apply_async(targets.square, (threading.Lock(),))
    with pytest.raises(Exception, match="could not be sent back|cannot pickle|lock"):
        pool.apply(targets.return_unpicklable, (1,))
    with pytest.raises(Exception, match="TwoArgError|1/2"):
        pool.apply(targets.raise_two_arg_error, (1,))
    assert pool.apply(targets.square, (4,)) == 16  # the pool is fine


def test_progress_bar_and_on_result(pool, capsys):
    seen = []
    assert pool.map(targets.square, range(20), progress="squares", on_result=seen.append) == [x * x for x in range(20)]
    assert sorted(seen) == sorted(x * x for x in range(20))
    err = capsys.readouterr().err
    assert "squares" in err and "20/20" in err
    seen.clear()
    assert list(pool.imap(targets.square, range(7), progress=True, on_result=seen.append)) == [x * x for x in range(7)]
    assert len(seen) == 7


def test_statistics_account_for_work(pool):
    pool.map(time.sleep, [0.05] * 4, chunksize=1)
    stats = pool.statistics()
    assert stats["state"] == "running" and stats["workers"] == 2 and stats["outstanding"] == 0
    per_worker = stats["per_worker"].values()
    assert sum(w["tasks"] for w in per_worker) >= 4
    assert sum(w["compute_seconds"] for w in per_worker) >= 0.2
    # where the rest of the time went: (un)pickling, and waiting for work
    assert all(w["serialize_seconds"] >= 0 and w["wait_seconds"] >= 0 for w in per_worker)
    waited = sum(w["wait_seconds"] for w in per_worker)
    # The workers were idle between the two maps: their next tasks count that wait.
    pool.map(targets.square, range(2), chunksize=1)
    assert sum(w["wait_seconds"] for w in pool.statistics()["per_worker"].values()) > waited


def test_bytes_in_flight_return_to_zero_and_statistics_read_while_workers_churn(ctx):
    """Callers' threads settle their own replies while the supervisor settles a map's and
    dispatch counts new tasks in: once all is answered no worker counts bytes in flight
    (a lost update would leave its pipeline budget short for ever). statistics() read in
    a loop meanwhile, while workers leave and are replaced, never fails."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_statistics(pool):
        try:
            while not stop.is_set():
                stats = pool.statistics()
                assert stats["workers"] <= 2
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def apply_in_turn(pool, base):
        try:
            for i in range(60):
                assert pool.apply_async(targets.square, (base + i,)).get(30) == (base + i) ** 2
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with ctx.Pool(2, maxtasksperchild=25) as pool:
        threads = [threading.Thread(target=read_statistics, args=(pool,))]
        threads += [threading.Thread(target=apply_in_turn, args=(pool, 1000 * k)) for k in range(3)]
        for thread in threads:
            thread.start()
        try:
            payloads = [bytes(3000 + i) for i in range(150)]
            assert pool.map(len, payloads, chunksize=1) == [3000 + i for i in range(150)]
        finally:
            for thread in threads[1:]:
                thread.join(60)
            stop.set()
            threads[0].join(30)
        assert not errors, errors
        workers = list(pool._supervision._workers.values())
        assert workers and all(not worker.inflight for worker in workers)
        assert [worker.queued for worker in workers] == [0] * len(workers)


def test_max_memory_per_child_replaces_a_grown_worker(ctx):
    # How big a fresh worker of this start method is; give it 40 MiB of room beyond that.
    with ctx.Pool(1) as probe:
        fresh = probe.apply(targets.worker_rss)
    with ctx.Pool(1, max_memory_per_child=fresh + 40 * 2**20) as pool:
        small = [pool.apply(targets.grow_and_report_pid, (1,)) for _ in range(3)]
        assert len(set(small)) == 1  # under the bound: the same worker
        big = pool.apply(targets.grow_and_report_pid, (80,))
        assert big == small[0]  # the task that grew it still completes on it
        after = pool.apply(targets.grow_and_report_pid, (1,))
        assert after != big  # ... and the worker is replaced before the next task
        assert pool.map(targets.square, range(10)) == [x * x for x in range(10)]
    with pytest.raises(ValueError, match="max_memory_per_child"):
        ctx.Pool(1, max_memory_per_child=-5)


def test_cancelling_an_awaiting_task_stops_the_work(ctx):
    from concurrent.futures import CancelledError

    async def cancel_while_awaited(results):
        waiters = [asyncio.ensure_future(_await(r)) for r in results]
        await asyncio.sleep(0)  # one turn of the loop: each waiter now awaits its result
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    with ctx.Pool(1) as pool:
        pid = pool.apply(targets.worker_pid)
        running = pool.apply_async(targets.sleep, (30,))
        queued = pool.apply_async(targets.sleep, (30,))
        # The first task is at the worker before the waits on it are cancelled.
        assert wait_until(lambda: pool.statistics()["in_flight"] >= 1)
        asyncio.run(cancel_while_awaited((running, queued)))
        for result in (running, queued):
            with pytest.raises(CancelledError):
                result.get(10)
        # the sleeping worker was stopped and replaced, not left to sleep 30 s (the only
        # worker: a task behind the sleep would not be answered within the bound)
        assert pool.apply_async(targets.worker_pid).get(timeout=10) != pid


async def _await(result):
    return await result


def test_lambdas_and_closures(pool):
    offset = 5
    assert pool.map(lambda x: x + offset, range(4)) == [5, 6, 7, 8]
    assert pool.apply(lambda: "lambda") == "lambda"


@pytest.mark.parametrize("how", ["sigkill", "exit", "segfault"])
def test_worker_death_fails_only_that_task(ctx, how):
    with ctx.Pool(2) as pool:
        results = [pool.apply_async(targets.die_on, (i, 3, how)) for i in range(8)]
        for i, r in enumerate(results):
            if i == 3:
                with pytest.raises(procly.WorkerLostError) as info:
                    r.get(timeout=30)
                message = str(info.value)
                assert "die_on" in message and "pid" in message
                assert ("SIG" in message) if how != "exit" else ("exit code 3" in message)
            else:
                assert r.get(timeout=30) == i
        assert pool.apply(targets.square, (5,)) == 25
        assert len(pool.statistics()) and pool.statistics()["workers"] == 2


def _outcomes(results) -> list:
    """Each result's value, or "lost" where its worker died."""
    outcomes = []
    for r in results:
        try:
            outcomes.append(r.get(timeout=30))
        except procly.WorkerLostError:
            outcomes.append("lost")
    return outcomes


def test_a_death_inside_a_bundle_fails_only_the_running_task(ctx):
    """Short tasks go to a worker up to 64 to a message: a death there still names one task."""
    with ctx.Pool(2) as pool:
        results = [pool.apply_async(targets.die_on, (i, 150, "sigkill")) for i in range(300)]
        assert _outcomes(results) == [("lost" if i == 150 else i) for i in range(300)]


def test_a_death_with_big_tasks_queued_fails_only_the_running_task(ctx):
    """Tasks carrying 2.4 MB arrays cross in memfds, two queued per worker; a worker killed
    among them loses one task, and the memfds it held are not reused by mistake."""
    np = pytest.importorskip("numpy")
    arrays = [np.full(300_000, float(i)) for i in range(16)]
    with ctx.Pool(2) as pool:
        results = [pool.apply_async(targets.sum_or_die, (a, 9.0)) for a in arrays]
        outcomes = _outcomes(results)
        after = [pool.apply_async(targets.sum_or_die, (a, -1.0)).get(timeout=30) for a in arrays]
    assert outcomes == [("lost" if i == 9 else 300_000.0 * i) for i in range(16)]
    assert after == [300_000.0 * i for i in range(16)]


def _kill_workers_at_random(ctx, tasks: int, nap: float, chunksize: int, seed: int) -> None:
    """Run *tasks* short tasks while a thread SIGKILLs a worker at random moments (every
    5-20 ms under fork; spawn and forkserver take longer to replace one); check that each
    task either returned its value, having run exactly once, or (only the tasks dying
    workers were running) failed with WorkerLostError, having run at most once."""
    rng = random.Random(seed)
    pause = 0.005 if ctx.get_start_method() == "fork" else 0.05
    runs = ctx.Array("i", tasks, lock=False)
    kills = 0
    with ctx.Pool(2, initializer=targets.keep_run_counts, initargs=(runs,)) as pool:
        stop = threading.Event()

        def killer() -> None:
            nonlocal kills
            while not stop.wait(rng.uniform(pause, 4 * pause)):
                workers = pool._pool
                if workers:
                    try:
                        rng.choice(workers).kill()
                        kills += 1
                    except (ValueError, OSError):
                        pass  # reaped and closed by the supervisor meanwhile

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            results = [
                pool.starmap_async(
                    targets.counted_nap, [(i, nap) for i in range(start, start + chunksize)], chunksize=chunksize
                )
                for start in range(0, tasks, chunksize)
            ]
            outcomes = []
            for r in results:
                outcome = _outcomes([r])[0]
                outcomes.extend(outcome if outcome != "lost" else ["lost"] * chunksize)
        finally:
            stop.set()
            thread.join()
        # The pool still works (a retry covers a task sent to the last victim just before
        # the supervisor saw it die).
        assert pool.map(abs, range(-5, 0), retries=2) == [5, 4, 3, 2, 1]
    lost = [i for i, o in enumerate(outcomes) if o == "lost"]
    assert [o for o in outcomes if o != "lost"] == [i * i for i in range(tasks) if i not in set(lost)]
    assert all(runs[i] == 1 for i in range(tasks) if i not in set(lost)), "a finished task ran twice"
    assert all(runs[i] <= 1 for i in lost), "a lost task was run again"
    assert 0 < len(lost) <= kills * chunksize


def test_workers_killed_at_random_lose_only_their_running_tasks(ctx):
    _kill_workers_at_random(ctx, tasks=1500, nap=0.001, chunksize=1, seed=7)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("chunksize", [1, 5])
def test_soak_random_worker_kills(ctx, chunksize):
    for seed in range(3):
        _kill_workers_at_random(ctx, tasks=6000, nap=0.0005 * (seed + 1), chunksize=chunksize, seed=seed)


def test_map_with_a_dying_worker_raises_instead_of_hanging(pool):
    with pytest.raises(procly.WorkerLostError):
        pool.starmap(targets.die_on, [(i, 7) for i in range(20)], chunksize=2)
    assert pool.map(targets.square, range(4)) == [0, 1, 4, 9]


def test_retries_rerun_a_lost_task(ctx, tmp_path):
    marker = str(tmp_path / "died-once")
    with ctx.Pool(2, retries=1) as pool:
        assert pool.apply_async(targets.die_once, (marker, 4)).get(timeout=30) == 40


def test_task_timeout_stops_the_task(ctx):
    with ctx.Pool(2, task_timeout=3) as pool:
        slow = pool.apply_async(time.sleep, (30,))
        fast = [pool.apply_async(targets.square, (i,)) for i in range(6)]
        with pytest.raises(procly.TaskTimeoutError):
            slow.get(timeout=10)  # stopped: a task left to sleep would raise TimeoutError here
        assert [r.get(timeout=20) for r in fast] == [i * i for i in range(6)]
        per_call = pool.apply_async(time.sleep, (30,), task_timeout=0.2)
        with pytest.raises(procly.TaskTimeoutError):
            per_call.get(timeout=20)


def _counted(make, produced):
    for i in itertools.count():
        produced.append(i)
        yield make(i)


def test_imap_reads_an_endless_generator_lazily(pool):
    """The feeder never holds more than the look-ahead of unconsumed items."""
    from procly._pool import IMAP_ADAPTIVE_ITEMS, IMAP_TASKS_AHEAD

    bound = 2 * IMAP_TASKS_AHEAD * IMAP_ADAPTIVE_ITEMS
    produced: list[int] = []
    it = pool.imap(targets.square, _counted(int, produced))
    for consumed in range(1, 301):
        assert next(it) == (consumed - 1) ** 2
        assert len(produced) <= consumed + bound, "imap must not read far ahead of its consumer"


def test_imap_look_ahead_is_bounded_in_bytes_for_big_items(pool):
    """1 MiB items: the parent reads ahead only what keeps both workers busy (two tasks
    each), not the item-count window (32 tasks), so its memory stays near the stdlib's."""
    items_bound = 2 * 2
    produced: list[int] = []
    it = pool.imap(len, _counted(lambda i: bytes(1 << 20), produced), chunksize=1)
    for consumed in range(1, 61):
        assert next(it) == 1 << 20
        # The first chunk goes out before its size is known: one item of slack.
        assert len(produced) <= consumed + items_bound + 1


def _fails_after(n):
    yield from range(n)
    raise KeyError("input broke")


@pytest.mark.parametrize(("chunksize", "kept"), [(1, 6), (4, 4), (5, 5)])
def test_imap_input_that_raises_ends_the_results_where_its_chunk_began(pool, chunksize, kept):
    """As in the standard library: the chunks read whole are computed; the error takes
    the place of the chunk the input cut short (its items are dropped)."""
    it = pool.imap(targets.square, _fails_after(6), chunksize=chunksize)
    assert [next(it) for _ in range(kept)] == [i * i for i in range(kept)]
    with pytest.raises(KeyError, match="input broke"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_maxtasksperchild_and_initializer(ctx):
    with ctx.Pool(1, initializer=targets.init_state, initargs=("ready",), maxtasksperchild=2) as pool:
        pids = [pool.apply(targets.worker_pid) for _ in range(6)]
        assert len(set(pids)) == 3
        assert pool.apply(targets.read_state, (0,)) == "ready"


def test_repopulate_pool_starts_what_is_missing_and_no_more(ctx, monkeypatch):
    """The standard library's ``_repopulate_pool()``: the pool has its workers after it;
    one whose start failed is started now instead of after the supervisor's pause."""
    with ctx.Pool(2, maxtasksperchild=2) as pool:
        before = {process.pid for process in pool._pool}
        assert pool.map(targets.square, range(8), chunksize=1) == [x * x for x in range(8)]
        # The last results may come before their workers' "bye" is handled: wait until no
        # worker that ran its two tasks is left, or the map below would wait for them.
        workers = pool._supervision._workers
        assert wait_until(lambda: all(worker.sent < 2 for worker in list(workers.values())))
        pool._repopulate_pool()
        after = {process.pid for process in pool._pool}
        assert len(after) == 2 and None not in after
        assert after != before  # every worker left after two tasks: replaced
        real_spawn = pool._spawn_worker
        monkeypatch.setattr(pool, "_spawn_worker", raising(OSError("no memory for a fork (simulated)")))
        # Both workers leave after their two tasks, and their replacements fail to start:
        # the supervisor tries again later, after a pause that grows with each failure.
        # (As many tasks as the workers have left: one that ran a single task of the first
        # map, its other going to a worker started meanwhile, has one left.)
        left = sum(2 - worker.sent for worker in list(workers.values()))
        assert pool.map(targets.square, range(left), chunksize=1) == [x * x for x in range(left)]
        monkeypatch.setattr(pool, "_spawn_worker", real_spawn)
        # As above: a worker whose "bye" is not handled yet still counts, and would leave
        # after _repopulate_pool() had counted it.
        assert wait_until(lambda: all(worker.sent < 2 for worker in list(workers.values())))
        pool._repopulate_pool()
        assert len(pool._pool) == 2
        assert pool.map(targets.square, range(4)) == [0, 1, 4, 9]


def test_close_join_and_terminate_semantics(ctx):
    pool = ctx.Pool(2)
    results = [pool.apply_async(targets.square, (i,)) for i in range(10)]
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.apply_async(targets.square, (1,))
    pool.join()
    assert [r.get(0) for r in results] == [i * i for i in range(10)]
    pool = ctx.Pool(2)
    stuck = pool.apply_async(time.sleep, (60,))
    ended = threading.Event()

    def end() -> None:
        pool.terminate()
        pool.terminate()
        pool.join()
        ended.set()

    threading.Thread(target=end, daemon=True).start()
    assert ended.wait(10), "terminate() waited for a task that sleeps 60 s"
    with pytest.raises(procly.PoolTerminatedError):
        stuck.get(timeout=5)


@pytest.mark.parametrize("end", ["close", "terminate"])
def test_a_pool_that_has_ended_is_freed(end):
    """Nothing keeps a closed and joined (or terminated) pool alive: a program that makes
    pools over and over does not pile them up until exit."""
    pool = procly.get_context("fork").Pool(1)
    assert pool.apply(abs, (-3,)) == 3
    getattr(pool, end)()
    pool.join()
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None


def test_a_pool_freed_in_the_running_state_warns():
    pool = procly.get_context("fork").Pool(1)
    pool.terminate()
    pool.join()
    pool._state = procly.pool.RUN  # as if it had been dropped without close() or terminate()
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool
        gc.collect()


def test_close_waits_for_imap_input_then_ends(ctx):
    """A closed pool finishes what an imap feeder still submits, then its workers exit."""

    def slow_input():
        for i in range(5):
            time.sleep(0.05)
            yield i

    pool = ctx.Pool(2)
    it = pool.imap(targets.square, slow_input())
    pool.close()
    pool.join()
    assert list(it) == [i * i for i in range(5)]


def test_large_numpy_arguments_and_results(pool):
    arrays = [np.full(1_000_000, i, dtype=np.float64) for i in range(3)]
    sums = pool.map(np.sum, arrays)
    assert sums == [i * 1_000_000.0 for i in range(3)]
    doubled = pool.apply(np.multiply, (arrays[2], 2))
    assert doubled.shape == (1_000_000,) and doubled[0] == 4.0


def test_big_tasks_and_big_results_do_not_deadlock(pool):
    """Large arguments queued behind running tasks while workers send large results back."""
    arrays = [np.full(1 << 20, i, dtype=np.float64) for i in range(6)]  # 8 MiB each
    results = pool.map(targets.double, arrays, chunksize=1)
    assert [r[0] for r in results] == [2.0 * i for i in range(6)]


def test_a_batch_of_chunks_is_spread_over_the_workers(ctx):
    """After short tasks (which queue deep), a map's few long chunks still go to every
    worker instead of queueing at the first one."""
    with ctx.Pool(2) as pool:
        pool.map(abs, range(100))  # short tasks measured: the depth is at its deepest
        pids = pool.map(
            lambda x: (time.sleep(0.05) if x % 400 == 0 else None, os.getpid())[1], range(8 * 400), chunksize=400
        )
        assert len(set(pids)) == 2


def test_mid_size_tasks_and_results_stream_without_deadlock(pool):
    """Hundreds of short tasks whose arguments and results (tens of KB, below the memfd
    threshold) go through the sockets themselves: the bytes queued at a worker stay
    within what its socket holds, so neither side blocks on a full socket for ever."""
    blobs = [bytes([i % 256]) * (20_000 + 97 * i) for i in range(400)]
    doubled = pool.map(targets.double, blobs, chunksize=1)
    assert doubled == [b * 2 for b in blobs]


def test_asyncio_integration(pool):
    async def main():
        value = await pool.apply_async(targets.square, (6,))
        collected = [x async for x in pool.imap(targets.square, range(5))]
        return value, collected

    assert asyncio.run(main()) == (36, [0, 1, 4, 9, 16])


def test_keyboard_interrupt_during_map_is_prompt(ctx):
    pool = ctx.Pool(2)
    timer = threading.Timer(0.3, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        pool.map(time.sleep, [60] * 4)
    # prompt: the interrupt did not wait for the tasks, which still run
    assert pool.statistics()["outstanding"] > 0
    pool.terminate()
    pool.join()


def test_imap_chunks_adapt_to_fast_items_and_slow_input(pool):
    before = sum(w["tasks"] for w in pool.statistics()["per_worker"].values())
    assert list(pool.imap(targets.square, range(3000))) == [x * x for x in range(3000)]
    tasks = sum(w["tasks"] for w in pool.statistics()["per_worker"].values()) - before
    assert tasks < 1500  # trivial items travel in chunks, not one message each
    assert sorted(pool.imap_unordered(targets.square, range(500))) == sorted(x * x for x in range(500))

    go_on = threading.Event()

    def held_input():
        time.sleep(0.1)  # a slow source: its first item takes longer than a partial chunk may wait
        yield 0
        go_on.wait(30)  # ... and the next one comes only once the first result is in
        yield from range(1, 6)

    results = pool.imap(targets.square, held_input())
    # the first result does not wait for a chunk to fill from a slow input
    assert results.next(timeout=10) == 0
    go_on.set()
    assert list(results) == [1, 4, 9, 16, 25]


def test_map_takes_ranges_tuples_and_lists_as_they_are_at_the_call(pool):
    # Long chunks of a range travel as ranges, short ones as lists: same results.
    assert pool.map(targets.square, range(5, 2005), chunksize=500) == [i * i for i in range(5, 2005)]
    assert pool.map(targets.square, range(0, 90, 3), chunksize=4) == [i * i for i in range(0, 90, 3)]
    assert pool.map(targets.square, range(3000)) == [i * i for i in range(3000)]
    assert pool.starmap(targets.add, ((i, 1) for i in range(50))) == list(range(1, 51))
    assert pool.map(targets.square, (1.5, 2, True)) == [2.25, 4, 1]
    items = list(range(1000))
    result = pool.map_async(targets.square, items, chunksize=10)
    items[:] = [-1] * 1000  # changed after the call: the tasks were pickled in it
    assert result.get(timeout=30) == [i * i for i in range(1000)]


def test_pools_work_with_descriptors_past_1023(ctx, descriptors_past_1023):
    with ctx.Pool(1) as pool:
        assert pool._pool[0].sentinel > 1023
        assert pool.apply(abs, (-4,)) == 4  # dispatch to an idle worker checks its sentinel
        assert pool.map(abs, range(-300, 0), chunksize=1) == list(range(300, 0, -1))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 3, None])
def test_imap_results_readable_after_close_and_join(ctx, chunksize):
    # The look-ahead window fills long before 500 items: join() must read the rest of
    # the input itself instead of waiting for a caller who reads only after it returns.
    with ctx.Pool(2) as p:
        ordered = p.imap(targets.square, range(500), chunksize=chunksize)
        unordered = p.imap_unordered(targets.square, iter(range(500)), chunksize=chunksize)
        p.close()
        p.join()
        assert list(ordered) == [x * x for x in range(500)]
        assert sorted(unordered) == [x * x for x in range(500)]


@pytest.mark.timeout(60)
def test_imap_endless_input_stops_at_terminate(ctx):
    with ctx.Pool(2) as p:
        results = p.imap(targets.square, itertools.count())
        assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
        p.terminate()
        p.join()
        with pytest.raises((procly.PoolTerminatedError, StopIteration)):
            for _ in range(100_000):
                next(results)


@pytest.mark.timeout(30)
def test_thread_pool_imap_results_readable_after_join():
    with procly.pool.ThreadPool(2) as p:
        results = p.imap(targets.square, range(2000))
        p.close()
        p.join()
        assert list(results) == [x * x for x in range(2000)]


@pytest.mark.timeout(60)
def test_fork_server_killed_or_unreachable_is_replaced():
    from procly import _state

    ctx = procly.get_context("forkserver")
    with ctx.Pool(2, maxtasksperchild=1) as p:  # a new worker for every task
        assert p.map(targets.square, range(4)) == [0, 1, 4, 9]
        os.kill(_state.get().forkserver._process.pid, signal.SIGKILL)
        assert p.map(targets.square, range(10)) == [x * x for x in range(10)]
        os.unlink(_state.get().forkserver.address)  # its socket can no longer be reached
        assert p.map(targets.square, range(10)) == [x * x for x in range(10)]


@pytest.mark.timeout(60)
def test_worker_start_failures_do_not_end_the_supervisor(ctx, monkeypatch):
    with ctx.Pool(1) as p:
        real_spawn = p._spawn_worker
        failures = iter([True, True, False])

        def flaky_spawn():
            if next(failures, False):
                raise OSError("no memory for a fork (simulated)")
            real_spawn()

        monkeypatch.setattr(p, "_spawn_worker", flaky_spawn)
        with pytest.raises(procly.WorkerLostError):
            p.apply(targets.die_on, (1, 1))
        # The replacement failed twice before it started: the pool still works.
        assert p.map(targets.square, range(20)) == [x * x for x in range(20)]


class _StartsThenFails:
    """A context whose Process class starts *allowed* processes, then fails to start."""

    def __init__(self, ctx, allowed: int) -> None:
        self.ctx = ctx
        self.started: list = []
        context = self

        class Process(ctx.Process):
            def start(self) -> None:
                if len(context.started) >= allowed:
                    raise OSError("cannot start another process (simulated)")
                super().start()
                context.started.append(self)

        self.Process = Process

    def get_start_method(self, allow_none: bool = False) -> str:
        return self.ctx.get_start_method()


@pytest.mark.timeout(60)
def test_pool_that_fails_to_start_ends_the_workers_it_started(ctx):
    failing = _StartsThenFails(ctx, allowed=2)
    with pytest.raises(OSError, match="cannot start another process"):
        procly.pool.Pool(4, context=failing)
    assert len(failing.started) == 2
    assert all(process.exitcode is not None for process in failing.started)  # ended and joined


@pytest.mark.timeout(60)
def test_pool_that_cannot_start_workers_fails_tasks(ctx, monkeypatch):
    with ctx.Pool(1) as p:

        def broken_spawn():
            raise OSError("cannot start anything (simulated)")

        monkeypatch.setattr(p, "_spawn_worker", broken_spawn)
        with pytest.raises(procly.WorkerLostError):
            p.apply(targets.die_on, (1, 1))
        with pytest.raises(procly.StartError, match="could not start a worker"):
            p.apply(targets.square, (3,))
        monkeypatch.undo()  # starts work again: the pool recovers
        assert p.apply_async(targets.square, (4,)).get(timeout=30) == 16


@pytest.mark.timeout(60)
def test_unexpected_supervisor_error_is_survived(ctx, monkeypatch, capsys):
    with ctx.Pool(2) as p:
        real_restart = p._restart_missing
        calls = itertools.count()

        def buggy():
            if next(calls) == 0:
                raise RuntimeError("a bug in one supervisor step (simulated)")
            real_restart()

        monkeypatch.setattr(p, "_restart_missing", buggy)
        p._wake()
        assert p.map(targets.square, range(50)) == [x * x for x in range(50)]
        assert "a bug in one supervisor step" in capsys.readouterr().err


DROPPED_POOL = """
import sys, procly
def f(x):
    return x
if __name__ == "__main__":
    p = procly.get_context(sys.argv[1]).Pool(2)
    print(p.map(f, range(3)))
    if sys.argv[2] == "close":
        p.close()
        p.join()
    del p
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["drop", "close"])
def test_pool_left_running_warns_like_the_standard_library(tmp_path, ctx, how):
    import subprocess
    import sys

    script = tmp_path / "dropped.py"
    script.write_text(DROPPED_POOL)
    argv = [sys.executable, "-W", "always::ResourceWarning", str(script), ctx.get_start_method(), how]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=50)
    assert out.returncode == 0 and out.stdout == "[0, 1, 2]\n", out.stderr
    assert ("unclosed running multiprocessing pool" in out.stderr) == (how == "drop"), out.stderr
    assert "Exception ignored" not in out.stderr


@pytest.mark.timeout(60)
def test_a_worker_may_start_processes_and_pools(ctx):
    with ctx.Pool(2) as p:
        assert p.apply(targets.run_inner_pool, (ctx.get_start_method(), 5)) == [x * x for x in range(5)]
        assert p.apply(targets.run_inner_process, (ctx.get_start_method(),)) == 0


@pytest.mark.timeout(60)
def test_task_timeout_ends_what_the_task_started(ctx, tmp_path):
    pids_file = tmp_path / "pids"
    with ctx.Pool(1, task_timeout=2) as p:
        with pytest.raises(procly.TaskTimeoutError):
            p.apply(targets.start_grandchildren_and_sleep, (ctx.get_start_method(), str(pids_file)))
        pids = [int(x) for x in pids_file.read_text().split()]
        assert len(pids) == 2
        assert wait_until(lambda: all(pid_state(pid) in (None, "Z") for pid in pids), timeout=10), [
            pid_state(pid) for pid in pids
        ]
        assert p.apply(targets.square, (3,)) == 9


@pytest.mark.timeout(60)
def test_inner_threads_limit_numeric_libraries_in_workers(ctx, monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    with ctx.Pool(2, inner_threads=1) as p:
        assert p.apply(targets.thread_environment) == dict.fromkeys(
            ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"
        )
        assert p.apply(targets.blas_threads) == [1]
    if ctx.get_start_method() != "forkserver":  # its children have the fork server's environment
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
        with ctx.Pool(2, inner_threads=1) as p:
            env = p.apply(targets.thread_environment)
            assert env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "1"
        with ctx.Pool(1, inner_threads=0) as p:  # no limit: the environment as it is
            assert p.apply(targets.thread_environment)["MKL_NUM_THREADS"] == os.environ.get("MKL_NUM_THREADS")
    with pytest.raises(ValueError, match="inner_threads"):
        ctx.Pool(1, inner_threads=-1)


FORKED_BLAS = """
import sys, numpy, procly
sys.path.insert(0, sys.argv[1])
from tests import targets

if __name__ == "__main__":
    from threadpoolctl import threadpool_info
    before = [pool["num_threads"] for pool in threadpool_info()]
    with procly.get_context("fork").Pool(2, inner_threads=1) as pool:
        print(pool.apply(targets.native_threads_after_matmul), pool.apply(targets.blas_threads))
    print([pool["num_threads"] for pool in threadpool_info()] == before)
"""


@pytest.mark.timeout(60)
def test_forked_workers_inherit_blas_limited_without_a_new_thread_pool(tmp_path):
    """numpy loaded in the parent: a forked worker runs BLAS on its share of threads and
    starts no BLAS thread pool of its own (whose threads would busy-wait at every pool
    start); the parent's own limit is left as it was."""
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    script = tmp_path / "forked_blas.py"
    script.write_text(FORKED_BLAS)
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, str(script), root], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["0 [1]", "True"], out.stdout


def test_default_inner_threads_share_the_cpus():
    from procly import _inner_threads

    assert _inner_threads.resolve(None, 2, 8) == 4
    assert _inner_threads.resolve(None, 16, 8) == 1
    assert _inner_threads.resolve(3, 2, 8) == 3


def test_apply_of_scalars_honours_a_reducer_registered_for_their_type():
    """apply() pickles arguments of plain scalars with the C pickler alone, but not a type
    given a reducer of its own (the forked worker has it too: one shift each way)."""
    with reducer_registered(complex, shift_complex), procly.get_context("fork").Pool(1) as p:
        assert p.apply(targets.identity, (1j,)) == 200 + 1j
        assert p.apply(targets.identity, (5, "x")) == 5  # the short path


def test_a_sleeping_supervisor_is_woken_to_watch_for_a_short_tasks_reply(pool, monkeypatch):
    """The caller's thread sends a task itself; with short tasks it wakes a supervisor that
    sleeps, so that the supervisor is watching when the reply comes."""
    # Short tasks by definition: on a loaded machine a square may be timed at over 1 ms.
    monkeypatch.setattr(_pool_supervisor, "WATCH_TASKS_UNDER", 60.0)
    pool.apply(targets.square, (2,))  # the tasks are timed: short ones
    supervisor = pool._supervision
    assert wait_until(lambda: supervisor._asleep and not supervisor._wake_pending)
    woken = []
    real_wake = supervisor.wake
    monkeypatch.setattr(supervisor, "wake", lambda: (woken.append(True), real_wake()))
    # (With a callback: without one, the caller reads the reply itself, see below. A nap:
    # a reply that came at once could wake the supervisor before the caller looks.)
    assert pool.apply_async(targets.nap_then_square, (3, NAP), callback=lambda value: None).get(timeout=10) == 9
    assert woken


def test_a_caller_waiting_for_a_short_task_reads_its_reply_itself(pool, monkeypatch, long_serving):
    """get() on a task with no callback reads the reply in the caller's thread (no wake-up
    of the supervisor, which is not woken to watch for it either). (A reply that comes
    before get() begins may be read by the supervisor, which is as good: see NAP.)"""
    pool.apply(targets.square, (2,))
    supervisor = pool._supervision
    threads = record_settling_threads(supervisor, monkeypatch)
    woken = []
    real_wake = supervisor.wake
    monkeypatch.setattr(supervisor, "wake", lambda: (woken.append(True), real_wake()))
    squares = [pool.apply(targets.nap_then_square, (i, NAP)) for i in range(20)]
    assert squares == [i * i for i in range(20)]
    assert threading.current_thread() in threads
    assert not woken
    # A callback runs in the pool's thread, as in the standard library: not read here.
    called_in = []
    result = pool.apply_async(targets.square, (3,), callback=lambda value: called_in.append(threading.current_thread()))
    assert result.get(timeout=10) == 9
    assert called_in and called_in[0] is not threading.current_thread()


def test_a_worker_that_dies_while_its_caller_reads_the_reply_is_reported(pool, monkeypatch, long_serving):
    """The caller reading its own reply sees the worker die: the supervisor retires it,
    the call fails with WorkerLostError, and the pool goes on."""
    pool.apply(targets.square, (2,))
    threads = record_settling_threads(pool._supervision, monkeypatch)
    assert [pool.apply(targets.nap_then_square, (i, NAP)) for i in range(5)] == [0, 1, 4, 9, 16]
    for how in ("sigkill", "exit"):
        with pytest.raises(procly.WorkerLostError):
            pool.apply(targets.die_on, (1, 1, how))
        assert pool.apply(targets.die_on, (2, 1)) == 2
    assert [pool.apply(targets.square, (i,)) for i in range(5)] == [0, 1, 4, 9, 16]
    assert threading.current_thread() in threads


def test_a_worker_leaving_after_maxtasksperchild_is_replaced_when_its_caller_read_the_reply(
    ctx, monkeypatch, long_serving
):
    """The "bye" a worker sends after its last task may be read by a caller's thread with
    the reply: it is left to the supervisor, which replaces the worker."""
    with ctx.Pool(1, maxtasksperchild=2) as pool:
        threads = record_settling_threads(pool._supervision, monkeypatch)
        pids = [pool.apply(targets.nap_then_pid, (NAP,)) for _ in range(6)]
        assert len(set(pids)) == 3
        assert threading.current_thread() in threads


def test_callbacks_run_in_the_pools_thread_while_other_callers_read_their_own_replies(ctx, long_serving):
    """A caller reading its own reply settles that reply only: another task's callback,
    whose reply it may read with its own, still runs in the pool's thread."""
    with ctx.Pool(1) as pool:
        callback_threads = []
        squares = []
        caller = threading.Thread(
            target=lambda: squares.extend(pool.apply(targets.nap_then_square, (i, NAP)) for i in range(30))
        )
        caller.start()
        results = [
            pool.apply_async(
                targets.square, (i,), callback=lambda _: callback_threads.append(threading.current_thread())
            )
            for i in range(30)
        ]
        assert [r.get(timeout=30) for r in results] == [i * i for i in range(30)]
        caller.join(30)
        assert squares == [i * i for i in range(30)]
        assert len(callback_threads) == 30
        assert {thread.name for thread in callback_threads} == {"procly-pool-supervisor"}


def test_get_with_a_timeout_of_zero_or_less_does_not_wait(pool):
    """As with the standard library: a timeout of 0 or less raises at once if not ready."""
    pool.apply(targets.square, (2,))
    result = pool.apply_async(targets.nap_then_square, (3, 0.5))
    for timeout in (0, -0.5, -1):
        with pytest.raises(procly.TimeoutError):
            result.get(timeout=timeout)
    assert result.get(timeout=10) == 9


def test_ctrl_c_in_get_leaves_the_call_and_the_pool_working(pool):
    """SIGINT while get() waits raises KeyboardInterrupt there and leaves the task
    running: its result comes later, and the pool goes on."""
    pool.apply(targets.square, (2,))
    result = pool.apply_async(targets.nap_then_square, (4, 0.3))
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            result.get(timeout=10)
    finally:
        timer.cancel()
    assert result.get(timeout=10) == 16
    assert [pool.apply(targets.square, (i,)) for i in range(5)] == [0, 1, 4, 9, 16]


def test_a_reply_read_cut_short_by_ctrl_c_ends_the_worker_and_fails_only_its_task(ctx, monkeypatch, long_serving):
    """Interrupted half-way through reading its own reply (the task taken off, not yet
    settled), the caller leaves a stream that cannot be trusted: the worker is ended
    and replaced, that task fails with WorkerLostError, and the pool goes on."""
    with ctx.Pool(1) as pool:
        first_pid = pool.apply(targets.worker_pid)
        supervisor = pool._supervision
        real = supervisor._settle_replies
        armed = [True]

        def interrupted(worker, replies):
            # (A caller's thread, reading its own reply.)
            if threading.current_thread() is not supervisor.thread and armed[0]:
                armed[0] = False
                worker.inflight.popleft()
                raise KeyboardInterrupt
            return real(worker, replies)

        monkeypatch.setattr(supervisor, "_settle_replies", interrupted)
        for i in range(20):  # until a caller reads its own reply (the supervisor may be first)
            result = pool.apply_async(targets.nap_then_square, (i, NAP))
            try:
                assert result.get(timeout=10) == i * i
            except KeyboardInterrupt:
                break
        else:
            pytest.fail("no caller read its own reply")
        with pytest.raises(procly.WorkerLostError):
            result.get(timeout=10)
        assert pool.apply(targets.square, (5,)) == 25
        assert pool.apply(targets.worker_pid) != first_pid


def test_a_result_waiter_interrupted_as_it_is_let_through_does_not_hold_up_the_others():
    """A waiter on a result that gets through the gate as it opens and is interrupted
    (Ctrl-C) before it can pass the turn on: the gate stays open for the other waiters."""
    from procly._pool_results import _Gate

    gate = _Gate()
    real = gate._lock

    class InterruptedAfterAcquire:
        def acquire(self, blocking, timeout):
            gate.set()  # the result comes while this caller waits ...
            assert real.acquire(blocking, timeout)  # ... its turn comes ...
            raise KeyboardInterrupt  # ... and Ctrl-C lands before it can pass the turn on

        def release(self):
            real.release()

    gate._lock = InterruptedAfterAcquire()
    with pytest.raises(KeyboardInterrupt):
        gate.wait()
    assert not real.locked()  # the next waiter blocked on the lock gets through
    gate._lock = real
    assert gate.wait(0) and gate.wait()
