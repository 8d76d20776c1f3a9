"""Proxies: references to objects in a manager, and this process's side of its managers.

A proxy's method call travels over its thread's connection to the manager
(``_ClientState.channel``); each proxy holds one reference to its referent, taken
when it is built (in any process) and given back when it is collected.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Any

from . import _process, _state
from ._connection import Connection
from ._finalize import Finalize
from ._listener import Client
from ._manager_wire import Token, _unwrap, _wrap
from ._serialization import only_small_scalars
from ._spin import Spinner

if TYPE_CHECKING:
    from ._manager_server import Server

_COUNTED = ("create", "incref", "decref")  # requests that take or give back a reference


def _request(address: Any, authkey: bytes, *message: Any, serializer: str = "pickle",
             holder: str | None = None) -> Any:  # fmt: skip
    """One request on a connection of its own. A reference taken or given back over TCP
    names a lease: *holder*, or this process's current one."""
    if holder is None and message[0] in _COUNTED:
        holder = _lease_token(address, authkey, serializer)
    with _connect(address, authkey, serializer, holder) as conn:
        conn.send(message)
        return _unwrap(conn.recv())


def _connect(address: Any, authkey: bytes, serializer: str, holder: str | None) -> Any:
    """A connection to the manager at *address*, naming lease *holder* if there is one."""
    conn = _wrap(Client(address, authkey=authkey), serializer)
    if holder is not None:
        try:
            conn.send(("holder", holder))
        except BaseException:
            conn.close()
            raise
    return conn


def _lease_token(address: Any, authkey: bytes, serializer: str) -> str | None:
    """This process's lease with the manager at *address* (TCP only; see ``Server._note``)."""
    return _client_state().lease_token((address, serializer, authkey)) if isinstance(address, tuple) else None


class _ClientState:
    """This process's side of the managers it uses; one per process, in its ProcessState.

    * ``servers``: the servers this process runs, by address: a proxy rebuilt inside its
      own manager's server counts its reference in place instead of connecting to itself.
    * ``connections``: one connection per thread and manager, shared by every proxy of
      that manager (as the standard library does: a connection per proxy would run the
      server out of descriptors); closed with the manager's last proxy here, or when the
      manager shuts down.
    * ``leases``: one lease connection per TCP manager (see ``Server._note``), opened
      before this process takes its first reference there and closed with its last proxy
      of that manager; each reference is given back naming the lease it was taken under,
      and the server ignores those of a lease that has ended.
    * ``live``: how many proxies born in this process are alive, per manager.

    A manager is keyed by ``(address, serializer, authkey)``. A forked child gets a
    fresh one (a new ProcessState) and closes the descriptors it inherited
    (:func:`_close_inherited`, the one fork hook): the parent's leases must end with the
    parent, not live on in its children.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()  # re-entered when a proxy is collected inside
        self.servers: dict[Any, Server] = {}
        self.connections: dict[Any, dict[int, tuple[Any, Spinner, str | None]]] = {}
        self.leases: dict[Any, tuple[str, Any]] = {}
        self.live: dict[Any, int] = {}
        self.local = threading.local()  # this thread's view of ``connections``, read without the lock

    def lease_token(self, key: tuple[Any, str, bytes]) -> str:
        """The token of this process's lease with manager *key*, opening the lease if needed.

        Raises:
            OSError, AuthenticationError: the manager cannot be reached.
        """
        address, serializer, authkey = key
        with self.lock:
            entry = self.leases.get(key)
            if entry is not None and not entry[1].closed:
                return entry[0]
            token = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(8).hex()}"
            conn = _wrap(Client(address, authkey=authkey), serializer)
            try:
                conn.send(("lease", token))
                _unwrap(conn.recv())
            except BaseException:
                conn.close()
                raise
            self.leases[key] = (token, conn)
            return token

    def channel(self, key: tuple[Any, str, bytes]) -> tuple[Any, Spinner, str | None]:
        """This thread's connection to manager *key*, its spinner and the lease it names."""
        mine: dict[Any, tuple[Any, Spinner, str | None]] | None = getattr(self.local, "channels", None)
        if mine is None:
            mine = self.local.channels = {}
        entry = mine.get(key)
        if entry is not None and not entry[0].closed:
            return entry
        thread = threading.get_ident()
        with self.lock:
            entry = self.connections.get(key, {}).get(thread)
        if entry is not None and not entry[0].closed:
            mine[key] = entry
            return entry
        address, serializer, authkey = key
        holder = _lease_token(address, authkey, serializer)
        conn = _connect(address, authkey, serializer, holder)
        entry = (conn, Spinner(conn.fileno()), holder)
        with self.lock:
            self.connections.setdefault(key, {})[thread] = entry
        mine[key] = entry
        return entry

    def proxy_born(self, key: Any) -> None:
        with self.lock:
            self.live[key] = self.live.get(key, 0) + 1

    def proxy_gone(self, key: Any) -> None:
        """A proxy born here is gone; with the last of a manager go its connections and lease."""
        with self.lock:
            left = self.live.get(key, 1) - 1
            if left > 0:
                self.live[key] = left
                return
            self.live.pop(key, None)
        self.close(key[0], key)

    def close(self, address: Any, key: Any = None) -> None:
        """Close the connections and lease of manager *key*, or of every manager at *address*."""
        with self.lock:
            keys = {k for k in (*self.connections, *self.leases) if (k == key if key is not None else k[0] == address)}
            conns = [entry[0] for k in keys for entry in self.connections.pop(k, {}).values()]
            conns += [self.leases.pop(k)[1] for k in keys if k in self.leases]
        _close_all(conns)

    def close_inherited(self) -> None:
        """In a forked child: close the copies of the parent's connections (no lock: the
        parent's may be held by a thread that does not exist here)."""
        conns = [entry[0] for per_thread in self.connections.values() for entry in per_thread.values()]
        _close_all(conns + [conn for _, conn in self.leases.values()])


def _close_all(conns: list[Any]) -> None:
    for conn in conns:
        try:
            conn.close()
        except OSError:
            pass


def manager_key(address: Any, serializer: str, authkey: bytes) -> tuple[Any, str, bytes]:
    """What this process's connections, lease and proxy count of one manager are kept under."""
    return (address, serializer, bytes(authkey))


def _client_state() -> _ClientState:
    """This process's _ClientState, created on first use."""
    state = _state.get()
    clients = state.manager_clients
    if clients is None:
        with state.lock:
            if state.manager_clients is None:
                state.manager_clients = _ClientState()
            clients = state.manager_clients
    return clients  # type: ignore[no-any-return]


def _close_inherited() -> None:
    parent = _state.inherited()
    if parent is not None and parent.manager_clients is not None:
        parent.manager_clients.close_inherited()
        parent.manager_clients = None


os.register_at_fork(after_in_child=_close_inherited)


class BaseProxy:
    """A reference to an object in a manager; method calls travel to the server."""

    _exposed_: tuple[str, ...] | None = None

    def __init__(self, token: Token, serializer: str = "pickle", manager: Any = None, authkey: Any = None,
                 exposed: Any = None, incref: bool = True, manager_owned: bool = False) -> None:  # fmt: skip
        self._token = token
        self._id = token.id
        self._serializer = serializer
        self._manager = manager
        self._authkey = bytes(authkey) if authkey is not None else bytes(_process.current_process().authkey)
        self._exposed = exposed
        self._key = manager_key(token.address, serializer, self._authkey)
        clients = _client_state()
        clients.proxy_born(self._key)
        weakref.finalize(self, _proxy_gone, self._key, os.getpid())
        self._owned = manager_owned
        server = clients.servers.get(token.address)
        if server is not None and not manager_owned:
            # Inside its own manager's server (an argument of a request, an item of a
            # shared list): connecting to itself to count the reference would need a free
            # server thread, and a finalizer that did so could wait on the very thread
            # that is starting up to serve it.
            if incref:
                server.incref_local(token.id)
            Finalize(self, server.decref_local, args=(token.id,), exitpriority=10)
        elif not manager_owned:
            holder = _lease_token(token.address, self._authkey, serializer)
            if incref:
                _request(token.address, self._authkey, "incref", token.id, serializer=serializer, holder=holder)
            Finalize(self, _decref, args=(token, self._authkey, serializer, holder), exitpriority=10)

    def _callmethod(self, methodname: str, args: tuple[Any, ...] = (), kwds: dict[str, Any] | None = None) -> Any:
        """Call *methodname* on the referent in the server; return the result.

        Raises:
            Exception: what the method raised in the server (with its traceback as cause).
        """
        conn, spinner, holder = _client_state().channel(self._key)
        args = tuple(args)
        if not kwds and type(conn) is Connection and only_small_scalars(args):
            # d[k] = v, d[k], q.put(x): nothing in the request needs the full pickler's look.
            conn._send_scalars(("call", self._id, methodname, args, None))
        else:
            conn.send(("call", self._id, methodname, args, dict(kwds) if kwds else None))
        spinner.wait()
        reply = conn.recv()
        if reply[0] == "proxy":
            typeid, ident, exposed = reply[1]
            proxytype = self._manager._registry[typeid][3] if self._manager else AutoProxy
            token = Token(typeid, self._token.address, ident)
            proxy = proxytype(
                token, serializer=self._serializer, manager=self._manager, authkey=self._authkey, exposed=exposed
            )
            _request(token.address, self._authkey, "decref", ident, serializer=self._serializer, holder=holder)
            return proxy
        return _unwrap(reply)

    def _getvalue(self) -> Any:
        """A copy of the referent."""
        return self._callmethod("#GETVALUE")

    def __reduce__(self) -> Any:
        return RebuildProxy, (type(self), self._token, self._exposed, self._serializer)

    def __deepcopy__(self, memo: Any) -> Any:
        return self._getvalue()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object, typeid {self._token.typeid!r} at {id(self):#x}>"

    def __str__(self) -> str:
        try:
            return str(self._callmethod("__repr__"))
        except Exception:  # noqa: BLE001
            return repr(self)[:-1] + "; '__str__()' failed>"


def _proxy_gone(key: Any, pid: int) -> None:
    # Counted only where the proxy was born: a forked child's copies of its parent's
    # proxies were never counted in the child.
    if pid == os.getpid():
        _client_state().proxy_gone(key)


def _decref(token: Token, authkey: bytes, serializer: str = "pickle", holder: str | None = None) -> None:
    try:
        _request(token.address, authkey, "decref", token.id, serializer=serializer, holder=holder)
    except Exception:  # noqa: BLE001 - the manager may be gone
        pass


def RebuildProxy(proxytype: type, token: Token, exposed: Any, serializer: str = "pickle") -> BaseProxy:  # noqa: N802
    """Rebuild a proxy in another process (it takes its own reference)."""
    return proxytype(token, serializer=serializer, authkey=_process.current_process().authkey, exposed=exposed)  # type: ignore[no-any-return]


_proxy_types: dict[tuple[str, tuple[str, ...]], type] = {}


def MakeProxyType(name: str, exposed: Any) -> type:  # noqa: N802 - stdlib name
    """A BaseProxy subclass whose methods forward *exposed* names to the referent."""
    exposed = tuple(exposed)
    key = (name, exposed)
    if key in _proxy_types:
        return _proxy_types[key]
    namespace: dict[str, Any] = {"_exposed_": exposed}
    for meth in exposed:

        def forward(self: BaseProxy, *args: Any, _name: str = meth, **kwds: Any) -> Any:
            return self._callmethod(_name, args, kwds)

        forward.__name__ = meth
        namespace[meth] = forward
    proxytype = type(name, (BaseProxy,), namespace)
    _proxy_types[key] = proxytype
    return proxytype


def AutoProxy(token: Token, serializer: str = "pickle", manager: Any = None, authkey: Any = None,  # noqa: N802
              exposed: Any = None, incref: bool = True, manager_owned: bool = False) -> BaseProxy:  # fmt: skip
    """A proxy exposing the referent's public methods."""
    if exposed is None:  # not told: ask the server what the referent exposes
        key = authkey if authkey is not None else _process.current_process().authkey
        exposed = _request(token.address, bytes(key), "methods", token.id, serializer=serializer)
    proxytype = MakeProxyType(f"AutoProxy[{token.typeid}]", exposed)
    return proxytype(token, serializer=serializer, manager=manager, authkey=authkey, exposed=exposed, incref=incref)  # type: ignore[no-any-return]
