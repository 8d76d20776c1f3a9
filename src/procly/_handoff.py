"""Handing file descriptors to a child that is being started.

A Connection (or any object built on a descriptor) passed as a Process argument under
spawn or forkserver is pickled in the parent. Its reducer calls :func:`share_fd`, which
records the descriptor in the :class:`Handoff` active for this thread and pickles only
its index. The starter then passes those descriptors to the child (``pass_fds`` for
spawn, ``SCM_RIGHTS`` for forkserver); the child installs them with :func:`install`
before unpickling, and each rebuilt object gets its own duplicate. Under fork nothing is
pickled and descriptors are simply inherited.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()

# Descriptors received from the parent; set in the child while its start data is unpickled.
_received: list[int] | None = None


class Handoff:
    """The descriptors referenced by one child's start data, in index order."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def add(self, fd: int) -> int:
        self.fds.append(fd)
        return len(self.fds) - 1


@contextmanager
def collecting() -> Iterator[Handoff]:
    """Collect the descriptors of everything pickled in this thread inside the block."""
    handoff = Handoff()
    previous = getattr(_local, "handoff", None)
    _local.handoff = handoff
    try:
        yield handoff
    finally:
        _local.handoff = previous


def is_collecting() -> bool:
    """Whether a child's start data is being pickled in this thread right now."""
    return getattr(_local, "handoff", None) is not None


def collected() -> int:
    """How many descriptors the active collection holds (0 outside one)."""
    handoff: Handoff | None = getattr(_local, "handoff", None)
    return 0 if handoff is None else len(handoff.fds)


def forget_after(count: int) -> None:
    """Drop what the active collection recorded after its first *count* descriptors (a
    pickling attempt that is abandoned and made again)."""
    handoff: Handoff | None = getattr(_local, "handoff", None)
    if handoff is not None:
        del handoff.fds[count:]


class SharedFd:
    """Stands for a descriptor inside pickled start data; unpickles to a duplicate of it."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return _rebuild_fd, (self.index,)


def share_fd(fd: int, what: str) -> SharedFd:
    """Record *fd* for the child being started; pickle the result in its place.

    Raises:
        RuntimeError: no child is being started in this thread: *what* can only reach
            another process as an argument of Process (or by inheritance under fork).
    """
    handoff: Handoff | None = getattr(_local, "handoff", None)
    if handoff is None:
        raise RuntimeError(
            f"{what} objects can only be passed to a child process as Process arguments "
            "or by inheritance, not pickled for other purposes"
        )
    return SharedFd(handoff.add(fd))


def _rebuild_fd(index: int) -> int:
    if _received is None:
        raise RuntimeError("a descriptor can only be unpickled in the child it was handed to")
    return os.dup(_received[index])


@contextmanager
def install(fds: list[int]) -> Iterator[None]:
    """In the child: make *fds* available to unpickling, then close the originals."""
    global _received
    _received = fds
    try:
        yield
    finally:
        _received = None
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
