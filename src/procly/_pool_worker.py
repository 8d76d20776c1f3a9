"""The loop a pool worker process runs.

The messages to and from the pool, their shapes and fields: ``_pool_messages``.

The function travels once per worker (``func_bytes`` only the first time a key is
seen); tasks run strictly one after another, so the first task the pool has not heard
back about is the one running — that is how a death is pinned to its task.
"""

from __future__ import annotations

import collections
import os
import pickle
import signal
import time

from . import _inner_threads, _serialization, _state
from . import _pool_messages as messages
from ._connection import BufferedConnection
from ._errors import RemoteTraceback as RemoteTraceback  # moved to _errors; re-exported here
from ._errors import rebuild_exception as rebuild_exception
from ._pool_messages import APPLY, MAP, STARMAP
from ._spin import Spinner

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["APPLY", "MAP", "STARMAP", "MaybeEncodingError", "RemoteTraceback", "rebuild_exception", "worker_main",
           "worker_state"]  # fmt: skip

_FUNC_CACHE_SIZE = 128
# How long an idle worker watches for its next task before it sleeps. Longer than the
# default spin: a caller doing apply().get() in a loop sends the next task some 100-200
# µs after a reply (its own thread has to wake up first), and a worker still awake
# then saves a scheduler wake-up, about a third of the round trip on a VM.
IDLE_SPIN_SECONDS = 0.0003

#: Per-worker state that initializers and tasks share (``procly.pool.worker_state``).
worker_state: dict[str, Any] = {}


class _Unpicklable(Exception):
    """Stands in for an exception that could not be sent back as itself."""


class MaybeEncodingError(pickle.PicklingError):
    """A task's result could not be pickled to send it back (the standard library's name).

    Also a ``pickle.PicklingError``, so ``except pickle.PicklingError`` catches it.

    ``exc`` is the repr of the pickling error, ``value`` the repr of the result.
    """

    def __init__(self, exc: object, value: object) -> None:
        self.exc = repr(exc)
        self.value = repr(value)
        super().__init__(self.exc, self.value)

    def __str__(self) -> str:
        return f"Error sending result: '{self.value}'. Reason: '{self.exc}'"


def _run(func: Callable[..., Any], mode: int, items: Any) -> list[Any]:
    if mode == MAP:
        return [func(item) for item in items]
    if mode == STARMAP:
        return [func(*item) for item in items]
    args, kwargs = items
    return [func(*args, **kwargs)]


def _error_payload(exc: BaseException) -> tuple[BaseException, str]:
    import traceback  # when a task first fails: a pool that never sees one does without it

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        copy = _serialization.loads(_serialization.dumps(exc))
        if type(copy) is not type(exc):
            raise TypeError("does not pickle as itself")
    except Exception as problem:  # noqa: BLE001 - any failure means: send a stand-in
        return _Unpicklable(f"{type(exc).__name__}: {exc} (could not be sent back: {problem})"), tb
    return exc, tb


def _task_failure(exc: BaseException, unpickling: bool) -> tuple[BaseException, str]:
    """What a failed task sends back for *exc*; *unpickling*: an executor's task that did
    not unpickle (it fails with ``BrokenProcessPool``)."""
    return _error_payload(_unpickling_failed(exc) if unpickling else exc)


def _unpickling_failed(exc: BaseException) -> BaseException:
    """The error an executor's future gets for a task that did not unpickle in the worker."""
    from ._errors import BrokenProcessPool

    error = BrokenProcessPool(f"the task could not be unpickled in the worker: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def resident_bytes() -> int:
    """This process's resident memory (RSS), from /proc."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE_SIZE


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def worker_main(
    conn: Any,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    maxtasks: int | None,
    max_memory: int | None = None,
    executor: bool = False,
    *,
    inner_threads: int = 0,
    env: dict[str, str] | None = None,
) -> None:
    """Run tasks from *conn* until told to stop, the pool goes away, *maxtasks* are done,
    or (checked between tasks) the resident memory exceeds *max_memory* bytes.

    Each reply carries the task's timings: seconds computing, seconds unpickling its
    function and arguments plus pickling and sending the previous reply, and seconds
    spent waiting for this task.

    *executor* (a ``ProcessPoolExecutor``'s pool) follows ``concurrent.futures``: an
    initializer that raises is logged to the ``concurrent.futures`` logger and reported
    to the pool (which breaks), any exception of a task (``SystemExit`` too) is its
    result, and a task that does not unpickle fails with ``BrokenProcessPool``.
    """
    if not _set_up(conn, initializer, initargs, executor, inner_threads, env):
        return
    catch = BaseException if executor else Exception
    funcs: collections.OrderedDict[int, Callable[..., Any]] = collections.OrderedDict()
    conn = BufferedConnection.adopt(conn)  # one read takes every task waiting
    spinner = Spinner(conn.fileno())
    done = 0
    previous_send = 0.0
    clock = time.perf_counter
    bundle: list[tuple[Any, ...]] = []
    while maxtasks is None or done < maxtasks:
        waiting_since = clock()
        if not bundle:
            sent = _next_bundle(conn, spinner)
            if sent is None:
                return
            bundle = sent
        received = clock()
        task_id, key, func_bytes, mode, payload, buffers = bundle.pop()
        started = received
        unpickled = False
        try:
            if func_bytes is not None:  # the first task with this function
                _remember(funcs, key, func_bytes)
            func = funcs[key]
            funcs.move_to_end(key)
            items = pickle.loads(payload, buffers=buffers)
            unpickled = True
            started = clock()
            values: Any = _run(func, mode, items)
            ok = True
            computing = clock() - started
        except catch as exc:  # noqa: BLE001 - reported to the caller
            ok = False
            values = _task_failure(exc, executor and not unpickled)
            computing = clock() - started
        reply = messages.result(task_id, ok, values, computing, started - received + previous_send,
                                received - waiting_since)  # fmt: skip
        # Let go of the arguments first: a memfd they were mapped from is then named back
        # to the parent with this very reply, for its next big arguments.
        items = payload = buffers = None
        sending = clock()
        # Each reply goes out as soon as its task ends, never batched: the first task
        # without a reply is the one running, which is how the pool names the task a
        # dead worker took with it.
        try:
            if ok and _serialization.only_small_scalars(values):
                # Numbers or text: the C pickler alone, and nothing can go out of band.
                conn._send_frame(conn.fileno(), pickle.dumps(reply, _serialization.PROTOCOL))
            else:
                conn.send(reply)
        except catch as exc:  # noqa: BLE001 - e.g. an unpicklable result
            _send_unsendable(conn, reply, exc, values)
        previous_send = clock() - sending
        done += 1
        if max_memory is not None and resident_bytes() > max_memory:
            break  # between tasks: the pool replaces this worker
    conn.send(messages.BYE)


def _set_up(conn: Any, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], executor: bool,
            inner_threads: int, env: dict[str, str] | None) -> bool:  # fmt: skip
    """Prepare this process to be a pool worker and run the *initializer*; False when an
    executor's initializer raised (then logged and reported to the pool: the worker
    ends). A pool's initializer that raises ends the worker with the error."""
    # Ctrl-C is the parent's business: it terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _state.become_pool_worker()
    if env:
        os.environ.update(env)  # for libraries loaded from now on
    _inner_threads.limit_loaded_libraries(inner_threads)  # and those loaded already (fork)
    if initializer is None:
        return True
    if not executor:
        initializer(*initargs)
        return True
    try:
        initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001 - reported, the executor breaks
        import logging  # only an executor's failed initializer logs

        logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
        try:
            conn.send(messages.init_failed(f"{type(exc).__name__}: {exc}"))
        except Exception:  # noqa: BLE001 - the pool sees the exit anyway
            pass
        return False
    return True


def _remember(funcs: collections.OrderedDict[int, Callable[..., Any]], key: int, func_bytes: bytes) -> None:
    """Unpickle a function sent for the first time into the cache of *funcs* (the least
    recently used one goes when it is full)."""
    funcs[key] = _serialization.loads(func_bytes)
    if len(funcs) > _FUNC_CACHE_SIZE:
        funcs.popitem(last=False)


def _next_bundle(conn: BufferedConnection, spinner: Spinner) -> list[tuple[Any, ...]] | None:
    """The next tasks the pool sent, in the order sent from the end (for pop()); None
    when told to stop or the pool went away."""
    try:
        if not conn.buffered():
            spinner.wait(IDLE_SPIN_SECONDS)  # the next task often comes soon after the last reply
        bundle = conn.recv()
    except (EOFError, OSError):
        return None
    if bundle is messages.STOP:
        return None
    bundle.reverse()  # popped from the end, in the order sent
    return bundle  # type: ignore[no-any-return]


def _send_unsendable(conn: BufferedConnection, reply: Any, exc: BaseException, values: Any) -> None:
    """Send the failure that replaces a *reply* that could not be sent (*exc*, e.g. an
    unpicklable result: ``MaybeEncodingError``; an executor's task gets a ``SystemExit``
    raised while pickling as itself)."""
    wrapped = MaybeEncodingError(exc, values) if isinstance(exc, Exception) else exc
    conn.send(messages.failed_result(reply, _error_payload(wrapped) if wrapped is exc else (wrapped, "")))
