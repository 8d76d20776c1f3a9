"""Locks and friends shared between processes (``multiprocessing.synchronize``).

Every primitive rests on :class:`SemLock`: an *unnamed* POSIX semaphore placed in a
shared memfd arena (``procly._heap``) by the C extension ``procly._semlock`` (or, without
it, by its ctypes fallback ``procly._semlock_ctypes``; see ``procly._semlock_backend``). Compared
with the standard library's named semaphores:

* nothing is ever created in /dev/shm, so nothing can leak there, even on SIGKILL;
  no resource-tracker process is needed;
* an uncontended acquire + release never enters the kernel and costs about what the
  standard library's does (see benchmarks/).

As in the standard library, these objects reach other processes by inheritance (fork)
or as Process arguments (spawn, forkserver); pickling them for anything else raises
RuntimeError.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from typing import Any, Callable

from . import _handoff, _heap
from ._finalize import register_after_fork
from ._process import current_process
from ._semlock_backend import semlock as _semlock

__all__ = ["Barrier", "BoundedSemaphore", "Condition", "Event", "Lock", "RLock", "SemLock", "Semaphore"]

SEM_VALUE_MAX = 2**31 - 1
SEMAPHORE = _semlock.SEMAPHORE
RECURSIVE_MUTEX = _semlock.RECURSIVE_MUTEX


class SemLock(_semlock.SemLock):
    """Base of Lock, RLock, Semaphore and BoundedSemaphore (acquire/release are C)."""

    def __init__(self, kind: int, value: int, maxvalue: int, *, ctx: Any = None) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError("semaphore initial value must be a non-negative integer")
        block = _heap.allocate(_semlock.SEM_SIZE, _heap.CACHE_LINE)
        super().__init__(block.arena.buffer, block.offset, kind, maxvalue, value)
        self._block = block
        register_after_fork(self, SemLock._after_fork)

    @property
    def _semlock(self) -> SemLock:
        # CPython's classes wrap a separate _semlock object; ours is the object itself.
        return self

    def __reduce__(self) -> Any:
        if not _handoff.is_collecting():
            raise RuntimeError(
                f"{type(self).__name__} objects should only be shared between processes through inheritance"
            )
        return _rebuild_semlock, (type(self), self._block, self.kind, self.maxvalue, self.__dict__)

    def __getstate__(self) -> Any:  # pragma: no cover - __reduce__ takes precedence
        return self.__reduce__()


def _rebuild_semlock(cls: type[SemLock], block: _heap.Block, kind: int, maxvalue: int,
                     state: dict[str, Any]) -> SemLock:  # fmt: skip
    obj = cls.__new__(cls)
    _semlock.SemLock.__init__(obj, block.arena.buffer, block.offset, kind, maxvalue)
    obj.__dict__.update(state)
    obj._block = block
    register_after_fork(obj, SemLock._after_fork)
    return obj


class Semaphore(SemLock):
    """A counting semaphore shared between processes."""

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        super().__init__(SEMAPHORE, value, SEM_VALUE_MAX, ctx=ctx)

    def get_value(self) -> int:
        """The current value."""
        return self._get_value()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self._get_value()})>"


class BoundedSemaphore(Semaphore):
    """A semaphore whose release() raises ValueError past its initial value."""

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        SemLock.__init__(self, SEMAPHORE, value, value, ctx=ctx)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self._get_value()}, maxvalue={self.maxvalue})>"


def _owner_repr(lock: SemLock) -> str:
    if lock._is_mine():
        name = current_process().name
        thread = threading.current_thread().name
        return name if thread == "MainThread" else f"{name}|{thread}"
    if lock._get_value() == 1:
        return "None"
    if lock._count() > 0:
        return "SomeOtherThread"
    return "SomeOtherProcess"


class Lock(SemLock):
    """A non-recursive lock; releasing it when unlocked raises ValueError."""

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(SEMAPHORE, 1, 1, ctx=ctx)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(owner={_owner_repr(self)})>"


class RLock(SemLock):
    """A recursive lock: its owner may acquire it again; only the owner may release it."""

    def __init__(self, *, ctx: Any = None) -> None:
        super().__init__(RECURSIVE_MUTEX, 1, 1, ctx=ctx)

    def __repr__(self) -> str:
        owner = _owner_repr(self)
        return f"<{type(self).__name__}({owner}, {self._count() if owner != 'None' else 0})>"


class Condition:
    """A condition variable shared between processes (on an RLock by default).

    Waiting is built from three semaphores: sleepers announce themselves, a notifier
    hands out wake-ups and waits until each woken sleeper has acknowledged, so a
    wake-up is never lost nor given to a thread that starts waiting later.
    """

    def __init__(self, lock: Any = None, *, ctx: Any = None) -> None:
        self._lock = lock if lock is not None else RLock()
        self._sleeping_count = Semaphore(0)
        self._woken_count = Semaphore(0)
        self._wait_semaphore = Semaphore(0)
        self._bind()

    def _bind(self) -> None:
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __getstate__(self) -> Any:
        return (self._lock, self._sleeping_count, self._woken_count, self._wait_semaphore)

    def __setstate__(self, state: Any) -> None:
        self._lock, self._sleeping_count, self._woken_count, self._wait_semaphore = state
        self._bind()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> None:
        self._lock.release()

    def __repr__(self) -> str:
        sleepers = self._sleeping_count._get_value() - self._woken_count._get_value()
        return f"<{type(self).__name__}({self._lock}, {sleepers})>"

    def _check_owned(self, what: str) -> None:
        if not self._lock._is_mine():
            raise AssertionError(f"must acquire() condition before using {what}()")

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, sleep until notified or *timeout*, re-acquire; True if notified.

        Raises:
            AssertionError: the caller does not hold the lock.
        """
        self._check_owned("wait")
        self._sleeping_count.release()
        depth = self._lock._count()
        for _ in range(depth):
            self._lock.release()
        try:
            return self._wait_semaphore.acquire(True, timeout)
        finally:
            self._woken_count.release()
            for _ in range(depth):
                self._lock.acquire()

    def notify(self, n: int = 1) -> None:
        """Wake up to *n* waiters.

        Raises:
            AssertionError: the caller does not hold the lock.
        """
        self._check_owned("notify")
        if self._wait_semaphore.acquire(False):
            raise AssertionError("condition's wait semaphore should be zero")
        # Sleepers that timed out since the last notify have woken already: forget them.
        while self._woken_count.acquire(False):
            self._sleeping_count.acquire(False)
        woken = 0
        while woken < n and self._sleeping_count.acquire(False):
            self._wait_semaphore.release()
            woken += 1
        if woken:
            for _ in range(woken):
                self._woken_count.acquire()
            # A sleeper may have timed out instead of taking its wake-up: take it back.
            while self._wait_semaphore.acquire(False):
                pass

    def notify_all(self) -> None:
        """Wake every waiter."""
        self.notify(sys.maxsize)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Wait until *predicate()* is true or *timeout* passes; return its last value."""
        result = predicate()
        if result:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        wait_time = timeout
        while not result:
            if deadline is not None:
                wait_time = deadline - time.monotonic()
                if wait_time <= 0:
                    break
            self.wait(wait_time)
            result = predicate()
        return result


class Event:
    """A flag processes can set, clear and wait for."""

    def __init__(self, *, ctx: Any = None) -> None:
        self._cond = Condition(Lock())
        self._flag = Semaphore(0)

    def is_set(self) -> bool:
        with self._cond:
            if self._flag.acquire(False):
                self._flag.release()
                return True
            return False

    def set(self) -> None:
        with self._cond:
            self._flag.acquire(False)
            self._flag.release()
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or *timeout* passes; return the flag."""
        with self._cond:
            if self._flag.acquire(False):
                self._flag.release()
                return True
            self._cond.wait(timeout)
            if self._flag.acquire(False):
                self._flag.release()
                return True
            return False

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} at {id(self):#x} {'set' if self.is_set() else 'unset'}>"


class Barrier(threading.Barrier):
    """threading.Barrier for processes: its state lives in shared memory."""

    def __init__(
        self, parties: int, action: Callable[[], Any] | None = None, timeout: float | None = None, *, ctx: Any = None
    ) -> None:
        block = _heap.allocate(2 * ctypes.sizeof(ctypes.c_int))
        self.__setstate__((parties, action, timeout, Condition(Lock()), block))
        self._state = 0
        self._count = 0

    def __setstate__(self, state: Any) -> None:
        self._parties, self._action, self._timeout, self._cond, self._block = state
        self._shared = (ctypes.c_int * 2).from_buffer(self._block.arena.buffer, self._block.offset)

    def __getstate__(self) -> Any:
        return (self._parties, self._action, self._timeout, self._cond, self._block)

    @property
    def _state(self) -> int:
        return self._shared[0]

    @_state.setter
    def _state(self, value: int) -> None:
        self._shared[0] = value

    @property
    def _count(self) -> int:
        return self._shared[1]

    @_count.setter
    def _count(self, value: int) -> None:
        self._shared[1] = value


# --------------------------------------------------------------------------- standard library names

from ._compat import lazy_submodules as _lazy_submodules  # noqa: E402


def sem_unlink(name: str) -> None:
    """Remove the POSIX named semaphore *name* (``/dev/shm/sem.NAME`` on Linux).

    procly's own locks are unnamed and never need this; it is for named semaphores
    other code created.

    Raises:
        FileNotFoundError: no semaphore has that name.
        ValueError: *name* is not a valid semaphore name.
    """
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare:
        raise ValueError(f"invalid semaphore name {name!r}")
    os.unlink(f"/dev/shm/sem.{bare}")


__getattr__ = _lazy_submodules(__name__, "context", "process", "util")
