"""The manager server: holds the shared objects and answers proxies' requests.

One thread accepts connections, one thread per connection authenticates the peer
(mutual HMAC, before a byte of it is unpickled) and answers its requests through
``Server.handlers``; references are counted per object and per client, and given
back for a client that dies without doing so.
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import socket
import threading
import traceback
from typing import Any, Callable

from . import _process
from ._errors import AuthenticationError
from ._fds import peer_credentials
from ._listener import Listener, _handshake
from ._manager_proxies import _client_state
from ._manager_wire import RemoteError, _check_serializer, _reply, _wrap, public_methods
from ._spin import Spinner
from ._wait import wait

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


class _Entry:
    """An object the server holds: the object, the methods proxies may call, its reference
    count, and the type id it was created (or returned) as."""

    __slots__ = ("obj", "exposed", "callable", "returns", "refcount", "typeid")

    def __init__(self, obj: Any, exposed: list[str], typeid: str, returns: dict[str, str] | None) -> None:
        self.obj = obj
        self.exposed = exposed
        self.callable = frozenset(exposed) | {"__str__", "__repr__"}  # what a "call" may name
        self.returns = returns  # method -> the type id its result is served as (a new proxy)
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
            conn = _handshake(
                raw, self.authkey, True, self.listener.handshake_timeout, self.listener.handshake_gate, peer_address
            )
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
                     kwargs: dict[str, Any] | None) -> tuple[Any, ...]:  # fmt: skip
        entry = self._entry(ident)
        if method == "#GETVALUE":
            return ("ok", entry.obj)
        if method not in entry.callable:
            raise RemoteError(f"method {method!r} of {type(entry.obj)!r} object is not in the list of allowed methods")
        result = getattr(entry.obj, method)(*args, **kwargs) if kwargs else getattr(entry.obj, method)(*args)
        typeid = entry.returns.get(method) if entry.returns else None
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
                returns = self.registry[typeid][2] if typeid in self.registry else None
                entry = self.objects[ident] = _Entry(obj, list(exposed), typeid, returns)
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
            threading.Thread(
                target=self._release_when_gone, args=(peer, pidfd), daemon=True, name="procly-manager-client-watch"
            ).start()
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


def _run_server(
    registry: dict[str, Any],
    address: Any,
    authkey: bytes,
    writer: Any,
    initializer: Any,
    initargs: tuple[Any, ...],
    serializer: str = "pickle",
    server_type: type[Server] = Server,
) -> None:
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
        threading.Thread(
            target=_stop_with_parent, args=(server, parent), name="procly-manager-owner", daemon=True
        ).start()
    server.serve_forever()


def _stop_with_parent(server: Server, parent: Any) -> None:
    parent.join()  # returns when the owner has ended (at once if it is gone already)
    server.stop_event.set()
