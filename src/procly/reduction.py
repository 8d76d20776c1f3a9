"""Serialization used for every message procly sends (``multiprocessing.reduction``).

pickle protocol 5 with cloudpickle for lambdas, closures and ``__main__`` objects, and
large buffers kept out of the pickle stream. See :mod:`procly._serialization`.
"""

from __future__ import annotations

import io
import os
import socket
from typing import Any

from ._serialization import OUT_OF_BAND_THRESHOLD as OUT_OF_BAND_THRESHOLD
from ._serialization import PROTOCOL as PROTOCOL
from ._serialization import BufferTransport as BufferTransport
from ._serialization import Pickler as Pickler
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
    def dumps(cls, obj: Any, protocol: int | None = None) -> memoryview:  # type: ignore[override]
        return memoryview(dumps(obj))

    loads = staticmethod(loads)


def dump(obj: Any, file: io.IOBase, protocol: int | None = None) -> None:
    """Pickle *obj* to *file* with procly's Pickler."""
    file.write(dumps(obj))  # type: ignore[arg-type]


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
