"""The pure-Python fallback of ``procly._semlock``: the same semaphores, through ctypes.

Used when the C extension was not built (no compiler at install time) or when
``PROCLY_PURE_PYTHON=1`` is set. It places the very same object as the extension, an
unnamed POSIX semaphore (``sem_init(pshared=1)``), at the same place in the same memfd
arena, and calls libc's ``sem_*`` functions on it through ctypes. Both backends
therefore share semaphores freely: a child may use one while its parent uses the other.

The API and the behaviour are the extension's, method for method: ``acquire(block=True,
timeout=None)``, ``release()``, the ownership counting of recursive locks, ``_count``,
``_is_mine``, ``_get_value``, ``_is_zero``, ``_after_fork``, ``kind`` and ``maxvalue``.
Only the speed differs (each call is a Python call plus a ctypes call: see the
README's "Installing" section for the figures).

Timed waits measure the timeout on CLOCK_MONOTONIC: with ``sem_clockwait`` where libc
has it (glibc >= 2.30), otherwise with ``sem_timedwait`` in slices of at most 50 ms,
each re-checked against the monotonic clock (as the extension does; see its comment).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
import threading
import time
from typing import Any

__all__ = ["RECURSIVE_MUTEX", "SEMAPHORE", "SEM_SIZE", "SemLock"]

SEMAPHORE = 0
RECURSIVE_MUTEX = 1
# sizeof(sem_t): 4 longs on glibc and musl alike (32 bytes on 64-bit, 16 on 32-bit).
SEM_SIZE = 4 * ctypes.sizeof(ctypes.c_long)

_CLOCK_MONOTONIC = time.CLOCK_MONOTONIC
_SLICE = 0.05


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc_name() -> str | None:
    # The process's own symbols first (libc, and libpthread on glibc < 2.34, are loaded).
    if hasattr(ctypes.CDLL(None), "sem_init"):
        return None
    return ctypes.util.find_library("pthread") or ctypes.util.find_library("c")  # pragma: no cover


_name = _libc_name()
# Calls that may block go through CDLL, which releases the GIL around them; the others
# (trywait, post, getvalue, init: a few atomic instructions) through PyDLL, which keeps
# it: releasing and retaking the GIL would cost more than the call.
_libc = ctypes.CDLL(_name, use_errno=True)
_libc_quick = ctypes.PyDLL(_name, use_errno=True)
_sem_p = ctypes.c_void_p
_ts_p = ctypes.POINTER(_Timespec)


def _fn(name: str, *argtypes: Any, blocking: bool = False) -> Any:
    f = getattr(_libc if blocking else _libc_quick, name)
    f.argtypes = argtypes
    f.restype = ctypes.c_int
    return f


_sem_init = _fn("sem_init", _sem_p, ctypes.c_int, ctypes.c_uint)
_sem_wait = _fn("sem_wait", _sem_p, blocking=True)
_sem_trywait = _fn("sem_trywait", _sem_p)
_sem_timedwait = _fn("sem_timedwait", _sem_p, _ts_p, blocking=True)
_sem_post = _fn("sem_post", _sem_p)
_sem_getvalue = _fn("sem_getvalue", _sem_p, ctypes.POINTER(ctypes.c_int))
# PROCLY_NO_SEM_CLOCKWAIT=1 takes the older-libc path here too (for its tests).
_sem_clockwait = (
    _fn("sem_clockwait", _sem_p, ctypes.c_int, _ts_p, blocking=True)
    if hasattr(_libc, "sem_clockwait") and os.environ.get("PROCLY_NO_SEM_CLOCKWAIT", "") in ("", "0")
    else None
)

HAVE_SEM_CLOCKWAIT = _sem_clockwait is not None
_get_ident = threading.get_ident
# Without a GIL (free-threaded CPython), threads sharing one semaphore update its count
# of acquisitions under this lock; with the GIL, ``+=`` on an attribute cannot interleave
# with another thread's between the ctypes calls here.
_NO_GIL = not getattr(sys, "_is_gil_enabled", lambda: True)()
_COUNT_LOCK = threading.Lock()


def _oserror(err: int) -> OSError:
    return OSError(err, os.strerror(err))


def _timespec(seconds: float) -> _Timespec:
    whole = int(seconds)
    return _Timespec(whole, int((seconds - whole) * 1e9))


class SemLock:
    """SemLock(buffer, offset, kind, maxvalue, value=-1): a semaphore in shared memory.

    *buffer* is a writable buffer (an arena's mmap) holding the ``sem_t`` at *offset*.
    With *value* >= 0 this object is the creator and initialises the semaphore to
    *value*; otherwise it attaches to one initialised elsewhere.

    Raises:
        ValueError: unknown *kind*, already initialised, or the semaphore does not fit.
        OSError: ``sem_init`` failed.
    """

    # Slots, so that a subclass's __dict__ (which procly.synchronize pickles for a child)
    # holds only the subclass's own state, as with the extension's type.
    __slots__ = ("_anchor", "_sem", "_kind", "_maxvalue", "_owned", "_last_tid", "_out", "_out_ref", "__weakref__")

    def __init__(self, buffer: Any, offset: int, kind: int, maxvalue: int, value: int = -1) -> None:
        if kind not in (SEMAPHORE, RECURSIVE_MUTEX):
            raise ValueError("unrecognized kind")
        if getattr(self, "_sem", None) is not None:
            raise RuntimeError("SemLock already initialised")
        with memoryview(buffer) as view:
            size = view.nbytes
        if offset < 0 or offset + SEM_SIZE > size:
            raise ValueError("semaphore does not fit in the buffer")
        # from_buffer keeps the buffer exported (so the mapping cannot go away under us),
        # as the extension's Py_buffer does.
        anchor = (ctypes.c_char * SEM_SIZE).from_buffer(buffer, offset)
        sem = ctypes.c_void_p(ctypes.addressof(anchor))
        if value >= 0 and _sem_init(sem, 1, value) < 0:
            raise _oserror(ctypes.get_errno())
        self._anchor = anchor
        self._sem = sem
        self._out = ctypes.c_int()  # sem_getvalue's result, made once (hot path)
        self._out_ref = ctypes.byref(self._out)
        self._kind = kind
        self._maxvalue = maxvalue
        self._owned = 0  # acquisitions held by this process
        self._last_tid = 0  # thread that last acquired, in this process

    @property
    def kind(self) -> int:
        """0: semaphore, 1: recursive mutex."""
        return self._kind

    @property
    def maxvalue(self) -> int:
        """Largest value release() allows."""
        return self._maxvalue

    def _ready(self) -> Any:
        try:
            return self._sem
        except AttributeError:
            raise ValueError("SemLock not initialised") from None

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the semaphore; True if taken, False if *block* is false or *timeout* passed.

        Raises:
            OSError: the semaphore call failed (for example it was never initialised).
        """
        try:
            sem = self._sem
        except AttributeError:
            raise ValueError("SemLock not initialised") from None
        if self._kind == RECURSIVE_MUTEX and self._owned > 0 and self._last_tid == _get_ident():
            self._owned += 1  # only the owning thread gets here
            return True
        if _sem_trywait(sem) == 0:  # the fast path: no blocking call
            self._took()
            return True
        return self._acquire_waiting(sem, block, timeout)

    def _acquire_waiting(self, sem: Any, block: bool, timeout: float | None) -> bool:
        """acquire() once the semaphore was found taken: wait as *block* and *timeout* say."""
        blocking = bool(block)
        wait = -1.0
        if blocking and timeout is not None:
            wait = float(timeout)
            if not wait > 0.0:  # negative or NaN: do not wait
                wait = 0.0
        while _sem_trywait(sem) < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err != errno.EAGAIN:
                raise _oserror(err)
            if not blocking or wait == 0.0:
                return False
            if not self._wait_for_sem(sem, wait):
                return False
            break
        self._took()
        return True

    def _took(self) -> None:
        if _NO_GIL:
            with _COUNT_LOCK:
                self._owned += 1
        else:
            self._owned += 1
        self._last_tid = _get_ident()

    def _wait_for_sem(self, sem: Any, wait: float) -> bool:
        """Wait (GIL released by ctypes); True once taken, False at the timeout."""
        deadline = time.clock_gettime(_CLOCK_MONOTONIC) + wait if wait > 0.0 else None
        while True:
            if deadline is None:
                res = _sem_wait(sem)
            elif _sem_clockwait is not None:
                res = _sem_clockwait(sem, _CLOCK_MONOTONIC, ctypes.byref(_timespec(deadline)))
            else:
                remaining = deadline - time.clock_gettime(_CLOCK_MONOTONIC)
                if remaining <= 0.0:
                    return False
                until = time.clock_gettime(time.CLOCK_REALTIME) + min(remaining, _SLICE)
                res = _sem_timedwait(sem, ctypes.byref(_timespec(until)))
            if res == 0:
                return True
            err = ctypes.get_errno()
            if err == errno.EINTR:
                # Returning to the interpreter lets a signal handler run (and raise,
                # e.g. KeyboardInterrupt) before we wait again.
                continue
            if err == errno.ETIMEDOUT:
                if _sem_clockwait is None and deadline is not None:
                    continue  # one slice over: the loop re-checks the monotonic deadline
                return False
            raise _oserror(err)

    def release(self) -> None:
        """Give the semaphore back.

        Raises:
            AssertionError: a recursive lock released by a thread that does not own it.
            ValueError: released more times than *maxvalue* allows.
            OSError: the semaphore call failed.
        """
        try:
            sem = self._sem
        except AttributeError:
            raise ValueError("SemLock not initialised") from None
        if self._kind == RECURSIVE_MUTEX:
            if not (self._owned > 0 and self._last_tid == _get_ident()):
                raise AssertionError("attempt to release recursive lock not owned by thread")
            if self._owned > 1:
                self._owned -= 1
                return
        elif (self._value(sem) if _NO_GIL else self._value_into_out(sem)) >= self._maxvalue:
            raise ValueError("semaphore or lock released too many times")
        if _sem_post(sem) < 0:
            raise _oserror(ctypes.get_errno())
        if _NO_GIL:
            with _COUNT_LOCK:
                self._owned = max(0, self._owned - 1)
        elif self._owned > 0:
            self._owned -= 1

    def _value_into_out(self, sem: Any) -> int:
        # The value through this object's own c_int (no allocation): safe under the GIL.
        if _sem_getvalue(sem, self._out_ref) < 0:
            raise _oserror(ctypes.get_errno())
        return self._out.value

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    @staticmethod
    def _value(sem: Any) -> int:
        out = ctypes.c_int()
        if _sem_getvalue(sem, ctypes.byref(out)) < 0:
            raise _oserror(ctypes.get_errno())
        return out.value

    def _count(self) -> int:
        """Acquisitions held by this process."""
        return self._owned

    def _is_mine(self) -> bool:
        """Whether this thread holds it."""
        return self._owned > 0 and self._last_tid == _get_ident()

    def _get_value(self) -> int:
        """The semaphore's value (never negative)."""
        return max(0, self._value(self._ready()))

    def _is_zero(self) -> bool:
        """Whether the value is zero."""
        return self._value(self._ready()) <= 0

    def _after_fork(self) -> None:
        """Forget ownership (in a forked child)."""
        self._owned = 0
