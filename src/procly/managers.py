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

Trust model: anyone holding the authkey can make the server unpickle data, which means
run code in it. Keep authkeys secret; the default address is a Unix socket in a private
directory, and TCP addresses default to loopback.
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import socket
import threading
import traceback
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar, overload

from . import _process, _state
from ._connection import Pipe, peer_credentials
from ._errors import AuthenticationError, ProcessError, rebuild_exception
from ._finalize import Finalize
from ._listener import Client, Listener, _handshake
from ._spin import Spinner
from ._wait import wait

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

_ManagerT = TypeVar("_ManagerT", bound="BaseManager")
_T = TypeVar("_T")
_KT = TypeVar("_KT")
_VT = TypeVar("_VT")

__all__ = [
    "AcquirerProxy", "ArrayProxy", "AutoProxy", "BarrierProxy", "BaseManager", "BaseProxy", "ConditionProxy",
    "DictProxy", "EventProxy", "IteratorProxy", "ListProxy", "MakeProxyType", "Namespace", "NamespaceProxy",
    "PoolProxy", "RebuildProxy", "RemoteError", "Server", "SetProxy", "SharedMemoryManager", "SyncManager", "Token",
    "ValueProxy",
]  # fmt: skip


class RemoteError(ProcessError):
    """The server could not handle a request (the message says why)."""


class Token:
    """Identifies a shared object: its type id, its manager's address, its id there."""

    __slots__ = ("typeid", "address", "id")

    def __init__(self, typeid: str, address: Any, id: str) -> None:  # noqa: A002 - stdlib name
        self.typeid, self.address, self.id = typeid, address, id

    def __getstate__(self) -> Any:
        return (self.typeid, self.address, self.id)

    def __setstate__(self, state: Any) -> None:
        self.typeid, self.address, self.id = state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(typeid={self.typeid!r}, address={self.address!r}, id={self.id!r})"


def public_methods(obj: Any) -> list[str]:
    """Names of the callable, non-underscore attributes of *obj*."""
    return [name for name in dir(obj) if not name.startswith("_") and callable(getattr(obj, name, None))]


# --------------------------------------------------------------------------- serializers

SERIALIZERS = ("pickle", "xmlrpclib")


def _check_serializer(serializer: str) -> None:
    if serializer not in SERIALIZERS:
        raise ValueError(f"unknown serializer {serializer!r}: 'pickle' or 'xmlrpclib'")


class _XmlRpcConnection:
    """A Connection that marshals messages with xmlrpc instead of pickle (``serializer="xmlrpclib"``).

    Only xmlrpc's types travel: tuples arrive as lists, an exception as the text of its
    traceback (raised as RemoteError). Nothing received is unpickled.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def send(self, obj: Any) -> None:
        import xmlrpc.client

        if isinstance(obj, tuple) and obj and obj[0] == "err":
            # xmlrpc would flatten the exception into a struct: send its traceback's text.
            obj = ("err", None, obj[2] or repr(obj[1]))
        data = xmlrpc.client.dumps((obj,), allow_none=True)
        self._conn.send_bytes(data.encode("utf-8"))

    def recv(self) -> Any:
        import xmlrpc.client

        (obj,), _ = xmlrpc.client.loads(self._conn.recv_bytes().decode("utf-8"), use_builtin_types=True)
        return obj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __enter__(self) -> _XmlRpcConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._conn.close()


def _wrap(conn: Any, serializer: str) -> Any:
    return conn if serializer == "pickle" else _XmlRpcConnection(conn)


# --------------------------------------------------------------------------- clients

LEASE_KEEPALIVE_SECONDS = 60  # idle time before the server probes a TCP client's lease


def _peer_pid(fd: int) -> int | None:
    """The pid of the process at the other end of a Unix socket (SO_PEERCRED); None otherwise."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if sock.family != socket.AF_UNIX:
            return None
        pid, _, _ = peer_credentials(sock)
        return pid or None
    except OSError:
        return None
    finally:
        sock.close()


# --------------------------------------------------------------------------- server

class _Entry:
    """An object the server holds: the object, the methods proxies may call, its reference
    count, and the type id it was created (or returned) as."""

    __slots__ = ("obj", "exposed", "refcount", "typeid")

    def __init__(self, obj: Any, exposed: list[str], typeid: str) -> None:
        self.obj = obj
        self.exposed = exposed
        self.refcount = 0
        self.typeid = typeid


class _Shutdown(Exception):
    """Raised by the shutdown handler: reply, then stop serving."""


class Server:
    """Holds the shared objects and answers proxies (``manager.get_server()``).

    Requests are tuples ``(kind, *args)``; :attr:`handlers` maps each kind to the method
    that answers it, called as ``method(self, peer, *args)`` and returning the reply. A
    subclass adds kinds by extending the table (see SharedMemoryServer). Two kinds open
    a TCP client's connection instead (``OPENINGS``): ``("holder", token)`` names the
    lease the connection's references count against, ``("lease", token)`` makes the
    connection that lease.
    """

    handlers: dict[str, Callable[..., tuple[Any, ...]]] = {}

    def __init__(self, registry: dict[str, Any], address: Any, authkey: bytes, serializer: str = "pickle") -> None:
        _check_serializer(serializer)
        self.registry = registry
        self.serializer = serializer
        self.authkey = bytes(authkey)
        self.listener = Listener(address=address, authkey=self.authkey, backlog=128)
        self.address = self.listener.address
        self.objects: dict[str, _Entry] = {}
        # client -> {id: references it holds}; a client is a pid (Unix socket) or a lease token (TCP)
        self.holders: dict[int | str, dict[str, int]] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        # References given back by proxies that live in this process, applied by a
        # thread of their own: a proxy is collected wherever the garbage collector runs,
        # maybe in a thread holding self.lock, and SimpleQueue.put is safe there.
        self._local_releases: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def serve_forever(self) -> None:
        """Accept connections until shut down; a bad peer costs only its connection."""
        servers = _client_state().servers
        servers[self.address] = self
        releaser = threading.Thread(target=self._release_local, name="procly-manager-releases", daemon=True)
        releaser.start()
        acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        acceptor.start()
        try:
            self.stop_event.wait()
        finally:
            servers.pop(self.address, None)
            self._local_releases.put(None)
            self.listener.close()

    def incref_local(self, ident: str) -> None:
        """A reference taken by a proxy in this process (no client to account it to).

        Raises:
            RemoteError: no object *ident* is held.
        """
        self._incref(ident, None)

    def decref_local(self, ident: str) -> None:
        """Give back a reference a proxy in this process took; safe in a finalizer."""
        self._local_releases.put(ident)

    def _release_local(self) -> None:
        while (ident := self._local_releases.get()) is not None:
            self._decref(ident, None)

    def _accept_loop(self) -> None:
        while not self.stop_event.is_set():
            sock = self.listener._socket
            if sock is None:
                return
            try:
                raw, peer_address = sock.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.stop_event.wait(0.05)  # out of descriptors: let connections close first
                continue
            # Authenticate in the client's own thread: a silent or slow peer must not
            # hold up everyone else's accept.
            # At most MAX_IN_HANDSHAKE such threads wait on peers: the listener's gate
            # pushes out the oldest handshake when a new connection finds it full.
            threading.Thread(target=self._authenticate_and_serve, args=(raw, peer_address), daemon=True).start()

    def _authenticate_and_serve(self, raw: Any, peer_address: Any = None) -> None:
        try:
            conn = _handshake(raw, self.authkey, True, self.listener.handshake_timeout,
                              self.listener.handshake_gate, peer_address)
        except (AuthenticationError, OSError):
            return  # that peer is dropped; the server goes on
        self._serve_client(_wrap(conn, self.serializer))

    def handle_request(self, kind: str, args: tuple[Any, ...]) -> Any:
        """A request of a kind not in :attr:`handlers`; the base server knows none.

        Raises:
            RemoteError: an unknown request.
        """
        raise RemoteError(f"unknown request {kind!r}")

    # ----------------------------------------------------------------- request handlers

    def _handle_call(self, peer: int | str | None, ident: str, method: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> tuple[Any, ...]:  # fmt: skip
        entry = self._entry(ident)
        if method == "#GETVALUE":
            return ("ok", entry.obj)
        if method not in entry.exposed and method not in ("__str__", "__repr__"):
            raise RemoteError(f"method {method!r} of {type(entry.obj)!r} object is not in the list of allowed methods")
        result = getattr(entry.obj, method)(*args, **kwargs)
        method_to_typeid = self.registry[entry.typeid][2] if entry.typeid in self.registry else None
        typeid = method_to_typeid.get(method) if method_to_typeid else None
        if typeid is not None:
            return ("proxy", (typeid, *self._adopt(typeid, result, peer)))
        return ("ok", result)

    def _handle_methods(self, peer: int | str | None, ident: str) -> tuple[Any, ...]:
        return ("ok", list(self._entry(ident).exposed))

    def _handle_create(self, peer: int | str | None, typeid: str, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> tuple[Any, ...]:  # fmt: skip
        try:
            callable_ = self.registry[typeid][0]
        except KeyError:
            raise RemoteError(f"no type {typeid!r} is registered with this manager") from None
        try:
            obj = callable_(*args, **kwargs)
        except Exception as exc:
            # As the standard library: a failed creation is the manager's error, with the cause's text.
            raise RemoteError(f"creating a {typeid!r} failed:\n{traceback.format_exc()}") from exc
        return ("ok", self._adopt(typeid, obj, peer))

    def _handle_incref(self, peer: int | str | None, ident: str) -> tuple[Any, ...]:
        self._incref(ident, peer)
        return ("ok", None)

    def _handle_decref(self, peer: int | str | None, ident: str) -> tuple[Any, ...]:
        self._decref(ident, peer)
        return ("ok", None)

    def _handle_ping(self, peer: int | str | None) -> tuple[Any, ...]:
        return ("ok", os.getpid())

    def _handle_count(self, peer: int | str | None) -> tuple[Any, ...]:
        with self.lock:
            return ("ok", len(self.objects))

    def _handle_shutdown(self, peer: int | str | None) -> tuple[Any, ...]:
        raise _Shutdown

    # ----------------------------------------------------------------- objects and references

    def _entry(self, ident: str) -> _Entry:
        with self.lock:
            try:
                return self.objects[ident]
            except KeyError:
                raise RemoteError(f"object {ident} is not held by this manager (released?)") from None

    def _adopt(self, typeid: str, obj: Any, peer: int | str | None = None) -> tuple[str, list[str]]:
        exposed = self.registry[typeid][1] if typeid in self.registry else None
        exposed = public_methods(obj) if exposed is None else exposed
        ident = f"{id(obj):x}"
        with self.lock:
            entry = self.objects.get(ident)
            if entry is None:
                entry = self.objects[ident] = _Entry(obj, list(exposed), typeid)
            entry.refcount += 1
            self._note(peer, ident, 1)
        return ident, list(exposed)

    def _incref(self, ident: str, peer: int | str | None = None) -> None:
        with self.lock:
            if ident not in self.objects:
                raise RemoteError(f"object {ident} is not held by this manager")
            self.objects[ident].refcount += 1
            self._note(peer, ident, 1)

    def _decref(self, ident: str, peer: int | str | None = None) -> None:
        with self.lock:
            if isinstance(peer, str) and peer not in self.holders:
                return  # that client's lease ended and its references were given back already
            if ident in self.objects:
                self._note(peer, ident, -1)
                self._drop(ident, 1)

    def _drop(self, ident: str, count: int) -> None:
        """Take *count* references off object *ident*; forget it at zero (lock held)."""
        entry = self.objects.get(ident)
        if entry is not None:
            entry.refcount -= count
            if entry.refcount <= 0:
                del self.objects[ident]

    # References held per client process: when a client dies without giving its
    # references back, the server gives them back for it, so its referents are not kept
    # until the manager stops. A Unix-socket client is known by its pid (the kernel
    # vouches for it: SO_PEERCRED) and watched through a pidfd; a TCP client, maybe on
    # another machine, holds a lease connection open for as long as it lives and names
    # the lease's token on its other connections: the lease's end (EOF, or TCP keepalive
    # probes unanswered when its machine is gone) gives its references back.

    def _note(self, peer: int | str | None, ident: str, delta: int) -> None:
        """Record a reference taken (+1) or given back (-1) by client *peer* (lock held)."""
        if peer is None:
            return
        held = self.holders.get(peer)
        if held is None:
            if delta < 0 or isinstance(peer, str):
                return  # a lease token with no lease: nothing to watch, so nothing recorded
            try:
                pidfd = os.pidfd_open(peer)
            except OSError:
                return  # gone already (or not ours to watch): nothing to give back later
            held = self.holders[peer] = {}
            threading.Thread(target=self._release_when_gone, args=(peer, pidfd), daemon=True,
                             name="procly-manager-client-watch").start()
        count = held.get(ident, 0) + delta
        if count > 0:
            held[ident] = count
        else:
            held.pop(ident, None)

    def _release_when_gone(self, peer: int, pidfd: int) -> None:
        try:
            wait([pidfd])  # poll-based: a busy server's descriptors go past select()'s 1023
        finally:
            os.close(pidfd)
        self._release(peer)

    def _hold_lease(self, conn: Any, token: str) -> None:
        """Serve a TCP client's lease: its references live as long as this connection."""
        with self.lock:
            self.holders.setdefault(token, {})
        _keep_alive(conn.fileno())
        if not _reply(conn, ("ok", None)):
            self._release(token)
            return
        try:
            while not self.stop_event.is_set():
                conn.recv()  # a lease carries nothing; it ends with its client
        except Exception:  # noqa: BLE001, S110 - EOF, a reset, keepalive's timeout: the lease is over
            pass
        self._release(token)

    def _release(self, peer: int | str) -> None:
        """Give back every reference client *peer* still holds (it is gone)."""
        with self.lock:
            for ident, count in self.holders.pop(peer, {}).items():
                self._drop(ident, count)

    # ----------------------------------------------------------------- connections

    def _serve_client(self, conn: Any) -> None:
        spinner = Spinner(conn.fileno())
        peer: int | str | None = _peer_pid(conn.fileno())
        with conn:
            request = self._receive(conn, spinner)
            if isinstance(request, (tuple, list)) and request and request[0] in OPENINGS:
                if peer is None and request[0] == "lease":
                    self._hold_lease(conn, str(request[1]))
                    return
                if peer is None:
                    peer = str(request[1])  # a TCP client names its lease; no reply
                request = self._receive(conn, spinner)
            while request is not None and self._answer(conn, peer, request):
                request = self._receive(conn, spinner)

    def _receive(self, conn: Any, spinner: Spinner) -> tuple[Any, ...] | None:
        """The next request on *conn*; None when it or the server is done."""
        while not self.stop_event.is_set():
            try:
                spinner.wait()
                return conn.recv()  # type: ignore[no-any-return]
            except (EOFError, OSError):
                return None
            except Exception as exc:  # noqa: BLE001 - garbage from an authenticated peer
                _reply(conn, ("err", RemoteError(f"bad request: {exc}"), ""))
        return None

    def _answer(self, conn: Any, peer: int | str | None, request: tuple[Any, ...]) -> bool:
        """Answer one request; False when the connection is done."""
        try:
            handler = self.handlers.get(request[0])
            if handler is None:
                reply: tuple[Any, ...] = ("ok", self.handle_request(request[0], tuple(request[1:])))
            else:
                reply = handler(self, peer, *request[1:])
        except _Shutdown:
            _reply(conn, ("ok", None))
            self.stop_event.set()
            return False
        except Exception as exc:  # noqa: BLE001 - sent back to the caller
            reply = ("err", exc, traceback.format_exc())
        return _reply(conn, reply)


Server.handlers = {
    "call": Server._handle_call,
    "methods": Server._handle_methods,
    "create": Server._handle_create,
    "incref": Server._handle_incref,
    "decref": Server._handle_decref,
    "ping": Server._handle_ping,
    "count": Server._handle_count,
    "shutdown": Server._handle_shutdown,
}
OPENINGS = ("holder", "lease")  # first requests of a TCP client's connection (see Server)


def _keep_alive(fd: int) -> None:
    """Probe an idle TCP connection, so that a peer whose machine vanished is noticed in minutes."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (("TCP_KEEPIDLE", LEASE_KEEPALIVE_SECONDS), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, option):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    except OSError:
        pass
    finally:
        sock.close()


def _reply(conn: Any, reply: tuple[Any, ...]) -> bool:
    try:
        conn.send(reply)
    except (OSError, EOFError):
        return False
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
        try:
            conn.send(("err", RemoteError(f"the reply could not be pickled: {exc}"), ""))
        except OSError:
            return False
    return True


def _run_server(registry: dict[str, Any], address: Any, authkey: bytes, writer: Any, initializer: Any,
                initargs: tuple[Any, ...], serializer: str = "pickle", server_type: type[Server] = Server) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the owner decides when the
    # manager stops (shutdown(), its exit or its death), not the keyboard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    server = server_type(registry, address, authkey, serializer)
    writer.send(server.address)
    writer.close()
    # Not daemonic (a Pool held in the manager needs children), so it watches its owner
    # itself: when the owner dies, however it dies, the server stops and this process ends.
    parent = _process.parent_process()
    if parent is not None:
        threading.Thread(target=_stop_with_parent, args=(server, parent), name="procly-manager-owner",
                         daemon=True).start()
    server.serve_forever()


def _stop_with_parent(server: Server, parent: Any) -> None:
    parent.join()  # returns when the owner has ended (at once if it is gone already)
    server.stop_event.set()


# --------------------------------------------------------------------------- client


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
        thread = threading.get_ident()
        with self.lock:
            entry = self.connections.get(key, {}).get(thread)
        if entry is not None and not entry[0].closed:
            return entry
        address, serializer, authkey = key
        holder = _lease_token(address, authkey, serializer)
        conn = _connect(address, authkey, serializer, holder)
        entry = (conn, Spinner(conn.fileno()), holder)
        with self.lock:
            self.connections.setdefault(key, {})[thread] = entry
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


def _unwrap(reply: tuple[Any, ...]) -> Any:
    if reply[0] == "ok":
        return reply[1]
    if reply[0] == "err":
        _, exc, tb = reply
        if exc is None:  # an xmlrpclib peer: only the traceback's text could travel
            raise RemoteError(tb)
        raise rebuild_exception(exc, tb) if tb else exc
    raise RemoteError(f"unexpected reply {reply[0]!r}")


class BaseManager:
    """Starts (or connects to) a manager server and creates shared objects in it.

    Raises:
        TypeError: *authkey* is not bytes.
    """

    _registry: dict[str, Any] = {}
    _Server: type[Server] = Server

    def __init__(self, address: Any = None, authkey: bytes | None = None, serializer: str = "pickle",
                 ctx: Any = None, *, shutdown_timeout: float = 1.0) -> None:  # fmt: skip
        if authkey is None:
            authkey = bytes(_process.current_process().authkey)
        if not isinstance(authkey, (bytes, bytearray)):
            raise TypeError("authkey should be a byte string")
        self._address = address
        self._authkey = _process.AuthenticationString(authkey)
        _check_serializer(serializer)
        self._serializer = serializer
        if ctx is None:
            from .context import _default_context

            ctx = _default_context.get_context()
        self._ctx = ctx
        self._process: Any = None
        self._shutdown_timeout = shutdown_timeout
        self._finalizer: Finalize | None = None
        self._connected = False

    @property
    def address(self) -> Any:
        return self._address

    def get_server(self) -> Server:
        """A Server for this manager, to run in this process with ``serve_forever()``."""
        return self._Server(self._registry, self._address, self._authkey, self._serializer)

    def connect(self) -> None:
        """Use the running manager server at ``address``.

        Raises:
            AuthenticationError: the authkey is wrong. OSError: nobody listens there.
        """
        _request(self._address, self._authkey, "ping", serializer=self._serializer)
        self._connected = True

    def start(self, initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()) -> None:
        """Start the server in a child process (it ends when this process ends, however it ends).

        Raises:
            procly.ProcessError: it is already started.
        """
        if self._process is not None:
            raise ProcessError("Already started server")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        reader, writer = Pipe(duplex=False)
        self._process = self._ctx.Process(
            target=_run_server,
            args=(self._registry, self._address, self._authkey, writer, initializer, tuple(initargs),
                  self._serializer, self._Server),
            name=f"{type(self).__name__}-server",
        )
        self._process.start()
        writer.close()
        try:
            self._address = reader.recv()
        except EOFError:
            self._process.join()
            raise ProcessError(f"the manager process exited with code {self._process.exitcode}") from None
        finally:
            reader.close()
        self._finalizer = Finalize(
            self, _stop_manager,
            args=(self._process, self._address, self._authkey, self._shutdown_timeout, self._serializer),
            exitpriority=0,
        )  # fmt: skip

    def shutdown(self) -> None:
        """Stop the server process (also done at exit and when the manager is collected)."""
        if self._finalizer is not None:
            self._finalizer()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the server process to end (returns at once once it has been reaped)."""
        if self._process is not None and not self._process._closed:
            self._process.join(timeout)

    def __enter__(self: _ManagerT) -> _ManagerT:
        if self._process is None and not self._connected:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _create(self, typeid: str, *args: Any, **kwargs: Any) -> tuple[Token, list[str]]:
        ident, exposed = _request(self._address, self._authkey, "create", typeid, args, kwargs,
                                  serializer=self._serializer)
        return Token(typeid, self._address, ident), exposed

    def _number_of_objects(self) -> int:
        """How many objects the server holds (for tests and leak hunting)."""
        return int(_request(self._address, self._authkey, "count", serializer=self._serializer))

    def _debug_info(self) -> str:
        return f"{self._number_of_objects()} objects held by the manager at {self._address!r}"

    @classmethod
    def register(cls, typeid: str, callable: Any = None, proxytype: Any = None, exposed: Any = None,  # noqa: A002
                 method_to_typeid: dict[str, str] | None = None, create_method: bool = True) -> None:  # fmt: skip
        """Make ``typeid`` a type this manager can hold (and ``manager.typeid(...)`` create it)."""
        if "_registry" not in cls.__dict__:
            cls._registry = dict(cls._registry)
        proxytype = proxytype or AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        cls._registry[typeid] = (callable, None if exposed is None else tuple(exposed), method_to_typeid, proxytype)
        if create_method:

            def create(self: BaseManager, *args: Any, **kwargs: Any) -> Any:
                token, exp = self._create(typeid, *args, **kwargs)
                proxy = proxytype(token, serializer=self._serializer, manager=self, authkey=self._authkey,
                                  exposed=exp)
                # the proxy holds its own reference
                _request(self._address, self._authkey, "decref", token.id, serializer=self._serializer)
                return proxy

            create.__name__ = typeid
            setattr(cls, typeid, create)


def _stop_manager(process: Any, address: Any, authkey: bytes, timeout: float, serializer: str = "pickle") -> None:
    _client_state().close(address)
    if process.is_alive():
        try:
            _request(address, authkey, "shutdown", serializer=serializer)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        process.join(timeout)
        if process.is_alive():
            process.terminate()
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
    # Its exit code stays readable (as in the standard library); its descriptors go now.
    process._release_descriptors()


# --------------------------------------------------------------------------- proxies


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
        self._key = (token.address, serializer, self._authkey)
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
        conn.send(("call", self._id, methodname, tuple(args), dict(kwds or {})))
        spinner.wait()
        reply = conn.recv()
        if reply[0] == "proxy":
            typeid, ident, exposed = reply[1]
            proxytype = self._manager._registry[typeid][3] if self._manager else AutoProxy
            token = Token(typeid, self._token.address, ident)
            proxy = proxytype(token, serializer=self._serializer, manager=self._manager, authkey=self._authkey,
                              exposed=exposed)
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
