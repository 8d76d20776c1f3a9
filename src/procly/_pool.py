"""Pool: a process pool that never hangs and never loses a task.

This module is the submission and results side; the rest is layered under it::

    Pool (_pool)                submission: pickle args now (errors raise here), tasks
      │                         into the pending deque; results: AsyncResult, MapResult,
      │                         imap iterators (_pool_results), fed by each task's sink
      ├── Supervisor            the workers, the poller, deadlines, retiring, restarts
      │   (_pool_supervisor)    with back-off; one thread, woken by a pipe
      │     ├── plan            which pending task goes to which worker (pure rules)
      │     │   (_pool_dispatch)
      │     └── messages        what goes on the wire, both ways; RetireReason,
      │         (_pool_messages) WorkerCounters, Task
      └── worker_main           the loop in each worker process
          (_pool_worker)

A caller's thread dispatches what it just submitted itself (one thread hop less per
task); what is left, deadlines and every reply go through the supervisor thread.
Nothing polls with sleep: the supervisor blocks in one ``poll()`` over a persistent set.
"""

from __future__ import annotations

import collections
import itertools
import operator
import pickle
import threading
import warnings
import weakref

from . import _errors, _inner_threads, _serialization
from ._errors import PoolTerminatedError
from ._finalize import Finalize
from ._pool_api import PoolAPI, PoolState
from ._pool_messages import APPLY, MAP, STARMAP, Task
from ._pool_results import ApplyResult, IMapIterator, LookAhead, MapResult, feed_lazily
from ._pool_supervisor import Supervisor
from ._progress import Progress, wanted
from ._state import usable_cpus
from ._typing import TypeVar

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Iterator

__all__ = ["Pool"]

_T = TypeVar("_T")

IMAP_TASKS_AHEAD = 16  # imap's look-ahead per worker, in tasks
IMAP_BYTES_AHEAD = 2 << 20  # ... and in pickled bytes, when items are big
#: imap's adaptive chunks aim at this much work each, and hold this many items of look-ahead per slot.
ADAPTIVE_CHUNK_SECONDS = 0.002
IMAP_ADAPTIVE_ITEMS = 4

_Task = Task


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
        self._lock = threading.Lock()
        self._pending: collections.deque[_Task] = collections.deque()
        self._outstanding: dict[int, _Task] = {}
        self._ids = itertools.count()
        self._func_keys = itertools.count()
        self._func_cache: weakref.WeakKeyDictionary[Any, tuple[int, bytes]] = weakref.WeakKeyDictionary()
        self._feeders: list[threading.Thread] = []
        self._active_feeds = 0  # imap feeders still reading input (guarded by _lock)
        self._windows: set[LookAhead] = set()  # their look-ahead bounds (guarded by _lock)
        # The workers and the thread that watches them: see _pool_supervisor.
        try:
            self._supervision = Supervisor(self)
            self._supervision.spawn(0 if self._supervision.on_demand else processes)
        except BaseException:
            self._state = PoolState.TERMINATED
            raise
        # At interpreter exit, end the pool before procly reaps children (cancelled once
        # the pool is down, so that the pool can then be freed).
        self._exit_finalizer = Finalize(self, self._end_at_exit, exitpriority=15)
        self._supervisor = self._supervision.start()

    # -- seams: the supervisor starts workers and restarts missing ones through these two,
    # so that a test can make them fail (monkeypatch on the pool) ------------------------

    def _spawn_worker(self) -> None:
        self._supervision._spawn_worker()

    def _restart_missing(self) -> None:
        self._supervision._restart_missing()

    def _repopulate_pool(self) -> None:
        """Start the workers missing now (the standard library Pool's method, which code
        written for it calls). The supervisor replaces a worker that left by itself, so
        this only hurries along one whose start failed and waits for its next try."""
        self._supervision.start_missing_now()

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

    def _submit(self, tasks: list[_Task], watch: bool = True) -> None:
        """Queue *tasks*, and send what idle workers can take now from this thread.
        *watch*: wake the supervisor to watch for short tasks' replies (False when the
        caller is expected to read the reply itself: see Supervisor.serve_reply)."""
        with self._lock:
            terminated = self._state is PoolState.TERMINATED
            refused = terminated or self._supervision.finished
            if not refused:
                for task in tasks:
                    self._outstanding[task.id] = task
                self._pending.extend(tasks)
        if refused:  # settled outside the lock: a task's callback may submit again
            self._refuse(tasks, terminated)
            return
        if self._supervision.on_demand:
            self._supervision.grow()
        # Hand the work to idle workers from this thread: one thread hop less per task
        # (the supervisor would only have to wake up to do this). What is left, and any
        # deadline the supervisor must watch, still goes through it.
        self._supervision.dispatch()
        if self._pending or any(task.timeout for task in tasks):
            self._supervision.wake()
        elif watch:
            self._supervision.watch_for_reply()

    def _refuse(self, tasks: list[_Task], terminated: bool) -> None:
        """Fail *tasks*, submitted too late: the pool is terminated, broken or shut down.

        Raises:
            PoolTerminatedError: an executor's call racing its shutdown (as concurrent.futures
                says, submit() then raises rather than return a future that failed unseen).
        """
        if self._executor_mode and not terminated and self._broken is None:
            raise PoolTerminatedError("the pool was shut down")
        for task in tasks:
            if self._broken is not None:
                task.settle(False, _errors.BrokenProcessPool(self._broken))
            elif terminated:
                task.settle(False, PoolTerminatedError("the pool was terminated"))
            else:  # the supervisor has shut the pool down (a submission racing close/join)
                task.settle(False, PoolTerminatedError("the pool was shut down"))

    def _wake(self) -> None:
        self._supervision.wake()

    def _cancel(self, tasks: list[_Task]) -> None:
        """Stop *tasks* (an awaiting asyncio task was cancelled): the supervisor drops the
        queued ones and ends the worker running one, which is replaced."""
        self._supervision.cancel(tasks)

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
        if callback is None and error_callback is None:
            # Nothing to run in the supervisor's thread: a caller waiting in get() may read
            # the reply itself (callbacks run in the supervisor's thread, as they do in the
            # standard library's result handler).
            result._serve = self._supervision.server_for(task, result.ready)
        self._submit([task], watch=result._serve is None)
        return result

    def _call_task(self, func: Callable[..., Any], args: Iterable[Any], kwds: dict[str, Any] | None,
                   settle: Callable[[bool, Any], None], task_timeout: float | None = None,
                   retries: int | None = None) -> _Task:  # fmt: skip
        """The task of ``func(*args, **kwds)``, not submitted; *settle(success, value or
        exception)* gets its outcome."""

        def sink(success: bool, values: Any) -> None:
            settle(success, values[0] if success else values)

        label = f"{getattr(func, '__qualname__', func)!s}(...)"
        args = tuple(args)
        payload = None
        if not kwds and _serialization.only_small_scalars(args):
            payload = pickle.dumps((args, {}), _serialization.PROTOCOL)  # nothing to inspect, nothing out of band
        return self._make_task(
            func, APPLY, (args, dict(kwds or {})), 1, sink, task_timeout, retries, label, payload=payload
        )

    def _call(
        self,
        func: Callable[..., Any],
        args: Iterable[Any],
        kwds: dict[str, Any] | None,
        settle: Callable[[bool, Any], None],
        claim: Callable[[], bool] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> Callable[[float], Any] | None:
        """Submit ``func(*args, **kwds)`` (for the executor); *settle* gets the outcome.
        *claim()*, if given, is called just before the task goes to a worker: False drops
        the task, unsettled. Given *ready()* (whether the outcome is in), returns a
        function that reads the reply in the calling thread for up to the seconds it is
        given (see Supervisor.serve_reply), if this pool can; else None.

        Raises:
            ValueError: the pool is closed or terminated.
            procly.PicklingError: *func* or the arguments cannot be pickled.
        """
        self._check_running()
        task = self._call_task(func, args, kwds, settle)
        task.claim = claim
        serve = self._supervision.server_for(task, ready) if ready is not None else None
        self._submit([task], watch=serve is None)
        return serve

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
        per_task = IMAP_ADAPTIVE_ITEMS if chunksize is None else chunksize
        lookahead = self._processes * IMAP_TASKS_AHEAD * per_task
        # Big items (arrays) are bounded in bytes too, so the parent holds about what the
        # workers need to stay busy, as the standard library's pipe does.
        window = LookAhead(lookahead, least=self._processes * 2 * per_task, budget=self._processes * IMAP_BYTES_AHEAD)
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

        def submit(start: int, chunk: list[Any], sink: Callable[[bool, Any], None]) -> int:
            if meter is not None:
                inner = sink

                def sink(success: bool, values: Any) -> None:
                    if success:
                        meter.add(values)
                    inner(success, values)

            label = (name, start, start + len(chunk) - 1)
            task = self._make_task(func, MAP, chunk, len(chunk), sink, task_timeout, retries, label)
            self._submit([task])
            return task.size

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
            per_item = self._supervision.item_seconds
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
            for window in self._windows:
                window.stop()
        if already:
            return
        # Signal the workers from here: they exit while the supervisor wakes up to reap
        # them (it signals them again, and kills any that ignore SIGTERM).
        self._supervision.signal_workers(kill)
        self._supervision.wake()
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
        return self._supervision.processes()

    def statistics(self) -> dict[str, Any]:
        """A snapshot: state, workers, tasks pending and in flight, and per worker (past
        and present) where its time went: tasks finished, seconds computing them, seconds
        (un)pickling tasks and results, and seconds waiting for work."""
        with self._lock:
            supervision = self._supervision.statistics()
            return {
                "state": self._state.value,
                "workers": supervision["workers"],
                "pending": len(self._pending),
                "in_flight": supervision["in_flight"],
                "outstanding": len(self._outstanding),
                "per_worker": supervision["per_worker"],
            }


def _close_when_consumed(result: IMapIterator[Any], meter: Progress) -> None:
    with result._cond:
        result._cond.wait_for(lambda: result._length is not None and meter.done >= result._length)
    meter.close()
