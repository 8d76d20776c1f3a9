"""ctypes objects in shared memory (``multiprocessing.sharedctypes``).

``Value`` and ``Array`` live in procly's memfd heap (``procly._heap``): children see and
change the same memory under every start method, and nothing is left in /dev/shm. By
default they come with a lock (``get_lock()``), as in the standard library.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Generic, Iterable, Literal, TypeVar, overload

if TYPE_CHECKING:
    from ctypes import _SimpleCData

from . import _serialization
from .heap import BufferWrapper

__all__ = ["Array", "RawArray", "RawValue", "Value", "copy", "synchronized"]

_T = TypeVar("_T")
_CT = TypeVar("_CT")
# The typecodes whose values are ints, floats (for the type checker's overloads).
_IntCode = Literal["b", "B", "h", "H", "i", "I", "l", "L", "q", "Q"]
_FloatCode = Literal["f", "d"]

typecode_to_type: dict[str, Any] = {
    "c": ctypes.c_char, "u": ctypes.c_wchar,
    "b": ctypes.c_byte, "B": ctypes.c_ubyte,
    "h": ctypes.c_short, "H": ctypes.c_ushort,
    "i": ctypes.c_int, "I": ctypes.c_uint,
    "l": ctypes.c_long, "L": ctypes.c_ulong,
    "q": ctypes.c_longlong, "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float, "d": ctypes.c_double,
}  # fmt: skip


def _ctype(typecode_or_type: Any) -> Any:
    if isinstance(typecode_or_type, str):
        try:
            return typecode_to_type[typecode_or_type]
        except KeyError:
            raise TypeError(f"unknown typecode {typecode_or_type!r}") from None
    return typecode_or_type


def _new(type_: Any) -> Any:
    size = ctypes.sizeof(type_)
    wrapper = BufferWrapper(size)
    _serialization.register(type_, _reduce_ctype)
    return _rebuild_ctype(type_, wrapper, None)


def _reduce_ctype(obj: Any) -> Any:
    # Array types are made on the fly (c_int * 10): send the item type and the length.
    if isinstance(obj, ctypes.Array):
        return _rebuild_ctype, (obj._type_, obj._wrapper, obj._length_)  # type: ignore[attr-defined]
    return _rebuild_ctype, (type(obj), obj._wrapper, None)


def _rebuild_ctype(type_: Any, wrapper: BufferWrapper, length: int | None) -> Any:
    if length is not None:
        type_ = type_ * length
    _serialization.register(type_, _reduce_ctype)
    obj = type_.from_buffer(wrapper.create_memoryview())
    obj._wrapper = wrapper
    return obj


@overload
def RawValue(typecode_or_type: type[_CT], *args: Any) -> _CT: ...  # noqa: N802
@overload
def RawValue(typecode_or_type: str, *args: Any) -> Any: ...  # noqa: N802
def RawValue(typecode_or_type: Any, *args: Any) -> Any:  # noqa: N802 - stdlib name
    """A ctypes object of that type in shared memory, initialised with *args* (no lock)."""
    type_ = _ctype(typecode_or_type)
    obj = _new(type_)
    ctypes.memset(ctypes.addressof(obj), 0, ctypes.sizeof(obj))
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:  # noqa: N802
    """A ctypes array in shared memory: *size* zeros, or a copy of the initializer (no lock).

    Raises:
        TypeError: the typecode is unknown.
    """
    type_ = _ctype(typecode_or_type)
    if isinstance(size_or_initializer, int):
        type_ = type_ * size_or_initializer
        obj = _new(type_)
        ctypes.memset(ctypes.addressof(obj), 0, ctypes.sizeof(obj))
        return obj
    items = list(size_or_initializer)
    obj = _new(type_ * len(items))
    obj.__init__(*items)
    return obj


def _lock_for(lock: Any, ctx: Any) -> Any:
    if lock is True or lock is None:
        from .synchronize import RLock

        return RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


@overload
def Value(typecode_or_type: Any, *args: Any, lock: Literal[False], ctx: Any = None) -> Any: ...  # noqa: N802
@overload
def Value(typecode_or_type: _IntCode, *args: Any, lock: Any = True, ctx: Any = None) -> Synchronized[int]: ...  # noqa: N802
@overload
def Value(typecode_or_type: _FloatCode, *args: Any, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> Synchronized[float]: ...  # fmt: skip
@overload
def Value(typecode_or_type: Literal["c"], *args: Any, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> Synchronized[bytes]: ...  # fmt: skip
@overload
def Value(typecode_or_type: Literal["u"], *args: Any, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> Synchronized[str]: ...  # fmt: skip
@overload
def Value(typecode_or_type: type[_SimpleCData[_T]], *args: Any, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> Synchronized[_T]: ...  # fmt: skip
@overload
def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any: ...  # noqa: N802
def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:  # noqa: N802
    """A shared ctypes value, wrapped with a lock unless *lock* is False.

    Raises:
        AttributeError: *lock* is neither a bool nor something with ``acquire``.
    """
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock, ctx), ctx=ctx)


@overload
def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Literal[False],  # noqa: N802
          ctx: Any = None) -> Any: ...  # fmt: skip
@overload
def Array(typecode_or_type: Literal["c"], size_or_initializer: Any, *, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> SynchronizedString: ...  # fmt: skip
@overload
def Array(typecode_or_type: _IntCode, size_or_initializer: Any, *, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> SynchronizedArray[int]: ...  # fmt: skip
@overload
def Array(typecode_or_type: _FloatCode, size_or_initializer: Any, *, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> SynchronizedArray[float]: ...  # fmt: skip
@overload
def Array(typecode_or_type: Literal["u"], size_or_initializer: Any, *, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> SynchronizedArray[str]: ...  # fmt: skip
@overload
def Array(typecode_or_type: type[_SimpleCData[_T]], size_or_initializer: Any, *, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> SynchronizedArray[_T]: ...  # fmt: skip
@overload
def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> Any: ...  # fmt: skip
def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None) -> Any:  # noqa: N802
    """A shared ctypes array, wrapped with a lock unless *lock* is False."""
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock, ctx), ctx=ctx)


def copy(obj: Any) -> Any:
    """A new shared ctypes object with the same type and contents as *obj*."""
    new_obj = _new(type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


def synchronized(obj: Any, lock: Any = None, ctx: Any = None) -> Any:
    """Wrap a shared ctypes object with *lock* (a new RLock by default).

    Raises:
        TypeError: *obj* is already synchronized.
    """
    if isinstance(obj, SynchronizedBase):
        raise TypeError("object already synchronized")
    lock = _lock_for(lock, ctx)
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock)
        return SynchronizedArray(obj, lock)
    return _synchronized_structure(obj, lock)


class SynchronizedBase:
    """A shared ctypes object with the lock that guards it."""

    def __init__(self, obj: Any, lock: Any = None, ctx: Any = None) -> None:
        self._obj = obj
        self._lock = _lock_for(lock, ctx)
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self) -> Any:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> Any:
        return self._lock.__exit__(*args)

    def __reduce__(self) -> Any:
        return type(self), (self._obj, self._lock)

    def get_obj(self) -> Any:
        """The raw ctypes object."""
        return self._obj

    def get_lock(self) -> Any:
        """The lock guarding it."""
        return self._lock

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj}>"


class Synchronized(SynchronizedBase, Generic[_T]):
    """A shared ctypes value under its lock: ``.value`` reads and writes it."""

    # acquire()/release() bound in __init__, not `with`: the cheapest way to take the
    # lock from Python, and this is the hot path of `v.value += 1` loops.
    @property
    def value(self) -> _T:
        self.acquire()
        try:
            return self._obj.value  # type: ignore[no-any-return]
        finally:
            self.release()

    @value.setter
    def value(self, value: _T) -> None:
        self.acquire()
        try:
            self._obj.value = value
        finally:
            self.release()


class SynchronizedArray(SynchronizedBase, Generic[_T]):
    """A shared ctypes array under its lock: items and slices read and write it."""

    def __len__(self) -> int:
        return len(self._obj)

    @overload
    def __getitem__(self, i: slice) -> list[_T]: ...
    @overload
    def __getitem__(self, i: int) -> _T: ...
    def __getitem__(self, i: Any) -> Any:
        with self._lock:
            return self._obj[i]

    @overload
    def __setitem__(self, i: slice, value: Iterable[_T]) -> None: ...
    @overload
    def __setitem__(self, i: int, value: _T) -> None: ...
    def __setitem__(self, i: Any, value: Any) -> None:
        with self._lock:
            self._obj[i] = value

    def __getslice__(self, start: int, stop: int) -> Any:  # pragma: no cover - py2 name
        return self[start:stop]


class SynchronizedString(SynchronizedArray[bytes]):
    """A shared ctypes char array under its lock, with ``value`` and ``raw`` as bytes."""

    @property
    def value(self) -> bytes:
        with self._lock:
            return self._obj.value  # type: ignore[no-any-return]

    @value.setter
    def value(self, value: bytes) -> None:
        with self._lock:
            self._obj.value = value

    @property
    def raw(self) -> bytes:
        with self._lock:
            return self._obj.raw  # type: ignore[no-any-return]

    @raw.setter
    def raw(self, value: bytes) -> None:
        with self._lock:
            self._obj.raw = value


_structure_wrappers: dict[type, type] = {}


def _synchronized_structure(obj: Any, lock: Any) -> Any:
    """A wrapper exposing each field of a ctypes Structure as a locked property."""
    cls = type(obj)
    wrapper = _structure_wrappers.get(cls)
    if wrapper is None:
        namespace: dict[str, Any] = {}
        for field in cls._fields_:
            name = field[0]

            def getter(self: Any, name: str = name) -> Any:
                with self._lock:
                    return getattr(self._obj, name)

            def setter(self: Any, value: Any, name: str = name) -> None:
                with self._lock:
                    setattr(self._obj, name, value)

            namespace[name] = property(getter, setter)
        wrapper = _structure_wrappers[cls] = type(f"Synchronized{cls.__name__}", (SynchronizedBase,), namespace)
        # Defined at run time: tell pickle how to find it again.
        wrapper.__reduce__ = lambda self: (synchronized, (self._obj, self._lock))  # type: ignore[method-assign,misc,assignment]
    return wrapper(obj, lock)


# --------------------------------------------------------------------------- standard library names

from ._compat import lazy_submodules as _lazy_submodules  # noqa: E402
from .context import _default_context  # noqa: E402
from .context import assert_spawning as assert_spawning  # noqa: E402

get_context = _default_context.get_context
reduce_ctype = _reduce_ctype
rebuild_ctype = _rebuild_ctype
class_cache = _structure_wrappers  # ctypes Structure type -> its synchronized wrapper class
prop_cache: dict[str, property] = {}


def make_property(name: str) -> property:
    """A property reading and writing field *name* of ``self._obj`` under ``self._lock``."""
    prop = prop_cache.get(name)
    if prop is None:

        def getter(self: Any) -> Any:
            with self._lock:
                return getattr(self._obj, name)

        def setter(self: Any, value: Any) -> None:
            with self._lock:
                setattr(self._obj, name, value)

        prop = prop_cache[name] = property(getter, setter)
    return prop


__getattr__ = _lazy_submodules(__name__, "heap", "reduction")
