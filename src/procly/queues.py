"""Queues between processes (``multiprocessing.queues``).

Data flow of :class:`Queue`::

    put(obj) ── pickle now (errors raise here) ──> buffer ──> feeder thread ──> pipe ──> get()
              └─ slot taken from a semaphore (maxsize) ───────────────────── released by get()

``put`` pickles in the caller, so an unpicklable object raises at the call site instead
of being lost in a background thread as in the standard library. The feeder thread
only writes bytes; at process exit it flushes what is buffered, so items put by a
process that then exits are delivered.

Large items (``SPILL_BYTES`` and more) do not go through the socket: they are written
to an anonymous memfd whose descriptor travels alone (``SCM_RIGHTS``), and the reader
reads them from it. So a process that puts big items and exits does not wait for a
reader to drain a full pipe — the standard library's documented deadlock, where the
parent joins such a child before getting its items, does not happen. (It can still
happen with more small items than the socket buffer holds, about 200 KiB.) The kernel
keeps a descriptor in flight alive, and frees the memfd once the item is read, or when
the queue itself is gone.
"""

from __future__ import annotations

import collections
import os
import queue
import socket
import struct
import threading
import time
import weakref
from typing import Any

from . import _serialization
from ._connection import Connection, Pipe
from ._errors import MessageError
from ._finalize import Finalize, register_after_fork
from .synchronize import BoundedSemaphore, Condition, Lock, Semaphore

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

SEM_VALUE_MAX = 2**31 - 1
SPILL_BYTES = 128 * 1024
_HEADER = struct.Struct("!i")
_SIZE = struct.Struct("!Q")
_SPILLED = -3  # frame type: the item is in the memfd sent with this header


_ANCILLARY_SPACE = socket.CMSG_SPACE(struct.calcsize("i"))


def _descriptors(ancillary: list) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
    return fds


def _socket_of(conn: Connection) -> socket.socket:
    return socket.socket(fileno=os.dup(conn.fileno()))


def _write_item(conn: Connection, sock: socket.socket | None, data: bytes) -> socket.socket | None:
    """Send one item; big ones through a memfd. Returns the socket object to reuse."""
    if len(data) < SPILL_BYTES:
        conn.send_bytes(data)
        return sock
    fd = os.memfd_create("procly-queue-item", os.MFD_CLOEXEC)
    try:
        view, written = memoryview(data), 0
        while written < len(data):
            written += os.write(fd, view[written:])
        if sock is None:
            sock = _socket_of(conn)
        socket.send_fds(sock, [_HEADER.pack(_SPILLED) + _SIZE.pack(len(data))], [fd])
    finally:
        os.close(fd)
    return sock


def _read_item(conn: Connection, sock: socket.socket) -> bytes | bytearray:
    """Receive one item written by :func:`_write_item` (the caller holds the read lock)."""
    header, ancillary, _, _ = sock.recvmsg(_HEADER.size, _ANCILLARY_SPACE, socket.MSG_WAITALL)
    fds = _descriptors(ancillary) if ancillary else []
    if len(header) < _HEADER.size:
        for fd in fds:
            os.close(fd)
        raise EOFError("the queue's other end is closed")
    (n,) = _HEADER.unpack(header)
    handle = conn.fileno()
    if n != _SPILLED:
        for fd in fds:
            os.close(fd)
        if n == -1:
            (n,) = _SIZE.unpack(conn._read_exact(handle, _SIZE.size))  # type: ignore[arg-type]
        return conn._read_payload(handle, n)
    (size,) = _SIZE.unpack(conn._read_exact(handle, _SIZE.size))  # type: ignore[arg-type]
    if len(fds) != 1:
        raise MessageError("a spilled queue item arrived without its descriptor")
    try:
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        while got < size:
            count = os.preadv(fds[0], [view[got:]], got)
            if count == 0:
                raise MessageError("a spilled queue item is shorter than announced")
            got += count
        return buf
    finally:
        os.close(fds[0])


class Queue:
    """A FIFO queue shared between processes (``multiprocessing.Queue``)."""

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        if maxsize <= 0:
            maxsize = SEM_VALUE_MAX
        self._maxsize = maxsize
        # A socket pair, not an OS pipe: big items travel as descriptors (SCM_RIGHTS).
        self._reader, self._writer = Pipe(duplex=True)
        self._rlock = Lock()
        self._wlock = Lock()
        self._sem = BoundedSemaphore(maxsize)
        self._opid = os.getpid()
        self._after_fork()
        register_after_fork(self, Queue._after_fork)

    def __getstate__(self) -> Any:
        return (self._maxsize, self._reader, self._writer, self._rlock, self._wlock, self._sem, self._opid)

    def __setstate__(self, state: Any) -> None:
        (self._maxsize, self._reader, self._writer, self._rlock, self._wlock, self._sem, self._opid) = state
        self._after_fork()
        register_after_fork(self, Queue._after_fork)

    def _after_fork(self) -> None:
        self._rsock: socket.socket | None = None
        self._notempty = threading.Condition(threading.Lock())
        self._buffer: collections.deque[bytes] = collections.deque()
        self._thread: threading.Thread | None = None
        self._jointhread: Finalize | None = None
        self._joincancelled = False
        self._closed = False
        self._close_finalizer: Finalize | None = None

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put *obj* in the queue, waiting for a free slot if the queue is full.

        Raises:
            ValueError: the queue was closed.
            queue.Full: no slot became free (``block=False`` or *timeout* passed).
            procly.PicklingError: *obj* cannot be pickled (nothing is queued).
        """
        self._check_closed()
        data = _serialization.dumps(obj)
        if not self._sem.acquire(block, timeout):
            raise queue.Full
        self._enqueue(data)

    def _enqueue(self, data: bytes) -> None:
        with self._notempty:
            if self._thread is None:
                self._start_thread()
            self._buffer.append(data)
            self._notempty.notify()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item, waiting for one if the queue is empty.

        Raises:
            ValueError: the queue was closed.
            queue.Empty: nothing arrived (``block=False`` or *timeout* passed).
        """
        self._check_closed()
        if block and timeout is None:
            with self._rlock:
                data = self._read()
            self._sem.release()
            return _serialization.loads(data)
        deadline = time.monotonic() + (timeout or 0.0)
        if not self._rlock.acquire(block, timeout):
            raise queue.Empty
        try:
            if block:
                remaining = max(0.0, deadline - time.monotonic())
                if not self._reader.poll(remaining):
                    raise queue.Empty
            elif not self._reader.poll():
                raise queue.Empty
            data = self._read()
            self._sem.release()
        finally:
            self._rlock.release()
        return _serialization.loads(data)

    def _read(self) -> bytes | bytearray:
        if self._rsock is None:
            self._rsock = _socket_of(self._reader)
            weakref.finalize(self, self._rsock.close)
        return _read_item(self._reader, self._rsock)

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def qsize(self) -> int:
        """Items put and not yet taken (approximate while others put and get)."""
        return self._maxsize - self._sem._get_value()

    def empty(self) -> bool:
        return not self._reader.poll()

    def full(self) -> bool:
        return self._sem._is_zero()

    def close(self) -> None:
        """No more puts from this process; the feeder flushes what is buffered, then stops."""
        self._closed = True
        if self._rsock is not None:
            self._rsock.close()
        close, self._close_finalizer = self._close_finalizer, None
        if close is not None:
            close()
        else:
            self._reader.close()

    def join_thread(self) -> None:
        """Wait until the feeder thread has flushed everything (only after close())."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")
        if self._jointhread is not None:
            self._jointhread()

    def cancel_join_thread(self) -> None:
        """Do not wait for the feeder at exit (buffered items may then be lost)."""
        self._joincancelled = True
        if self._jointhread is not None:
            self._jointhread.cancel()

    def _start_thread(self) -> None:
        self._buffer.clear()
        self._thread = threading.Thread(
            target=_feed,
            args=(self._buffer, self._notempty, self._writer, self._wlock, self._sem),
            name="QueueFeederThread",
            daemon=True,
        )
        self._thread.start()
        if not self._joincancelled:
            self._jointhread = Finalize(self._thread, _join_feeder, [weakref.ref(self._thread)], exitpriority=-5)
        self._close_finalizer = Finalize(
            self, _stop_feeder, [self._buffer, self._notempty, self._reader], exitpriority=10
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x} maxsize={self._maxsize}>"


_STOP = object()


def _join_feeder(ref: Any) -> None:
    thread = ref()
    if thread is not None:
        thread.join()


def _stop_feeder(buffer: collections.deque, notempty: threading.Condition, reader: Any) -> None:
    reader.close()
    with notempty:
        buffer.append(_STOP)  # type: ignore[arg-type]
        notempty.notify()


def _feed(buffer: collections.deque, notempty: threading.Condition, writer: Any, wlock: Lock, sem: Any) -> None:
    sock: socket.socket | None = None
    while True:
        with notempty:
            while not buffer:
                notempty.wait()
        while buffer:
            data = buffer.popleft()
            if data is _STOP:
                if sock is not None:
                    sock.close()
                writer.close()
                return
            try:
                with wlock:
                    sock = _write_item(writer, sock, data)
            except BrokenPipeError:
                sem.release()  # nobody will read it: give the slot back
            except OSError:
                return


class JoinableQueue(Queue):
    """A Queue whose consumers mark items done and whose producers can wait for that."""

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        super().__init__(maxsize, ctx=ctx)
        self._unfinished_tasks = Semaphore(0)
        self._cond = Condition()

    def __getstate__(self) -> Any:
        return (*super().__getstate__(), self._cond, self._unfinished_tasks)

    def __setstate__(self, state: Any) -> None:
        super().__setstate__(state[:-2])
        self._cond, self._unfinished_tasks = state[-2:]

    def _enqueue(self, data: bytes) -> None:
        with self._cond:  # counted before it can be taken, so join() cannot miss it
            self._unfinished_tasks.release()
            super()._enqueue(data)

    def task_done(self) -> None:
        """Mark one item taken with get() as processed.

        Raises:
            ValueError: called more times than items were put.
        """
        with self._cond:
            if not self._unfinished_tasks.acquire(False):
                raise ValueError("task_done() called too many times")
            if self._unfinished_tasks._is_zero():
                self._cond.notify_all()

    def join(self) -> None:
        """Wait until every item put has been marked done."""
        with self._cond:
            if not self._unfinished_tasks._is_zero():
                self._cond.wait()


class SimpleQueue:
    """An unbounded queue without a feeder thread: put() writes to the pipe directly."""

    def __init__(self, *, ctx: Any = None) -> None:
        self._reader, self._writer = Pipe(duplex=False)
        self._rlock = Lock()
        self._wlock = Lock()

    def __getstate__(self) -> Any:
        return (self._reader, self._writer, self._rlock, self._wlock)

    def __setstate__(self, state: Any) -> None:
        self._reader, self._writer, self._rlock, self._wlock = state

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    def empty(self) -> bool:
        return not self._reader.poll()

    def get(self) -> Any:
        with self._rlock:
            data = self._reader.recv_bytes()
        return _serialization.loads(data)

    def put(self, obj: Any) -> None:
        data = _serialization.dumps(obj)
        with self._wlock:
            self._writer.send_bytes(data)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x}>"
