"""Named shared memory (``multiprocessing.shared_memory``).

``SharedMemory`` is a named POSIX segment (``/dev/shm/NAME`` on Linux) that any process
can attach by name; ``ShareableList`` stores a fixed-length list of int, float, bool,
str, bytes and None in one. Because a name outlives processes, the creator's segments are
registered with a small per-process *tracker* process: if the creator exits or is
killed without ``unlink()``-ing them, the tracker unlinks them, so nothing stays in
/dev/shm. (procly's own locks, Values and Arrays use unnamed memory and need no tracker.)
"""

from __future__ import annotations

import mmap
import os
import secrets
import signal
import struct
import threading
from typing import TYPE_CHECKING, Any, Iterable, Iterator

__all__ = ["ShareableList", "SharedMemory", "ndarray"]

_SHM_DIR = "/dev/shm"
_NAME_PREFIX = "psm_"
# The standard library's names for the same facts; its tests patch _make_filename.
_SHM_NAME_PREFIX = "/" + _NAME_PREFIX
_USE_POSIX = True


def _make_filename() -> str:
    """A fresh random segment name, in POSIX form (leading slash)."""
    return _SHM_NAME_PREFIX + secrets.token_hex(8)


def _path(name: str) -> str:
    if not name or "/" in name.lstrip("/"):
        raise ValueError(f"invalid shared memory name {name!r}")
    return os.path.join(_SHM_DIR, name.lstrip("/"))


class SharedMemory:
    """A block of shared memory with a name.

    Raises:
        ValueError: *size* is not positive when creating, or the name is invalid.
        FileExistsError: *create* and the name is taken.
        FileNotFoundError: attaching to a name that does not exist.
    """

    # Flags used to open an existing name; a subclass may add O_CREAT to attach-or-create.
    _flags = os.O_RDWR

    def __init__(self, name: str | None = None, create: bool = False, size: int = 0, *, track: bool = True) -> None:
        flags = self._open_flags(name, create, size)
        chosen, fd = _open_segment(name, flags)
        self._name = "/" + chosen.lstrip("/")  # POSIX form, as the standard library keeps it
        self._fd = fd
        try:
            if create:
                os.ftruncate(fd, size)
            size = os.fstat(fd).st_size
            self._mmap: mmap.mmap | None = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            if create:
                os.unlink(_path(self._name))
            raise
        self._size = size
        self._buf: memoryview | None = memoryview(self._mmap)
        self._tracked = create and track
        if self._tracked:
            _tracker().register(self.name)

    def _open_flags(self, name: str | None, create: bool, size: int) -> int:
        """The flags to open the segment with, once the arguments are checked.

        Raises:
            ValueError: a negative *size*, a zero *size* with *create*, or no *name*
                without *create*.
        """
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        flags = self._flags
        if create:
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
            flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
        if name is None and not flags & os.O_EXCL:
            raise ValueError("'name' can only be None if create=True")
        return flags

    def __reduce__(self) -> Any:
        return (self.__class__, (self.name, False, self._size))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, size={self._size})"

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def buf(self) -> memoryview:
        """A memoryview of the contents."""
        if self._buf is None:
            raise ValueError("operation on a closed SharedMemory")
        return self._buf

    @property
    def name(self) -> str:
        """The name other processes attach with."""
        return self._name.lstrip("/")

    @property
    def size(self) -> int:
        """Size in bytes (may exceed what was asked: whole pages)."""
        return self._size

    def close(self) -> None:
        """Stop using the block in this process (it lives on until unlinked)."""
        if getattr(self, "_buf", None) is not None:
            self._buf.release()  # type: ignore[union-attr]
            self._buf = None
        if getattr(self, "_mmap", None) is not None:
            self._mmap.close()  # type: ignore[union-attr]
            self._mmap = None
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        """Remove the name; the memory goes when every process has closed it.

        Raises:
            FileNotFoundError: the name was already removed (by this or another process).
        """
        self._tracked = False
        _release(self._name, missing_ok=False)


def _open_segment(name: str | None, flags: int) -> tuple[str, int]:
    """Open the segment *name* (a fresh random name when None); its name and descriptor.

    Raises:
        FileExistsError: creating *name*, and it is taken.
        FileNotFoundError: attaching to a *name* that does not exist.
    """
    while True:
        chosen = _make_filename() if name is None else name
        try:
            return chosen, os.open(_path(chosen), flags | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            if name is None:
                continue  # a random name collided: draw another
            raise


# ----------------------------------------------------------------------------- tracker


class _Tracker:
    """The process that unlinks this process's leftover segments when it goes away."""

    def __init__(self) -> None:
        from ._connection import Pipe
        from .context import _concrete_contexts

        reader, self._writer = Pipe(duplex=True)
        # fork: the tracker needs nothing but os calls, and starts in a millisecond.
        self._process = _concrete_contexts["fork"].Process(
            target=_track, args=(reader, self._writer), name="SharedMemoryTracker", daemon=True
        )
        self._process.start()
        reader.close()
        # Wait until it can handle SIGTERM: an exit right after creating a segment must
        # not kill it before it could unlink.
        if self._writer.recv() != "ready":
            raise RuntimeError("the shared memory tracker failed to start")
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _send(self, line: str) -> None:
        with self._lock:
            self._writer.send(line)

    def register(self, name: str) -> None:
        self._send("R" + name)

    def unregister(self, name: str) -> None:
        self._send("U" + name)


_tracker_instance: _Tracker | None = None
_tracker_lock = threading.Lock()


def _tracker() -> _Tracker:
    global _tracker_instance
    with _tracker_lock:
        if _tracker_instance is None or _tracker_instance._pid != os.getpid():
            _tracker_instance = _Tracker()
        return _tracker_instance


def _track(reader: Any, inherited_writer: Any) -> None:
    # The owner's end, inherited through the fork: closed, so that the owner's death
    # reads as the end of the pipe even where no signal gets through to this thread.
    inherited_writer.close()
    names: set[str] = set()

    class _Stop(Exception):
        pass

    reading = [True]

    def stop(*_: object) -> None:
        # Only interrupts the read loop: a SIGTERM during the clean-up below (the lifeline
        # watcher's, after the owner's exit or the end of the pipe) must not abort it.
        if reading[0]:
            reading[0] = False
            raise _Stop

    # The owner's exit terminates this daemon (SIGTERM), its death is seen through the
    # lifeline (SIGTERM too) or as the end of the pipe: unlink what is left in all cases,
    # after reading the registrations still in the pipe.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            # The owner may exit (and SIGTERM us) as soon as it has read this.
            reader.send("ready")
            while True:
                _apply(names, reader.recv())
        finally:
            reading[0] = False  # a _Stop raised before this line is caught below too
    except (_Stop, EOFError, OSError):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        while reader.poll(0):
            _apply(names, reader.recv())
    except (EOFError, OSError):
        pass
    _unlink_all(names)
    os._exit(0)


def _apply(names: set[str], line: str) -> None:
    """Record a registration ("R" + name) or a release ("U" + name) in *names*."""
    if line[0] == "R":
        names.add(line[1:])
    else:
        names.discard(line[1:])


def _unlink_all(names: set[str]) -> None:
    """Unlink the segments *names*, those already gone or not ours skipped."""
    for name in names:
        try:
            os.unlink(_path(name))
        except OSError:
            pass


# ----------------------------------------------------------------------------- list

# ShareableList's layout is the standard library's, so that either library attaches to a
# list the other made. In native byte order, from offset 0:
#   q n; q offsets[0..n] (where each item's slot starts in the data area; offsets[n] is its size)
#   the data area: each item packed by its format at data_start + offsets[i]
#   n x 8s: each item's struct format (e.g. "q", "d", "16s")
#   n x b: how to rebuild each item from what its format unpacks (see _rebuild)
_SLOT = 8  # a number's slot, and the unit str and bytes slots are rounded to
_FORMATS = {int: "q", float: "d", bool: "xxxxxxx?", type(None): "xxxxxx?x"}
_PLAIN, _TEXT, _BYTES, _NONE = 0, 1, 2, 3  # rebuild codes
_ENCODING = "utf8"


def _rebuild_code(value: Any) -> int:
    kind = type(value)
    return _TEXT if kind is str else _BYTES if kind is bytes else _NONE if value is None else _PLAIN


def _rebuild(code: int, raw: Any) -> Any:
    if code == _TEXT:
        return raw.rstrip(b"\0").decode(_ENCODING)
    if code == _BYTES:
        return raw.rstrip(b"\0")
    if code == _NONE:
        return None
    return raw


def _packed(value: Any) -> tuple[str, Any]:
    """The struct format that *value* takes in a fresh list, and what is packed with it.

    Raises:
        TypeError: a type a ShareableList cannot hold.
        ValueError: a str or bytes of 10 MB or more.
    """
    kind = type(value)
    if kind is str or kind is bytes:
        raw = value.encode(_ENCODING) if kind is str else value
        # Sized as the standard library sizes it (from the length in characters), or
        # larger where that would cut the UTF-8 bytes short.
        room = _SLOT * (len(value) // _SLOT + 1)
        if room < len(raw):
            room = _SLOT * (len(raw) // _SLOT + 1)
        fmt = f"{room}s"
        if len(fmt) > 8:  # the layout keeps each item's format in 8 bytes
            raise ValueError(f"a {kind.__name__} of {len(raw)} bytes is too long for a ShareableList item")
        return fmt, raw
    try:
        return _FORMATS[kind], value
    except KeyError:
        raise TypeError(f"ShareableList cannot hold a {kind.__name__}") from None


class ShareableList:
    """A fixed-length list in shared memory: int, float, bool, str, bytes or None items,
    in the standard library's layout (a list made by either library attaches in the other).

    Each item keeps the slot it was created with: 8 bytes for a number, bool or None;
    for str and bytes their length rounded up to the next multiple of 8. Any supported
    value that fits may replace an item. As in the standard library, trailing NUL bytes
    of str and bytes items are not kept.

    Raises:
        TypeError: an item of an unsupported type.
        ValueError: a str or bytes too long for its slot.
        IndexError: a position out of range.
    """

    def __init__(self, sequence: Iterable[Any] | None = None, *, name: str | None = None) -> None:
        if name is None or sequence is not None:
            items = list(sequence or ())
            packed = [_packed(item) for item in items]
            formats = [fmt for fmt, _ in packed]
            offsets = [0]
            for fmt in formats:
                offsets.append(offsets[-1] + (int(fmt[:-1]) if fmt[-1] == "s" else _SLOT))
            n = len(items)
            size = 8 * (n + 2) + offsets[-1] + 9 * n
            self.shm = SharedMemory(name, create=True, size=size)
            self._set_geometry(n, offsets)
            buf = self.shm.buf
            struct.pack_into(f"{n + 2}q", buf, 0, n, *offsets)
            for i, (fmt, raw) in enumerate(packed):
                struct.pack_into(fmt, buf, self._data + offsets[i], raw)
                self._describe(i, fmt, items[i])
        else:
            self.shm = SharedMemory(name)
            (n,) = struct.unpack_from("q", self.shm.buf, 0)
            self._set_geometry(n, list(struct.unpack_from(f"{n + 1}q", self.shm.buf, 8)))

    def _set_geometry(self, n: int, offsets: list[int]) -> None:
        self._len = n
        self._offsets = offsets
        self._data = 8 * (n + 2)
        self._formats_at = self._data + offsets[-1]
        self._codes_at = self._formats_at + 8 * n

    def _describe(self, i: int, fmt: str, value: Any) -> None:
        struct.pack_into("8s", self.shm.buf, self._formats_at + 8 * i, fmt.encode(_ENCODING))
        struct.pack_into("b", self.shm.buf, self._codes_at + i, _rebuild_code(value))

    def _get_packing_format(self, position: int) -> str:
        """The struct format of the item at *position* (the standard library's name)."""
        i = self._index(position)
        raw = struct.unpack_from("8s", self.shm.buf, self._formats_at + 8 * i)[0]
        return raw.rstrip(b"\0").decode(_ENCODING)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return self._len

    def _index(self, position: int) -> int:
        if position < 0:
            position += self._len
        if not 0 <= position < self._len:
            raise IndexError("index out of range")
        return position

    if TYPE_CHECKING:
        # Iterable through __getitem__ (IndexError ends it), as the standard library's.
        def __iter__(self) -> Iterator[Any]: ...

    def __getitem__(self, position: int) -> Any:
        i = self._index(position)
        fmt = self._get_packing_format(i)
        (raw,) = struct.unpack_from(fmt, self.shm.buf, self._data + self._offsets[i])
        return _rebuild(self.shm.buf[self._codes_at + i], raw)

    def __setitem__(self, position: int, value: Any) -> None:
        i = self._index(position)
        if type(value) is str or type(value) is bytes:
            raw = value.encode(_ENCODING) if type(value) is str else value
            room = self._offsets[i + 1] - self._offsets[i]
            if len(raw) > room:
                raise ValueError(f"bytes/str item exceeds available storage ({len(raw)} bytes, slot {i} has {room})")
            current = self._get_packing_format(i)
            fmt = current if current[-1] == "s" else f"{room}s"
        else:
            fmt, raw = _packed(value)
        self._describe(i, fmt, value)
        struct.pack_into(fmt, self.shm.buf, self._data + self._offsets[i], raw)

    def __reduce__(self) -> Any:
        return (_attach_list, (self.__class__, self.shm.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The struct formats of the items, joined (as the standard library reports it)."""
        return "".join(self._get_packing_format(i) for i in range(self._len))

    def count(self, value: Any) -> int:
        """How many items equal *value*."""
        return sum(value == item for item in self)

    def index(self, value: Any) -> int:
        """The position of the first item equal to *value*.

        Raises:
            ValueError: no item equals it.
        """
        for position, item in enumerate(self):
            if value == item:
                return position
        raise ValueError(f"{value!r} not in this container")


def _attach_list(cls: type[ShareableList], name: str) -> ShareableList:
    return cls(name=name)


# ----------------------------------------------------------------------------- numpy


def ndarray(shape: Any, dtype: Any = float, *, fill: Any = None) -> Any:
    """A numpy array in shared memory, writable in place by every process it reaches.

    It pickles by name, so it can be passed to children and Pool tasks under every
    start method without its data being copied. This process owns the memory: the
    name is removed when the array (and every view of it) here is collected, or when
    this process ends; processes that already attached keep their mapping until they
    drop it.

    Raises:
        ImportError: numpy is not installed (``pip install 'procly[numpy]'``).
    """
    import numpy as np

    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64)) if np.ndim(shape) else int(shape)
    shm = SharedMemory(create=True, size=max(1, count * dtype.itemsize))
    cls = _shared_array_type()
    array = cls.__new__(cls, shape, dtype=dtype, buffer=shm.buf)
    array._shm = shm
    array._owner = True
    if fill is not None:
        array.fill(fill)
    import weakref

    weakref.finalize(shm, _release, shm.name)
    return array


def _untrack(name: str) -> None:
    """This process's tracker forgets *name*: someone else (a SharedMemoryManager) owns it now."""
    if _tracker_instance is not None and _tracker_instance._pid == os.getpid():
        _tracker_instance.unregister(name)


def _release(name: str, missing_ok: bool = True) -> None:
    """Remove *name* and tell this process's tracker (if it has one) to forget it."""
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        if not missing_ok:
            _untrack(name.lstrip("/"))
            raise
    _untrack(name.lstrip("/"))


def _attach_array(name: str, shape: tuple[int, ...], dtype: str, offset: int, strides: tuple[int, ...]) -> Any:
    shm = SharedMemory(name)
    cls = _shared_array_type()
    array = cls.__new__(cls, shape, dtype=dtype, buffer=shm.buf, offset=offset, strides=strides)
    array._shm = shm
    array._owner = False
    return array


def _make_shared_array_type() -> type:
    import numpy as np

    class SharedArray(np.ndarray):
        """A numpy array whose memory is a SharedMemory block (pickles by name)."""

        _shm: SharedMemory | None = None
        _owner = False

        def __array_finalize__(self, obj: Any) -> None:
            # Views keep the block (and so the mapping) alive.
            self._shm = getattr(obj, "_shm", None)
            self._owner = False

        def __reduce__(self) -> Any:
            shm = self._shm
            if shm is None:
                return np.asarray(self).__reduce__()
            base = np.frombuffer(shm.buf, dtype=np.uint8)
            offset = self.__array_interface__["data"][0] - base.__array_interface__["data"][0]
            return _attach_array, (shm.name, self.shape, self.dtype.str, offset, self.strides)

    return SharedArray


def __getattr__(name: str) -> Any:
    # SharedArray subclasses numpy.ndarray: built on first use, so that importing
    # procly never imports numpy.
    if name == "SharedArray":
        return _shared_array_type()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_SharedArray: Any = None


def _shared_array_type() -> Any:
    global _SharedArray
    if _SharedArray is None:
        _SharedArray = _make_shared_array_type()
    return _SharedArray


def _resource_tracker_module() -> Any:
    from . import resource_tracker

    return resource_tracker


_module_getattr = __getattr__


def __getattr__(name: str) -> Any:  # type: ignore[no-redef]  # noqa: F811 - adds the standard library's submodule name
    if name == "resource_tracker":
        return _resource_tracker_module()
    return _module_getattr(name)
