"""ProcessPoolExecutor: ``concurrent.futures`` on procly's Pool engine.

Same crash, retry and timeout behaviour as :class:`procly.Pool`: a worker that dies
fails only its future with ``WorkerLostError``; ``task_timeout`` stops a task and fails
its future with ``TaskTimeoutError``. Usable with ``loop.run_in_executor``.
"""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import Executor, Future, InvalidStateError
from typing import Any, Callable, Iterable, Iterator, ParamSpec, TypeVar

from ._errors import TimeoutError
from ._pool import Pool

__all__ = ["ProcessPoolExecutor"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _star(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(*args)


class ProcessPoolExecutor(Executor):
    """A ``concurrent.futures.Executor`` running calls in procly worker processes.

    Raises:
        ValueError: *max_workers* < 1 or *max_tasks_per_child* not positive.
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
        self._adopt(Pool(
            max_workers, initializer, initargs, max_tasks_per_child, mp_context,
            task_timeout=task_timeout, retries=retries, max_memory_per_child=max_memory_per_child,
        ))  # fmt: skip

    def _adopt(self, pool: Any) -> None:
        """Run on ``pool`` (anything with procly's Pool API: the local one or the Dask one)."""
        self._pool = pool
        self._shutdown = False
        self._lock = threading.Lock()
        self._futures: set[Future[Any]] = set()

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; return its Future.

        Raises:
            RuntimeError: the executor was shut down.
            procly.PicklingError: *fn* or the arguments cannot be pickled.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[_T] = Future()
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
            try:
                if success:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            except InvalidStateError:
                pass  # cancelled while it waited, and the pool ended before dropping it

        try:
            self._schedule(fn, args, kwargs, claim, settle)
        except BaseException:
            with self._lock:
                self._futures.discard(future)
            raise
        return future

    def _schedule(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                  claim: Callable[[], bool], settle: Callable[[bool, Any], None]) -> None:  # fmt: skip
        """Hand a call to the pool: *claim()* as it goes to a worker, *settle* with its outcome."""
        self._pool._call(fn, args, kwargs, settle, claim=claim)

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[_T]:  # fmt: skip
        """Like the builtin ``map``, computed in workers, in order.

        Raises (while iterating):
            TimeoutError: a result was not ready *timeout* seconds after the call.
            Exception: the first exception a call raised.
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        deadline = None if timeout is None else time.monotonic() + timeout
        arguments = zip(*iterables, strict=False)  # like map(): the shortest iterable wins
        results = self._pool.imap(functools.partial(_star, fn), arguments, chunksize)

        def generate() -> Iterator[Any]:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    yield results.next(remaining)
                except StopIteration:
                    return
                except TimeoutError:
                    raise TimeoutError(f"map results not ready within {timeout} seconds") from None

        return generate()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; with *cancel_futures*, the futures whose calls have not gone to a
        worker yet are cancelled (those calls never run); with *wait*, wait for the
        workers to exit."""
        with self._lock:
            self._shutdown = True
            pending = list(self._futures) if cancel_futures else []
        for future in pending:
            future.cancel()
        self._pool.close()
        if wait:
            self._pool.join()
