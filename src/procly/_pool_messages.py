"""The messages between a pool and its workers, defined once.

They travel as plain tuples inside Connection frames (``_frames``): a tuple of ints,
bytes and PickleBuffers pickles without inspection, and the pool's hot path reads
them by position. This module names every position and every shape; nothing else
builds or reads them by hand.

Pool -> worker, over the worker's own connection::

    [task(...), ...]   a bundle of tasks: run each in order, answer each on its own
    STOP               exit

Worker -> pool::

    result(...)        one per task, as soon as it ends
    BYE                left by itself (maxtasksperchild, max_memory_per_child)
    init_failed(text)  an executor's initializer raised; the worker exits
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = [
    "APPLY",
    "BYE",
    "MAP",
    "STARMAP",
    "STOP",
    "Task",
    "MessageKind",
    "RetireReason",
    "WorkerCounters",
    "failed_result",
    "init_failed",
    "init_failed_text",
    "is_result",
    "kind_of",
    "result",
    "task",
]

# -- the call shape of a task ---------------------------------------------------------

#: ``[func(item) for item in items]``, ``[func(*item) for item in items]``,
#: ``[func(*args, **kwargs)]`` with ``items = (args, kwargs)``.
MAP, STARMAP, APPLY = 0, 1, 2

# -- pool -> worker ---------------------------------------------------------------------

#: The message that tells a worker to exit.
STOP = None


def task(task_id: int, func_key: int, func_bytes: bytes | None, mode: int, payload: Any,
         buffers: list[Any]) -> tuple[Any, ...]:  # fmt: skip
    """One task of a bundle: *func_bytes* only the first time this worker sees
    *func_key*; *payload* the pickled items (bytes or a PickleBuffer), *buffers* their
    out-of-band buffers. A worker reads it as
    ``task_id, func_key, func_bytes, mode, payload, buffers = message``."""
    return (task_id, func_key, func_bytes, mode, payload, buffers)


# -- worker -> pool ---------------------------------------------------------------------

#: A worker that leaves by itself, after its last result.
BYE = ("bye",)
_RESULT_LENGTH = 6


def result(task_id: int, ok: bool, values: Any, computing: float, serializing: float,
           waiting: float) -> tuple[Any, ...]:  # fmt: skip
    """The answer to one task: *values* (a list, one per item) if *ok*, else
    ``(exception, traceback text)``; seconds computing it, seconds (un)pickling (its
    function and arguments, plus the previous answer), seconds the worker waited for it.
    The pool reads it as
    ``task_id, ok, values, computing, serializing, waiting = message``."""
    return (task_id, ok, values, computing, serializing, waiting)


def failed_result(message: tuple[Any, ...], error: tuple[BaseException, str]) -> tuple[Any, ...]:
    """*message* (a result) turned into a failure with *error*, timings kept."""
    return (message[0], False, error, *message[3:])


def init_failed(text: str) -> tuple[str, str]:
    """An executor's worker whose initializer raised *text* (it exits next)."""
    return ("init-failed", text)


def init_failed_text(message: tuple[Any, ...]) -> str:
    """What the initializer raised, from an ``init_failed`` message."""
    return str(message[1])


class MessageKind(enum.Enum):
    """What a message from a worker is."""

    RESULT = "result"
    BYE = "bye"
    INIT_FAILED = "init-failed"


def kind_of(message: tuple[Any, ...]) -> MessageKind:
    """The kind of a message from a worker (told apart by its length: see the module)."""
    n = len(message)
    if n == _RESULT_LENGTH:
        return MessageKind.RESULT
    if n == len(BYE):
        return MessageKind.BYE
    return MessageKind.INIT_FAILED


def is_result(message: tuple[Any, ...]) -> bool:
    """Whether a message from a worker is a ``result`` (the hot path's test)."""
    return len(message) == _RESULT_LENGTH


# -- the pool's own records ----------------------------------------------------------------


class RetireReason(enum.Enum):
    """Why the supervisor removes a worker."""

    #: It left by itself (``BYE``: maxtasksperchild, max_memory_per_child): nothing failed.
    LEFT = "left"
    #: It died: its running task fails with WorkerLostError (or runs again, with retries).
    LOST = "lost"
    #: Its task ran past its deadline: it was killed, the task fails with TaskTimeoutError.
    TIMEOUT = "timeout"
    #: Its task was cancelled: it was killed, the task fails with CancelledError.
    CANCELLED = "cancelled"


class WorkerCounters:
    """Where one worker's time went (past and present workers, by name): tasks finished,
    seconds computing them, seconds (un)pickling tasks and results, seconds waiting."""

    __slots__ = ("compute_seconds", "serialize_seconds", "tasks", "wait_seconds")

    def __init__(self) -> None:
        self.tasks = 0
        self.compute_seconds = 0.0
        self.serialize_seconds = 0.0
        self.wait_seconds = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counters as ``Pool.statistics()`` shows them."""
        return {"tasks": self.tasks, "compute_seconds": self.compute_seconds,
                "serialize_seconds": self.serialize_seconds, "wait_seconds": self.wait_seconds}  # fmt: skip


class Task:
    """A unit of work for one worker: one call, or one chunk of a map (the pool's record
    of it, from submission to its outcome; what goes on the wire is ``task()``)."""

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
