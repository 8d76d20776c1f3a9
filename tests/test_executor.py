"""ProcessPoolExecutor: the concurrent.futures interface on the Pool engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import pickle
import subprocess
import sys
import threading
import time

import pytest

import procly
from procly.futures import BrokenProcessPool, ProcessPoolExecutor

from . import executor_targets, targets
from .conftest import NAP, raising, record_settling_threads, wait_until


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


# -- the concurrent.futures contract (issue 14) ------------------------------------


def test_broken_process_pool_types_pickle():
    """WorkerLostError is procly's BrokenProcessPool, a concurrent.futures.BrokenExecutor;
    both survive a pickle round trip."""
    lost = procly.WorkerLostError("worker died", -9)
    assert isinstance(lost, BrokenProcessPool)
    assert isinstance(lost, concurrent.futures.BrokenExecutor)
    assert isinstance(lost, procly.ProcessError)
    copy = pickle.loads(pickle.dumps(lost))
    assert type(copy) is procly.WorkerLostError and copy.exitcode == -9 and str(copy) == "worker died"
    broken = pickle.loads(pickle.dumps(BrokenProcessPool("initializer failed")))
    assert type(broken) is BrokenProcessPool and str(broken) == "initializer failed"
    from procly.pool import MaybeEncodingError

    assert issubclass(MaybeEncodingError, pickle.PicklingError)


def test_worker_death_fails_its_future_with_broken_executor(ctx):
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        lost = executor.submit(targets.die_on, 1, 1)
        with pytest.raises(concurrent.futures.BrokenExecutor, match="died"):
            lost.result(timeout=30)
        assert isinstance(lost.exception(), procly.WorkerLostError)
        # procly replaces the worker and goes on (the standard library breaks the executor).
        assert executor.submit(targets.square, 4).result(timeout=30) == 16
        assert not executor._broken


def test_failing_initializer_breaks_the_executor(ctx):
    executor = ProcessPoolExecutor(2, mp_context=ctx, initializer=executor_targets.fail_init)
    try:
        futures = []
        try:
            for i in range(4):
                futures.append(executor.submit(targets.square, i))
        except concurrent.futures.BrokenExecutor:
            pass  # broken already: submit() refuses, as it must from now on
        for future in futures:
            error = future.exception(timeout=30)
            assert isinstance(error, concurrent.futures.BrokenExecutor), error
            assert isinstance(error, BrokenProcessPool) and "initializer" in str(error)
        assert executor._broken
        with pytest.raises(concurrent.futures.BrokenExecutor, match="initializer"):
            executor.submit(targets.square, 1)
    finally:
        executor.shutdown(wait=True)
    # No worker left behind, none respawned (the leak check of conftest also checks).
    assert executor._processes == {}


def test_unpicklable_calls_fail_their_future(ctx):
    """submit() does not raise for a call that cannot be sent or received: its future fails."""
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        argument = executor.submit(targets.square, threading.Lock())
        assert isinstance(argument.exception(timeout=30), pickle.PicklingError)
        task = executor.submit(targets.square, executor_targets.BreaksOnUnpickle())
        error = task.exception(timeout=30)
        assert isinstance(error, BrokenProcessPool) and "unpickled in the worker" in str(error)
        result = executor.submit(executor_targets.make_breaks_on_unpickle)
        error = result.exception(timeout=30)
        assert isinstance(error, concurrent.futures.BrokenExecutor) and "result could not be unpickled" in str(error)
        unpicklable = executor.submit(targets.return_unpicklable, 1)
        with pytest.raises(pickle.PicklingError):
            unpicklable.result(timeout=30)
        exits = executor.submit(executor_targets.exit_now)
        assert isinstance(exits.exception(timeout=30), SystemExit)
        exits_pickling = executor.submit(executor_targets.make_exits_on_pickle)
        assert isinstance(exits_pickling.exception(timeout=30), SystemExit)
        # None of it broke the executor.
        assert executor.submit(targets.square, 5).result(timeout=30) == 25


_EXIT_SCRIPT = """
import atexit
import procly
from procly.futures import ProcessPoolExecutor
from tests import executor_targets


def submit_last():
    try:
        executor.submit(executor_targets.print_later, 0, "too late")
    except RuntimeError as exc:
        print("refused:", exc, flush=True)


atexit.register(submit_last)

if __name__ == "__main__":
    executor = ProcessPoolExecutor(2, mp_context=procly.get_context({method!r}))
    for i in range(4):
        executor.submit(executor_targets.print_later, 0.3, f"finished {{i}}")
"""


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pending_work_is_finished_at_exit(method, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(_EXIT_SCRIPT.format(method=method))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(procly.__file__)), root]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("finished")) == [f"finished {i}" for i in range(4)]
    assert "refused: cannot schedule new futures after interpreter shutdown" in lines
    assert "too late" not in lines


def test_submit_after_shutdown_raises(ctx):
    executor = ProcessPoolExecutor(1, mp_context=ctx)
    executor.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(targets.square, 1)
    executor.shutdown(wait=True)


@pytest.mark.timeout(90)
def test_map_results_readable_after_shutdown(ctx):
    """Leaving the with block (shutdown(wait=True)) returns while map results are unread,
    and they are all readable afterwards."""
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        results = executor.map(targets.square, range(100))
        chunked = executor.map(targets.add, range(100), range(100), chunksize=7)
    assert list(results) == [x * x for x in range(100)]
    assert list(chunked) == [2 * x for x in range(100)]


class _CountingExecutor(ProcessPoolExecutor):
    submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_map_goes_through_submit_with_buffersize():
    with _CountingExecutor(2) as executor:
        assert list(executor.map(targets.square, range(10))) == [x * x for x in range(10)]
        assert executor.submitted == 10  # eager: one future per item
        executor.submitted = 0
        assert list(executor.map(targets.add, range(10), range(10), chunksize=4)) == [2 * x for x in range(10)]
        assert executor.submitted == 3  # one future per chunk
        executor.submitted = 0
        results = executor.map(targets.square, range(10), buffersize=3)
        assert executor.submitted == 3
        assert next(results) == 0
        assert executor.submitted == 4  # one more for each result read
        assert list(results) == [x * x for x in range(1, 10)]
        assert executor.submitted == 10
        endless = executor.map(targets.square, itertools.count(), buffersize=2)
        assert [next(endless) for _ in range(5)] == [0, 1, 4, 9, 16]
        endless.close()
        with pytest.raises(ValueError, match="buffersize"):
            executor.map(targets.square, range(3), buffersize=0)
        with pytest.raises(TypeError, match="buffersize"):
            executor.map(targets.square, range(3), buffersize="2")
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(targets.square, range(3), chunksize=0)


def test_map_timeout_counts_from_the_call():
    with ProcessPoolExecutor(3) as executor:
        results = executor.map(time.sleep, [0, 0, 30], timeout=5)
        assert next(results) is None and next(results) is None
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        executor.terminate_workers()  # the 30 s call need not finish


def test_closing_map_early_cancels_the_rest(ctx):
    runs = ctx.Array("i", 20, lock=False)
    executor = ProcessPoolExecutor(1, mp_context=ctx, initializer=targets.keep_run_counts, initargs=(runs,))
    try:
        results = executor.map(targets.counted_nap, range(20), [0.2] * 20)
        assert next(results) == 0
        results.close()
    finally:
        executor.shutdown(wait=True)
    assert runs[0] == 1 and sum(runs) < 20


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers(ctx, how):
    started, release = ctx.Event(), ctx.Event()
    executor = ProcessPoolExecutor(1, mp_context=ctx, initializer=executor_targets.keep_events,
                                   initargs=(started, release))  # fmt: skip
    running = executor.submit(executor_targets.signal_and_block)
    assert started.wait(30)
    pending = [executor.submit(targets.square, i) for i in range(5)]
    getattr(executor, how)()
    assert isinstance(running.exception(timeout=30), concurrent.futures.BrokenExecutor)
    # Those not sent to the worker yet are cancelled; one queued at the worker (as in
    # the standard library's call queue) was running: it fails like the running one.
    assert sum(f.cancelled() for f in pending) >= 3
    for future in pending:
        assert future.cancelled() or isinstance(future.exception(timeout=30), concurrent.futures.BrokenExecutor)
    with pytest.raises(RuntimeError):  # BrokenProcessPool, a RuntimeError as in the stdlib
        executor.submit(targets.square, 1)
    executor.shutdown(wait=True)
    assert executor._processes == {}


def test_constructor_follows_the_standard_library():
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ProcessPoolExecutor(0)
    with pytest.raises(ValueError, match="incompatible with the 'fork' start method"):
        ProcessPoolExecutor(1, mp_context=procly.get_context("fork"), max_tasks_per_child=2)
    with pytest.raises(TypeError, match="max_tasks_per_child"):
        ProcessPoolExecutor(1, max_tasks_per_child="2")
    with ProcessPoolExecutor(1, max_tasks_per_child=2) as executor:
        assert executor._mp_context.get_start_method() == "spawn"


def test_workers_start_on_demand_except_under_fork(ctx):
    """As the standard library's executor: under spawn and forkserver a worker starts for
    each task outstanding that no worker has yet, up to max_workers, and is there when
    submit() returns; under fork all start at once."""
    on_demand = ctx.get_start_method() != "fork"
    started, release = ctx.Event(), ctx.Event()
    with ProcessPoolExecutor(3, mp_context=ctx, initializer=executor_targets.keep_events,
                             initargs=(started, release)) as executor:  # fmt: skip
        assert len(executor._processes) == (0 if on_demand else 3)
        for i in range(3):  # one at a time: one worker does them all
            assert executor.submit(targets.square, i).result(timeout=30) == i * i
        assert len(executor._processes) == (1 if on_demand else 3)
        blocked = [executor.submit(executor_targets.signal_and_block) for _ in range(5)]
        assert len(executor._processes) == 3  # never more than max_workers
        release.set()
        assert all(future.result(timeout=30) for future in blocked)
        assert len(executor._processes) == 3


def test_worker_processes_stay_joinable_after_shutdown(ctx):
    """The Process objects of ``_processes`` can still be joined after shutdown (the pool
    releases their descriptors without closing them)."""
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        assert list(executor.map(abs, range(-3, 3))) == [3, 2, 1, 0, 1, 2]
        processes = executor._processes
    assert processes
    for process in processes.values():
        process.join()
        assert process.exitcode == 0 and not process.is_alive()
        with pytest.raises(ValueError, match="sentinel was released"):
            process.sentinel  # noqa: B018 - the descriptor is gone, and the error says so


def test_on_demand_start_that_fails_is_retried(monkeypatch):
    """Under spawn, a worker start that fails in submit() is tried again by the supervisor,
    and the task still runs."""
    ctx = procly.get_context("spawn")
    executor = ProcessPoolExecutor(2, mp_context=ctx)
    try:
        pool = executor._pool
        real = pool._spawn_worker
        failures = iter([True])

        def flaky() -> None:
            if next(failures, False):
                raise OSError("no memory for a new process")
            real()

        monkeypatch.setattr(pool, "_spawn_worker", flaky)
        assert executor.submit(targets.square, 7).result(timeout=60) == 49
        assert len(executor._processes) == 1
    finally:
        executor.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_failing_starts_never_settle_futures_inside_submit(monkeypatch):
    """On demand, starts that keep failing fail the queued calls from the supervisor, not
    from the submit() whose start failed: a done-callback that shuts the executor down
    must not deadlock the submitting thread."""
    executor = ProcessPoolExecutor(2, mp_context=procly.get_context("spawn"))
    supervision = executor._pool._supervision
    monkeypatch.setattr(executor._pool, "_spawn_worker", raising(OSError("no memory for a new process (simulated)")))
    first = executor.submit(targets.square, 1)
    assert wait_until(lambda: supervision._start_failures >= 2, timeout=30)

    def shut_down(_future) -> None:
        try:
            executor.shutdown(wait=True)
        except RuntimeError:  # run by the supervisor thread, which cannot join itself
            executor.shutdown(wait=False)

    first.add_done_callback(shut_down)
    second = executor.submit(targets.square, 2)  # its start fails once more, in this thread
    for future in (first, second):
        assert isinstance(future.exception(timeout=30), (procly.StartError, procly.PoolTerminatedError))
    executor.shutdown(wait=True)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_submit_racing_shutdown_settles_its_future(method):
    """A call still being pickled in submit() while another thread shuts the executor down
    gets a settled future (run, or failed), never one left pending."""
    executor = ProcessPoolExecutor(2, mp_context=procly.get_context(method))
    assert executor.submit(targets.square, 3).result(timeout=30) == 9
    pickling, release = threading.Event(), threading.Event()
    box: dict[str, object] = {}

    class SlowToPickle:
        def __reduce__(self):
            pickling.set()
            release.wait(30)
            return (int, (7,))

    def submit() -> None:
        try:
            box["future"] = executor.submit(targets.square, SlowToPickle())
        except RuntimeError as exc:
            box["error"] = exc

    thread = threading.Thread(target=submit)
    thread.start()
    assert pickling.wait(30)
    shutdown = threading.Thread(target=executor.shutdown, kwargs={"wait": True})
    shutdown.start()
    assert wait_until(lambda: executor._pool._supervision.finished, timeout=30)
    release.set()
    thread.join(30)
    shutdown.join(30)
    assert not shutdown.is_alive()
    if "future" in box:
        future = box["future"]
        assert isinstance(future, concurrent.futures.Future)
        error = future.exception(timeout=30)
        assert error is None or isinstance(error, procly.PoolTerminatedError)


def test_a_caller_waiting_in_result_reads_its_reply_and_done_callbacks_stay_in_the_pools_thread(
    ctx, monkeypatch, long_serving
):
    """result() and exception() read the call's reply in the waiting thread, as
    AsyncResult.get() does; a future with done-callbacks is left to the pool's thread,
    where they run, as with the standard library's executor."""
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        executor.submit(targets.square, 2).result(timeout=30)
        threads = record_settling_threads(executor._pool._supervision, monkeypatch)
        assert [executor.submit(targets.nap_then_square, i, NAP).result() for i in range(10)] == [
            i * i for i in range(10)
        ]
        assert threading.current_thread() in threads
        failing = executor.submit(targets.raise_value_error, 3)
        assert isinstance(failing.exception(timeout=30), ValueError)
        called_in = []
        future = executor.submit(targets.nap_then_square, 5, NAP)
        future.add_done_callback(lambda done: called_in.append(threading.current_thread()))
        assert future.result(timeout=30) == 25
        assert wait_until(lambda: called_in)
        assert called_in[0] is not threading.current_thread()
        with pytest.raises(concurrent.futures.TimeoutError):
            executor.submit(targets.nap_then_square, 6, 0.5).result(timeout=0)


class _ShutsDownWhilePickled:
    """An argument whose pickling, in the submitting thread, shuts the executor down from
    another thread: the submission then races a shutdown that completes first."""

    def __init__(self, executor):
        self.executor = executor

    def __reduce__(self):
        stopper = threading.Thread(target=self.executor.shutdown, kwargs={"wait": True})
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive()
        return (int, (7,))


def test_a_submit_that_loses_the_race_with_shutdown_raises_runtime_error():
    """concurrent.futures: submit() after shutdown() raises RuntimeError; one that began
    before and is overtaken by it raises too, instead of returning a failed future."""
    executor = ProcessPoolExecutor(1)
    assert executor.submit(targets.square, 2).result(timeout=30) == 4
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(targets.square, _ShutsDownWhilePickled(executor))
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(targets.square, 3)
