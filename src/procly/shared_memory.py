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
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        flags = self._flags
        if create:
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
            flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
        if name is None and not flags & os.O_EXCL:
            raise ValueError("'name' can only be None if create=True")
        while True:
            chosen = _make_filename() if name is None else name
            try:
                fd = os.open(_path(chosen), flags | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                if name is None:
                    continue  # a random name collided: draw another
                raise
            break
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


# ----------------------------------------------------------------------------- tracker


class _Tracker:
    """The process that unlinks this process's leftover segments when it goes away."""

    def __init__(self) -> None:
        from ._connection import Pipe
        from .context import _concrete_contexts

        reader, self._writer = Pipe(duplex=True)
        # fork: the tracker needs nothing but os calls, and starts in a millisecond.
        self._process = _concrete_contexts["fork"].Process(
            target=_track, args=(reader,), name="SharedMemoryTracker", daemon=True
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


def _track(reader: Any) -> None:
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

    def apply(line: str) -> None:
        if line[0] == "R":
            names.add(line[1:])
        else:
            names.discard(line[1:])

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
                apply(reader.recv())
        finally:
            reading[0] = False  # a _Stop raised before this line is caught below too
    except (_Stop, EOFError, OSError):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        while reader.poll(0):
            apply(reader.recv())
    except (EOFError, OSError):
        pass
    for name in names:
        try:
            os.unlink(_path(name))
        except OSError:
            pass
    os._exit(0)


# ----------------------------------------------------------------------------- list

_HEADER = struct.Struct("q")
_KINDS = {int: "q", float: "d", bool: "?", str: "s", bytes: "b", type(None): "n"}
_SLOT = 8


def _encode(value: Any) -> tuple[str, int, bytes]:
    kind = _KINDS.get(type(value))
    if kind is None:
        raise TypeError(f"ShareableList cannot hold a {type(value).__name__}")
    if kind == "q":
        return kind, 8, struct.pack("q", value)
    if kind == "d":
        return kind, 8, struct.pack("d", value)
    if kind == "?":
        return kind, 8, struct.pack("?", value)
    if kind == "n":
        return kind, 8, b""
    raw = value.encode("utf-8") if kind == "s" else value
    capacity = max(_SLOT, -(-len(raw) // _SLOT) * _SLOT)
    return kind, capacity, raw


class ShareableList:
    """A fixed-length list in shared memory: int, float, bool, str, bytes or None items.

    Layout: item count; per item a kind letter and a capacity; then the slots. A slot
    keeps the capacity of its first value (8 bytes for numbers, str and bytes rounded up
    to 8); any supported value that fits may replace it.

    Raises:
        TypeError: an item of an unsupported type. ValueError: a value too big for its slot.
    """

    def __init__(self, sequence: Iterable[Any] | None = None, *, name: str | None = None) -> None:
        if sequence is not None:
            encoded = [_encode(item) for item in sequence]
            layout = b"".join(kind.encode() + struct.pack("q", cap) for kind, cap, _ in encoded)
            size = _HEADER.size + len(layout) + sum(cap + 8 for _, cap, _ in encoded)
            self.shm = SharedMemory(name, create=True, size=max(size, 1))
            _HEADER.pack_into(self.shm.buf, 0, len(encoded))
            self.shm.buf[_HEADER.size : _HEADER.size + len(layout)] = layout
            self._read_layout()
            for index, item in enumerate(sequence):
                self[index] = item
        else:
            if name is None:
                raise ValueError("ShareableList needs a sequence or the name of an existing one")
            self.shm = SharedMemory(name)
            self._read_layout()

    def _read_layout(self) -> None:
        buf = self.shm.buf
        (count,) = _HEADER.unpack_from(buf, 0)
        self._kinds: list[str] = []
        self._caps: list[int] = []
        self._offsets: list[int] = []
        position = _HEADER.size
        for _ in range(count):
            self._kinds.append(chr(buf[position]))
            self._caps.append(struct.unpack_from("q", buf, position + 1)[0])
            position += 9
        for cap in self._caps:
            self._offsets.append(position)
            position += cap + 8  # an 8-byte length prefix before each slot

    def __len__(self) -> int:
        return len(self._kinds)

    def _index(self, position: int) -> int:
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError("index out of range")
        return position

    if TYPE_CHECKING:
        # Iterable through __getitem__ (IndexError ends it), as the standard library's.
        def __iter__(self) -> Iterator[Any]: ...

    def __getitem__(self, position: int) -> Any:
        i = self._index(position)
        buf = self.shm.buf
        kind, offset = chr(buf[_HEADER.size + 9 * i]), self._offsets[i]  # may change elsewhere
        (length,) = struct.unpack_from("q", buf, offset)
        data = offset + 8
        if kind == "n":
            return None
        if kind in "qd?":
            return struct.unpack_from(kind, buf, data)[0]
        raw = bytes(buf[data : data + length])
        return raw.decode("utf-8") if kind == "s" else raw

    def __setitem__(self, position: int, value: Any) -> None:
        i = self._index(position)
        kind, cap, raw = _encode(value)
        if len(raw) > self._caps[i]:
            raise ValueError(f"value of {len(raw)} bytes exceeds the {self._caps[i]} bytes of slot {i}")
        offset = self._offsets[i]
        struct.pack_into("q", self.shm.buf, offset, len(raw))
        self.shm.buf[offset + 8 : offset + 8 + len(raw)] = raw
        # Any type may take the slot, as in the standard library, if it fits.
        self._kinds[i] = kind
        self.shm.buf[_HEADER.size + 9 * i] = ord(kind)

    def __reduce__(self) -> Any:
        return (_attach_list, (self.__class__, self.shm.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The kind letters of the items."""
        return "".join(chr(self.shm.buf[_HEADER.size + 9 * i]) for i in range(len(self)))

    def count(self, value: Any) -> int:
        return sum(value == item for item in self)

    def index(self, value: Any) -> int:
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
