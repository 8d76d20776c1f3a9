"""Descriptor helpers: write every byte, read the descriptors a message carried, ask a
Unix socket who is at its other end. A leaf: it imports nothing of procly's."""

from __future__ import annotations

import errno
import os
import struct

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    import socket
    from typing import Any

__all__ = ["close_quietly", "descriptors_in", "peer_credentials", "pwrite_all", "write_all"]


def write_all(fd: int, data: Any) -> None:
    """Write every byte of the bytes-like *data* to *fd* (a blocking descriptor).

    Raises:
        OSError: as os.write(), or ENOSPC where a write makes no progress.
    """
    view = data if isinstance(data, bytes) else memoryview(data).cast("B")
    total = len(view)
    written = os.write(fd, view)
    if written == total:
        return
    view = memoryview(view)
    while written < total:
        written += _progress(os.write(fd, view[written:]))


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """Write every byte of the bytes-like *data* to *fd* at *offset* (a regular file).

    Raises:
        OSError: as os.pwrite(), or ENOSPC where a write makes no progress.
    """
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += _progress(os.pwrite(fd, view[done:], offset + done))


def _progress(written: int) -> int:
    # A write that takes nothing would be retried for ever.
    if written == 0:
        raise OSError(errno.ENOSPC, "a write made no progress")
    return written


def descriptors_in(ancillary: list[Any]) -> list[int]:
    """The descriptors carried (``SCM_RIGHTS``) in the ancillary data of a ``recvmsg``."""
    fds: list[int] = []
    if not ancillary:
        return fds
    import socket  # imported already (a recvmsg was made), but not at the top: see _connection

    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
    return fds


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of the Unix socket *sock* (``SO_PEERCRED``)."""
    import socket

    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def close_quietly(fd: int) -> None:
    """Close *fd*, ignoring that it may be closed already."""
    try:
        os.close(fd)
    except OSError:
        pass
