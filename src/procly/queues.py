"""Queues between processes (``multiprocessing.queues``).

Data flow of :class:`Queue`::

    put(obj) ── pickle now (errors raise here) ──> buffer ──> feeder thread ──> socket ──> get()
              └─ slot taken from a semaphore (maxsize) ───────────────────── released by get()

``put`` pickles in the caller, so an unpicklable object raises at the call site instead
of being lost in a background thread as in the standard library. The feeder thread
only writes bytes, as many buffered items in one write as there are (up to 64 KiB).

No deadlock when a process exits with items nobody has read yet (the standard
library's documented trap: the parent joins such a child before getting its items, the
child waits for its feeder, the feeder for a reader). Items live in three places:

* Large items (``SPILL_BYTES`` and more, or holding numpy arrays or bytes of 64 KiB and
  more) do not go through the socket: put() writes each to an anonymous memfd, the
  big buffers straight from the object's memory (pickled out of band), and only the
  memfd's descriptor travels (``SCM_RIGHTS``).
* The socket. A feeder writes only what fits without blocking (it asks the kernel how
  much is unread, ``SIOCOUTQ``) and always leaves room for a few small frames; while
  the socket is full it waits for a reader, as the standard library's feeder does.
* At exit (and in ``join_thread()``) a feeder that finds no room writes everything it
  still holds into one memfd and sends only that descriptor, in the room kept for it.
  A reader takes the first item out of such a batch and sends the descriptor, with
  the position of the next item, back to the end of the queue, so that every consumer
  can take the rest. The producer's own items stay in order.

The kernel keeps a descriptor in flight alive and frees a memfd once the last item in it
is read, or when the queue itself is gone.
"""

from __future__ import annotations

import collections
import fcntl
import os
import queue
import select
import socket
import struct
import termios
import threading
import time
import weakref
from typing import Any, Generic, TypeVar

from . import _serialization
from ._connection import Connection, Pipe, descriptors_in, write_all
from ._errors import MessageError
from ._finalize import Finalize, register_after_fork
from .synchronize import BoundedSemaphore, Condition, Lock, Semaphore

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

_T = TypeVar("_T")

SEM_VALUE_MAX = 2**31 - 1
SPILL_BYTES = 128 * 1024  # items from this size travel alone in a memfd
WRITE_BYTES = 64 * 1024  # the feeder writes buffered items in chunks of up to this
FRAME_COST = 1024  # what the kernel charges per write beyond its bytes (an skb's overhead)
RESERVE_BYTES = 16 * 1024  # socket room kept for batch frames at exit (about 16 of them)
_HEADER = struct.Struct("!i")
_SIZE = struct.Struct("!Q")
_SPILLED = -3  # frame type: the item is in the memfd sent with this header
_BATCH = -4  # frame type: u64 offset; items left at a producer's exit, in the memfd sent with it
# A batch holds (u64 length, held item) records, each laid out as _Held says.
_COUNT = struct.Struct("!I")
_READ_ONLY = 1 << 63  # flag in a held buffer's size


_ANCILLARY_SPACE = socket.CMSG_SPACE(struct.calcsize("i"))


def _socket_of(conn: Connection) -> socket.socket:
    return socket.socket(fileno=os.dup(conn.fileno()))


def _pread_exact(fd: int, size: int, offset: int) -> bytearray:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        count = os.preadv(fd, [view[got:]], offset + got)
        if count == 0:
            raise MessageError("a queue item kept in a memfd is shorter than announced")
        got += count
    return buf


class _Writer:
    """One process's writing end of a queue: writes what fits without blocking."""

    def __init__(self, conn: Connection) -> None:
        self.sock = _socket_of(conn)
        self.limit = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self._outq = bytearray(4)

    def close(self) -> None:
        self.sock.close()

    def fits(self, nbytes: int) -> bool:
        """Can *nbytes* more be written now, keeping the reserve free? (Write lock held.)"""
        fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, self._outq, True)  # SIOCOUTQ: unread bytes, as charged
        return int.from_bytes(self._outq, "little") + nbytes + FRAME_COST + RESERVE_BYTES < self.limit

    def wait_for_room(self, timeout: float) -> None:
        poller = select.poll()  # not select(): descriptors past 1023 are common in servers
        poller.register(self.sock, select.POLLOUT)
        if poller.poll(max(0, int(timeout * 1000 + 0.999))):
            time.sleep(0.001)  # writable, yet short of what the next write needs: let a reader go on

    def write(self, data: bytes) -> None:
        write_all(self.sock.fileno(), data)

    def send_descriptor(self, frame: bytes, fd: int) -> None:
        socket.send_fds(self.sock, [frame], [fd])


def _frames(items: list[bytes]) -> bytes:
    """Small items as the Connection's frames, ready for one write."""
    return b"".join(part for data in items for part in (_HEADER.pack(len(data)), data))


class _Recycler:
    """Memfds of big items already read, handed back for the next big put.

    Their pages stay allocated, so writing the next item into one costs a copy instead
    of a fresh page (a page fault, or worse on a VM) for every 4 KiB. A datagram socket
    pair with the smallest send buffer parks a few of them at most; when it is full, or
    when nobody takes them, they are simply closed (the queue going away frees them).
    """

    def __init__(self) -> None:
        take, give = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        give.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's minimum
        self.__setstate__((take, give))

    def __getstate__(self) -> Any:
        return (self._take, self._give)

    def __setstate__(self, state: Any) -> None:
        self._take, self._give = state
        self._take.setblocking(False)
        self._give.setblocking(False)
        self._closer = weakref.finalize(self, _close_sockets, self._take, self._give)

    def give(self, fd: int) -> None:
        """Hand back *fd* (its contents read already); the caller still closes its copy."""
        try:
            socket.send_fds(self._give, [b"m"], [fd])
        except OSError:
            pass  # full, or the queue is closing: let it go

    def take(self, size: int) -> int | None:
        """A spent memfd for an item of *size* bytes, or None."""
        try:
            _, fds, _, _ = socket.recv_fds(self._take, 1, 1)
        except OSError:
            return None
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            return None
        if os.fstat(fds[0]).st_size > 4 * size + (1 << 20):  # too big to fill a small item with
            os.close(fds[0])
            return None
        return fds[0]

    def close(self) -> None:
        self._closer()


def _close_sockets(*socks: socket.socket) -> None:
    for sock in socks:
        sock.close()


class _Held:
    """A big item, already written to a memfd by put() (a snapshot: later changes to the
    object do not reach the queue). Layout: u32 k, (k+1) x u64 sizes, the pickle, then
    its k out-of-band buffers (numpy arrays, big bytes), so that none is pickled in-band.
    A buffer's size has its top bit set when the buffer was read-only (bytes): the
    reader then reads it into a bytes object, which the unpickler keeps as it is."""

    __slots__ = ("fd", "size")

    def __init__(self, data: bytes, buffers: list[memoryview], recycler: _Recycler | None = None) -> None:
        sizes = [len(data)] + [view.nbytes for view in buffers]
        flagged = [sizes[0]] + [view.nbytes | (_READ_ONLY if view.readonly else 0) for view in buffers]
        header = _COUNT.pack(len(buffers)) + b"".join(_SIZE.pack(n) for n in flagged)
        self.size = len(header) + sum(sizes)
        fd = recycler.take(self.size) if recycler is not None else None
        self.fd = os.memfd_create("procly-queue-item", os.MFD_CLOEXEC) if fd is None else fd
        try:
            os.lseek(self.fd, 0, os.SEEK_SET)
            for part in (header, data, *buffers):
                write_all(self.fd, part)
        except BaseException:
            os.close(self.fd)
            raise

    def __len__(self) -> int:
        return self.size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _close_held(items: Any) -> None:
    for item in items:
        if type(item) is _Held:
            item.close()


def _read_held(fd: int, offset: int) -> tuple[bytearray, list[Any], int]:
    """The pickle and buffers of the item at *offset* in a memfd, and the offset after it."""
    (count,) = _COUNT.unpack(_pread_exact(fd, _COUNT.size, offset))
    sizes = struct.unpack(f"!{count + 1}Q", _pread_exact(fd, 8 * (count + 1), offset + _COUNT.size))
    start = offset + _COUNT.size + 8 * (count + 1)
    data = _pread_exact(fd, sizes[0], start)
    buffers: list[Any] = []
    at = start + sizes[0]
    for raw in sizes[1:]:
        n = raw & ~_READ_ONLY
        if raw & _READ_ONLY and n < 2**31:
            # bytes: read once, and rebuilt without another copy (bytes(b) is b).
            buf: Any = os.pread(fd, n, at)
            if len(buf) != n:
                raise MessageError("a queue item kept in a memfd is shorter than announced")
        else:
            buf = _pread_exact(fd, n, at)  # writable, as numpy arrays rebuilt over it must be
        buffers.append(buf)
        at += n
    return data, buffers, at


def _spill_batch(writer: _Writer, items: list[Any]) -> None:
    """Write *items* (pickles and held ones) into one memfd and send it alone."""
    fd = os.memfd_create("procly-queue-batch", os.MFD_CLOEXEC)
    try:
        for item in items:
            if type(item) is _Held:
                write_all(fd, _SIZE.pack(item.size))
                copied = 0
                while copied < item.size:  # a kernel-side copy, at this memfd's offset
                    count = os.copy_file_range(item.fd, fd, item.size - copied, copied)
                    if count == 0:
                        raise MessageError("a queue item kept in a memfd is shorter than announced")
                    copied += count
            else:
                write_all(fd, _SIZE.pack(len(item) + _COUNT.size + _SIZE.size))
                write_all(fd, _COUNT.pack(0) + _SIZE.pack(len(item)))
                write_all(fd, item)
        writer.send_descriptor(_HEADER.pack(_BATCH) + _SIZE.pack(0), fd)
    finally:
        os.close(fd)


def _read_item(conn: Connection, sock: socket.socket, requeue: Any,
               recycler: _Recycler | None = None) -> tuple[bytes | bytearray, list[Any]]:  # fmt: skip
    """Receive one item written by a feeder: its pickle and out-of-band buffers (read lock held).

    *requeue(frame, fd)* sends the rest of a batch back to the end of the queue; a spent
    single-item memfd goes to *recycler*.
    """
    header, ancillary, _, _ = sock.recvmsg(_HEADER.size, _ANCILLARY_SPACE, socket.MSG_WAITALL)
    fds = descriptors_in(ancillary) if ancillary else []
    if len(header) < _HEADER.size:
        for fd in fds:
            os.close(fd)
        raise EOFError("the queue's other end is closed")
    (n,) = _HEADER.unpack(header)
    handle = conn.fileno()
    if n not in (_SPILLED, _BATCH):
        for fd in fds:
            os.close(fd)
        if n == -1:
            (n,) = _SIZE.unpack(conn._read_exact(handle, _SIZE.size))  # type: ignore[arg-type]
        return conn._read_payload(handle, n), []
    (offset,) = _SIZE.unpack(conn._read_exact(handle, _SIZE.size))  # type: ignore[arg-type]
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise MessageError("a queue item kept in a memfd arrived without its descriptor")
    try:
        if n == _SPILLED:
            data, buffers, _ = _read_held(fds[0], 0)  # copied out: the memfd is free again
            if recycler is not None:
                recycler.give(fds[0])
            return data, buffers
        data, buffers, following = _read_held(fds[0], offset + _SIZE.size)
        if following < os.fstat(fds[0]).st_size:
            requeue(_HEADER.pack(_BATCH) + _SIZE.pack(following), fds[0])
        return data, buffers
    finally:
        os.close(fds[0])


class Queue(Generic[_T]):
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
        self._recycler = _Recycler()
        self._opid = os.getpid()
        self._after_fork()
        register_after_fork(self, Queue._after_fork)

    def __getstate__(self) -> Any:
        return (self._maxsize, self._reader, self._writer, self._rlock, self._wlock, self._sem, self._recycler,
                self._opid)  # fmt: skip

    def __setstate__(self, state: Any) -> None:
        (self._maxsize, self._reader, self._writer, self._rlock, self._wlock, self._sem, self._recycler,
         self._opid) = state  # fmt: skip
        self._after_fork()
        register_after_fork(self, Queue._after_fork)

    def _after_fork(self) -> None:
        self._rsock: socket.socket | None = None
        self._requeuer: _Writer | None = None
        self._spill = threading.Event()  # set at exit: write what cannot wait to a memfd
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

    def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None:
        """Put *obj* in the queue, waiting for a free slot if the queue is full.

        Raises:
            ValueError: the queue was closed.
            queue.Full: no slot became free (``block=False`` or *timeout* passed).
            procly.PicklingError: *obj* cannot be pickled (nothing is queued).
        """
        self._check_closed()
        buffers: list[memoryview] = []
        data: Any = _serialization.dumps(obj, buffers)
        if buffers or len(data) >= SPILL_BYTES:
            data = _Held(data, buffers, self._recycler)  # straight from the object's memory into a memfd
        if not self._sem.acquire(block, timeout):
            if type(data) is _Held:
                data.close()
            raise queue.Full
        self._enqueue(data)

    def _enqueue(self, data: bytes) -> None:
        with self._notempty:
            if self._thread is None:
                self._start_thread()
            self._buffer.append(data)
            self._notempty.notify()

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        """Remove and return the oldest item, waiting for one if the queue is empty.

        Raises:
            ValueError: the queue was closed.
            queue.Empty: nothing arrived (``block=False`` or *timeout* passed).
        """
        self._check_closed()
        if block and timeout is None:
            with self._rlock:
                data, buffers = self._read()
            self._sem.release()
            return _serialization.loads(data, buffers)
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
            data, buffers = self._read()
            self._sem.release()
        finally:
            self._rlock.release()
        return _serialization.loads(data, buffers)

    def _read(self) -> tuple[bytes | bytearray, list[Any]]:
        if self._rsock is None:
            self._rsock = _socket_of(self._reader)
            weakref.finalize(self, self._rsock.close)
        return _read_item(self._reader, self._rsock, self._requeue, self._recycler)

    def _requeue(self, frame: bytes, fd: int) -> None:
        """Send the rest of a batch to the end of the queue (read lock held)."""
        if self._requeuer is None:
            self._requeuer = _Writer(self._writer)
            weakref.finalize(self, self._requeuer.close)
        with self._wlock:  # the batch frame just read freed the room this one takes
            self._requeuer.send_descriptor(frame, fd)

    def put_nowait(self, obj: _T) -> None:
        self.put(obj, False)

    def get_nowait(self) -> _T:
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
        self._recycler.close()
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
            self._jointhread()  # _join_feeder: what the socket cannot take goes to a memfd

    def cancel_join_thread(self) -> None:
        """Do not wait for the feeder at exit (buffered items may then be lost)."""
        self._joincancelled = True
        if self._jointhread is not None:
            self._jointhread.cancel()

    def _start_thread(self) -> None:
        self._buffer.clear()
        self._thread = threading.Thread(
            target=_feed,
            args=(self._buffer, self._notempty, self._writer, self._wlock, self._sem, self._spill),
            name="QueueFeederThread",
            daemon=True,
        )
        self._thread.start()
        if not self._joincancelled:
            self._jointhread = Finalize(self._thread, _join_feeder, [weakref.ref(self._thread), self._spill],
                                        exitpriority=-5)  # fmt: skip
        self._close_finalizer = Finalize(
            self, _stop_feeder, [self._buffer, self._notempty, self._reader], exitpriority=10
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x} maxsize={self._maxsize}>"


_STOP = object()


def _join_feeder(ref: Any, spill: threading.Event) -> None:
    thread = ref()
    if thread is not None:
        spill.set()  # what the socket cannot take now goes to a memfd, so this join returns
        thread.join()


def _stop_feeder(buffer: collections.deque, notempty: threading.Condition, reader: Any) -> None:
    reader.close()
    with notempty:
        buffer.append(_STOP)  # type: ignore[arg-type]
        notempty.notify()


def _next_chunk(buffer: collections.deque) -> tuple[list[Any], bool]:
    """Take buffered items for one write: one held item, or small ones up to WRITE_BYTES."""
    items: list[Any] = []
    total = 0
    while buffer:
        data = buffer[0]
        if data is _STOP:
            if not items:
                buffer.popleft()
                return items, True
            break
        if type(data) is _Held:
            if not items:
                items.append(buffer.popleft())
            break
        if items and total + len(data) > WRITE_BYTES:
            break
        items.append(buffer.popleft())
        total += len(data) + _HEADER.size
    return items, False


def _feed(buffer: collections.deque, notempty: threading.Condition, conn: Any, wlock: Lock, sem: Any,
          spill: threading.Event) -> None:  # fmt: skip
    writer = _Writer(conn)
    try:
        while True:
            with notempty:
                while not buffer:
                    notempty.wait()
            while buffer:
                items, stop = _next_chunk(buffer)
                if stop:
                    conn.close()
                    return
                try:
                    _write_chunk(writer, wlock, items, buffer, spill)
                except BrokenPipeError:
                    for _ in items:
                        sem.release()  # nobody will read them: give the slots back
                except OSError:
                    return
                finally:
                    _close_held(items)  # sent (the kernel holds the memfds in flight) or lost
    finally:
        writer.close()
        _close_held(list(buffer))


def _write_chunk(writer: _Writer, wlock: Lock, items: list[Any], buffer: collections.deque,
                 spill: threading.Event) -> None:  # fmt: skip
    """Write *items* when the socket has room; at exit, put them and the rest in a memfd."""
    big = type(items[0]) is _Held
    data = b"" if big else _frames(items)
    while True:
        with wlock:
            if writer.fits(0 if big else len(data)):
                if big:
                    writer.send_descriptor(_HEADER.pack(_SPILLED) + _SIZE.pack(0), items[0].fd)
                else:
                    writer.write(data)
                return
            if spill.is_set():  # exiting and no reader drains the socket: don't wait for one
                while buffer and buffer[0] is not _STOP:
                    items.append(buffer.popleft())
                _spill_batch(writer, items)
                return
        writer.wait_for_room(0.05)  # wakes when a reader has emptied most of the socket


class JoinableQueue(Queue[_T]):
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


class SimpleQueue(Generic[_T]):
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

    def get(self) -> _T:
        with self._rlock:
            data = self._reader.recv_bytes()
        return _serialization.loads(data)

    def put(self, obj: _T) -> None:
        data = _serialization.dumps(obj)
        with self._wlock:
            self._writer.send_bytes(data)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x}>"


# --------------------------------------------------------------------------- standard library names
# (``multiprocessing.queues`` re-exports these; code catches ``multiprocessing.queues.Full``.)
from queue import Empty as Empty  # noqa: E402
from queue import Full as Full  # noqa: E402

from ._compat import lazy_submodules as _lazy_submodules  # noqa: E402
from .util import debug as debug  # noqa: E402
from .util import info as info  # noqa: E402
from .util import is_exiting as is_exiting  # noqa: E402

__getattr__ = _lazy_submodules(__name__, "connection", "context")

# The standard library's feeder-stop marker. Queue subclasses written against the
# standard library's internals (joblib's bundled loky) import it; procly's feeder has
# its own, so such a subclass's overridden internals are not used by procly's Queue.
_sentinel = object()
