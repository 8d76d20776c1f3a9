"""Pool: a process pool that never hangs and never loses a task.

Data flow::

    caller ── pickle args now (errors raise here) ──> pending deque ──┐
                                                                     │ wake-up pipe
    supervisor thread: poll(worker conns, worker sentinels, wake-up; nearest deadline)
        ├── dispatch (_pool_dispatch): a few tasks in flight per worker, function sent once
        ├── result from a worker ──> AsyncResult / MapResult / imap iterator
        ├── a worker's sentinel fires ──> its first unanswered task fails with
        │       WorkerLostError (or is retried), the rest go back to the queue,
        │       a new worker replaces it
        └── a task's deadline passes ──> its worker is killed, the task fails with
                TaskTimeoutError, the rest go back, a new worker replaces it

Nothing polls with sleep: the supervisor blocks in one ``poll()`` over a persistent set.
"""

from __future__ import annotations

import collections
import itertools
import operator
import os
import pickle
import select
import signal
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import CancelledError
from typing import Any, Callable, Iterable, Iterator, TypeVar

from . import _inner_threads, _serialization
from . import _pool_dispatch as dispatch
from . import _pool_messages as messages
from ._connection import BufferedConnection, Pipe
from ._errors import BrokenProcessPool, PoolTerminatedError, StartError, TaskTimeoutError, WorkerLostError
from ._finalize import Finalize
from ._pool_api import PoolAPI, PoolState
from ._pool_messages import APPLY, MAP, STARMAP, RetireReason, WorkerCounters
from ._pool_results import ApplyResult, IMapIterator, LookAhead, MapResult, feed_lazily
from ._pool_worker import rebuild_exception, worker_main
from ._progress import Progress, wanted
from ._spin import Spinner
from ._state import end_process_group, usable_cpus
from ._wait import wait

__all__ = ["Pool"]

_T = TypeVar("_T")

IMAP_TASKS_AHEAD = 16  # imap's look-ahead per worker, in tasks
ENVELOPE_OUT_OF_BAND = 4096  # task payloads from this size travel beside the envelope
#: imap's adaptive chunks aim at this much work each, and hold this many items of look-ahead per slot.
ADAPTIVE_CHUNK_SECONDS = 0.002
IMAP_ADAPTIVE_ITEMS = 4
TERMINATE_GRACE = 1.0
# A worker that cannot be started is tried again after RESTART_PAUSE * 2**failures seconds
# (at most RESTART_PAUSE_MAX); with no worker left, START_ATTEMPTS failures in a row fail
# the queued tasks. SUPERVISOR_ERRORS unexpected errors in a row end the pool.
RESTART_PAUSE = 0.025
RESTART_PAUSE_MAX = 2.0
START_ATTEMPTS = 3
SUPERVISOR_ERRORS = 100
_READY = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


class _Task:
    __slots__ = ("id", "func_key", "func_bytes", "mode", "payload", "sink", "count", "timeout", "retries", "_label",
                 "deadline", "buffers", "size", "send_function", "index", "wire", "claim")  # fmt: skip

    def __init__(self, task_id: int, func_key: int, func_bytes: bytes, mode: int, payload: Any, sink: Any, count: int,
                 timeout: float | None, retries: int, label: Any) -> None:  # fmt: skip
        self.id = task_id
        self.func_key = func_key
        self.func_bytes = func_bytes
        self.mode = mode
        self.payload = payload
        self.sink = sink  # callable(success, values_or_exception), or (index, success, ...) with an index
        self.index: int | None = None  # a map's chunk number: one sink serves every chunk
        self.count = count  # items in the task
        self.timeout = timeout
        self.retries = retries
        self._label = label  # text, or (function name, first item, last item): formatted when needed
        self.deadline: float | None = None
        # Large buffers of the arguments (numpy arrays, big bytes), kept out of the pickle:
        # they travel from their own memory (in a memfd), never copied into the payload.
        self.buffers: list[memoryview] = []
        self.size = len(payload)
        self.send_function = False  # set when dispatched: the worker has not seen the function yet
        self.wire = 0  # set when dispatched: its bytes on the socket
        # Called (pool lock held) just before the task goes to a worker; False drops it
        # (an executor's future cancelled while it waited).
        self.claim: Callable[[], bool] | None = None

    def settle(self, success: bool, values: Any) -> None:
        """Hand the outcome to whoever waits for it."""
        if self.index is None:
            self.sink(success, values)
        else:
            self.sink(self.index, success, values)

    @property
    def label(self) -> str:
        """What the task is, for error messages: ``f(...)`` or ``f on items 10..19``."""
        if isinstance(self._label, str):
            return self._label
        name, first, last = self._label
        return f"{name} on items {first}..{last}"


class _Worker:
    __slots__ = ("process", "conn", "inflight", "funcs", "sent", "sentinel", "done", "queued")

    def __init__(self, process: Any, conn: Any, done: WorkerCounters) -> None:
        self.process = process
        self.conn = conn
        self.sentinel = process.sentinel
        self.inflight: collections.deque[_Task] = collections.deque()
        self.funcs: set[int] = set()
        self.sent = 0
        self.queued = 0  # bytes of the tasks in flight, as they went on the socket
        self.done = done  # shared with Pool._done


def _signal_text(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class Pool(PoolAPI):
    """A pool of worker processes (``multiprocessing.Pool``), hardened.

    Beyond the standard library: a worker that dies fails only the task it was running
    (``WorkerLostError``, or a re-run with *retries*); *task_timeout* really stops a task;
    arguments are pickled in the caller; lambdas and closures work; terminate() also
    fails outstanding results instead of leaving them pending for ever.

    Raises:
        ValueError: *processes* < 1, *maxtasksperchild* not a positive int,
            *max_memory_per_child* (bytes of resident memory; a worker that grew past it is
            replaced between tasks) not a positive int, or *inner_threads* (threads each
            worker's BLAS/OpenMP libraries may use; default: an equal share of the CPUs,
            0: no limit) negative.
        TypeError: *initializer* is not callable.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        task_timeout: float | None = None,
        retries: int = 0,
        max_memory_per_child: int | None = None,
        inner_threads: int | None = None,
        _executor: bool = False,
    ) -> None:
        # -- for ProcessPoolExecutor (_executor=True): concurrent.futures semantics in the
        # workers (see worker_main), and an initializer that fails breaks the pool: it is
        # terminated and what is outstanding fails with BrokenProcessPool (_broken says why).
        self._executor_mode = _executor
        self._broken: str | None = None
        if max_memory_per_child is not None and (
            not isinstance(max_memory_per_child, int) or max_memory_per_child <= 0
        ):
            raise ValueError("max_memory_per_child must be a positive number of bytes or None")
        self._max_memory = max_memory_per_child
        self._cancelled: list[_Task] = []
        if processes is None:
            processes = usable_cpus()
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if context is None:
            from .context import _default_context

            context = _default_context.get_context()
        self._ctx = context
        self._processes = processes
        self._inner_threads = _inner_threads.resolve(inner_threads, processes, usable_cpus())
        self._worker_env = _inner_threads.environment(self._inner_threads)
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasks = maxtasksperchild
        self._task_timeout = task_timeout
        self._retries = retries
        self._state = PoolState.RUNNING
        # Moving average of the time an item takes to compute (None: none timed yet): how
        # deep tasks queue at a worker, and how long imap's adaptive chunks are.
        self._item_seconds: float | None = None
        self._done: dict[str, WorkerCounters] = {}  # by worker name
        self._lock = threading.Lock()
        self._pending: collections.deque[_Task] = collections.deque()
        self._outstanding: dict[int, _Task] = {}
        self._ids = itertools.count()
        self._func_keys = itertools.count()
        self._func_cache: weakref.WeakKeyDictionary[Any, tuple[int, bytes]] = weakref.WeakKeyDictionary()
        self._wake_r: int
        self._wake_w: int | None
        self._wake_r, self._wake_w = os.pipe()
        self._wake_pending = False  # one byte in the pipe is enough to wake the supervisor
        os.set_blocking(self._wake_w, False)
        self._workers: dict[Any, _Worker] = {}
        # One poll set for the supervisor's whole life: worker connections and sentinels
        # are added and removed as workers come and go.
        self._poller = select.poll()
        self._spinner = Spinner(poller=self._poller)
        self._poller.register(self._wake_r, _READY)
        self._fds: dict[int, tuple[str, _Worker]] = {}
        self._feeders: list[threading.Thread] = []
        self._missing = 0  # workers to start again after a failed start, at _restart_at
        self._start_failures = 0  # failed starts in a row
        self._restart_at = 0.0
        self._active_feeds = 0  # imap feeders still reading input (guarded by _lock)
        self._windows: set[LookAhead] = set()  # their look-ahead bounds (guarded by _lock)
        try:
            for _ in range(processes):
                self._spawn_worker()
        except BaseException:
            for worker in self._workers.values():
                worker.process.kill()
                worker.process.join()
                worker.conn.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._state = PoolState.TERMINATED
            raise
        # At interpreter exit, end the pool before procly reaps children (cancelled once
        # the pool is down, so that the pool can then be freed).
        self._exit_finalizer = Finalize(self, self._end_at_exit, exitpriority=15)
        self._supervisor = threading.Thread(target=self._supervise, name="procly-pool-supervisor", daemon=True)
        self._supervisor.start()

    # -- submission ----------------------------------------------------------------

    def _function(self, func: Callable[..., Any]) -> tuple[int, bytes]:
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        try:
            cached = self._func_cache.get(func)
        except TypeError:
            cached = None
        if cached is None:
            cached = (next(self._func_keys), _serialization.dumps(func))
            try:
                self._func_cache[func] = cached
            except TypeError:
                pass
        return cached

    def _make_task(self, func: Callable[..., Any], mode: int, items: Any, count: int, sink: Any,
                   task_timeout: float | None, retries: int | None, label: Any,
                   function: tuple[int, bytes] | None = None, payload: Any = None) -> _Task:  # fmt: skip
        """A task of *items*, pickled here (unpicklable arguments raise in the caller);
        *function*: ``self._function(func)``, and *payload*: the pickled *items* without
        out-of-band buffers, when the caller has them already."""
        key, func_bytes = self._function(func) if function is None else function
        buffers: list[memoryview] = []
        if payload is None:
            payload = _serialization.dumps(items, buffers)
        timeout = self._task_timeout if task_timeout is None else task_timeout
        task = _Task(
            next(self._ids), key, func_bytes, mode, payload, sink, count, timeout,
            self._retries if retries is None else retries, label,
        )  # fmt: skip
        if buffers:
            task.buffers = buffers
            task.size += sum(b.nbytes for b in buffers)
        return task

    def _submit(self, tasks: list[_Task]) -> None:
        with self._lock:
            if self._state is PoolState.TERMINATED:
                for task in tasks:
                    broken = self._broken is not None
                    task.settle(False, BrokenProcessPool(self._broken) if broken else PoolTerminatedError(
                        "the pool was terminated"))
                return
            for task in tasks:
                self._outstanding[task.id] = task
            self._pending.extend(tasks)
        # Hand the work to idle workers from this thread: one thread hop less per task
        # (the supervisor would only have to wake up to do this). What is left, and any
        # deadline the supervisor must watch, still goes through it.
        self._dispatch()
        if self._pending or any(task.timeout for task in tasks):
            self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._wake_w is None or self._wake_pending:
                return  # the supervisor is gone, or a wake-up is already on its way
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:  # full: the supervisor has a wake-up pending anyway
                pass

    def _cancel(self, tasks: list[_Task]) -> None:
        """Stop *tasks* (an awaiting asyncio task was cancelled): the supervisor drops the
        queued ones and ends the worker running one, which is replaced."""
        with self._lock:
            self._cancelled.extend(tasks)
        self._wake()

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
        """Run ``func(*args, **kwds)`` in a worker; return an AsyncResult at once.

        Raises:
            ValueError: the pool is closed or terminated.
            procly.PicklingError: *func* or the arguments cannot be pickled.
        """
        self._check_running()
        result: ApplyResult[_T] = ApplyResult(callback, error_callback)
        task = self._call_task(func, args, kwds, result._set, task_timeout, retries)
        # Before submitting: a result that is set at once lets go of it (see ApplyResult._set).
        result._on_cancel = lambda: self._cancel([task])
        self._submit([task])
        return result

    def _call_task(self, func: Callable[..., Any], args: Iterable[Any], kwds: dict[str, Any] | None,
                   settle: Callable[[bool, Any], None], task_timeout: float | None = None,
                   retries: int | None = None) -> _Task:  # fmt: skip
        """The task of ``func(*args, **kwds)``, not submitted; *settle(success, value or
        exception)* gets its outcome."""
        def sink(success: bool, values: Any) -> None:
            settle(success, values[0] if success else values)

        label = f"{getattr(func, '__qualname__', func)!s}(...)"
        return self._make_task(func, APPLY, (tuple(args), dict(kwds or {})), 1, sink, task_timeout, retries, label)

    def _call(self, func: Callable[..., Any], args: Iterable[Any], kwds: dict[str, Any] | None,
              settle: Callable[[bool, Any], None], claim: Callable[[], bool] | None = None) -> None:
        """Submit ``func(*args, **kwds)`` (for the executor); *settle* gets the outcome.
        *claim()*, if given, is called just before the task goes to a worker: False drops
        the task, unsettled.

        Raises:
            ValueError: the pool is closed or terminated.
            procly.PicklingError: *func* or the arguments cannot be pickled.
        """
        self._check_running()
        task = self._call_task(func, args, kwds, settle)
        task.claim = claim
        self._submit([task])

    def _default_chunksize(self, length: int) -> int:
        chunksize, extra = divmod(length, self._processes * 4)
        return max(1, chunksize + bool(extra))

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], star: bool, chunksize: int | None,
                   callback: Callable[[Any], Any] | None, error_callback: Callable[[BaseException], Any] | None,
                   task_timeout: float | None, retries: int | None, progress: bool | str = False,
                   on_result: Callable[[Any], Any] | None = None) -> MapResult[Any]:  # fmt: skip
        self._check_running()
        mode = STARMAP if star else MAP
        # Every chunk is pickled before this returns, so a list or tuple need not be
        # copied first.
        items: Any = iterable if type(iterable) in (list, tuple, range) else list(iterable)
        meter = Progress(len(items), progress, on_result) if wanted(progress, on_result) else None
        if chunksize is None:
            chunksize = self._default_chunksize(len(items))
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        if type(items) is range and chunksize <= 256:
            # Long chunks of a range stay ranges, a few bytes to pickle; short ones pickle
            # faster as lists (a range is rebuilt through a global lookup).
            items = list(items)
        starts = list(range(0, len(items), chunksize))
        result = MapResult(len(items), starts, callback, error_callback)
        name = getattr(func, "__qualname__", str(func))
        function = self._function(func)
        # Numbers and text only (the usual map input): each chunk goes straight to the C
        # pickler. The caller shares the GIL with the supervisor, which reads replies
        # meanwhile, so every µs spent here delays the workers too.
        scalars = mode == MAP and (type(items) is range or _serialization.only_small_scalars(items))
        tasks: list[_Task] = []
        result._on_cancel = lambda: self._cancel(tasks)

        def metered(index: int, success: bool, values: Any) -> None:
            meter.settle(success, values)  # type: ignore[union-attr]
            result._set_chunk(index, success, values)

        sink = result._set_chunk if meter is None else metered

        # Submitted in growing batches (1, 2, 4, ... 256 tasks) while the rest is still
        # being pickled: the workers start on the first chunk at once.
        submitted, batch = 0, 1
        # An argument that does not pickle raises here; chunks submitted before it run to
        # completion into a result nobody holds (as in the standard library).
        for index, start in enumerate(starts):
            chunk = items[start : start + chunksize]
            label = (name, start, start + len(chunk) - 1)
            payload = pickle.dumps(chunk, _serialization.PROTOCOL) if scalars else None
            task = self._make_task(func, mode, chunk, len(chunk), sink, task_timeout, retries, label, function, payload)
            task.index = index
            tasks.append(task)
            if len(tasks) - submitted >= batch or index == len(starts) - 1:
                self._submit(tasks[submitted:])
                submitted, batch = len(tasks), min(2 * batch, 256)
        return result

    def _imap(self, iterator_cls: type[IMapIterator[Any]], func: Callable[..., Any], iterable: Iterable[Any],
              chunksize: int | None, task_timeout: float | None, retries: int | None, progress: bool | str = False,
              on_result: Callable[[Any], Any] | None = None) -> IMapIterator[Any]:  # fmt: skip
        self._check_running()
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        self._function(func)  # an unpicklable function raises now
        # Bounded look-ahead, counted in items and given back as the caller consumes
        # results: the input is read lazily and an endless generator runs in bounded
        # memory even when the caller is slower than the workers.
        lookahead = self._processes * IMAP_TASKS_AHEAD * (IMAP_ADAPTIVE_ITEMS if chunksize is None else chunksize)
        window = LookAhead(lookahead)
        sizing = self._adaptive_chunksize(lookahead) if chunksize is None else chunksize
        result = iterator_cls(on_consumed=window.give)
        feeder = threading.Thread(
            target=self._feed_imap,
            args=(result, func, iter(iterable), sizing, window, task_timeout, retries, progress, on_result),
            name="procly-pool-imap-feeder",
            daemon=True,
        )
        with self._lock:
            self._active_feeds += 1
            self._feeders = [f for f in self._feeders if f.is_alive()]
            self._feeders.append(feeder)
            self._windows.add(window)
            if self._state is PoolState.TERMINATED:
                window.stop()
        feeder.start()
        return result

    def _feed_imap(self, result: IMapIterator[Any], func: Callable[..., Any], iterator: Iterator[Any],
                   chunksize: int | Callable[[], int], window: LookAhead, task_timeout: float | None,
                   retries: int | None, progress: bool | str,
                   on_result: Callable[[Any], Any] | None) -> None:  # fmt: skip
        name = getattr(func, "__qualname__", str(func))
        total = operator.length_hint(iterator, 0) or None  # a generator's length is unknown
        meter = Progress(total, progress, on_result) if wanted(progress, on_result) else None

        def submit(start: int, chunk: list[Any], sink: Callable[[bool, Any], None]) -> None:
            if meter is not None:
                inner = sink

                def sink(success: bool, values: Any) -> None:
                    if success:
                        meter.add(values)
                    inner(success, values)

            label = (name, start, start + len(chunk) - 1)
            self._submit([self._make_task(func, MAP, chunk, len(chunk), sink, task_timeout, retries, label)])

        try:
            feed_lazily(result, iterator, chunksize, window, submit)
        finally:
            with self._lock:
                self._active_feeds -= 1
                self._windows.discard(window)
            self._wake()  # a closed pool may be waiting for its last feeder
        if meter is not None:
            meter.set_total(result._length or 0)
            threading.Thread(target=_close_when_consumed, args=(result, meter), daemon=True).start()

    def _adaptive_chunksize(self, lookahead: int) -> Callable[[], int]:
        """imap's default: chunks sized so that one takes about ADAPTIVE_CHUNK_SECONDS of
        work, from the measured time per item (1 until something is measured), and small
        enough that the look-ahead always holds a few chunks per worker."""
        largest = max(1, lookahead // (4 * self._processes))

        def next_size() -> int:
            per_item = self._item_seconds
            if not per_item:
                return 1
            return max(1, min(largest, int(ADAPTIVE_CHUNK_SECONDS / per_item)))

        return next_size

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more work; workers exit once everything submitted is done."""
        with self._lock:
            if self._state is PoolState.RUNNING:
                self._state = PoolState.CLOSED
        self._wake()

    def terminate(self) -> None:
        """End the workers now (SIGTERM, then SIGKILL) and fail outstanding results.

        Idempotent; returns within about a second even if workers ignore SIGTERM.
        """
        self._terminate(kill=False)

    def _terminate(self, kill: bool) -> None:
        """terminate(); with *kill*, SIGKILL at once (the executor's kill_workers())."""
        with self._lock:
            already = self._state is PoolState.TERMINATED
            self._state = PoolState.TERMINATED
            workers = list(self._workers.values())
            for window in self._windows:
                window.stop()
        if already:
            return
        # Signal the workers from here: they exit while the supervisor wakes up to reap
        # them (it signals them again, and kills any that ignore SIGTERM).
        for worker in workers:
            try:
                if kill:
                    worker.process.kill()
                else:
                    worker.process.terminate()
            except (OSError, ValueError):
                pass  # already reaped and closed by the supervisor
        self._wake()
        if threading.current_thread() is not self._supervisor:  # e.g. called from a callback
            self._supervisor.join()

    def _end_at_exit(self) -> None:
        if self._state is PoolState.RUNNING:
            # Its supervisor kept it alive, so this is where the standard library's warning
            # for a pool dropped while running would have come.
            warnings.warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, stacklevel=1, source=self)
        self.terminate()

    def join(self) -> None:
        """Wait for the workers to exit (after close() or terminate()).

        Raises:
            ValueError: the pool is still running.
        """
        if self._state is PoolState.RUNNING:
            raise ValueError("Pool is still running")
        # imap inputs are read to their end now, whether or not their results have been
        # read: the pool finishes, and the results stay readable afterwards.
        with self._lock:
            for window in self._windows:
                window.open()
        self._supervisor.join()
        for feeder in self._feeders:
            feeder.join()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", PoolState.TERMINATED) is PoolState.RUNNING:
            # The standard library's warning (and words), for code that checks for it.
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
            self._state = PoolState.TERMINATED
            self._wake()

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        return f"<{name} state={self._state.value} pool_size={self._processes}>"

    @property
    def _pool(self) -> list[Any]:
        """The worker Process objects (the standard library's attribute, used by some libraries)."""
        return [worker.process for worker in list(self._workers.values())]

    def statistics(self) -> dict[str, Any]:
        """A snapshot: state, workers, tasks pending and in flight, and per worker (past
        and present) where its time went: tasks finished, seconds computing them, seconds
        (un)pickling tasks and results, and seconds waiting for work."""
        with self._lock:
            return {
                "state": self._state.value,
                "workers": len(self._workers),
                "pending": len(self._pending),
                "in_flight": sum(len(w.inflight) for w in self._workers.values()),
                "outstanding": len(self._outstanding),
                "per_worker": {name: counters.as_dict() for name, counters in self._done.items()},
            }

    # -- supervisor --------------------------------------------------------------------

    def _spawn_worker(self) -> None:
        parent_end, child_end = Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(child_end, self._initializer, self._initargs, self._maxtasks, self._max_memory,
                  self._executor_mode),
            kwargs={"inner_threads": self._inner_threads, "env": self._worker_env},
            name=f"PoolWorker-{next(_worker_numbers)}",
            daemon=True,
        )
        if self._worker_env:
            process._config["env"] = self._worker_env  # set before a spawned worker imports anything
        try:
            process.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        parent_end = BufferedConnection.adopt(parent_end)  # one read takes every reply waiting
        done = self._done.setdefault(process.name, WorkerCounters())
        worker = self._workers[parent_end] = _Worker(process, parent_end, done)
        for fd, kind in ((parent_end.fileno(), "conn"), (worker.sentinel, "sentinel")):
            self._fds[fd] = (kind, worker)
            self._poller.register(fd, _READY)

    def _replace_worker(self) -> None:
        """Start a worker in place of one that left. A start that fails (the fork server
        died, no memory for a fork) is tried again later with a growing pause; while the
        pool has no worker at all, repeated failures fail the queued tasks with the error
        instead of leaving them waiting."""
        try:
            self._spawn_worker()
        except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any start failure
            self._missing += 1
            self._start_failures += 1
            self._restart_at = time.monotonic() + min(RESTART_PAUSE_MAX, RESTART_PAUSE * 2**self._start_failures)
            if not self._workers and self._start_failures >= START_ATTEMPTS:
                error = StartError(f"the pool could not start a worker ({self._start_failures} attempts): {exc}")
                with self._lock:
                    failed = list(self._pending)
                    self._pending.clear()
                for task in failed:
                    self._finish(task, False, error)
        else:
            self._start_failures = 0

    def _restart_missing(self) -> None:
        if self._missing and time.monotonic() >= self._restart_at:
            missing, self._missing = self._missing, 0
            for _ in range(missing):
                self._replace_worker()

    def _supervise(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    if not self._step():
                        break
                    failures = 0
                except Exception:  # noqa: BLE001 - a bug in one step must not end the supervisor
                    failures += 1
                    import traceback

                    print("procly: the pool's supervisor survived an unexpected error:", file=sys.stderr)
                    traceback.print_exc()
                    if failures >= SUPERVISOR_ERRORS:
                        raise
        except BaseException:  # nothing works any more: callers must not wait for ever
            with self._lock:
                self._state = PoolState.TERMINATED
            raise
        finally:
            self._shutdown()

    def _step(self) -> bool:
        """One round of the supervisor loop; False when the pool is done."""
        if self._state is PoolState.TERMINATED:
            return False
        if self._cancelled:
            self._stop_cancelled()
        self._restart_missing()
        self._dispatch()
        if self._state is PoolState.CLOSED and not self._outstanding and not self._active_feeds:
            return False
        now = time.monotonic()
        deadlines = [w.inflight[0].deadline for w in self._workers.values() if w.inflight and w.inflight[0].deadline]
        if self._missing:
            deadlines.append(self._restart_at)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        ms = -1 if timeout is None else int(timeout * 1000 + 0.999)
        # Spin first: a reply, or a caller's next task, often comes within µs of the last event.
        events = self._spinner.wait() or self._poller.poll(ms)
        # Each descriptor is looked up before any event is handled: a worker retired by an
        # earlier event closes its descriptors, and its replacement may get the same
        # numbers, so a later event of the old worker must not be taken as the new one's.
        for fd, (kind, worker) in [(fd, self._fds.get(fd, (None, None))) for fd, _ in events]:
            if fd == self._wake_r:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
                with self._lock:
                    self._wake_pending = False
                self._dispatch()  # what the wake-up was for (submitted work): now, not next round
            elif worker is None or worker.conn not in self._workers:
                continue  # retired earlier in this round
            elif kind == "sentinel":
                self._drain(worker)
                if worker.conn in self._workers:
                    self._lost(worker)
            else:
                self._drain(worker)
        self._expire()
        return True

    def _dispatch(self) -> None:
        """Send pending tasks to workers, as the dispatch rules (_pool_dispatch) say.

        Runs in the supervisor and, right after a submission, in the caller's thread (one
        thread hop less per task); the lock keeps the two apart."""
        with self._lock:
            pending = self._pending
            if not pending:
                return
            taken, dropped, sends = dispatch.plan(self._workers.values(), pending, self._item_seconds, self._maxtasks,
                                                  _has_ended)  # fmt: skip
            popleft = pending.popleft
            for _ in range(taken):
                popleft()
            for task in dropped:
                self._outstanding.pop(task.id, None)
            for worker, bundles in sends:
                inflight = worker.inflight
                for n, bundle in enumerate(bundles):
                    for task, first_use, wire in bundle:
                        # In flight *before* it is sent: the supervisor may read the reply
                        # before a caller's thread that dispatches it gets here again.
                        if not inflight and task.timeout:
                            self._start_clock(task)
                        inflight.append(task)
                        task.send_function = first_use
                        task.wire = wire
                    worker.sent += len(bundle)
                    worker.queued += sum(wire for _, _, wire in bundle)
                    worker.funcs.update(task.func_key for task, first_use, _ in bundle if first_use)
                    if not self._send_bundle(worker, bundle):
                        # The worker is dying (its sentinel will tell): this bundle and the
                        # ones after it go back, first in line.
                        pending.extendleft(reversed([task for later in bundles[n:] for task, _, _ in later]))
                        break

    def _send_bundle(self, worker: _Worker, bundle: list[tuple[_Task, bool, int]]) -> bool:
        """Send tasks to *worker* in one message (lock held); it replies to each in turn.
        False if the worker is dying: the tasks are no longer in flight there."""
        # PickleBuffer: a large payload is written from its own memory.
        make = messages.task
        message = [
            make(task.id, task.func_key, task.func_bytes if task.send_function else None, task.mode,
                 pickle.PickleBuffer(task.payload) if len(task.payload) >= ENVELOPE_OUT_OF_BAND else task.payload,
                 [pickle.PickleBuffer(b) for b in task.buffers] if task.buffers else [])
            for task, _, _ in bundle
        ]  # fmt: skip
        try:
            # Ints, bytes and PickleBuffers: no inspection; payloads of 4 KiB and more are
            # written from their own memory instead of being copied into the envelope.
            worker.conn._send_object(message, plain=True, out_of_band_from=ENVELOPE_OUT_OF_BAND)
        except OSError:
            for task, _, _ in bundle:
                try:
                    worker.inflight.remove(task)
                except ValueError:
                    pass
                if task.send_function:
                    worker.funcs.discard(task.func_key)
                worker.sent -= 1
                worker.queued -= task.wire
            return False
        return True

    def _stop_cancelled(self) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, []
            ids = {task.id for task in cancelled}
            dropped = [task for task in self._pending if task.id in ids]
            for task in dropped:
                self._pending.remove(task)
        running = []
        for worker in list(self._workers.values()):
            for task in list(worker.inflight)[1:]:
                if task.id in ids:
                    # Sent, not started: its reply will find no task waiting for it.
                    worker.inflight.remove(task)
                    worker.queued -= task.wire
                    dropped.append(task)
            if worker.inflight and worker.inflight[0].id in ids:
                running.append(worker)
        for task in dropped:
            self._finish(task, False, CancelledError(f"task {task.label} was cancelled"))
        for worker in running:
            worker.process.kill()
            self._retire(worker, RetireReason.CANCELLED)

    def _start_clock(self, task: _Task) -> None:
        task.deadline = time.monotonic() + task.timeout * task.count if task.timeout else None

    def _drain(self, worker: _Worker) -> None:
        """Collect every reply waiting from *worker* (also those a dead worker sent before
        dying). The supervisor's hot path: one pass over every reply read ahead."""
        conn = worker.conn
        inflight = worker.inflight
        while conn in self._workers:
            try:
                if not (conn.buffered() or conn.poll(0)):
                    return
                replies = conn.recv_ready()
            except (EOFError, OSError):
                self._lost(worker)
                return
            except BaseException as exc:  # noqa: BLE001 - a result that does not unpickle in the parent
                if self._executor_mode:
                    error = BrokenProcessPool(f"a result could not be unpickled: {type(exc).__name__}: {exc}")
                    error.__cause__ = exc
                    exc = error
                elif not isinstance(exc, Exception):
                    raise
                replies = [messages.result(inflight[0].id if inflight else -1, False, (exc, ""), 0.0, 0.0, 0.0)]
            self._settle_replies(worker, replies)

    def _settle_replies(self, worker: _Worker, replies: list[tuple[Any, ...]]) -> None:
        inflight = worker.inflight
        item_seconds = self._item_seconds
        tasks = wire = 0
        computing = serializing = waiting = 0.0
        try:
            is_result = messages.is_result
            for reply in replies:
                if not is_result(reply):
                    if messages.kind_of(reply) is messages.MessageKind.BYE:
                        # It left after maxtasksperchild or max_memory_per_child.
                        self._retire(worker, RetireReason.LEFT)
                        return
                    # An executor's initializer raised. The worker exits by itself: let it
                    # finish (flush what its initializer queued, a log record for instance)
                    # before the pool breaks and ends the others.
                    worker.process.join(5)
                    text = messages.init_failed_text(reply)
                    self._broken = f"the initializer failed in a worker ({text}); the executor is broken"
                    self._terminate(kill=False)
                    return
                task_id, success, values, seconds, serializing_one, waiting_one = reply
                if not inflight or inflight[0].id != task_id:
                    continue  # a cancelled task's
                task = inflight.popleft()
                wire += task.wire
                per_item = seconds / (task.count or 1)
                item_seconds = per_item if item_seconds is None else item_seconds + 0.2 * (per_item - item_seconds)
                tasks += 1
                computing += seconds
                serializing += serializing_one
                waiting += waiting_one
                if inflight and inflight[0].timeout:
                    self._start_clock(inflight[0])
                if not success:
                    exc, tb = values
                    values = rebuild_exception(exc, tb) if tb else exc
                self._finish(task, success, values)
        finally:
            self._item_seconds = item_seconds
            worker.queued -= wire
            done = worker.done
            done.tasks += tasks
            done.compute_seconds += computing
            done.serialize_seconds += serializing
            done.wait_seconds += waiting

    def _finish(self, task: _Task, success: bool, values: Any) -> None:
        # Supervisor thread only. No lock: the callers' threads only add entries, and a
        # dict's pop is atomic; taking the lock here made every reply wait for a caller
        # submitting a batch of tasks.
        self._outstanding.pop(task.id, None)
        task.settle(success, values)

    def _lost(self, worker: _Worker) -> None:
        self._retire(worker, RetireReason.LOST)

    def _expire(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            task = worker.inflight[0] if worker.inflight else None
            if task is not None and task.deadline is not None and task.deadline <= now:
                worker.process.kill()
                self._retire(worker, RetireReason.TIMEOUT)

    def _error(self, why: RetireReason, task: _Task, name: str, pid: int, exitcode: int | None) -> BaseException:
        if why is RetireReason.CANCELLED:
            return CancelledError(f"task {task.label} was cancelled; worker {name} (pid {pid}) was stopped")
        if why is RetireReason.TIMEOUT:
            return TaskTimeoutError(
                f"task {task.label} ran longer than its timeout of {task.timeout}s per item; "
                f"worker {name} (pid {pid}) was stopped"
            )
        return WorkerLostError(
            f"worker {name} (pid {pid}) died with {_signal_text(exitcode)} while running task {task.label}",
            exitcode,
        )

    def _retire(self, worker: _Worker, why: RetireReason) -> None:
        """Remove *worker*; fail (or retry) its running task, requeue the rest, replace it
        (*why*: see RetireReason)."""
        with self._lock:
            # Under the lock: a dispatch from a caller's thread either finished before this
            # (its tasks are in worker.inflight, requeued below) or will not see this worker.
            self._workers.pop(worker.conn, None)
        for fd in (worker.conn.fileno(), worker.sentinel):
            self._fds.pop(fd, None)
            self._poller.unregister(fd)
        worker.conn.close()
        process = worker.process
        name, pid = process.name, process.pid
        if why is not RetireReason.LEFT:
            # Dead or being killed, not yet reaped: what its task started goes too.
            if not wait([worker.sentinel], 5):
                process.kill()
                wait([worker.sentinel])
            end_process_group(pid)
        process.join(5)
        if process.exitcode is None:  # "bye" came before the exit: make sure
            process.kill()
            process.join()
        exitcode = process.exitcode
        process.close()
        requeue = list(worker.inflight)
        # After terminate() (which signals the workers itself), a worker's death is not a
        # loss: its tasks stay outstanding and _shutdown fails them as terminated.
        if why is not RetireReason.LEFT and requeue and self._state is not PoolState.TERMINATED:
            task = requeue.pop(0)
            if why is RetireReason.LOST and task.retries > 0:
                task.retries -= 1
                requeue.insert(0, task)
            else:
                self._finish(task, False, self._error(why, task, name, pid, exitcode))
        with self._lock:
            for task in reversed(requeue):
                task.deadline = None
                self._pending.appendleft(task)
        if self._state is not PoolState.TERMINATED and (self._state is PoolState.RUNNING or self._outstanding):
            self._replace_worker()

    def _shutdown(self) -> None:
        """Stop every worker; fail what is left if the pool was terminated."""
        terminated = self._state is PoolState.TERMINATED
        for worker in self._workers.values():
            try:
                if terminated:
                    worker.process.terminate()
                else:
                    worker.conn.send(messages.STOP)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + TERMINATE_GRACE
        for worker in self._workers.values():
            if terminated:
                if not wait([worker.sentinel], max(0.0, deadline - time.monotonic())):
                    worker.process.kill()
                    wait([worker.sentinel])
                end_process_group(worker.process.pid)  # before it is reaped: see _retire
            worker.process.join()
            worker.conn.close()
            worker.process.close()
        self._workers.clear()
        with self._lock:
            leftovers = list(self._outstanding.values())
            self._outstanding.clear()
            self._pending.clear()
        for task in leftovers:
            if self._broken is not None:
                task.settle(False, BrokenProcessPool(self._broken))
            else:
                task.settle(False, PoolTerminatedError(f"the pool was terminated before task {task.label} finished"))
        with self._lock:
            wake_w, self._wake_w = self._wake_w, None
        os.close(self._wake_r)
        if wake_w is not None:
            os.close(wake_w)
        self._exit_finalizer.cancel()


_worker_numbers = itertools.count(1)


def _has_ended(worker: _Worker) -> bool:
    """Whether *worker* has died (and the supervisor has not seen it yet)."""
    return bool(wait([worker.sentinel], 0))


def _close_when_consumed(result: IMapIterator[Any], meter: Progress) -> None:
    with result._cond:
        result._cond.wait_for(lambda: result._length is not None and meter.done >= result._length)
    meter.close()
