"""ProcessPoolExecutor: ``concurrent.futures`` on procly's Pool engine.

The ``concurrent.futures`` contract of the standard library's executor, with the Pool's
crash, retry and timeout behaviour:

* a worker that dies fails only the future of the call it was running, with
  ``WorkerLostError`` (a ``BrokenProcessPool``, so a ``concurrent.futures.BrokenExecutor``);
  the executor replaces the worker and goes on (the standard library breaks the whole
  executor instead);
* an initializer that raises breaks the executor: what is outstanding fails with
  ``BrokenProcessPool`` and later ``submit()`` raises it;
* ``submit()`` itself raises only for a shut down or broken executor: an argument that
  does not pickle, or a task or result that does not unpickle, fails that future;
* calls still pending at interpreter exit are finished first, as the standard library does;
* ``map()`` submits each call (or chunk) as its own future, with the standard library's
  ``timeout``, and ``buffersize`` (Python 3.14) on every Python;
* ``task_timeout`` stops a call and fails its future with ``TaskTimeoutError``.

Usable with ``loop.run_in_executor``.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import threading
import time
import weakref
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Any, Callable, Iterable, Iterator, ParamSpec, TypeVar

from ._errors import BrokenProcessPool
from ._pool import Pool
from ._pool_results import serve_first

__all__ = ["BrokenProcessPool", "ProcessPoolExecutor"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Executors' pools alive in this process, finished at interpreter exit before procly
# ends its children (a closed pool stays here until its work is done: it is kept alive
# by its supervisor thread meanwhile).
_pools: weakref.WeakSet[Any] = weakref.WeakSet()
_exiting = False
_exit_hook_pid: int | None = None
_exit_hook_lock = threading.Lock()


def _python_exit() -> None:
    """Interpreter exit (before atexit handlers): no new work, finish what was submitted."""
    global _exiting
    _exiting = True
    if _exit_hook_pid != os.getpid():
        return  # inherited by a forked child: those pools are the parent's
    pools = list(_pools)
    for pool in pools:
        pool.close()
    for pool in pools:
        pool.join()


def _register_exit_hook() -> None:
    global _exit_hook_pid
    with _exit_hook_lock:
        if _exit_hook_pid == os.getpid():
            return
        _exit_hook_pid = os.getpid()
        register = getattr(threading, "_register_atexit", None)
        try:
            if register is not None:
                # Runs before threads are joined and before atexit handlers (procly's own
                # exit handler ends pools): the standard library's executor uses it too.
                register(_python_exit)
            else:  # pragma: no cover - every supported Python has it
                import atexit

                atexit.register(_python_exit)
        except RuntimeError:
            pass  # the interpreter is already shutting down: submit() refuses anyway


def _process_chunk(fn: Callable[..., Any], chunk: tuple[Any, ...]) -> list[Any]:
    """Run *fn* over a chunk of argument tuples in a worker (map with chunksize > 1)."""
    return [fn(*args) for args in chunk]


def _batched(iterable: Iterator[tuple[Any, ...]], n: int) -> Iterator[tuple[Any, ...]]:
    while chunk := tuple(itertools.islice(iterable, n)):
        yield chunk


class _Future(Future[_T]):
    """The executor's futures: ``result()`` and ``exception()`` may read the call's reply
    in the waiting thread first (see ``Supervisor.serve_reply``), as ``AsyncResult.get()``
    does; not while done-callbacks wait, which run in the pool's thread."""

    _serve: Callable[[float], Any] | None = None  # set by the executor

    def _served(self, timeout: float | None) -> float | None:
        waiting_callbacks = bool(self._done_callbacks)  # type: ignore[attr-defined]
        return serve_first(self._serve, self.done() or waiting_callbacks, timeout)

    def result(self, timeout: float | None = None) -> _T:
        return super().result(self._served(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._served(timeout))


def _result_or_cancel(future: Future[Any], timeout: float | None = None) -> Any:
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future  # no reference to the future (and its result) stays in this frame


class ProcessPoolExecutor(Executor):
    """A ``concurrent.futures.Executor`` running calls in procly worker processes.

    Args:
        max_workers: worker processes (default: the usable CPUs). Under spawn and
            forkserver they start on demand, one for each call outstanding that no worker
            has yet (as in the standard library); under fork, all at once.
        mp_context: a procly context (start method); ``None``: the default one, or spawn
            when *max_tasks_per_child* is given (as the standard library does).
        initializer: called with *initargs* in each worker first; if it raises, the
            executor breaks.
        initargs: the arguments of *initializer*.
        max_tasks_per_child: a worker is replaced after this many calls (not with fork).
        task_timeout: seconds a call may run; then its worker is stopped and replaced
            and its future fails with ``TaskTimeoutError``.
        retries: re-runs of a call whose worker died, before its future fails.
        max_memory_per_child: bytes of resident memory after which a worker is replaced.

    Raises:
        ValueError: *max_workers* < 1, *max_tasks_per_child* < 1, or
            *max_tasks_per_child* with a fork context.
        TypeError: *max_tasks_per_child* is not an int, *initializer* not callable.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        max_memory_per_child: int | None = None,
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if mp_context is None:
            from .context import _default_context

            # Like the standard library: a worker replaced later is started from the
            # supervisor thread, which fork would copy mid-flight.
            mp_context = _default_context.get_context("spawn" if max_tasks_per_child is not None else None)
        elif max_tasks_per_child is not None and mp_context.get_start_method(allow_none=False) == "fork":
            raise ValueError("max_tasks_per_child is incompatible with the 'fork' start method")
        self._mp_context = mp_context
        self._adopt(Pool(
            max_workers, initializer, initargs, max_tasks_per_child, mp_context,
            task_timeout=task_timeout, retries=retries, max_memory_per_child=max_memory_per_child,
            _executor=True,
        ))  # fmt: skip

    def _adopt(self, pool: Any) -> None:
        """Run on ``pool`` (anything with procly's Pool API: the local one or the Dask one)."""
        self._pool = pool
        self._max_workers = getattr(pool, "_processes", None)
        self._shutdown = False
        self._lock = threading.Lock()
        self._futures: set[Future[Any]] = set()
        _register_exit_hook()
        _pools.add(pool)
        # Dropped without shutdown(): no new work, what was submitted still runs (its
        # futures and map iterators stay usable), the workers exit after it.
        weakref.finalize(self, pool.close).atexit = False

    @property
    def _broken(self) -> str | bool:
        """Why the executor is broken (its initializer failed, its workers were ended), or False."""
        return getattr(self._pool, "_broken", None) or False

    @property
    def _processes(self) -> dict[int, Any]:
        """The live worker processes by pid (the standard library's attribute)."""
        return {process.pid: process for process in getattr(self._pool, "_pool", [])}

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:
        """The pool's supervisor thread (the standard library's attribute: ends after shutdown)."""
        return getattr(self._pool, "_supervisor", None)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; return its Future.

        A call that cannot be sent (*fn* or an argument does not pickle) fails its future
        with the error (``procly.PicklingError``, also ``pickle.PicklingError``).

        Raises:
            BrokenProcessPool: the executor is broken (its initializer failed).
            RuntimeError: the executor was shut down, or the interpreter is exiting.
        """
        with self._lock:
            self._refuse_if_closed()
            future: _Future[_T] = _Future()
            self._futures.add(future)

        def claim() -> bool:
            # Running from the moment it goes to a worker (again, after a lost worker):
            # a future cancelled before then never runs.
            if future.running() or future.set_running_or_notify_cancel():
                return True
            with self._lock:
                self._futures.discard(future)
            return False

        def settle(success: bool, value: Any) -> None:
            with self._lock:
                self._futures.discard(future)
            future._serve = None  # nothing left to read (and the task may go)
            try:
                if success:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            except InvalidStateError:
                pass  # cancelled while it waited, and the pool ended before dropping it

        try:
            serve = self._schedule(fn, args, kwargs, claim, settle, future.done)
        except Exception as exc:  # noqa: BLE001 - the call's own failure: its future's
            self._not_scheduled(future, settle, exc)
        else:
            if serve is not None and not future.done():
                future._serve = serve
        return future

    def _refuse_if_closed(self) -> None:
        """Raise when no new call may be submitted (called under ``self._lock``).

        Raises:
            BrokenProcessPool: the executor is broken.
            RuntimeError: it was shut down, or the interpreter is exiting.
        """
        broken = self._broken
        if broken:
            raise BrokenProcessPool(broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _not_scheduled(self, future: Future[Any], settle: Callable[[bool, Any], None], exc: Exception) -> None:
        """A call the pool did not take (*exc*): its *future* fails with the reason.

        Raises:
            RuntimeError: the executor was shut down meanwhile (the future is forgotten).
        """
        broken = self._broken
        if broken:
            settle(False, BrokenProcessPool(broken))
        elif self._shutdown or _exiting:
            with self._lock:
                self._futures.discard(future)
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        else:
            settle(False, exc)

    def _schedule(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                  claim: Callable[[], bool], settle: Callable[[bool, Any], None],
                  ready: Callable[[], bool]) -> Callable[[float], Any] | None:  # fmt: skip
        """Hand a call to the pool: *claim()* as it goes to a worker, *settle* with its
        outcome; return what reads its reply in a waiting thread (or None), given
        *ready()*, whether its future is done."""
        pool = self._pool
        assert isinstance(pool, Pool)  # the Dask executor schedules in its own _schedule
        return pool._call(fn, args, kwargs, settle, claim=claim, ready=ready)

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[_T]:  # fmt: skip
        """Like the builtin ``map``, each call (or chunk of *chunksize* calls) submitted
        as a future; results in order.

        All calls are submitted at once, or with *buffersize* at most that many futures
        ahead of the results read (more are submitted as results are read). Closing the
        iterator early cancels the calls not started.

        Raises:
            ValueError: *chunksize* < 1 or *buffersize* < 1.
            TypeError: *buffersize* is not an int.
            RuntimeError / BrokenProcessPool: as submit().
            (while iterating) TimeoutError: a result was not ready *timeout* seconds after
                the call to map(); Exception: the exception a call raised.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else time.monotonic() + timeout
        arguments: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)  # the shortest wins, as in map()
        call: Callable[..., Any] = fn
        if chunksize > 1:
            arguments = ((chunk,) for chunk in _batched(arguments, chunksize))
            call = functools.partial(_process_chunk, fn)  # one function for every chunk: pickled once
        if buffersize:
            futures = collections.deque(self.submit(call, *args) for args in itertools.islice(arguments, buffersize))
        else:
            futures = collections.deque(self.submit(call, *args) for args in arguments)
        # Weak: the iterator must not keep the executor alive.
        executor_ref = weakref.ref(self)
        results = _map_results(futures, arguments if buffersize else None, call, executor_ref, end_time)
        return _chain(results) if chunksize > 1 else results

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; with *cancel_futures*, the futures whose calls have not gone to a
        worker yet are cancelled (those calls never run); with *wait*, wait until every
        call submitted has ended and the workers have exited.

        Futures (and ``map()`` iterators) stay readable afterwards.
        """
        with self._lock:
            self._shutdown = True
            pending = list(self._futures) if cancel_futures else []
        for future in pending:
            future.cancel()
        self._pool.close()
        if wait:
            self._pool.join()

    def terminate_workers(self) -> None:
        """End every worker now with SIGTERM (Python 3.14's method).

        Like ``shutdown(wait=False, cancel_futures=True)``, then the workers are ended:
        futures not started are cancelled, those running fail with
        ``BrokenProcessPool``, and the executor takes no more work (``submit`` raises
        ``RuntimeError``).
        """
        self._force_shutdown(kill=False)

    def kill_workers(self) -> None:
        """End every worker now with SIGKILL (Python 3.14's method); otherwise as
        :meth:`terminate_workers`."""
        self._force_shutdown(kill=True)

    def _force_shutdown(self, kill: bool) -> None:
        self.shutdown(wait=False, cancel_futures=True)
        pool = self._pool
        if not isinstance(pool, Pool):  # the Dask pool
            pool.terminate()
            return
        if pool._broken is None:
            pool._broken = f"the executor's workers were {'killed' if kill else 'terminated'}"
        pool._terminate(kill=kill)


def _map_results(futures: collections.deque[Future[Any]], arguments: Iterator[tuple[Any, ...]] | None,
                 fn: Callable[..., Any], executor_ref: weakref.ref[Any],
                 end_time: float | None) -> Iterator[Any]:  # fmt: skip
    """map()'s iterator: results in order; with *arguments* (buffersize), one more call
    submitted for each result read."""
    try:
        futures.reverse()  # popped from the right, in order; new ones go in on the left
        while futures:
            if arguments is not None and (executor := executor_ref()) is not None:
                args = next(arguments, None)
                if args is not None:
                    futures.appendleft(executor.submit(fn, *args))
                del executor
            # No local keeps the future or its result while the caller holds the value.
            if end_time is None:
                yield _result_or_cancel(futures.pop())
            else:
                yield _result_or_cancel(futures.pop(), end_time - time.monotonic())
    finally:
        for future in futures:
            future.cancel()


def _chain(chunks: Iterator[list[Any]]) -> Iterator[Any]:
    """Flatten map's chunk results, letting go of each value as it is handed out."""
    try:
        for chunk in chunks:
            chunk.reverse()
            while chunk:
                yield chunk.pop()
    finally:
        chunks.close()  # type: ignore[attr-defined]  # cancels the calls not started
