"""A worker's messages to its coordinator, written without ever holding the worker's loop.

A tick of a flow with a thousand request names is a few hundred kilobytes: more than a
socket's buffer. Written with a blocking send, it would stall every connection of the
worker for as long as the coordinator takes to read (a slow ``on_tick`` callback, a
paused terminal). The outbox writes what the socket takes and keeps the rest, in order,
until the loop says the socket has room again. The frames are those of
:meth:`procly.connection.Connection.send`, so the coordinator reads them with ``recv()``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

from .. import _serialization
from .._frames import frame_header


class Outbox:
    """Frames for the stream socket *fd*, written as it takes them, from *loop*.

    Each write is non-blocking by itself (``MSG_DONTWAIT``), so the descriptor stays in
    blocking mode for the worker's reads of the coordinator's messages. ``lost`` is called
    once, from the loop, if the coordinator's end is gone (what was not written is then
    dropped: nobody is left to read it).
    """

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop, lost: Callable[[], None]) -> None:
        self.fd = fd
        self.sock = socket.socket(fileno=os.dup(fd))
        # No timeout, whatever socket.setdefaulttimeout() says: with one, every send would
        # first wait for room (holding the loop) and the shared descriptor would turn
        # non-blocking under the control reads.
        self.sock.settimeout(None)
        self.loop = loop
        self.lost = lost
        self.pending = bytearray()
        self.closed = False
        self.watching = False

    @property
    def unwritten(self) -> int:
        """Bytes queued and not yet written to the socket."""
        return len(self.pending)

    def send(self, message: Any) -> None:
        """Queue *message* behind what is still unwritten and write what the socket takes now.

        Raises:
            procly.PicklingError: *message* cannot be pickled (nothing is queued).
        """
        payload = _serialization.dumps(message)
        if self.closed:
            return
        header = frame_header(len(payload))
        if self.pending:
            self.pending += header
            self.pending += payload
            return
        frame = header + payload
        written = self._write(frame)
        if written < len(frame):
            self.pending += memoryview(frame)[written:]
            self._watch()

    def _write(self, data: bytes | bytearray) -> int:
        try:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:  # the coordinator is gone
            self._lose()
            return len(data)

    def _watch(self) -> None:
        if self.watching or self.closed:
            return
        self.watching = True
        self.loop.add_writer(self.sock.fileno(), self._write_pending)
        # uvloop made the shared descriptor non-blocking: the reads of control messages
        # count on it blocking (a message read in parts), and the writes need no such mode.
        os.set_blocking(self.fd, True)

    def _unwatch(self) -> None:
        if self.watching:
            self.watching = False
            self.loop.remove_writer(self.sock.fileno())

    def _write_pending(self) -> None:
        written = self._write(self.pending)
        del self.pending[:written]
        if not self.pending:
            self._unwatch()

    def _lose(self) -> None:
        if self.closed:
            return
        self._unwatch()
        self.closed = True
        self.pending.clear()
        self.loop.call_soon(self.lost)

    def flush(self) -> None:
        """Write everything still queued, waiting for the socket as long as it takes, and
        close the outbox (at the worker's end, when its loop has nothing left to serve). A
        coordinator gone meanwhile ends the wait."""
        self._unwatch()
        data, self.closed = bytes(self.pending), True
        self.pending.clear()
        try:
            self.sock.setblocking(True)
            self.sock.sendall(data)
        except OSError:
            pass
        finally:
            self.sock.close()
