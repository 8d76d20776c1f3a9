"""procly's Pool API on a Dask cluster.

Every call is submitted impure (a fresh key per task: Dask never merges two calls of
``random.random``), map-like calls go in chunks (a Dask task costs about a
millisecond), arguments holding big buffers are scattered once per call and shared by
every task that uses them, and outcomes come back through the same result objects as
the local Pool's (``ApplyResult``, ``MapResult``, the imap iterators).

Failure mapping:

- an exception raised by the task arrives with its own type and Dask's remote traceback;
- a worker that dies: Dask reschedules the task itself up to its
  ``distributed.scheduler.allowed-failures``; when Dask gives up (``KilledWorker``)
  procly resubmits it ``retries`` times, then fails it with ``WorkerLostError``;
- ``task_timeout``: the task stops waiting for an overrunning call, fails it with
  ``TaskTimeoutError`` and the pool restarts that worker through its nanny, which is
  what really stops the call (a worker without a nanny cannot be restarted: the call
  then runs on, its result dropped);
- ``get(timeout)`` raises ``procly.TimeoutError``.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import cloudpickle
from distributed import Client, LocalCluster
from distributed.scheduler import KilledWorker

from .. import _serialization
from .._errors import PicklingError, PoolTerminatedError, TaskTimeoutError, WorkerLostError
from .._pool_api import PoolAPI, PoolState
from .._pool_results import ApplyResult, IMapIterator, LookAhead, MapResult, feed_lazily
from .._progress import Progress, wanted
from . import _tasks

_T = TypeVar("_T")

__all__ = ["Pool"]

#: Arguments whose buffers are at least this big are scattered once instead of sent with each task.
SCATTER_BYTES = 1 << 20
#: imap look-ahead, in chunks per worker thread.
IMAP_CHUNKS_PER_WORKER = 4

_log = logging.getLogger("procly.dask")


def _buffer_size(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    nbytes = getattr(value, "nbytes", None)  # numpy, and what quacks like it
    return nbytes if isinstance(nbytes, int) else 0


def _unpicklable(objects: Iterable[Any]) -> str:
    """Name the first object cloudpickle refuses (called only once a submit has failed)."""
    for obj in objects:
        try:
            cloudpickle.dumps(obj)
        except Exception as exc:  # noqa: BLE001 - any refusal is the answer
            return f"{type(obj).__name__} object {obj!r:.80}: {exc}"
    return "an object of the call"


class Pool(PoolAPI):
    """A Pool whose workers are a Dask cluster's.

    Give ``client`` (a ``distributed.Client``, left open at the end), or ``address``
    (``"tcp://host:8786"``: procly opens a client and closes it at the end, never the
    cluster), or neither: procly starts a ``LocalCluster`` of ``processes`` worker
    processes (one thread each) and shuts it down fully when the pool ends.

    Raises:
        ValueError: ``maxtasksperchild`` is given (Dask owns its workers' lifetimes), or
            ``processes`` < 1.
        OSError / TimeoutError: the scheduler at ``address`` cannot be reached.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        client: Client | None = None,
        address: str | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        cluster_options: dict[str, Any] | None = None,
    ) -> None:
        if maxtasksperchild is not None:
            raise ValueError("maxtasksperchild cannot be honoured on Dask: the cluster owns its workers")
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if client is not None and address is not None:
            raise ValueError("give a client or an address, not both")
        self._task_timeout = task_timeout
        self._retries = retries
        self._state = PoolState.RUNNING
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: dict[str, Any] = {}
        self._active_feeds = 0
        self._windows: set[LookAhead] = set()  # imap look-ahead bounds: opened by join, stopped by terminate
        self._cluster: LocalCluster | None = None
        self._owns_client = client is None
        if client is None:
            if address is None:
                options = {
                    "n_workers": processes or len(os.sched_getaffinity(0)) or 1,
                    "threads_per_worker": 1,
                    "processes": True,
                    "host": "127.0.0.1",
                    "dashboard_address": "127.0.0.1:0",
                    "silence_logs": logging.ERROR,
                }
                options.update(cluster_options or {})
                self._cluster = LocalCluster(**options)
                client = Client(self._cluster, set_as_default=False)
            else:
                client = Client(address, set_as_default=False)
        self._client = client
        self._processes = processes
        self._plugin_name: str | None = None
        if initializer is not None:
            self._plugin_name = f"procly-initializer-{uuid.uuid4().hex}"
            plugin = _tasks.InitializerPlugin(initializer, tuple(initargs))
            client.register_plugin(plugin, name=self._plugin_name)

    # -- what users see ------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The ``distributed.Client`` the pool submits through."""
        return self._client

    def apply_async(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[_T], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        *,
        task_timeout: float | None = None,
        retries: int | None = None,
    ) -> ApplyResult[_T]:
        """Submit ``func(*args, **kwds)``; return its AsyncResult.

        Raises:
            ValueError: the pool is closed or terminated.
            procly.PicklingError: the function or an argument cannot be pickled.
        """
        self._check_running()
        result: ApplyResult[_T] = ApplyResult(callback, error_callback)
        cache: dict[int, Any] = {}
        shipped = self._ship_function(func, cache)
        args = tuple(self._scatter(arg, cache) for arg in args)
        kwds = {name: self._scatter(value, cache) for name, value in (kwds or {}).items()}
        timeout = self._task_timeout if task_timeout is None else task_timeout

        def sink(success: bool, values: Any) -> None:
            result._set(success, values[0] if success else values)

        self._submit(
            _tasks.run_call, (shipped, args, kwds, timeout), sink, self._retries_for(retries), _name(func), timeout
        )
        return result

    def close(self) -> None:
        """No new work; :meth:`join` then waits for what was submitted."""
        with self._lock:
            if self._state is PoolState.RUNNING:
                self._state = PoolState.CLOSED

    def terminate(self) -> None:
        """Cancel every unfinished task (their results fail with PoolTerminatedError) and release the cluster.

        A cluster the pool started is shut down (which stops running calls); on a cluster
        it did not start, calls already running finish on their workers, their results dropped.
        Idempotent.
        """
        with self._lock:
            if self._state is PoolState.TERMINATED and self._client is None:
                return
            self._state = PoolState.TERMINATED
            pending = list(self._pending.values())
            for window in self._windows:
                window.stop()
        if pending and self._client is not None:
            try:
                self._client.cancel(pending, force=True)
            except Exception as exc:  # noqa: BLE001 - a scheduler already gone has nothing to cancel
                _log.debug("cancelling on terminate failed: %s", exc)
        with self._lock:
            self._idle.wait_for(lambda: not self._pending, timeout=10)
        self._release()

    def join(self) -> None:
        """Wait until every submitted task has finished, then release the cluster.

        Raises:
            ValueError: the pool is still running (call close() or terminate() first).
        """
        if self._state is PoolState.RUNNING:
            raise ValueError("Pool is still running")
        with self._lock:
            for window in self._windows:
                window.open()  # imap inputs are read to their end: results stay readable
            self._idle.wait_for(lambda: not self._pending and not self._active_feeds)
        self._release()

    def __repr__(self) -> str:
        where = "local cluster" if self._cluster is not None else getattr(self._client, "scheduler", None)
        return f"<procly.dask.Pool state={self._state.value} on {where}>"

    # -- machinery -----------------------------------------------------------------------

    def _retries_for(self, retries: int | None) -> int:
        return self._retries if retries is None else retries

    def _workers(self) -> int:
        try:
            return max(1, sum(self._client.nthreads().values()))
        except Exception:  # noqa: BLE001 - fall back to the size asked for
            return self._processes or 1

    def _ship_function(self, func: Callable[..., Any], cache: dict[int, Any]) -> Any:
        """The function pickled by procly's rules, scattered once if big (a closure over data).

        procly's pickler, not Dask's: ``random.random`` then travels by reference, so each
        worker draws from its own generator instead of a copy of ours.
        """
        try:
            # By value for __main__: Dask workers do not run the caller's main script.
            payload = _serialization.dumps(func, main_by_reference=False)
        except PicklingError as exc:
            raise PicklingError(f"cannot pickle the function: {exc}") from exc
        if len(payload) < SCATTER_BYTES:
            return payload
        return self._scatter(payload, cache)

    def _scatter(self, value: Any, cache: dict[int, Any], force: bool = False) -> Any:
        if not force and _buffer_size(value) < SCATTER_BYTES:
            return value
        key = id(value)
        if key not in cache:
            # Keep the object with its future: its id must stay unique while the call is submitted.
            cache[key] = (value, self._client.scatter(value, hash=False))
        return cache[key][1]

    def _submit(
        self,
        wrapper: Callable[..., Any],
        args: tuple[Any, ...],
        sink: Callable[[bool, Any], None],
        retries: int,
        label: str,
        timeout: float | None,
    ) -> None:
        key = f"{label}-{uuid.uuid4().hex}"  # a fresh key: the call is impure, never merged or cached
        try:
            future = self._client.submit(wrapper, *args, key=key, pure=False)
        except TypeError as exc:
            # Dask pickles at submit time and says "Could not serialize object of type ...": name the culprit.
            raise PicklingError(f"cannot pickle an argument of {label}: {_unpicklable(_flatten(args))}") from exc
        with self._lock:
            self._pending[key] = future
        future.add_done_callback(lambda done: self._settle(done, wrapper, args, sink, retries, label, timeout))

    def _settle(
        self,
        future: Any,
        wrapper: Callable[..., Any],
        args: tuple[Any, ...],
        sink: Callable[[bool, Any], None],
        retries: int,
        label: str,
        timeout: float | None,
    ) -> None:
        """A future finished (in Dask's callback thread): turn its outcome into procly's."""
        resubmitted = False
        try:
            status = future.status
            if status == "finished":
                outcome = future.result()
                if outcome[0] == "ok":
                    sink(True, outcome[1])
                else:
                    _, index, address = outcome
                    self._restart_worker(address)
                    sink(
                        False,
                        TaskTimeoutError(
                            f"{label}: item {index} of the task ran longer than {timeout} s on Dask worker {address}; "
                            "the worker is being restarted to stop it"
                        ),
                    )
            elif status == "cancelled" or self._state is PoolState.TERMINATED:
                sink(False, PoolTerminatedError(f"{label}: the pool was terminated before the task finished"))
            else:
                exc = future.exception()
                if isinstance(exc, KilledWorker):
                    if retries > 0 and self._state is not PoolState.TERMINATED:  # type: ignore[comparison-overlap]
                        self._submit(wrapper, args, sink, retries - 1, label, timeout)
                        resubmitted = True
                    else:
                        sink(
                            False,
                            WorkerLostError(
                                f"{label}: the Dask workers that ran it died and Dask gave up on it ({exc}); "
                                "procly's retries are spent"
                            ),
                        )
                else:
                    sink(False, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the scheduler vanished while fetching: fail the task
            sink(False, exc)
        finally:
            with self._lock:
                if not resubmitted or self._pending.get(future.key) is future:
                    self._pending.pop(future.key, None)
                self._idle.notify_all()

    def _restart_worker(self, address: str) -> None:
        def restart() -> None:
            try:
                self._client.restart_workers([address], raise_for_error=False)
            except Exception as exc:  # noqa: BLE001 - a worker without a nanny cannot be restarted
                _log.warning("could not restart Dask worker %s after a task timeout: %s", address, exc)

        threading.Thread(target=restart, name="procly-dask-restart", daemon=True).start()

    def _chunks(self, items: list[Any], chunksize: int | None) -> tuple[int, list[list[Any]]]:
        if chunksize is None:
            chunksize = max(1, math.ceil(len(items) / (self._workers() * 4)))
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        return chunksize, [items[i : i + chunksize] for i in range(0, len(items), chunksize)]

    def _prepare_chunk(self, chunk: list[Any], star: bool, cache: dict[int, Any]) -> list[Any]:
        if star:
            return [tuple(self._scatter(arg, cache) for arg in item) for item in chunk]
        return [self._scatter(item, cache) for item in chunk]

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], star: bool, chunksize: int | None,
                   callback: Callable[[Any], Any] | None, error_callback: Callable[[BaseException], Any] | None,
                   task_timeout: float | None, retries: int | None, progress: bool | str = False,
                   on_result: Callable[[Any], Any] | None = None) -> MapResult[Any]:  # fmt: skip
        self._check_running()
        items = list(iterable)
        _, chunks = self._chunks(items, chunksize)
        starts = list(range(0, len(items), len(chunks[0]))) if chunks else []
        result = MapResult(len(items), starts, callback, error_callback)
        meter = Progress(len(items), progress, on_result) if wanted(progress, on_result) else None
        cache: dict[int, Any] = {}
        shipped = self._ship_function(func, cache)
        timeout = self._task_timeout if task_timeout is None else task_timeout
        for index, chunk in enumerate(chunks):

            def sink(success: bool, values: Any, index: int = index) -> None:
                if meter is not None:
                    meter.settle(success, values)
                result._set_chunk(index, success, values)

            label = f"{_name(func)}-chunk{index}"
            self._submit(
                _tasks.run_chunk,
                (shipped, self._prepare_chunk(chunk, star, cache), star, timeout),
                sink,
                self._retries_for(retries),
                label,
                timeout,
            )
        return result

    def _imap(self, iterator_cls: type[IMapIterator[Any]], func: Callable[..., Any], iterable: Iterable[Any],
              chunksize: int | None, task_timeout: float | None, retries: int | None, progress: bool | str = False,
              on_result: Callable[[Any], Any] | None = None) -> IMapIterator[Any]:  # fmt: skip
        self._check_running()
        chunksize = 1 if chunksize is None else chunksize
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        cache: dict[int, Any] = {}
        shipped = self._ship_function(func, cache)
        window = LookAhead(self._workers() * IMAP_CHUNKS_PER_WORKER * chunksize)
        result = iterator_cls(on_consumed=window.give)
        iterator: Iterator[Any] = iter(iterable)
        meter = (
            Progress(operator.length_hint(iterator, 0) or None, progress, on_result)
            if wanted(progress, on_result)
            else None
        )
        timeout = self._task_timeout if task_timeout is None else task_timeout

        def submit(start: int, chunk: list[Any], sink: Callable[[bool, Any], None]) -> None:
            if meter is not None:
                inner = sink

                def sink(success: bool, values: Any) -> None:
                    if success:
                        meter.add(values)
                    inner(success, values)

            self._submit(
                _tasks.run_chunk,
                (shipped, self._prepare_chunk(chunk, False, cache), False, timeout),
                sink,
                self._retries_for(retries),
                f"{_name(func)}-item{start}",
                timeout,
            )

        def feed() -> None:
            try:
                feed_lazily(result, iterator, chunksize, window, submit)
            finally:
                with self._lock:
                    self._active_feeds -= 1
                    self._windows.discard(window)
                    self._idle.notify_all()
                if meter is not None:
                    meter.close()

        with self._lock:
            self._active_feeds += 1
            self._windows.add(window)
            if self._state is PoolState.TERMINATED:
                window.stop()
        threading.Thread(target=feed, name="procly-dask-imap-feeder", daemon=True).start()
        return result

    def _release(self) -> None:
        """Give back what the pool took: its plugin, its own client, its own cluster."""
        with self._lock:
            client, self._client = self._client, None  # type: ignore[assignment]
            cluster, self._cluster = self._cluster, None
        if client is None:
            return
        if self._plugin_name is not None:
            try:
                client.unregister_worker_plugin(self._plugin_name)
            except Exception as exc:  # noqa: BLE001 - the cluster may be gone already
                _log.debug("could not unregister the initializer: %s", exc)
        if self._owns_client:
            client.close()
        if cluster is not None:
            cluster.close()


def _name(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    return "procly-" + "".join(c if c.isalnum() or c in "_." else "_" for c in name)


def _flatten(args: Any) -> Iterator[Any]:
    for arg in args:
        if isinstance(arg, (list, tuple)):
            yield from _flatten(arg)
        elif isinstance(arg, dict):
            yield from _flatten(list(arg.values()))
        else:
            yield arg
