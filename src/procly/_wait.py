"""wait(): block until any of several connections, sockets or sentinels is ready."""

from __future__ import annotations

import select
from collections.abc import Iterable

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

__all__ = ["poll_ms", "wait"]


_READY = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


def _fileno(obj: Any) -> int:
    if isinstance(obj, int):
        return obj
    try:
        return int(obj.fileno())
    except AttributeError:
        raise TypeError(f"wait() needs connections, sockets, sentinels or descriptors, got {obj!r}") from None


def poll_ms(timeout: float | None) -> int:
    """*timeout* seconds as the milliseconds ``poll()`` takes: rounded up, so a wait never
    ends before *timeout*; 0 for a negative one, -1 (no limit) for None. Raises nothing."""
    if timeout is None:
        return -1
    return max(0, int(timeout * 1000 + 0.999))


def wait(object_list: Iterable[T], timeout: float | None = None) -> list[T]:
    """Wait until an object in *object_list* is ready; return the ready ones.

    An object is a Connection, a socket, a process sentinel, or anything with
    ``fileno()``; it is ready when it can be read without blocking or its peer is gone.
    Returns an empty list when *timeout* seconds pass first (``None``: no limit).

    Raises:
        TypeError: an object has no file descriptor.
        procly.ConnectionClosedError: a Connection in the list was closed.
    """
    objects = list(object_list)
    by_fd: dict[int, list[T]] = {}
    poller = select.poll()
    for obj in objects:
        fd = _fileno(obj)
        if fd not in by_fd:
            poller.register(fd, _READY)
            by_fd[fd] = []
        by_fd[fd].append(obj)
    ready_fds = {fd for fd, _ in poller.poll(poll_ms(timeout))}  # EINTR is retried with the remaining time
    return [obj for obj in objects if _fileno(obj) in ready_fds]
