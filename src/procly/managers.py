"""Managers: Python objects held in a server process, used through proxies.

Data flow::

    proxy._callmethod("append", (x,)) ── ("call", id, "append", args, kwargs) ──> server
                                                                  thread per connection
    proxy <────────────── ("ok", result) | ("err", exception, traceback) | ("proxy", token)

The server is a :class:`procly.connection.Listener` with the manager's authkey: every
connection passes the mutual HMAC handshake before a byte of it is unpickled. Objects
are reference-counted: each proxy increfs when it is built (in any process) and decrefs
when it is collected; the server drops an object when its count reaches zero. The
manager process watches its owner and ends with it, however the owner dies (it is not
daemonic, so that a Pool held in it can have worker processes).

Modules, one job each: ``_manager_wire`` (the messages and serializers both ends
share), ``_manager_server`` (Server: objects, references, request handlers),
``_manager_proxies`` (BaseProxy and this process's connections and leases); this one
holds BaseManager, SyncManager and the standard library's names, and is the facade.

Trust model: anyone holding the authkey can make the server unpickle data, which means
run code in it. Keep authkeys secret; the default address is a Unix socket in a private
directory, and TCP addresses default to loopback.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar, overload

from ._errors import ProcessError as ProcessError  # the standard library exports it here
from ._manager_base import BaseManager as BaseManager
from ._manager_proxies import AutoProxy as AutoProxy
from ._manager_proxies import BaseProxy as BaseProxy
from ._manager_proxies import MakeProxyType as MakeProxyType
from ._manager_proxies import RebuildProxy as RebuildProxy
from ._manager_proxies import _request as _request  # used by tests and tools
from ._manager_server import Server as Server
from ._manager_wire import RemoteError as RemoteError
from ._manager_wire import Token as Token
from ._manager_wire import _unwrap
from ._manager_wire import public_methods as public_methods

if TYPE_CHECKING:
    from ._sync_proxies import (
        AcquirerProxy,
        BarrierProxy,
        ConditionProxy,
        DictProxy,
        EventProxy,
        ListProxy,
        NamespaceProxy,
        PoolProxy,
        SetProxy,
        ValueProxy,
    )

_T = TypeVar("_T")
_KT = TypeVar("_KT")
_VT = TypeVar("_VT")

__all__ = [
    "AcquirerProxy", "ArrayProxy", "AutoProxy", "BarrierProxy", "BaseManager", "BaseProxy", "ConditionProxy",
    "DictProxy", "EventProxy", "IteratorProxy", "ListProxy", "MakeProxyType", "Namespace", "NamespaceProxy",
    "PoolProxy", "RebuildProxy", "RemoteError", "Server", "SetProxy", "SharedMemoryManager", "SyncManager", "Token",
    "ValueProxy",
]  # fmt: skip


class Namespace:
    """A bag of attributes (what ``manager.Namespace()`` holds)."""

    def __init__(self, **kwds: Any) -> None:
        self.__dict__.update(kwds)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in sorted(self.__dict__.items()) if not k.startswith("_"))
        return f"{type(self).__name__}({items})"


class _Value:
    def __init__(self, typecode: str, value: Any, lock: bool = True) -> None:
        self._typecode = typecode
        self._value = value

    def get(self) -> Any:
        return self._value

    def set(self, value: Any) -> None:
        self._value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typecode!r}, {self._value!r})"


class SyncManager(BaseManager):
    """The manager behind ``procly.Manager()``: dict, list, Namespace, Queue, Lock, ..."""

    if TYPE_CHECKING:
        # Made by register() below at run time; each returns a proxy to an object in the server.
        @overload
        def dict(self) -> DictProxy[Any, Any]: ...
        @overload
        def dict(self, mapping: Mapping[_KT, _VT], /) -> DictProxy[_KT, _VT]: ...
        @overload
        def dict(self, iterable: Iterable[tuple[_KT, _VT]], /) -> DictProxy[_KT, _VT]: ...
        @overload
        def dict(self, *args: Any, **kwargs: Any) -> DictProxy[Any, Any]: ...
        def dict(self, *args: Any, **kwargs: Any) -> DictProxy[Any, Any]: ...
        @overload
        def list(self) -> ListProxy[Any]: ...
        @overload
        def list(self, sequence: Iterable[_T], /) -> ListProxy[_T]: ...
        def list(self, sequence: Iterable[Any] = ()) -> ListProxy[Any]: ...
        def set(self, iterable: Iterable[Any] = ()) -> SetProxy: ...
        def Namespace(self, **kwds: Any) -> NamespaceProxy: ...  # noqa: N802
        def Value(self, typecode: str, value: Any, lock: bool = True) -> ValueProxy: ...  # noqa: N802
        def Array(self, typecode: str, sequence: Iterable[Any], lock: bool = True) -> Any: ...  # noqa: N802
        def Queue(self, maxsize: int = 0) -> queue.Queue[Any]: ...  # noqa: N802
        def JoinableQueue(self, maxsize: int = 0) -> queue.Queue[Any]: ...  # noqa: N802
        def Lock(self) -> AcquirerProxy: ...  # noqa: N802
        def RLock(self) -> AcquirerProxy: ...  # noqa: N802
        def Semaphore(self, value: int = 1) -> AcquirerProxy: ...  # noqa: N802
        def BoundedSemaphore(self, value: int = 1) -> AcquirerProxy: ...  # noqa: N802
        def Condition(self, lock: Any = None) -> ConditionProxy: ...  # noqa: N802
        def Event(self) -> EventProxy: ...  # noqa: N802
        def Barrier(self, parties: int, action: Callable[[], object] | None = None,  # noqa: N802
                    timeout: float | None = None) -> BarrierProxy: ...  # fmt: skip
        def Pool(self, processes: int | None = None, initializer: Callable[..., object] | None = None,  # noqa: N802
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
                 **options: Any) -> PoolProxy: ...  # fmt: skip


class _Array:
    """What ``manager.Array(typecode, sequence)`` holds: an ``array.array``."""

    def __new__(cls, typecode: str, sequence: Any, lock: bool = True) -> Any:  # noqa: D102
        import array

        return array.array(typecode, sequence)


def _make_pool(*args: Any, **kwargs: Any) -> Any:
    from .pool import Pool

    return Pool(*args, **kwargs)


def _register_sync_types() -> None:
    import queue

    from ._sync_proxies import (
        AcquirerProxy,
        ArrayProxy,
        AsyncResultProxy,
        BarrierProxy,
        ConditionProxy,
        DictProxy,
        EventProxy,
        IteratorProxy,
        ListProxy,
        NamespaceProxy,
        PoolProxy,
        SetProxy,
        ValueProxy,
    )

    # The manager holds thread-level objects: its server serves each proxy in a thread.
    register = SyncManager.register
    register("dict", dict, DictProxy)
    register("list", list, ListProxy)
    register("set", set, SetProxy)
    register("Namespace", Namespace, NamespaceProxy)
    register("Value", _Value, ValueProxy)
    register("Array", _Array, ArrayProxy)
    register("Queue", queue.Queue)
    register("JoinableQueue", queue.Queue)
    register("Lock", threading.Lock, AcquirerProxy)
    register("RLock", threading.RLock, AcquirerProxy)
    register("Semaphore", threading.Semaphore, AcquirerProxy)
    register("BoundedSemaphore", threading.BoundedSemaphore, AcquirerProxy)
    register("Condition", threading.Condition, ConditionProxy)
    register("Event", threading.Event, EventProxy)
    register("Barrier", threading.Barrier, BarrierProxy)
    register("Pool", _make_pool, PoolProxy)
    register("Iterator", proxytype=IteratorProxy, create_method=False)
    register("AsyncResult", proxytype=AsyncResultProxy, create_method=False)


_register_sync_types()

from ._shared_memory_manager import SharedMemoryManager as SharedMemoryManager  # noqa: E402
from ._shared_memory_manager import SharedMemoryServer as SharedMemoryServer  # noqa: E402
from ._sync_proxies import (  # noqa: E402 - they subclass BaseProxy, defined above
    AcquirerProxy as AcquirerProxy,
)
from ._sync_proxies import ArrayProxy as ArrayProxy  # noqa: E402
from ._sync_proxies import BarrierProxy as BarrierProxy  # noqa: E402
from ._sync_proxies import ConditionProxy as ConditionProxy  # noqa: E402
from ._sync_proxies import DictProxy as DictProxy  # noqa: E402
from ._sync_proxies import EventProxy as EventProxy  # noqa: E402
from ._sync_proxies import IteratorProxy as IteratorProxy  # noqa: E402
from ._sync_proxies import ListProxy as ListProxy  # noqa: E402
from ._sync_proxies import NamespaceProxy as NamespaceProxy  # noqa: E402
from ._sync_proxies import PoolProxy as PoolProxy  # noqa: E402
from ._sync_proxies import SetProxy as SetProxy  # noqa: E402
from ._sync_proxies import ValueProxy as ValueProxy  # noqa: E402

# --------------------------------------------------------------------------- standard library names
# (the standard library's helper names; procly's server and proxies do not need them)

HAS_SHMEM = True

import array as _array  # noqa: E402

from . import _finalize as _finalize_mod  # noqa: E402
from ._compat import lazy_submodules as _lazy_submodules  # noqa: E402
from .context import _default_context  # noqa: E402
from .context import get_spawning_popen as get_spawning_popen  # noqa: E402

get_context = _default_context.get_context
BaseListProxy = ListProxy.__bases__[0]
BasePoolProxy = PoolProxy.__bases__[0]
view_types = [type(getattr({}, name)()) for name in ("items", "keys", "values")]


def _listener_client() -> dict[str, tuple[Any, Any]]:
    from . import connection

    return {
        "pickle": (connection.Listener, connection.Client),
        "xmlrpclib": (connection.XmlListener, connection.XmlClient),
    }


def Array(typecode: str, sequence: Any, lock: bool = True) -> _array.array[Any]:  # noqa: N802 - stdlib name
    """What a manager's ``Array(typecode, sequence)`` holds in the server: an ``array.array``."""
    return _array.array(typecode, sequence)


class Value(_Value):
    """What a manager's ``Value(typecode, value)`` holds in the server: ``get()``, ``set()`` and ``value``."""

    value = property(_Value.get, _Value.set)


class State:
    """A manager's state, with the standard library's constants."""

    __slots__ = ["value"]
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2

    def __init__(self) -> None:
        self.value = State.INITIAL


class ProcessLocalSet(set[Any]):
    """A set that a forked child gets back empty."""

    def __init__(self) -> None:
        super().__init__()
        _finalize_mod.register_after_fork(self, lambda obj: obj.clear())

    def __reduce__(self) -> Any:
        return type(self), ()


def all_methods(obj: Any) -> list[str]:
    """The names of *obj*'s callable attributes."""
    return [name for name in dir(obj) if callable(getattr(obj, name, None))]


def reduce_array(a: _array.array[Any]) -> Any:
    """How an ``array.array`` pickles: its typecode and bytes."""
    return _array.array, (a.typecode, a.tobytes())


def rebuild_as_list(obj: Any) -> Any:
    """How a dict view pickles: as a list of its items (a reducer)."""
    return list, (list(obj),)


def convert_to_error(kind: str, result: Any) -> Exception:
    """The exception for a failed reply in the standard library's message kinds.

    ``"#ERROR"``: *result* itself; ``"#TRACEBACK"``: a RemoteError with the text;
    ``"#UNSERIALIZABLE"``: a RemoteError saying so.

    Raises:
        TypeError: *result* is not the kind's type.
    """
    if kind == "#ERROR":
        return result  # type: ignore[no-any-return]
    if kind in ("#TRACEBACK", "#UNSERIALIZABLE"):
        if not isinstance(result, str):
            raise TypeError(f"Result {result!r} (kind '{kind}') type is {type(result)}, not str")
        if kind == "#UNSERIALIZABLE":
            return RemoteError(f"Unserializable message: {result}\n")
        return RemoteError(result)
    return ValueError(f"Unrecognized message type {kind!r}")


def dispatch(c: Any, id: Any, methodname: str, args: tuple[Any, ...] = (), kwds: dict[str, Any] | None = None) -> Any:  # noqa: A002
    """Call *methodname* on object *id* of the manager at the other end of connection *c*.

    *c* is a connection to a procly manager server (procly's message format).

    Raises:
        Exception: what the method raised in the server.
        procly.managers.RemoteError: the server could not answer.
    """
    c.send(("call", id, methodname, tuple(args), dict(kwds or {})))
    return _unwrap(c.recv())


def _module_getattr(name: str) -> Any:
    if name == "listener_client":
        return _listener_client()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__getattr__ = _lazy_submodules(
    __name__, "connection", "pool", "process", "reduction", "shared_memory", "util", fallback=_module_getattr
)
