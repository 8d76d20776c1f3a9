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
  the socket is full it blocks in ``poll()`` until readers have made room (or its exit
  rings an eventfd), as the standard library's feeder blocks in ``write()``.
* At exit (and in ``join_thread()``) a feeder that finds no room writes everything it
  still holds into one memfd and sends only that descriptor (with the memfds of its
  first big items: those are not copied), in the room kept for it.

Consumers share one read-ahead buffer, the *shelf* (shared memory, under the read
lock): a consumer that finds no whole item there reads everything waiting in the
socket with one call, for whichever consumer comes next; one that exits leaves what it
read for the others. A descriptor read along waits, in order, in the socket pair's
other direction until its frame is reached. A reader that takes an item out of a batch
moves the small items after it to the front of the shelf, followed by the batch's frame
with the position of the rest, so that every consumer can take the rest, before
anything put later. The producer's own items stay in order.

The kernel keeps a descriptor in flight alive and frees a memfd once the last item in it
is read, or when the queue itself is gone.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import queue
import select
import socket
import struct
import sys
import termios
import threading
import time
import weakref
from typing import Any, Generic, TypeVar

from . import _heap, _serialization
from ._connection import Connection, Pipe
from ._errors import ConnectionClosedError, MessageError
from ._fds import descriptors_in, pwrite_all, write_all
from ._finalize import Finalize, register_after_fork
from ._frames import BATCH as _BATCH
from ._frames import HEADER as _HEADER
from ._frames import LARGE as _LARGE
from ._frames import SPILLED as _SPILLED
from ._memfd_reuse import buffer_layout
from .synchronize import BoundedSemaphore, Condition, Lock, Semaphore

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

_T = TypeVar("_T")

SEM_VALUE_MAX = 2**31 - 1
SPILL_BYTES = 128 * 1024  # items from this size travel alone in a memfd
WRITE_BYTES = 64 * 1024  # the feeder writes buffered items in chunks of up to this
FRAME_COST = 1024  # what the kernel charges per write beyond its bytes (an skb's overhead)
RESERVE_BYTES = 16 * 1024  # socket room kept for batch frames at exit (and all that _make_exit_room adds)
_SIZE = struct.Struct("!Q")
# Frame codes: _frames. A BATCH frame's memfd comes with k held items' own memfds after it,
# in the same message: see _spill_batch.
_BY_DESCRIPTOR = 1 << 63  # a batch record's length: the item is in the batch frame's next own memfd
BATCH_DESCRIPTORS = 64  # held items a batch carries by descriptor (the rest are copied into it)
# A batch holds (u64 length, held item) records, each laid out as _Held says.
_COUNT = struct.Struct("!I")
_RECORD = struct.Struct("!QIQ")  # a small item's record in a batch: u64 length, u32 0 buffers, u64 pickle size
_READ_ONLY = 1 << 63  # flag in a held buffer's size


_ANCILLARY_SPACE = socket.CMSG_SPACE((1 + BATCH_DESCRIPTORS) * struct.calcsize("i"))


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


def _make_exit_room(conn: Connection) -> int:
    """Enlarge the send buffer of *conn*'s socket and return its usual size: feeders fill
    the socket up to the usual size (less the reserve), and only batch frames at exit use
    the rest.

    A frame with descriptors is charged about 768 bytes: the reserve alone held 21 of
    them, and a 22nd producer exiting with its items unread (its parent joining it before
    reading) blocked for ever, holding the write lock that every other producer's exit
    waited for. Asked for the usual size, the kernel doubles it (up to twice
    ``net.core.wmem_max``): about 300 producers' batch frames then fit. Not more: the
    socket polls writable once no more than a quarter of the whole is unread, and that
    must stay below what feeders fill it to, or a feeder waiting for room would spin.
    """
    sock = _socket_of(conn)
    try:
        usual = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        if _wmem_max() < usual:
            return usual  # asking would shrink it (to twice the maximum, under the usual)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, usual)
        except OSError:
            return usual
        return min(usual, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    finally:
        sock.close()


def _wmem_max() -> int:
    """``net.core.wmem_max``: the most a socket may ask for its send buffer (0: unknown)."""
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


class _Writer:
    """One process's writing end of a queue: writes what fits without blocking, up to
    *limit* bytes unread (the socket's usual send buffer; see _make_exit_room)."""

    def __init__(self, conn: Connection, wakeup: _Wakeup | None = None, limit: int | None = None) -> None:
        self.sock = _socket_of(conn)
        whole = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.limit = whole if limit is None else limit
        self.writable_below = whole // 4  # the kernel polls it writable at this much unread or less
        self._outq = bytearray(4)
        self._poller: Any = None
        self._wakeup = wakeup

    def close(self) -> None:
        self.sock.close()

    def fits(self, nbytes: int) -> bool:
        """Can *nbytes* more be written now, keeping the reserve free? (Write lock held.)"""
        fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, self._outq, True)  # SIOCOUTQ: unread bytes, as charged
        return int.from_bytes(self._outq, "little") + nbytes + FRAME_COST + RESERVE_BYTES < self.limit

    def wait_for_room(self) -> bool:
        """Block until the socket is writable (the kernel says so once readers have taken
        three quarters of what it holds) or the wake-up is rung; True if writable."""
        if self._poller is None:
            self._poller = select.poll()  # not select(): descriptors past 1023 are common in servers
            self._poller.register(self.sock, select.POLLOUT)
            if self._wakeup is not None:
                self._poller.register(self._wakeup.fd, select.POLLIN)
        writable = False
        for fd, _ in self._poller.poll():
            if fd == self.sock.fileno():
                writable = True
        return writable

    def write(self, data: bytes) -> None:
        write_all(self.sock.fileno(), data)

    def send_descriptor(self, frame: bytes, fd: int | list[int]) -> None:
        socket.send_fds(self.sock, [frame], fd if isinstance(fd, list) else [fd])


class _Wakeup:
    """An eventfd the feeder waits on beside its socket: rung when it must stop waiting
    for room (at exit, to spill). Closed once neither the feeder nor its joiner holds it."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._closer = weakref.finalize(self, os.close, self.fd)
        self.spill = False

    def ring(self) -> None:
        self.spill = True
        os.eventfd_write(self.fd, 1)


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
    its k out-of-band buffers (numpy arrays, big bytes), placed by buffer_layout from
    the item's start, so that none is pickled in-band. A buffer's size has its top bit
    set when the buffer was read-only (bytes): the reader then reads it into a bytes
    object, which the unpickler keeps as it is."""

    __slots__ = ("fd", "size")

    def __init__(self, data: bytes, buffers: list[memoryview], recycler: _Recycler | None = None) -> None:
        flagged = [len(data)] + [view.nbytes | (_READ_ONLY if view.readonly else 0) for view in buffers]
        header = _COUNT.pack(len(buffers)) + b"".join(_SIZE.pack(n) for n in flagged)
        starts, self.size = buffer_layout([len(header) + len(data)] + [view.nbytes for view in buffers])
        fd = recycler.take(self.size) if recycler is not None else None
        self.fd = os.memfd_create("procly-queue-item", os.MFD_CLOEXEC) if fd is None else fd
        try:
            pwrite_all(self.fd, header, 0)
            pwrite_all(self.fd, data, len(header))
            for view, start in zip(buffers, starts[1:], strict=True):
                pwrite_all(self.fd, view, start)
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
    starts, end = buffer_layout([start - offset + sizes[0]] + [raw & ~_READ_ONLY for raw in sizes[1:]])
    for raw, relative in zip(sizes[1:], starts[1:], strict=True):
        n, at = raw & ~_READ_ONLY, offset + relative
        if raw & _READ_ONLY and n < 2**31:
            # bytes: read once, and rebuilt without another copy (bytes(b) is b).
            buf: Any = os.pread(fd, n, at)
            if len(buf) != n:
                raise MessageError("a queue item kept in a memfd is shorter than announced")
        else:
            buf = _pread_exact(fd, n, at)  # writable, as numpy arrays rebuilt over it must be
        buffers.append(buf)
    return data, buffers, offset + end


def _spill_batch(writer: _Writer, items: list[Any]) -> None:
    """Write *items* (pickles and held ones) into one memfd and send it in one message,
    with the memfds of the first BATCH_DESCRIPTORS held items (not copied: their records
    only say so); later held items are copied in."""
    fd = os.memfd_create("procly-queue-batch", os.MFD_CLOEXEC)
    pending = bytearray()  # small items' records, written a megabyte at a time
    extra: list[int] = []
    try:
        for item in items:
            if type(item) is _Held and len(extra) < BATCH_DESCRIPTORS:
                pending += _SIZE.pack(_BY_DESCRIPTOR)
                extra.append(item.fd)
            elif type(item) is _Held:
                write_all(fd, pending)
                del pending[:]
                write_all(fd, _SIZE.pack(item.size))
                copied = 0
                while copied < item.size:  # a kernel-side copy, at this memfd's offset
                    count = os.copy_file_range(item.fd, fd, item.size - copied, copied)
                    if count == 0:
                        raise MessageError("a queue item kept in a memfd is shorter than announced")
                    copied += count
            else:
                pending += _RECORD.pack(len(item) + _COUNT.size + _SIZE.size, 0, len(item))
                pending += item
                if len(pending) >= 1 << 20:
                    write_all(fd, pending)
                    del pending[:]
        if pending:
            write_all(fd, pending)
        writer.send_descriptor(_HEADER.pack(_BATCH) + _SIZE.pack(0) + _COUNT.pack(len(extra)), [fd, *extra])
    finally:
        os.close(fd)  # the held items' memfds are closed by the feeder, once sent


def _read_item(shelf: _Shelf, sock: socket.socket, parked: Any, requeue: Any,
               recycler: _Recycler | None = None) -> tuple[bytes | bytearray, list[Any]]:  # fmt: skip
    """Receive one item written by a feeder: its pickle and out-of-band buffers (read lock held).

    *parked()* takes the next descriptor parked by the shelf; *requeue(fds)* parks the
    descriptors of the rest of a batch, whose frame it put back first in the shelf,
    ahead of the others; a spent single-item memfd goes to *recycler*.
    """
    n, value, fds = shelf.take(sock, parked)
    if fds is None:
        return value, []
    try:
        if n == _SPILLED:
            if len(fds) != 1:
                raise MessageError("a queue item kept in a memfd arrived without its descriptor")
            return _take_held(fds[0], recycler)
        return _take_from_batch(fds, value, shelf, requeue, recycler)
    finally:
        for fd in fds:
            os.close(fd)


def _take_held(fd: int, recycler: _Recycler | None) -> tuple[bytes | bytearray, list[Any]]:
    data, buffers, _ = _read_held(fd, 0)  # copied out: the memfd is free again
    if recycler is not None:
        recycler.give(fd)
    return data, buffers


def _take_from_batch(fds: list[int], offset: int, shelf: _Shelf, requeue: Any,
                     recycler: _Recycler | None) -> tuple[bytes | bytearray, list[Any]]:  # fmt: skip
    """The item at *offset* in a batch left at a producer's exit (*fds*: the batch's memfd,
    then the memfds of its held items not taken yet). The small items after it go to the
    front of the shelf (where the batch's frame was), as many as fit in one read, and
    the rest of the batch after them (never behind items put later)."""
    fd, extra = fds[0], fds[1:]
    size = os.fstat(fd).st_size
    parts: list[bytes] = []
    (length,) = _SIZE.unpack(_pread_exact(fd, _SIZE.size, offset))
    if length == _BY_DESCRIPTOR:
        if not extra:
            raise MessageError("a queue item kept in a memfd arrived without its descriptor")
        data, buffers = _take_held(extra.pop(0), recycler)
        following = offset + _SIZE.size
    else:
        data, buffers, following = _read_held(fd, offset + _SIZE.size)
    room = shelf.free() - _BATCH_FRAME  # the rest of the batch, if any, needs a frame here too
    if following < size and room > 4096:
        chunk = os.pread(fd, min(room, WRITE_BYTES, size - following), following)
        parts, used = _plain_frames_from(chunk, room)
        following += used
    if following < size:
        # The rest stays at the front, where the batch was: items put after it (a
        # sentinel) still come after it. Its frame goes in the shelf, its descriptors
        # back to the front of the parked ones.
        parts.append(_HEADER.pack(_BATCH) + _SIZE.pack(following) + _COUNT.pack(len(extra)))
        if not shelf.put_front(b"".join(parts)):
            raise MessageError("no room in a queue's shelf for the rest of a batch")  # taken out just now
        requeue([fd, *extra])
    elif parts and not shelf.put_front(b"".join(parts)):
        raise MessageError("no room in a queue's shelf for the rest of a batch")
    return data, buffers


def _plain_frames_from(chunk: bytes, room: int) -> tuple[list[bytes], int]:
    """The small items at the start of *chunk* (a piece of a batch) as plain frames, as
    many as fit in *room* bytes, and how many bytes of *chunk* they took."""
    parts: list[bytes] = []
    pos = total = 0
    record = _RECORD.size
    while pos + record <= len(chunk):
        length, count, m = _RECORD.unpack_from(chunk, pos)
        if count or length != m + _COUNT.size + _SIZE.size or m >= 2**31 - 1 or pos + record + m > len(chunk):
            break  # an item with buffers (or one cut off here): it stays in the batch
        if total + 4 + m > room:
            break
        parts.append(_HEADER.pack(m))
        parts.append(chunk[pos + record : pos + record + m])
        total += 4 + m
        pos += record + m
    return parts, pos


SHELF_BYTES = 256 * 1024  # bytes a consumer reads from the socket in one call, for every consumer
_SHELF_HEAD = struct.Struct("=QQ")  # start and end of the unread bytes in the shelf's data
_BATCH_FRAME = _HEADER.size + _SIZE.size + _COUNT.size
_FD_MARK = b"F"


def _control_frame_size(n: int) -> int:
    """Bytes of a frame that is not a plain item, by its code (see _frames).

    Raises:
        MessageError: *n* is no frame code a queue sends.
    """
    if n == _BATCH:
        return _BATCH_FRAME
    if n in (_SPILLED, _LARGE):
        return _HEADER.size + _SIZE.size
    raise MessageError(f"malformed frame header ({n}) in a queue")


class _Shelf:
    """Bytes read ahead from a queue's socket, in shared memory (a block of procly's
    heap), so that any consumer takes any item: one system call reads everything
    waiting (up to ``SHELF_BYTES``) for whichever consumer comes next, not only for the
    one that read it. Everything here runs under the queue's read lock.

    A descriptor cannot wait in shared memory: one that arrives with the bytes read (a
    big item's or a batch's memfd; it always comes with the last frame of a read) is
    parked, in order, in the socket pair's other direction, which nothing else uses:
    sent back from the reading end, taken from the writing end when a consumer reaches
    its frame.
    """

    def __init__(self) -> None:
        self.__setstate__(_heap.allocate(_SHELF_HEAD.size + SHELF_BYTES))

    def __getstate__(self) -> Any:
        return self._block

    def __setstate__(self, block: _heap.Block) -> None:
        self._block = block
        self._mm = block.arena.buffer
        self._head = block.offset
        self._base = block.offset + _SHELF_HEAD.size

    def holds(self) -> bool:
        """Whether bytes read ahead wait here (a whole item, or the start of one)."""
        start, end = _SHELF_HEAD.unpack_from(self._mm, self._head)
        return start != end

    def take(self, sock: socket.socket, parked: Any) -> tuple[int, Any, list[int] | None]:
        """The next frame: (length, payload, None) for a plain item, (kind, u64 offset,
        descriptors) for a memfd frame; reads *sock* (blocking) when no whole frame is
        here. *parked()* takes the descriptors parked for the next memfd frame.

        Raises:
            EOFError: the socket is closed and nothing is left.
            MessageError: a malformed frame, or a descriptor missing.
        """
        mm, head, base = self._mm, self._head, self._base
        start, end = _SHELF_HEAD.unpack_from(mm, head)
        while True:
            avail = end - start
            need = 4
            if avail >= 4:
                (n,) = _HEADER.unpack_from(mm, base + start)
                if n >= 0:
                    need = 4 + n
                    if avail >= need:
                        data = mm[base + start + 4 : base + start + need]
                        _SHELF_HEAD.pack_into(mm, head, start + need, end)
                        return n, data, None
                    if need > SHELF_BYTES:
                        return n, self._take_big(sock, start + 4, end, n), None
                else:
                    need = _control_frame_size(n)
                    if avail >= need:
                        return self._take_control(sock, parked, n, start, end)
            start, end = self._make_room(start, end, need)
            end += self._fill(sock, end)
            _SHELF_HEAD.pack_into(mm, head, start, end)

    def _take_control(self, sock: socket.socket, parked: Any, n: int, start: int, end: int) -> tuple[int, Any, Any]:
        """The memfd (or over-2-GiB) frame of kind *n* at *start*, whole in the shelf."""
        mm, base = self._mm, self._base
        need = _control_frame_size(n)
        (value,) = _SIZE.unpack_from(mm, base + start + 4)
        if n == _LARGE:  # over 2 GiB: never a queue's own frame, read it directly
            _SHELF_HEAD.pack_into(mm, self._head, start + need, end)
            return value, self._take_big(sock, start + need, end, value), None
        # Its descriptors first: interrupted while taking them, the frame stays the next one
        # (passed, its item was lost, and every later memfd frame got the one before's).
        # Missing (the kernel dropped them: this process was out of descriptors), the frame
        # is passed, or it would fail every get() after.
        try:
            fds = parked()
        except MessageError:
            _SHELF_HEAD.pack_into(mm, self._head, start + need, end)
            raise
        _SHELF_HEAD.pack_into(mm, self._head, start + need, end)
        expected = 1 + _COUNT.unpack_from(mm, base + start + 12)[0] if n == _BATCH else 1
        if len(fds) != expected:
            for fd in fds:
                os.close(fd)
            raise MessageError("a queue item kept in a memfd arrived without its descriptors")
        return n, value, fds

    def _make_room(self, start: int, end: int, need: int) -> tuple[int, int]:
        """Move what waits to the front if the frame being read (*need* bytes from
        *start*) would not fit behind it; the new start and end."""
        if start == end:
            start = end = 0
        elif start + need > SHELF_BYTES:
            avail = end - start
            self._mm.move(self._base, self._base + start, avail)
            start, end = 0, avail
        _SHELF_HEAD.pack_into(self._mm, self._head, start, end)
        return start, end

    def _fill(self, sock: socket.socket, end: int) -> int:
        """Read what waits in the socket into the shelf from *end* (at least one byte)."""
        with memoryview(self._mm) as whole, whole[self._base + end : self._base + SHELF_BYTES] as room:
            count, ancillary, _, _ = sock.recvmsg_into([room], _ANCILLARY_SPACE)
        fds = descriptors_in(ancillary) if ancillary else ()
        if fds:  # one frame's (a read ends with the message that carries them)
            try:
                socket.send_fds(sock, [_FD_MARK], fds)  # parked, in the direction nobody writes
            finally:
                for fd in fds:
                    os.close(fd)
        if not count:
            raise EOFError("the queue's other end is closed")
        return count

    def _take_big(self, sock: socket.socket, start: int, end: int, n: int) -> bytearray:
        """A plain item larger than the shelf, its payload here from *start*: what is
        here, then the rest read in place (nothing can follow it in the shelf)."""
        buf = bytearray(n)
        have = max(0, min(end - start, n))
        buf[:have] = self._mm[self._base + start : self._base + start + have]
        _SHELF_HEAD.pack_into(self._mm, self._head, 0, 0)
        view, got = memoryview(buf), have
        while got < n:
            count = sock.recv_into(view[got:])
            if count == 0:
                raise EOFError("the queue's other end closed in the middle of an item")
            got += count
        return buf

    def free(self) -> int:
        """Bytes that put_front() can place now."""
        start, end = _SHELF_HEAD.unpack_from(self._mm, self._head)
        return SHELF_BYTES - (end - start)

    def put_front(self, frames: bytes) -> bool:
        """Place *frames* (plain ones) before everything waiting here, if they fit."""
        mm, base, size = self._mm, self._base, len(frames)
        start, end = _SHELF_HEAD.unpack_from(mm, self._head)
        if start == end:
            start = end = 0
        if size > start and end - start + size <= SHELF_BYTES:
            mm.move(base + size, base + start, end - start)
            start, end = size, end - start + size
        if size > start:
            return False
        mm[base + start - size : base + start] = frames
        _SHELF_HEAD.pack_into(mm, self._head, start - size, end)
        return True


def _drain_parked(sock: socket.socket) -> list[list[int]]:
    """Every group of descriptors parked now, in order."""
    groups: list[list[int]] = []
    while True:
        try:
            mark, ancillary, _, _ = sock.recvmsg(1, _ANCILLARY_SPACE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return groups
        fds = descriptors_in(ancillary) if ancillary else []
        if mark != _FD_MARK or not fds:
            for group in [*groups, fds]:
                for fd in group:
                    os.close(fd)
            raise MessageError("a queue's parked descriptors are out of step")
        groups.append(fds)


def _take_parked(sock: socket.socket) -> list[int]:
    """The descriptors of the next memfd frame, parked by _Shelf._fill, from the writing
    end of the queue's socket."""
    try:
        mark, ancillary, _, _ = sock.recvmsg(1, _ANCILLARY_SPACE, socket.MSG_DONTWAIT)
    except BlockingIOError:
        mark, ancillary = b"", []
    fds = descriptors_in(ancillary) if ancillary else []
    if mark != _FD_MARK or not fds:
        for fd in fds:
            os.close(fd)
        raise MessageError("a queue item kept in a memfd arrived without its descriptor")
    return fds


_descriptor_limit_raised = False


def _raise_descriptor_limit() -> None:
    """Raise this process's soft limit on open descriptors to its hard limit, once (as Go
    programs do at start; children inherit it).

    Every big item a producer holds is a memfd, and Linux caps the descriptors a user has
    in flight in sockets at that user's soft limit too (``ETOOMANYREFS``): with the usual
    1,024, a producer 1,000 big items ahead of its consumer failed its ``put()``
    (``EMFILE``), and six full queues of big items made a feeder's send fail. The
    standard library keeps such items in memory instead, where the only limit is memory.
    """
    global _descriptor_limit_raised
    if _descriptor_limit_raised:
        return
    _descriptor_limit_raised = True
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Unlimited: Linux's default nr_open, the most a process can have anyway.
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError):
        pass  # not allowed here (a sandbox): the limit stays as it is


class Queue(Generic[_T]):
    """A FIFO queue shared between processes (``multiprocessing.Queue``).

    Creating one raises the process's soft limit on open descriptors to its hard limit
    (big items travel as descriptors; see :func:`_raise_descriptor_limit`).
    """

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        _raise_descriptor_limit()
        if maxsize <= 0:
            maxsize = SEM_VALUE_MAX
        self._maxsize = maxsize
        # A socket pair, not an OS pipe: big items travel as descriptors (SCM_RIGHTS).
        self._reader, self._writer = Pipe(duplex=True)
        self._usual_room = _make_exit_room(self._writer)
        self._rlock = Lock()
        self._wlock = Lock()
        self._sem = BoundedSemaphore(maxsize)
        self._recycler = _Recycler()
        self._shelf = _Shelf()
        self._opid = os.getpid()
        self._after_fork()
        register_after_fork(self, Queue._after_fork)

    def __getstate__(self) -> Any:
        return (self._maxsize, self._reader, self._writer, self._rlock, self._wlock, self._sem, self._recycler,
                self._shelf, self._opid, self._usual_room)  # fmt: skip

    def __setstate__(self, state: Any) -> None:
        (self._maxsize, self._reader, self._writer, self._rlock, self._wlock, self._sem, self._recycler,
         self._shelf, self._opid, self._usual_room) = state  # fmt: skip
        self._after_fork()
        register_after_fork(self, Queue._after_fork)

    def _after_fork(self) -> None:
        self._rsock: socket.socket | None = None
        self._requeuer: _Writer | None = None
        self._notempty = threading.Condition(threading.Lock())
        self._buffer: collections.deque[bytes] = collections.deque()
        self._feeding = _FeedState(self._buffer, self._notempty)
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
        if self._thread is None:
            with self._notempty:
                if self._thread is None:
                    self._start_thread()
        feeding = self._feeding
        feeding.buffer.append(data)
        if feeding.idle:  # woken only when it waits: a busy feeder finds the item by itself
            with self._notempty:
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
            if not self._shelf.holds():
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
        return _read_item(self._shelf, self._rsock, self._parked, self._requeue, self._recycler)

    def _parked(self) -> list[int]:
        """The descriptors parked by the shelf for its next memfd frame (read lock held)."""
        if self._requeuer is None:
            self._requeuer = _Writer(self._writer)
            weakref.finalize(self, self._requeuer.close)
        return _take_parked(self._requeuer.sock)

    def _requeue(self, fds: list[int]) -> None:
        """Park *fds* (the rest of a batch, whose frame is now first in the shelf) ahead
        of the descriptors parked already, which belong to later frames (read lock held)."""
        if self._requeuer is None:
            self._requeuer = _Writer(self._writer)
            weakref.finalize(self, self._requeuer.close)
        assert self._rsock is not None
        later = _drain_parked(self._requeuer.sock)
        try:
            for group in [fds, *later]:
                socket.send_fds(self._rsock, [_FD_MARK], group)
        finally:
            for group in later:
                for fd in group:
                    os.close(fd)

    def put_nowait(self, obj: _T) -> None:
        self.put(obj, False)

    def get_nowait(self) -> _T:
        return self.get(False)

    def qsize(self) -> int:
        """Items put and not yet taken (approximate while others put and get)."""
        return self._maxsize - self._sem._get_value()

    def empty(self) -> bool:
        """Whether nothing waits to be read (approximate while others put and get).

        Raises:
            ConnectionClosedError: (an OSError) this process put to the queue and then
                closed it. A queue closed before any put here reports True, as the
                standard library's does.
        """
        if self._shelf.holds():
            return False
        try:
            return not self._reader.poll()
        except ConnectionClosedError:
            if self._thread is None:
                return True
            raise

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
        self._feeding.wakeup = _Wakeup()
        self._thread = threading.Thread(
            target=_feed,
            args=(self._feeding, self._writer, self._wlock, self._sem, self._usual_room),
            name="QueueFeederThread",
            daemon=True,
        )
        self._thread.start()
        if not self._joincancelled:
            self._jointhread = Finalize(self._thread, _join_feeder, [weakref.ref(self._thread), self._feeding.wakeup],
                                        exitpriority=-5)  # fmt: skip
        self._close_finalizer = Finalize(
            self, _stop_feeder, [self._buffer, self._notempty, self._reader], exitpriority=10
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x} maxsize={self._maxsize}>"


_STOP = object()


class _FeedState:
    """What a process's put() shares with its feeder thread: the items not yet written,
    whether the feeder waits for one (only then does put() wake it), and its wake-up."""

    __slots__ = ("buffer", "notempty", "idle", "wakeup")

    def __init__(self, buffer: collections.deque, notempty: threading.Condition) -> None:
        self.buffer = buffer
        self.notempty = notempty
        self.idle = False
        self.wakeup: _Wakeup | None = None  # made with the feeder thread


def _join_feeder(ref: Any, wakeup: _Wakeup) -> None:
    thread = ref()
    if thread is not None:
        wakeup.ring()  # what the socket cannot take now goes to a memfd, so this join returns
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


def _feed(state: _FeedState, conn: Any, wlock: Lock, sem: Any, limit: int) -> None:
    buffer, notempty = state.buffer, state.notempty
    assert state.wakeup is not None
    writer = _Writer(conn, state.wakeup, limit)
    try:
        while True:
            if not buffer:
                with notempty:
                    state.idle = True  # put() wakes it from now on (checked again below, under the lock)
                    while not buffer:
                        notempty.wait()
                    state.idle = False
            while buffer:
                items, stop = _next_chunk(buffer)
                if stop:
                    conn.close()
                    return
                if not _send_chunk(writer, wlock, items, buffer, state.wakeup, sem):
                    return
    finally:
        writer.close()
        _close_held(list(buffer))


def _send_chunk(writer: _Writer, wlock: Lock, items: list[Any], buffer: collections.deque, wakeup: _Wakeup,
                sem: Any) -> bool:  # fmt: skip
    """Write *items* (see _write_chunk); False if the feeder must stop (its socket is gone)."""
    try:
        _write_chunk(writer, wlock, items, buffer, wakeup)
    except BrokenPipeError:
        for _ in items:
            sem.release()  # nobody will read them: give the slots back
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return False  # the socket was closed under it (the interpreter is exiting)
        # Lost, as the standard library's feeder loses an item it cannot send: said on
        # standard error, the slots given back, and the feeder goes on.
        _report_lost(exc, len(items))
        for _ in items:
            sem.release()
    finally:
        _close_held(items)  # sent (the kernel holds the memfds in flight) or lost
    return True


def _report_lost(exc: OSError, count: int) -> None:
    import traceback

    print(f"procly: a queue's feeder thread could not send {count} item(s), which are lost:", file=sys.stderr)
    traceback.print_exception(exc)


def _write_chunk(writer: _Writer, wlock: Lock, items: list[Any], buffer: collections.deque,
                 wakeup: _Wakeup) -> None:  # fmt: skip
    """Write *items* when the socket has room; at exit, put them and the rest in a memfd.

    While the socket is full the feeder blocks in poll() until the kernel reports room
    (readers took most of what it held) or the exit rings its wake-up: no timed naps.
    """
    big = type(items[0]) is _Held
    data = b"" if big else _frames(items)
    room = False  # the kernel said writable, and the reserve rule can never say yes: write anyway
    while True:
        with wlock:
            if room or writer.fits(0 if big else len(data)):
                if big:
                    writer.send_descriptor(_HEADER.pack(_SPILLED) + _SIZE.pack(0), items[0].fd)
                else:
                    writer.write(data)
                return
            if wakeup.spill:  # exiting and no reader drains the socket: don't wait for one
                while buffer and buffer[0] is not _STOP:
                    items.append(buffer.popleft())
                _spill_batch(writer, items)
                return
        # Writable means that at most a quarter of the send buffer is in use: then this
        # write fits, unless the buffer was made so small that it never would (waiting
        # again would then spin).
        writable = writer.wait_for_room()
        room = writable and writer.writable_below + len(data) + FRAME_COST + RESERVE_BYTES >= writer.limit


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
