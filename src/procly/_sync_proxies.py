"""The proxy types of SyncManager's objects (locks, events, barriers, pools, iterators...).

Each forwards its methods to the referent in the manager's server; what must happen on
the caller's side (``Condition.wait_for`` evaluates its predicate here, ``with``
blocks, properties) is written out.
"""

from __future__ import annotations

import time
from types import GenericAlias
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, MutableMapping, MutableSequence, TypeVar
from typing import overload as _overload

if TYPE_CHECKING:
    from typing import Self

from ._manager_proxies import BaseProxy, MakeProxyType

__all__ = [
    "AcquirerProxy", "ArrayProxy", "AsyncResultProxy", "BarrierProxy", "ConditionProxy", "DictProxy", "EventProxy",
    "IteratorProxy", "ListProxy", "NamespaceProxy", "PoolProxy", "SetProxy", "ValueProxy",
]  # fmt: skip

_T = TypeVar("_T")
_KT = TypeVar("_KT")
_VT = TypeVar("_VT")


class IteratorProxy(BaseProxy):
    """An iterator (or generator) living in the server."""

    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self) -> IteratorProxy:
        return self

    def __next__(self, *args: Any) -> Any:
        return self._callmethod("__next__", args)

    def send(self, *args: Any) -> Any:
        return self._callmethod("send", args)

    def throw(self, *args: Any) -> Any:
        return self._callmethod("throw", args)

    def close(self, *args: Any) -> Any:
        return self._callmethod("close", args)


class AcquirerProxy(BaseProxy):
    """Lock, RLock, Semaphore and BoundedSemaphore in the server."""

    _exposed_: tuple[str, ...] | None = ("acquire", "release")

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        args = (blocking,) if timeout is None else (blocking, timeout)
        return bool(self._callmethod("acquire", args))

    def release(self) -> None:
        self._callmethod("release")

    def __enter__(self) -> bool:
        return bool(self._callmethod("acquire"))

    def __exit__(self, *exc_info: object) -> None:
        self._callmethod("release")


class ConditionProxy(AcquirerProxy):
    _exposed_ = ("acquire", "release", "wait", "notify", "notify_all")

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._callmethod("wait", (timeout,)))

    def notify(self, n: int = 1) -> None:
        self._callmethod("notify", (n,))

    def notify_all(self) -> None:
        self._callmethod("notify_all")

    def wait_for(self, predicate: Any, timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` (evaluated here, not in the server) is true or ``timeout`` passes."""
        result = predicate()
        if result:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
            self.wait(remaining)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    _exposed_ = ("is_set", "set", "clear", "wait")

    def is_set(self) -> bool:
        return bool(self._callmethod("is_set"))

    def set(self) -> None:
        self._callmethod("set")

    def clear(self) -> None:
        self._callmethod("clear")

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._callmethod("wait", (timeout,)))


class BarrierProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "wait", "abort", "reset")

    def wait(self, timeout: float | None = None) -> int:
        return int(self._callmethod("wait", (timeout,)))

    def abort(self) -> None:
        self._callmethod("abort")

    def reset(self) -> None:
        self._callmethod("reset")

    @property
    def parties(self) -> int:
        return int(self._callmethod("__getattribute__", ("parties",)))

    @property
    def n_waiting(self) -> int:
        return int(self._callmethod("__getattribute__", ("n_waiting",)))

    @property
    def broken(self) -> bool:
        return bool(self._callmethod("__getattribute__", ("broken",)))


class NamespaceProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            return object.__getattribute__(self, key)
        return object.__getattribute__(self, "_callmethod")("__getattribute__", (key,))

    def __setattr__(self, key: str, value: Any) -> None:
        if key.startswith("_"):
            object.__setattr__(self, key, value)
        else:
            object.__getattribute__(self, "_callmethod")("__setattr__", (key, value))

    def __delattr__(self, key: str) -> None:
        if key.startswith("_"):
            object.__delattr__(self, key)
        else:
            object.__getattribute__(self, "_callmethod")("__delattr__", (key,))


class ValueProxy(BaseProxy):
    _exposed_ = ("get", "set")

    def get(self) -> Any:
        return self._callmethod("get")

    def set(self, value: Any) -> None:
        self._callmethod("set", (value,))

    value = property(get, set)


_LIST_METHODS = ("__add__", "__contains__", "__delitem__", "__getitem__", "__len__", "__mul__", "__reversed__",
                 "__rmul__", "__setitem__", "append", "count", "extend", "index", "insert", "pop", "remove",
                 "reverse", "sort", "__imul__", "clear", "copy")  # fmt: skip
_DICT_METHODS = ("__contains__", "__delitem__", "__getitem__", "__iter__", "__len__", "__setitem__", "clear",
                 "copy", "get", "items", "keys", "pop", "popitem", "setdefault", "update", "values",
                 "__or__", "__ror__", "__ior__", "__reversed__", "fromkeys")  # fmt: skip
_SET_METHODS = ("__and__", "__contains__", "__iand__", "__ior__", "__isub__", "__iter__", "__ixor__", "__len__",
                "__or__", "__rand__", "__ror__", "__rsub__", "__rxor__", "__sub__", "__xor__", "add", "clear", "copy",
                "difference", "difference_update", "discard", "intersection", "intersection_update", "isdisjoint",
                "issubset", "issuperset", "pop", "remove", "symmetric_difference", "symmetric_difference_update",
                "union", "update")  # fmt: skip


if TYPE_CHECKING:
    # What a type checker sees: a list / dict of the server's (the classes below are made at
    # run time from their method names, so their methods are unknown to it).

    class ListProxy(BaseProxy, MutableSequence[_T]):
        @_overload
        def __getitem__(self, index: int) -> _T: ...
        @_overload
        def __getitem__(self, index: slice) -> list[_T]: ...
        def __getitem__(self, index: int | slice) -> _T | list[_T]: ...
        @_overload
        def __setitem__(self, index: int, value: _T) -> None: ...
        @_overload
        def __setitem__(self, index: slice, value: Iterable[_T]) -> None: ...
        def __setitem__(self, index: int | slice, value: Any) -> None: ...
        def __delitem__(self, index: int | slice) -> None: ...
        def __len__(self) -> int: ...
        def insert(self, index: int, value: _T) -> None: ...
        def sort(self, *, key: Callable[[_T], Any] | None = None, reverse: bool = False) -> None: ...
        def copy(self) -> list[_T]: ...
        def __add__(self, other: list[_T]) -> list[_T]: ...
        def __mul__(self, n: int) -> list[_T]: ...
        def __iadd__(self, value: Iterable[_T]) -> Self: ...
        def __imul__(self, value: int) -> Self: ...

    class DictProxy(BaseProxy, MutableMapping[_KT, _VT]):
        def __getitem__(self, key: _KT) -> _VT: ...
        def __setitem__(self, key: _KT, value: _VT) -> None: ...
        def __delitem__(self, key: _KT) -> None: ...
        def __iter__(self) -> Iterator[_KT]: ...
        def __len__(self) -> int: ...
        def copy(self) -> dict[_KT, _VT]: ...
        def __ior__(self, value: Any) -> Self: ...

else:

    class ListProxy(MakeProxyType("BaseListProxy", _LIST_METHODS)):
        """A list in the server (``SyncManager.list()``); ``ListProxy[int]`` in annotations."""

        __class_getitem__ = classmethod(GenericAlias)

        def __iadd__(self, value: Any) -> ListProxy:
            self._callmethod("extend", (value,))
            return self

        def __imul__(self, value: Any) -> ListProxy:
            self._callmethod("__imul__", (value,))
            return self

    class DictProxy(MakeProxyType("BaseDictProxy", _DICT_METHODS)):
        """A dict in the server (``SyncManager.dict()``); ``DictProxy[str, int]`` in annotations."""

        __class_getitem__ = classmethod(GenericAlias)
        # Iterating runs over the server's dict: changing it meanwhile raises RuntimeError, as locally.
        _method_to_typeid_ = {"__iter__": "Iterator", "__reversed__": "Iterator"}

        def __ior__(self, value: Any) -> DictProxy:
            self._callmethod("__ior__", (value,))
            return self


class SetProxy(MakeProxyType("BaseSetProxy", _SET_METHODS)):  # type: ignore[misc]
    """A set in the server (``SyncManager.set()``); in-place operators change it there."""

    _method_to_typeid_ = {"__iter__": "Iterator"}

    def __ior__(self, value: Any) -> SetProxy:
        self._callmethod("__ior__", (value,))
        return self

    def __iand__(self, value: Any) -> SetProxy:
        self._callmethod("__iand__", (value,))
        return self

    def __isub__(self, value: Any) -> SetProxy:
        self._callmethod("__isub__", (value,))
        return self

    def __ixor__(self, value: Any) -> SetProxy:
        self._callmethod("__ixor__", (value,))
        return self


ArrayProxy = MakeProxyType("ArrayProxy", ("__len__", "__getitem__", "__setitem__"))

AsyncResultProxy = MakeProxyType("AsyncResult", ("get", "wait", "ready", "successful"))


class PoolProxy(MakeProxyType("BasePoolProxy", (  # type: ignore[misc]
        "apply", "apply_async", "close", "imap", "imap_unordered", "join", "map", "map_async", "starmap",
        "starmap_async", "terminate"))):  # fmt: skip
    """A procly Pool running in the manager's server process."""

    _method_to_typeid_ = {
        "apply_async": "AsyncResult", "map_async": "AsyncResult", "starmap_async": "AsyncResult",
        "imap": "Iterator", "imap_unordered": "Iterator",
    }  # fmt: skip

    def __enter__(self) -> PoolProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()
