"""ThreadPool: the Pool API on threads (``multiprocessing.pool.ThreadPool``).

Nothing is pickled: arguments and results are passed by reference, so unpicklable
objects are fine, and tasks share the process's memory. It runs on
``concurrent.futures.ThreadPoolExecutor`` and returns the same result objects as
:class:`procly.pool.Pool`.

As in the standard library (whose ThreadPool subclasses Pool), the public calls are
written once: ThreadPool is a :class:`~procly._pool_api.PoolAPI`, the layer that builds
apply, map, starmap, imap and their async forms on an engine's ``apply_async``,
``_map_async`` and ``_imap``; this module is only that engine, on threads.
"""

from __future__ import annotations

import operator
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

from ._errors import PoolTerminatedError
from ._pool import IMAP_TASKS_AHEAD
from ._pool_api import PoolAPI, PoolState
from ._pool_results import ApplyResult, IMapIterator, LookAhead, MapResult, feed_lazily
from ._progress import Progress, wanted
from ._state import usable_cpus

__all__ = ["ThreadPool"]

_T = TypeVar("_T")


def _no_task_timeout(task_timeout: float | None) -> None:
    if task_timeout is not None:
        raise ValueError("a ThreadPool cannot stop a running task: task_timeout needs a process Pool")


def _close_when_done(result: IMapIterator[Any], meter: Progress) -> None:
    with result._cond:
        result._cond.wait_for(lambda: result._length is not None and meter.done >= result._length)
    meter.close()


class ThreadPool(PoolAPI):
    """A pool of worker threads with the Pool interface.

    Raises:
        ValueError: *processes* < 1.
    """

    def __init__(
        self, processes: int | None = None, initializer: Callable[..., Any] | None = None, initargs: Iterable[Any] = ()
    ) -> None:
        if processes is None:
            processes = usable_cpus()
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        self._processes = processes
        self._executor = ThreadPoolExecutor(processes, "ThreadPoolWorker", initializer, tuple(initargs))
        self._state = PoolState.RUNNING
        self._lock = threading.Lock()
        self._futures: set[Future[Any]] = set()
        self._feeders: list[threading.Thread] = []
        self._windows: list[LookAhead] = []  # imap look-ahead bounds: opened by join, stopped by terminate

    def _run(self, call: Callable[[], Any], sink: Callable[[bool, Any], None]) -> None:
        future = self._executor.submit(call)
        with self._lock:
            self._futures.add(future)

        def done(f: Future[Any]) -> None:
            with self._lock:
                self._futures.discard(f)
            if f.cancelled():
                sink(False, PoolTerminatedError("the pool was terminated"))
            elif f.exception() is not None:
                sink(False, f.exception())
            else:
                sink(True, f.result())

        future.add_done_callback(done)

    def apply_async(self, func: Callable[..., _T], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None,
                    callback: Callable[[_T], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None, *,
                    task_timeout: float | None = None, retries: int | None = None) -> ApplyResult[_T]:  # fmt: skip
        """Run ``func(*args, **kwds)`` in a worker thread; return an AsyncResult.

        *retries* is accepted for the Pool's signature (a thread never dies under its
        task, so nothing is re-run).

        Raises:
            ValueError: the pool is not running, or a *task_timeout* is given (a thread
                cannot be stopped).
        """
        self._check_running()
        _no_task_timeout(task_timeout)
        result: ApplyResult[_T] = ApplyResult(callback, error_callback)
        keywords = kwds or {}
        self._run(lambda: func(*args, **keywords), result._set)
        return result

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], star: bool, chunksize: int | None,
                   callback: Callable[[Any], Any] | None, error_callback: Callable[[BaseException], Any] | None,
                   task_timeout: float | None, retries: int | None, progress: bool | str = False,
                   on_result: Callable[[Any], Any] | None = None) -> MapResult[Any]:  # fmt: skip
        self._check_running()
        _no_task_timeout(task_timeout)
        items = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize = max(1, chunksize + bool(extra))
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        starts = list(range(0, len(items), chunksize))
        result: MapResult[Any] = MapResult(len(items), starts, callback, error_callback)
        meter = Progress(len(items), progress, on_result) if wanted(progress, on_result) else None
        for index, start in enumerate(starts):
            chunk = items[start : start + chunksize]

            def call(chunk: list[Any] = chunk) -> list[Any]:
                return [func(*item) for item in chunk] if star else [func(item) for item in chunk]

            def settle(ok: bool, values: Any, index: int = index) -> None:
                if meter is not None:
                    meter.settle(ok, values)
                result._set_chunk(index, ok, values)

            self._run(call, settle)
        return result

    def _imap(self, iterator_cls: type[IMapIterator[Any]], func: Callable[..., Any], iterable: Iterable[Any],
              chunksize: int | None, task_timeout: float | None, retries: int | None, progress: bool | str = False,
              on_result: Callable[[Any], Any] | None = None) -> IMapIterator[Any]:  # fmt: skip
        self._check_running()
        _no_task_timeout(task_timeout)
        chunksize = 1 if chunksize is None else chunksize
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        window = LookAhead(self._processes * IMAP_TASKS_AHEAD * chunksize)
        result = iterator_cls(on_consumed=window.give)
        iterator = iter(iterable)
        meter = Progress(operator.length_hint(iterator, 0) or None, progress, on_result) \
            if wanted(progress, on_result) else None  # fmt: skip

        def submit(start: int, chunk: list[Any], sink: Callable[[bool, Any], None]) -> None:
            def settle(ok: bool, values: Any) -> None:
                if ok and meter is not None:
                    meter.add(values)
                sink(ok, values)

            self._run(lambda: [func(x) for x in chunk], settle)

        def feed() -> None:
            feed_lazily(result, iterator, chunksize, window, submit)
            if meter is not None:
                meter.set_total(result._length or 0)
                threading.Thread(target=_close_when_done, args=(result, meter), daemon=True).start()

        feeder = threading.Thread(target=feed, name="procly-threadpool-feeder", daemon=True)
        self._feeders.append(feeder)
        self._windows.append(window)
        if self._state is PoolState.TERMINATED:
            window.stop()
        feeder.start()
        return result

    def close(self) -> None:
        """Accept no more work; the threads end once everything submitted is done."""
        if self._state is PoolState.RUNNING:
            self._state = PoolState.CLOSED

    def terminate(self) -> None:
        """Cancel what has not started and fail it; running tasks finish (threads cannot be killed)."""
        self._state = PoolState.TERMINATED
        for window in self._windows:
            window.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def join(self) -> None:
        """Wait for the threads to end (after close() or terminate()).

        Raises:
            ValueError: the pool is still running.
        """
        if self._state is PoolState.RUNNING:
            raise ValueError("Pool is still running")
        for window in self._windows:
            window.open()  # imap inputs are read to their end: results stay readable
        for feeder in self._feeders:
            feeder.join()
        self._executor.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"<procly.pool.ThreadPool state={self._state.value} pool_size={self._processes}>"
