"""Connection: framed messages over a pipe or a stream socket.

Wire format (all integers big-endian)::

    plain message      i32 n (0 <= n < 2**31-1)        then n bytes
    large message      i32 -1, u64 n                   then n bytes (over 2 GiB)
    out-of-band object i32 -2, u32 k, (k+1) x u64 size then the pickle, then k buffers
    buffers in a memfd  i32 -3, u32 k, (k+1) x u64 size, u64 token, one byte carrying
                        the memfd (SCM_RIGHTS), then the pickle; the k buffers lie in
                        the memfd where _memfd_reuse.buffer_layout places them
    memfds named back  i32 -4, u32 k, k x u64 token; always followed by another frame

``send()`` of an object with large buffers (numpy arrays, big bytes) uses the third
form: the buffers are written straight from their own memory instead of being copied
into the pickle first, and the receiver unpickles over the buffers it read, without
another copy. On a socket (a duplex Pipe, a Pool's worker channel) buffers of 1 MiB
and more in all go into an anonymous memfd instead, whose descriptor travels with the
frame: the sender copies them once, the receiver maps them (copy-on-write) and copies
nothing, and the socket carries a few bytes instead of streaming megabytes through its
buffer. On a duplex connection the receiver names the memfd's token back once its
mapping is gone, and the sender writes a later message into the same pages (see
``_memfd_reuse``). Everything else is a plain message, so ``send`` and ``recv_bytes`` (or
``send_bytes`` and ``recv``) interoperate as in the standard library.

Memory follows the bytes that arrive, not the sizes a header announces: a large payload
or out-of-band buffer is read into a buffer that starts at 1 MiB and doubles as it
fills, and a size over the machine's physical memory is a :class:`MessageError` at once.
"""

from __future__ import annotations

import _pickle as pickle  # the C module: pickle.py would also import re and enum
import collections
import mmap
import os
import select
import stat
import struct
import threading

from . import _serialization
from ._errors import BufferTooShort, ConnectionClosedError, MessageError
from ._fds import descriptors_in as descriptors_in
from ._fds import peer_credentials as peer_credentials
from ._fds import write_all as write_all
from ._frames import HEADER as _HEADER
from ._frames import IN_MEMFD as _IN_MEMFD
from ._frames import LARGE as _LARGE
from ._frames import NAMED_BACK as _NAMED_BACK
from ._frames import OUT_OF_BAND as _OUT_OF_BAND
from ._frames import frame_header
from ._memfd_reuse import MAX_NAMED, Memfd, MemfdReuse, buffer_layout
from ._wait import poll_ms

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    import socket
    from typing import Any

__all__ = ["Connection", "Pipe"]

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
MEMFD_THRESHOLD = 1024 * 1024  # out-of-band bytes in one message from which a memfd carries them
_SMALL_WRITE = 64 * 1024  # header and payload go out in one write below this size
_FIRST_READ = 1024 * 1024  # a large payload's buffer starts at this size and doubles as bytes arrive
_POLLIN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
# Room for the descriptors one read may bring; set with the first socket made for them.
# (socket is imported on first use: a spawned child that never touches one skips it.)
_FD_SPACE = 0


class Connection:
    """One end of a message channel, built on a file descriptor.

    Same interface as ``multiprocessing.connection.Connection``. Differences: using a
    closed connection raises :class:`procly.ConnectionClosedError` (an ``OSError``);
    a malformed frame raises :class:`procly.MessageError`; objects holding large
    buffers cross without being copied into the pickle.
    """

    def __init__(self, handle: int, readable: bool = True, writable: bool = True) -> None:
        handle = handle.__index__()
        if handle < 0:
            raise ValueError("invalid handle")
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        self._handle: int | None = handle
        self._readable = readable
        self._writable = writable
        self._fd_socket: socket.socket | None | bool = None  # for SCM_RIGHTS; False: not a Unix socket
        self._reuse: MemfdReuse | None = None  # memfds of big messages, made on first use
        self._poller: select.poll | None = None
        # Largest message accepted by recv(); None means no limit (pipes between our own
        # processes). Servers facing a network set one.
        self.max_message_size: int | None = None

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._close()

    # -- state ---------------------------------------------------------------

    def _check_closed(self) -> int:
        if self._handle is None:
            raise ConnectionClosedError("connection is closed")
        return self._handle

    def _check_readable(self) -> int:
        handle = self._check_closed()
        if not self._readable:
            raise OSError("connection is write-only")
        return handle

    def _check_writable(self) -> int:
        handle = self._check_closed()
        if not self._writable:
            raise OSError("connection is read-only")
        return handle

    @property
    def closed(self) -> bool:
        """True if the connection is closed."""
        return self._handle is None

    @property
    def readable(self) -> bool:
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if the connection is writable."""
        return self._writable

    def fileno(self) -> int:
        """The file descriptor used by the connection.

        Raises:
            ConnectionClosedError: the connection was closed.
        """
        return self._check_closed()

    def _close(self, _close_fd: Any = os.close) -> None:
        # os.close is bound now: __del__ may run at interpreter exit, after os is cleared.
        handle, self._handle = self._handle, None
        self._poller = None
        reuse, self._reuse = getattr(self, "_reuse", None), None
        if reuse is not None:
            reuse.close()
        fd_socket, self._fd_socket = getattr(self, "_fd_socket", None), None
        if fd_socket is not None and fd_socket is not False:  # a socket (not: modules may be gone at exit)
            fd_socket.close()  # a duplicate of the handle: closing it leaves the handle alone
        if handle is not None:
            _close_fd(handle)

    def _socket_for_fds(self, handle: int) -> socket.socket | None:
        """A socket object over (a duplicate of) the handle, to pass descriptors; None for a pipe."""
        if self._fd_socket is None:
            self._fd_socket = False
            if stat.S_ISSOCK(os.fstat(handle).st_mode):
                import socket

                global _FD_SPACE
                _FD_SPACE = socket.CMSG_SPACE(16 * struct.calcsize("i"))
                sock = socket.socket(fileno=os.dup(handle))
                if sock.family == socket.AF_UNIX:  # descriptors travel on Unix sockets only
                    self._fd_socket = sock
                else:
                    sock.close()
        return self._fd_socket or None

    def close(self) -> None:
        """Close the connection; closing twice is harmless."""
        if self._handle is not None:
            self._close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"fd={self._handle}"
        return f"<{type(self).__name__} {state}>"

    def __reduce__(self) -> Any:
        # With a child's start data the descriptor goes along; anywhere else (a Pipe, a
        # Queue, a Manager) it is lent and fetched by whoever unpickles it.
        from . import _fd_sharer  # it imports socket: not at the top (see _FD_SPACE)

        token = _fd_sharer.reduce_fd(self._check_closed(), type(self).__name__)
        return _rebuild_connection, (token, self._readable, self._writable)

    # -- writing -------------------------------------------------------------

    def _write_all(self, handle: int, data: Any) -> None:
        write_all(handle, data)

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Send the bytes of a bytes-like object *buf* (from *offset*, *size* bytes).

        Raises:
            ValueError: *offset* or *size* fall outside the buffer.
            ConnectionClosedError: this end was closed; OSError: it is read-only or the
                peer is gone (BrokenPipeError).
        """
        handle = self._check_writable()
        view = memoryview(buf)
        itemsize = view.itemsize
        if itemsize > 1:
            view = view.cast("B")
        n = len(view)
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        self._send_frame(handle, view[offset : offset + size])

    def _named_back(self) -> bytes:
        """A frame naming back the memfds whose mapping here is gone, to go before the
        next frame (b"" when there are none)."""
        if self._reuse is None or not self._reuse._spent:
            return b""
        tokens = self._reuse.spent()
        if not tokens:
            return b""
        return _HEADER.pack(_NAMED_BACK) + _U32.pack(len(tokens)) + b"".join(_U64.pack(t) for t in tokens)

    def _send_frame(self, handle: int, payload: Any) -> None:
        n = len(payload)
        header = frame_header(n)
        if self._reuse is not None:
            header = self._named_back() + header
        if n <= _SMALL_WRITE:
            self._write_all(handle, header + bytes(payload))
        else:
            self._write_all(handle, header)
            self._write_all(handle, payload)

    def send(self, obj: Any) -> None:
        """Send a picklable object; the peer gets it with :meth:`recv`.

        Raises:
            procly.PicklingError: *obj* cannot be pickled (nothing is sent).
            ConnectionClosedError / OSError: as :meth:`send_bytes`.
        """
        self._send_object(obj, plain=False)

    def _send_scalars(self, obj: Any) -> None:
        """send() of *obj*, a tuple of numbers, text, bool and None (and such tuples): the
        C pickler alone, nothing to inspect and nothing out of band (a proxy call's request).

        Raises:
            ConnectionClosedError / OSError: as :meth:`send_bytes`.
        """
        handle = self._handle
        if handle is None or not self._writable:
            handle = self._check_writable()  # raises
        self._send_frame(handle, pickle.dumps(obj, _serialization.PROTOCOL))

    def _send_object(self, obj: Any, plain: bool, out_of_band_from: int = _serialization.OUT_OF_BAND_THRESHOLD) -> None:
        """send(); *plain*: *obj* is an envelope of built-in data; buffers from *out_of_band_from*
        bytes are written from their own memory (see ``_serialization.dumps``)."""
        handle = self._handle
        if handle is None or not self._writable:
            handle = self._check_writable()  # raises
        buffers: list[memoryview] = []
        payload = _serialization.dumps(obj, buffers, plain=plain, out_of_band_from=out_of_band_from)
        if not buffers:
            if len(payload) <= _SMALL_WRITE and self._reuse is None:
                write_all(handle, _HEADER.pack(len(payload)) + payload)  # the common small message
            else:
                self._send_frame(handle, payload)
            return
        sizes = [len(payload)] + [b.nbytes for b in buffers]
        total = sum(sizes) - sizes[0]
        sock = self._socket_for_fds(handle) if total >= MEMFD_THRESHOLD else None
        if sock is not None:
            _, total = buffer_layout(sizes[1:])
        kind = _OUT_OF_BAND if sock is None else _IN_MEMFD
        header = self._named_back() if self._reuse is not None else b""
        header += _HEADER.pack(kind) + _U32.pack(len(buffers))
        header += b"".join(_U64.pack(s) for s in sizes)
        if sock is None:
            self._write_all(handle, header + payload)
            for buf in buffers:
                self._write_all(handle, buf)
            return
        # Reused memfds are named back over this connection, so only an end that reads
        # can get them back.
        reuse = self._memfd_reuse() if self._readable else None
        memfd = reuse.memfd_for(total) if reuse is not None else Memfd(total)
        try:
            memfd.write(buffers)
            token = reuse.lend(memfd) if reuse is not None else 0
        except BaseException:
            memfd.close()
            raise
        try:
            self._write_all(handle, header + _U64.pack(token))
            import socket  # imported already: sock is one

            socket.send_fds(sock, [b"F"], [memfd.fd])
        finally:
            if not token:
                memfd.close()
        self._write_all(handle, payload)

    def _memfd_reuse(self) -> MemfdReuse:
        if self._reuse is None:
            self._reuse = MemfdReuse()
        return self._reuse

    # -- reading -------------------------------------------------------------

    def _read_exact(self, handle: int, n: int, *, eof_ok: bool = False) -> bytes | None:
        data = os.read(handle, n)
        if len(data) == n:
            return data
        if not data:
            if eof_ok:
                return None
            raise EOFError("peer closed the connection in the middle of a message")
        chunks = [data]
        got = len(data)
        while got < n:
            chunk = os.read(handle, n - got)
            if not chunk:
                raise EOFError("peer closed the connection in the middle of a message")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read_into(self, handle: int, view: memoryview) -> None:
        got, n = 0, len(view)
        while got < n:
            count = os.readv(handle, [view[got:]])
            if count == 0:
                raise EOFError("peer closed the connection in the middle of a message")
            got += count

    def _read_length(self, handle: int, header: bytes | None = None) -> int:
        """Read a frame header (or complete *header*, its first bytes already read); raise
        EOFError at a clean end of stream."""
        if header:
            if len(header) < 4:
                header += self._read_exact(handle, 4 - len(header))  # type: ignore[operator]
        else:
            header = self._read_exact(handle, 4, eof_ok=True)
            if header is None:
                raise EOFError("peer closed the connection")
        (n,) = _HEADER.unpack(header)
        while n == _NAMED_BACK:
            (count,) = _U32.unpack(self._read_exact(handle, 4))  # type: ignore[arg-type]
            if count > MAX_NAMED:
                self.close()
                raise MessageError(f"malformed frame: {count} memfds named back")
            raw = self._read_exact(handle, 8 * count)
            if self._reuse is not None:
                self._reuse.named_back([_U64.unpack_from(raw, 8 * i)[0] for i in range(count)])  # type: ignore[arg-type]
            header = self._read_exact(handle, 4, eof_ok=True)
            if header is None:
                raise EOFError("peer closed the connection")
            (n,) = _HEADER.unpack(header)
        if n == _LARGE:
            (n,) = _U64.unpack(self._read_exact(handle, 8))  # type: ignore[arg-type]
        return n

    def _check_size(self, n: int, maxlength: int | None) -> None:
        limit = self.max_message_size
        if maxlength is not None and (limit is None or maxlength < limit):
            limit = maxlength
        if limit is not None and n > limit:
            self.close()
            raise MessageError(f"bad message length: {n} bytes announced, at most {limit} accepted")
        if n > _memory_size():
            self.close()
            raise MessageError(
                f"bad message length: {n} bytes announced, more than this machine's memory ({_memory_size()} bytes)"
            )

    def _read_payload(self, handle: int, n: int) -> bytes | bytearray:
        """Read an *n*-byte payload. Memory follows the bytes that arrive, not the header:
        the buffer starts at 1 MiB at most and doubles each time it is full, so a header
        announcing gigabytes costs nothing until the gigabytes come.

        Raises:
            MessageError: memory ran out (it names the size announced; the connection is closed).
            EOFError: the peer closed the connection before the payload was whole.
        """
        if n <= _SMALL_WRITE:
            return self._read_exact(handle, n) if n else b""  # type: ignore[return-value]
        try:
            buf = bytearray(min(n, _FIRST_READ))
            got = 0
            while True:
                with memoryview(buf) as view:
                    self._read_into(handle, view[got:])
                got = len(buf)
                if got == n:
                    return buf
                buf += bytes(min(n - got, got))  # calloc'd zeros: untouched until copied over
        except MemoryError:
            self.close()
            raise MessageError(
                f"out of memory receiving a message of {n} bytes announced (the connection is closed)"
            ) from None

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one message sent with :meth:`send_bytes` (or :meth:`send`) as bytes.

        Raises:
            EOFError: the peer closed its end and nothing is left to read.
            OSError: the message is longer than *maxlength* (the connection is closed).
            ValueError: *maxlength* is negative.
        """
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        handle = self._check_readable()
        n = self._read_length(handle)
        if n == _OUT_OF_BAND:
            self.close()
            raise MessageError("received an object with out-of-band buffers: use recv(), not recv_bytes()")
        if n < 0:
            self.close()
            raise MessageError(f"malformed frame header ({n})")
        self._check_size(n, maxlength)
        return bytes(self._read_payload(handle, n))

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receive a message into the writable buffer *buf* at byte *offset*; return its size in bytes.

        Raises:
            BufferTooShort: the message does not fit; ``args[0]`` holds it whole.
            ValueError: *offset* is negative or past the end of *buf*.
            EOFError / OSError: as :meth:`recv_bytes`.
        """
        handle = self._check_readable()
        with memoryview(buf) as view:
            byte_view = view.cast("B")
            if offset < 0:
                raise ValueError("negative offset")
            if offset > len(byte_view):
                raise ValueError("offset too large")
            n = self._read_length(handle)
            if n < 0:
                self.close()
                raise MessageError(f"malformed frame header ({n})")
            self._check_size(n, None)
            if offset + n > len(byte_view):
                raise BufferTooShort(bytes(self._read_payload(handle, n)))
            self._read_into(handle, byte_view[offset : offset + n])
            return n

    def recv(self) -> Any:
        """Receive an object sent with :meth:`send`.

        Raises:
            EOFError: the peer closed its end and nothing is left to read.
            pickle.UnpicklingError: the bytes received are not a valid pickle.
            MessageError: the frame is malformed or too large (the connection is closed).
        """
        handle = self._handle
        if handle is None or not self._readable:
            handle = self._check_readable()  # raises
        # The common small message, read in two calls (the general path takes a dozen).
        header = os.read(handle, 4)
        if len(header) == 4:
            (n,) = _HEADER.unpack(header)
            limit = self.max_message_size
            if 0 < n <= _SMALL_WRITE and (limit is None or n <= limit):
                data = os.read(handle, n)
                if len(data) < n:
                    data += self._read_exact(handle, n - len(data))  # type: ignore[operator]
                return _serialization.loads(data)
        return self._recv_frame(handle, header)

    def _recv_frame(self, handle: int, header: bytes | None = None) -> Any:
        """recv() of any frame, its first header bytes (if any) already read into *header*."""
        n = self._read_length(handle, header)
        if n >= 0:
            self._check_size(n, None)
            return _serialization.loads(self._read_payload(handle, n))
        if n not in (_OUT_OF_BAND, _IN_MEMFD):
            self.close()
            raise MessageError(f"malformed frame header ({n})")
        (count,) = _U32.unpack(self._read_exact(handle, 4))  # type: ignore[arg-type]
        if count > 65536:
            self.close()
            raise MessageError(f"malformed frame: {count} out-of-band buffers announced")
        raw = self._read_exact(handle, 8 * (count + 1))
        sizes = [_U64.unpack_from(raw, 8 * i)[0] for i in range(count + 1)]  # type: ignore[arg-type]
        self._check_size(sum(sizes), None)
        if n == _IN_MEMFD:
            (token,) = _U64.unpack(self._read_exact(handle, 8))  # type: ignore[arg-type]
            views = self._receive_memfd(handle, sizes[1:], token)
            return _serialization.loads(self._read_payload(handle, sizes[0]), views)
        payload = self._read_payload(handle, sizes[0])
        buffers = [
            bytearray(self._read_payload(handle, size)) if size <= _SMALL_WRITE else self._read_payload(handle, size)
            for size in sizes[1:]
        ]
        return _serialization.loads(payload, buffers)

    def _receive_memfd(self, handle: int, sizes: list[int], token: int) -> list[memoryview]:
        sock = self._socket_for_fds(handle)
        if sock is None:
            self.close()
            raise MessageError("malformed frame: a memfd announced on a connection that cannot carry one")
        fd = self._take_fd(sock)
        if fd is None:
            self.close()
            raise MessageError("malformed frame: the memfd announced did not arrive")
        try:
            starts, total = buffer_layout(sizes)
            if os.fstat(fd).st_size < total:
                self.close()
                raise MessageError("malformed frame: the memfd is smaller than announced")
            # Private and writable: arrays rebuilt over it can be changed, copy-on-write,
            # without a byte being copied until then.
            mapped = (
                mmap.mmap(fd, total, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE) if total else None
            )
        finally:
            os.close(fd)
        if mapped is not None and token and self._writable:
            self._memfd_reuse().watch(mapped, token)  # named back once no buffer uses it
        whole = memoryview(mapped) if mapped is not None else memoryview(b"")
        return [whole[start : start + size] for start, size in zip(starts, sizes, strict=True)]

    def _take_fd(self, sock: socket.socket) -> int | None:
        """Read the one-byte marker that carries a descriptor; return it (None: it did not come)."""
        import socket  # imported already: sock is one

        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return None
        return fds[0]

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is anything to read (or the peer is gone) within *timeout* seconds.

        ``None`` waits without limit; 0 (the default) does not wait.
        """
        handle = self._check_readable()
        ms = poll_ms(timeout)
        poller = self._poller
        if poller is None:  # kept: a pool's supervisor polls each worker channel per burst of replies
            poller = self._poller = select.poll()
            poller.register(handle, _POLLIN)
        try:
            return bool(poller.poll(ms))
        except RuntimeError:  # another thread is polling this connection right now
            poller = select.poll()
            poller.register(handle, _POLLIN)
            return bool(poller.poll(ms))


_scratch = threading.local()  # each reading thread's read-ahead buffer (see BufferedConnection._fill)
_spare_scratch: list[memoryview] = []  # lent to threads that read now and then (lend_scratch)
SPARE_SCRATCH = 2


def lend_scratch() -> bool:
    """Give this thread a read-ahead buffer from the process's spare ones for a while, if
    it has none of its own: a thread that reads a channel now and then (a caller reading
    its own reply from a pool worker) must not keep one for good. True if one was lent:
    hand it back with :func:`return_scratch`."""
    if getattr(_scratch, "view", None) is not None:
        return False
    try:
        _scratch.view = _spare_scratch.pop()
    except IndexError:
        pass  # _fill makes one
    return True


def return_scratch() -> None:
    """Take back the buffer :func:`lend_scratch` lent this thread (or the one made meanwhile)."""
    view = getattr(_scratch, "view", None)
    _scratch.view = None
    if view is not None and len(_spare_scratch) < SPARE_SCRATCH:
        _spare_scratch.append(view)


class BufferedConnection(Connection):
    """A Connection over a Unix socket that reads ahead: one system call takes every
    message waiting (a pool's worker channel, where replies and tasks come in bursts).

    Bytes read ahead belong to this object, so a channel read through one must have no
    other reader. Descriptors that arrive with them (memfd frames) wait in order for
    their frame. ``poll()`` counts what is buffered; ``buffered()`` says whether a
    whole message may be waiting without the descriptor being readable.
    """

    READ_AHEAD = 256 * 1024

    def __init__(self, handle: int, readable: bool = True, writable: bool = True) -> None:
        super().__init__(handle, readable, writable)
        self._rbuf = bytearray()
        self._rpos = 0
        self._rfds: collections.deque[int] = collections.deque()

    @classmethod
    def adopt(cls, conn: Connection) -> BufferedConnection:
        """A buffered connection taking over *conn*'s descriptor (*conn* is left closed)."""
        handle = conn._check_closed()
        fd_socket, conn._fd_socket = conn._fd_socket, None
        conn._handle = None
        new = cls(handle, conn._readable, conn._writable)
        new._fd_socket = fd_socket
        new.max_message_size = conn.max_message_size
        return new

    def _close(self, _close_fd: Any = os.close) -> None:
        while getattr(self, "_rfds", None):
            _close_fd(self._rfds.popleft())
        super()._close(_close_fd)

    def buffered(self) -> bool:
        """Whether bytes read ahead wait here."""
        return self._rpos < len(self._rbuf)

    def _fill(self, handle: int, want: int) -> bool:
        """Read what is waiting (at least one byte, blocking); False at end of stream."""
        # Read into a buffer of this thread's, then appended: no allocation per read, and
        # none per connection (a pool of 1000 workers would hold 1000 of them, and every
        # fork of a new worker would copy their page tables).
        scratch = getattr(_scratch, "view", None)
        if scratch is None or want > len(scratch):
            scratch = _scratch.view = memoryview(bytearray(max(want, self.READ_AHEAD)))
        sock = self._socket_for_fds(handle)
        if sock is None:
            count = os.readv(handle, [scratch])
        else:
            count, ancillary, _, _ = sock.recvmsg_into([scratch], _FD_SPACE)
            self._rfds.extend(descriptors_in(ancillary))
        if not count:
            return False
        if self._rpos == len(self._rbuf):
            self._rbuf.clear()
            self._rpos = 0
        elif self._rpos > self.READ_AHEAD:  # a partial message keeps the buffer: drop what was read
            del self._rbuf[: self._rpos]
            self._rpos = 0
        self._rbuf += scratch[:count]
        return True

    def _read_exact(self, handle: int, n: int, *, eof_ok: bool = False) -> bytes | None:
        while len(self._rbuf) - self._rpos < n:
            if not self._fill(handle, n - (len(self._rbuf) - self._rpos)):
                if eof_ok and not self.buffered():
                    return None
                raise EOFError("peer closed the connection in the middle of a message")
        data = bytes(self._rbuf[self._rpos : self._rpos + n])
        self._rpos += n
        return data

    def _read_into(self, handle: int, view: memoryview) -> None:
        have = min(len(self._rbuf) - self._rpos, len(view))
        view[:have] = self._rbuf[self._rpos : self._rpos + have]
        self._rpos += have
        if have < len(view):
            # The rest of this message is plain bytes: read it in place, exactly (never
            # past the message, so no descriptor can be read along with it).
            super()._read_into(handle, view[have:])

    def recv(self) -> Any:
        """Receive an object sent with :meth:`send` (see :meth:`Connection.recv`)."""
        # Fast path: a whole plain message waits in the buffer (read now, in one call, if
        # nothing was); unpickle it in place.
        pos = self._rpos
        handle = self._handle
        if self._readable and handle is not None and pos == len(self._rbuf):
            if not self._fill(handle, 4):
                raise EOFError("peer closed the connection")
            pos = self._rpos
        if self._readable and handle is not None and (n := self._whole_frame(pos)) >= 0:
            self._rpos = pos + 4 + n
            # Unpickled in place; the views are released even if loads() raises (a view
            # kept alive by a traceback would pin the buffer).
            with memoryview(self._rbuf) as whole, whole[pos + 4 : pos + 4 + n] as message:
                try:
                    return pickle.loads(message)  # _serialization.loads, one call less per message
                except (pickle.UnpicklingError, EOFError) as exc:
                    raise pickle.UnpicklingError(f"received data is not a valid pickle: {exc}") from exc
        return self._recv_frame(self._check_readable())

    def _whole_frame(self, pos: int) -> int:
        """The length of the plain message whose frame lies whole in the read-ahead buffer
        from *pos*; -1 for anything else (too few bytes, a partial, special or oversized
        frame: for the general path of recv())."""
        buf = self._rbuf
        if len(buf) - pos < 4:
            return -1
        (n,) = _HEADER.unpack_from(buf, pos)
        if n < 0 or n > len(buf) - pos - 4 or (self.max_message_size is not None and n > self.max_message_size):
            return -1
        return n

    def recv_ready(self) -> list[Any]:
        """Receive one message as :meth:`recv` does (blocking for it), plus every further
        message already read ahead whole: one call per batch for a busy reader.

        Raises what :meth:`recv` raises, for the first message; a later message that does
        not unpickle stays unread, so the next call raises for it.
        """
        messages = [self.recv()]
        pos = self._rpos
        with memoryview(self._rbuf) as whole:
            while (n := self._whole_frame(pos)) >= 0:
                with whole[pos + 4 : pos + 4 + n] as message:
                    try:
                        messages.append(pickle.loads(message))
                    except Exception:  # noqa: BLE001 - left for the next recv() to report
                        break
                pos += 4 + n
        self._rpos = pos
        return messages

    def _take_fd(self, sock: socket.socket) -> int | None:
        marker = self._read_exact(self._check_closed(), 1)
        if marker != b"F" or not self._rfds:
            return None
        return self._rfds.popleft()

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is anything to read (buffered, or on the descriptor) within *timeout* seconds."""
        self._check_readable()
        return self.buffered() or super().poll(timeout)


_memory_bytes: int | None = None


def _memory_size() -> int:
    """This machine's physical memory in bytes: no message announcing more can be received."""
    global _memory_bytes
    if _memory_bytes is None:
        try:
            _memory_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):  # pragma: no cover - not Linux
            _memory_bytes = 2**63
    return _memory_bytes


def _rebuild_connection(token: tuple, readable: bool, writable: bool) -> Connection:
    from . import _fd_sharer

    return Connection(_fd_sharer.rebuild_fd(*token), readable, writable)


def _reduce_socket(sock: socket.socket) -> Any:
    from . import _fd_sharer

    token = _fd_sharer.reduce_fd(sock.fileno(), "socket")
    return _rebuild_socket, (token, sock.family, sock.type, sock.proto)


def _rebuild_socket(token: tuple, family: int, kind: int, proto: int) -> socket.socket:
    import socket

    from . import _fd_sharer

    return socket.socket(family, kind, proto, fileno=_fd_sharer.rebuild_fd(*token))


# Sockets cross like Connections (the standard library's reduction does the same).
_serialization.register_when_imported("socket", "socket", _reduce_socket)


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802 - stdlib name
    """Return a pair of connected Connections.

    With *duplex* (the default) both ends can send and receive; otherwise the first can
    only receive and the second only send. Both kinds are Unix socket pairs, not OS
    pipes (as the standard library uses for one-way ones): big buffers then cross in a
    memfd passed with ``SCM_RIGHTS`` instead of being streamed through the kernel.
    """
    import socket

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # socket.setdefaulttimeout() would leave them non-blocking: Connections block.
    left.setblocking(True)
    right.setblocking(True)
    if duplex:
        return Connection(left.detach()), Connection(right.detach())
    left.shutdown(socket.SHUT_WR)
    right.shutdown(socket.SHUT_RD)
    return Connection(left.detach(), writable=False), Connection(right.detach(), readable=False)
