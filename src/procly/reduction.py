"""Serialization used for every message procly sends (``multiprocessing.reduction``).

pickle protocol 5 with cloudpickle for lambdas, closures and ``__main__`` objects, and
large buffers kept out of the pickle stream. See :mod:`procly._serialization`.
"""

from __future__ import annotations

import io
import os
import socket
from typing import Any

from ._compat import lazy_submodules as _lazy_submodules
from ._pickler import Pickler as Pickler
from ._serialization import OUT_OF_BAND_THRESHOLD as OUT_OF_BAND_THRESHOLD
from ._serialization import PROTOCOL as PROTOCOL
from ._serialization import dumps as dumps
from ._serialization import loads as loads
from ._serialization import register as register

__all__ = ["ForkingPickler", "Pickler", "dump", "dumps", "loads", "recv_handle", "register", "send_handle"]

HAVE_SEND_HANDLE = True


class ForkingPickler(Pickler):
    """The standard library's name for procly's Pickler, with its classmethods."""

    @classmethod
    def register(cls, type_: type, reduce: Any) -> None:
        register(type_, reduce)

    @classmethod
    def dumps(cls, obj: Any, protocol: int | None = None) -> memoryview:
        return memoryview(dumps(obj))

    loads = staticmethod(loads)


def dump(obj: Any, file: io.IOBase, protocol: int | None = None) -> None:
    """Pickle *obj* to *file* with procly's Pickler."""
    file.write(dumps(obj))


def _socket_for(conn: Any) -> socket.socket:
    # A socket object over a duplicate of the connection's descriptor: closing it
    # leaves the connection open.
    return socket.socket(fileno=os.dup(conn.fileno()))


def send_handle(conn: Any, handle: int, destination_pid: int | None = None) -> None:
    """Send the file descriptor *handle* over *conn* (a Unix-socket Connection: a duplex Pipe).

    Raises:
        OSError: *conn* is not a Unix socket, or the descriptor is invalid.
    """
    with _socket_for(conn) as sock:
        socket.send_fds(sock, [b"\x01"], [handle])


def recv_handle(conn: Any) -> int:
    """Receive a file descriptor sent with :func:`send_handle`; the caller owns it.

    Raises:
        RuntimeError: data arrived without a descriptor.
        EOFError: the peer closed the connection.
    """
    with _socket_for(conn) as sock:
        msg, fds, _, _ = socket.recv_fds(sock, 1, 1)
    if not msg and not fds:
        raise EOFError("peer closed the connection")
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise RuntimeError("received data without a file descriptor")
    return fds[0]


# --------------------------------------------------------------------------- standard library names

ACKNOWLEDGE = False  # Linux passes descriptors without an acknowledgement round trip


def sendfds(sock: socket.socket, fds: list[int]) -> None:
    """Send the descriptors *fds* over the Unix socket *sock* (``SCM_RIGHTS``).

    Raises:
        OSError: the socket cannot pass them.
    """
    socket.send_fds(sock, [bytes([len(fds) % 256])], list(fds))


def recvfds(sock: socket.socket, size: int) -> list[int]:
    """Receive *size* descriptors sent with :func:`sendfds`; the caller owns them.

    Raises:
        EOFError: the peer closed the socket.
        RuntimeError: a different number of descriptors arrived.
    """
    msg, fds, _, _ = socket.recv_fds(sock, 1, size)
    if not msg and not fds:
        raise EOFError("peer closed the socket")
    if len(fds) != size:
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"received {len(fds)} descriptors, expected {size}")
    return list(fds)


class _HandedFd:
    """A descriptor handed to the child being started; ``detach()`` in the child gives its copy."""

    def __init__(self, shared: Any) -> None:
        self._fd = shared  # a _handoff.SharedFd here; an int once unpickled in the child

    def detach(self) -> int:
        """The child's descriptor (the caller owns it).

        Raises:
            RuntimeError: called in the parent, before the object reached the child.
        """
        if not isinstance(self._fd, int):
            raise RuntimeError("this descriptor handle can only be detached in the child it was pickled for")
        fd, self._fd = self._fd, None
        return fd


def DupFd(fd: int) -> Any:  # noqa: N802 - the standard library's name
    """A picklable handle on a duplicate of *fd*; ``handle.detach()`` in the receiving process gives it.

    While a child is being started (the object is one of its arguments) the descriptor
    travels with its start data; anywhere else it is lent through this process's
    descriptor lending desk (:class:`procly.resource_sharer.DupFd`).
    """
    from .context import get_spawning_popen

    popen = get_spawning_popen()
    if popen is not None:
        return popen.DupFd(popen.duplicate_for_child(fd))
    from .resource_sharer import DupFd as SharedDupFd

    return SharedDupFd(fd)


class AbstractReducer:
    """Base of a replacement reduction module, as in the standard library.

    procly serializes everything with one Pickler (cloudpickle-capable, buffers out of
    band): a context's ``reducer`` cannot be replaced, so a subclass of this only
    carries the functions for code that reads them from it.
    """

    ForkingPickler = ForkingPickler
    register = staticmethod(register)
    dump = staticmethod(dump)
    send_handle = staticmethod(send_handle)
    recv_handle = staticmethod(recv_handle)
    DupFd = staticmethod(DupFd)

    def __init__(self, *args: Any) -> None:
        pass


__getattr__ = _lazy_submodules(__name__, "context")


__all__ += ["ACKNOWLEDGE", "AbstractReducer", "DupFd", "recvfds", "sendfds"]
