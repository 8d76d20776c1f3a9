"""The procly API on threads (``multiprocessing.dummy``).

``Process`` is a thread, ``Pool`` a :class:`~procly.pool.ThreadPool`, the locks and
queues are ``threading``'s and ``queue``'s: code written for processes runs on threads
by changing one import.
"""

from __future__ import annotations

import array
import threading
from queue import Queue
from threading import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore
from typing import Any

from .._thread_pool import ThreadPool
from ..managers import Namespace
from .connection import Pipe

__all__ = [
    "Array", "Barrier", "BoundedSemaphore", "Condition", "Event", "JoinableQueue", "Lock", "Manager",
    "Namespace", "Pipe", "Pool", "Process", "Queue", "RLock", "Semaphore", "Value", "active_children",
    "current_process", "freeze_support", "shutdown",
]  # fmt: skip

JoinableQueue = Queue


class DummyProcess(threading.Thread):
    """A thread with the parts of the Process interface that make sense for threads."""

    def __init__(
        self, group: None = None, target: Any = None, name: str | None = None, args: Any = (), kwargs: Any = None
    ) -> None:
        threading.Thread.__init__(self, group, target, name, args, kwargs or {})
        self._pid = None
        self._children: dict[Any, Any] = {}
        self._start_called = False
        self._parent = current_process()

    def start(self) -> None:
        if self._parent is not current_process():
            raise RuntimeError(f"Parent is {self._parent!r} but current_process is {current_process()!r}")
        self._start_called = True
        if hasattr(self._parent, "_children"):
            self._parent._children[self] = None
        threading.Thread.start(self)

    @property
    def exitcode(self) -> int | None:
        return 0 if self._start_called and not self.is_alive() else None


Process = DummyProcess
current_process = threading.current_thread
current_process()._children = {}  # type: ignore[attr-defined]


def active_children() -> list[DummyProcess]:
    children = current_process()._children  # type: ignore[attr-defined]
    for child in list(children):
        if not child.is_alive():
            children.pop(child, None)
    return list(children)


def freeze_support() -> None:
    pass


dict = dict  # noqa: A001 - the Manager interface
list = list  # noqa: A001


def Array(typecode: str, sequence: Any, lock: bool = True) -> array.array[Any]:  # noqa: N802
    return array.array(typecode, sequence)


class Value:
    """A value with a ``.value`` attribute (no lock is needed between threads of one process)."""

    def __init__(self, typecode: str, value: Any, lock: bool = True) -> None:
        self._typecode = typecode
        self._value = value

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        self._value = value

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._typecode!r}, {self._value!r})>"


def Manager() -> Any:  # noqa: N802
    """This module itself: its dict, list, Namespace, Queue, Lock... are the "managed" types."""
    import sys

    return sys.modules[__name__]


def shutdown() -> None:
    pass


def Pool(processes: int | None = None, initializer: Any = None, initargs: Any = ()) -> ThreadPool:  # noqa: N802
    """A ThreadPool."""
    return ThreadPool(processes, initializer, initargs)
