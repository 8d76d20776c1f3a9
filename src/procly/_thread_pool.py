"""ThreadPool: the Pool API on threads (``multiprocessing.pool.ThreadPool``).

Nothing is pickled: arguments and results are passed by reference, so unpicklable
objects are fine, and tasks share the process's memory. It runs on
``concurrent.futures.ThreadPoolExecutor`` and returns the same result objects as
:class:`procly.pool.Pool`.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

from ._errors import PoolTerminatedError
from ._pool import IMAP_TASKS_AHEAD
from ._pool_api import PoolState
from ._pool_results import ApplyResult, IMapIterator, IMapUnorderedIterator, LookAhead, MapResult, feed_lazily
from ._state import usable_cpus

__all__ = ["ThreadPool"]

_S = TypeVar("_S")
_T = TypeVar("_T")


class ThreadPool:
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

    def _check_running(self) -> None:
        if self._state is not PoolState.RUNNING:
            raise ValueError("Pool not running")

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
                    error_callback: Callable[[BaseException], Any] | None = None) -> ApplyResult[_T]:  # fmt: skip
        """Run ``func(*args, **kwds)`` in a worker thread; return an AsyncResult."""
        self._check_running()
        result: ApplyResult[_T] = ApplyResult(callback, error_callback)
        keywords = kwds or {}
        self._run(lambda: func(*args, **keywords), result._set)
        return result

    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None) -> _T:
        """``apply_async(...).get()``."""
        return self.apply_async(func, args, kwds).get()

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], star: bool, chunksize: int | None,
                   callback: Callable[[Any], Any] | None,
                   error_callback: Callable[[BaseException], Any] | None) -> MapResult[Any]:  # fmt: skip
        self._check_running()
        items = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize = max(1, chunksize + bool(extra))
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        starts = list(range(0, len(items), chunksize))
        result: MapResult[Any] = MapResult(len(items), starts, callback, error_callback)
        for index, start in enumerate(starts):
            chunk = items[start : start + chunksize]

            def call(chunk: list[Any] = chunk) -> list[Any]:
                return [func(*item) for item in chunk] if star else [func(item) for item in chunk]

            def settle(ok: bool, values: Any, index: int = index) -> None:
                result._set_chunk(index, ok, values)

            self._run(call, settle)
        return result

    def map_async(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = None,
                  callback: Callable[[list[_T]], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None) -> MapResult[_T]:  # fmt: skip
        """Apply *func* to every item of *iterable*; return a MapResult at once."""
        return self._map_async(func, iterable, False, chunksize, callback, error_callback)

    def map(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = None) -> list[_T]:
        """``[func(x) for x in iterable]``, in order."""
        return self.map_async(func, iterable, chunksize).get()

    def starmap_async(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]], chunksize: int | None = None,
                      callback: Callable[[list[_T]], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None) -> MapResult[_T]:  # fmt: skip
        """Like map_async, calling ``func(*args)`` for each tuple of arguments."""
        return self._map_async(func, iterable, True, chunksize, callback, error_callback)

    def starmap(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[_T]:  # fmt: skip
        """``[func(*args) for args in iterable]``, in order."""
        return self.starmap_async(func, iterable, chunksize).get()

    def _imap(self, cls: type[IMapIterator[Any]], func: Callable[..., Any], iterable: Iterable[Any],
              chunksize: int) -> IMapIterator[Any]:  # fmt: skip
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        window = LookAhead(self._processes * IMAP_TASKS_AHEAD * chunksize)
        result = cls(on_consumed=window.give)

        def submit(start: int, chunk: list[Any], sink: Callable[[bool, Any], None]) -> None:
            self._run(lambda: [func(x) for x in chunk], sink)

        def feed() -> None:
            feed_lazily(result, iter(iterable), chunksize, window, submit)

        feeder = threading.Thread(target=feed, name="procly-threadpool-feeder", daemon=True)
        self._feeders.append(feeder)
        self._windows.append(window)
        if self._state is PoolState.TERMINATED:
            window.stop()
        feeder.start()
        return result

    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int = 1) -> IMapIterator[_T]:
        """Lazily map *func* over *iterable*; results in input order."""
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: int = 1) -> IMapIterator[_T]:  # fmt: skip
        """Lazily map *func* over *iterable*; results as they complete."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    def close(self) -> None:
        if self._state is PoolState.RUNNING:
            self._state = PoolState.CLOSED

    def terminate(self) -> None:
        """Cancel what has not started and fail it; running tasks finish (threads cannot be killed)."""
        self._state = PoolState.TERMINATED
        for window in self._windows:
            window.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def join(self) -> None:
        if self._state is PoolState.RUNNING:
            raise ValueError("Pool is still running")
        for window in self._windows:
            window.open()  # imap inputs are read to their end: results stay readable
        for feeder in self._feeders:
            feeder.join()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> ThreadPool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<procly.pool.ThreadPool state={self._state.value} pool_size={self._processes}>"
