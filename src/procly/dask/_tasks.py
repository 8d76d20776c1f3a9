"""What runs on the Dask workers: procly's task wrappers and the initializer plugin.

These are imported by reference on the workers, so procly must be installed there
(the user's functions travel with cloudpickle, as Dask does it).

A wrapper returns ``("ok", values)``; with a task timeout it runs the calls in a helper
thread and returns ``("timeout", index, worker_address)`` when one overruns, leaving
the helper thread stuck in the user's code: the pool then restarts that worker, which
is what really stops the call. An exception raised by the user's code propagates, so
Dask delivers it with its own type and traceback.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from .. import _serialization


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:  # pragma: no cover - not in a worker (tests calling directly)
        return "?"


def _run(calls: list[Callable[[], Any]], timeout: float | None) -> tuple[Any, ...]:
    if timeout is None:
        return ("ok", [call() for call in calls])
    results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    def runner() -> None:
        for call in calls:
            try:
                results.put((True, call()))
            except BaseException as exc:  # noqa: BLE001 - handed to the task thread, which raises it
                results.put((False, exc))
                return

    threading.Thread(target=runner, name="procly-dask-task", daemon=True).start()
    values = []
    for index in range(len(calls)):
        try:
            success, value = results.get(timeout=timeout)
        except queue.Empty:
            return ("timeout", index, _worker_address())
        if not success:
            raise value
        values.append(value)
    return ("ok", values)


def run_call(function: bytes, args: tuple[Any, ...], kwds: dict[str, Any], timeout: float | None) -> tuple[Any, ...]:
    """One ``apply`` call; ``function`` is pickled by procly's serializer."""
    func = _serialization.loads(function)
    return _run([lambda: func(*args, **kwds)], timeout)


def run_chunk(function: bytes, items: list[Any], star: bool, timeout: float | None) -> tuple[Any, ...]:
    """One chunk of a map-like call; ``timeout`` applies to each item."""
    func = _serialization.loads(function)
    if star:
        return _run([functools.partial(func, *item) for item in items], timeout)
    return _run([functools.partial(func, item) for item in items], timeout)


class InitializerPlugin(WorkerPlugin):
    """Runs the Pool's ``initializer(*initargs)`` once on every worker, present and future."""

    def __init__(self, initializer: Callable[..., Any], initargs: tuple[Any, ...]) -> None:
        self.initializer = initializer
        self.initargs = initargs

    def setup(self, worker: Any) -> None:
        self.initializer(*self.initargs)
