"""Listener and Client: Connections over Unix and TCP sockets, with authentication.

Authentication (when an authkey is given) is mutual and happens before any payload is
unpickled::

    listener                                   client
    ── "procly-auth/1" + 32-byte nonce ──────>
    <───────────── HMAC-SHA256(key, tag + nonce)
    ── "#WELCOME#" | "#FAILURE#" ────────────>
    <────────── "procly-auth/1" + 32-byte nonce
    ── HMAC-SHA256(key, tag + nonce) ────────>
    <──────────────── "#WELCOME#" | "#FAILURE#"

Before authentication only these plain frames are read, each at most 256 bytes, and
the whole handshake must finish within ``handshake_timeout`` seconds (a deadline, not
a timeout per read: a peer dripping one byte at a time is cut off like a silent one).
A peer that sends garbage, an enormous length prefix, or nothing at all costs one
connection (an :class:`AuthenticationError` from ``accept()``), never the listener.

``Listener.accept()`` runs the handshakes of connections that arrive together side by
side, so a silent peer does not hold up the next one; a server holds at most
``MAX_IN_HANDSHAKE`` connections in handshake (``MAX_IN_HANDSHAKE_PER_PEER`` from one
peer: one process on a Unix socket, one host over TCP). When a new connection finds
the server full, the oldest connection still in handshake is dropped: an
authenticating client needs a few milliseconds, so a flood can only push out its own
connections.

Trust model: a peer that knows the authkey can make the other side unpickle arbitrary
data, which means run arbitrary code. Treat authkeys as secrets and bind to loopback
(the default) unless every host that can reach the port is trusted.
"""

from __future__ import annotations

import collections
import hmac
import os
import secrets
import select
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Generator
from typing import Any

from ._connection import Connection
from ._errors import AuthenticationError, MessageError
from ._fds import peer_credentials
from ._frames import HEADER
from ._wait import poll_ms

__all__ = ["Client", "Listener", "answer_challenge", "deliver_challenge", "families"]

families = ["AF_UNIX", "AF_INET", "AF_INET6"]

_CHALLENGE = b"procly-auth/1 "
_TAG = b"procly-auth/1 response "
_WELCOME = b"#WELCOME#"
_FAILURE = b"#FAILURE#"
_NONCE_SIZE = 32
_MAX_HANDSHAKE_FRAME = 256
HANDSHAKE_TIMEOUT = 20.0
MAX_IN_HANDSHAKE = 64  # connections a server authenticates at once (4 times that in a burst)
MAX_IN_HANDSHAKE_PER_PEER = 16  # of which from one peer, process or host (4 times that in a burst)

_HEADER = HEADER
_SEND, _RECV = 0, 1
Steps = Generator[tuple[int, bytes], "bytes | None", None]

Address = Any  # str (Unix path), tuple (host, port[, ...]) for TCP


def address_type(address: Address) -> str:
    """Return 'AF_UNIX', 'AF_INET' or 'AF_INET6' for an address.

    Raises:
        ValueError: the address has none of those forms.
    """
    if isinstance(address, tuple):
        host = address[0] if address else ""
        return "AF_INET6" if isinstance(host, str) and ":" in host else "AF_INET"
    if isinstance(address, str) and address.startswith("\\\\"):
        return "AF_PIPE"  # a Windows named pipe: refused below on this platform
    if isinstance(address, (str, bytes)):
        return "AF_UNIX"
    raise ValueError(f"address type of {address!r} unrecognized")


def _family(name: str) -> socket.AddressFamily:
    try:
        return {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}[name]
    except KeyError:
        raise ValueError(f"Family {name} is not recognized on this platform") from None


def _check_authkey(authkey: object) -> bytes | None:
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError(f"authkey should be a byte string, got {type(authkey).__name__}")
    return authkey


def _digest(authkey: bytes, nonce: bytes) -> bytes:
    return hmac.new(authkey, _TAG + nonce, "sha256").digest()


# -- the protocol, written once: a generator of (send, data) / (receive, -) steps ----


def _deliver_steps(authkey: bytes) -> Steps:
    nonce = secrets.token_bytes(_NONCE_SIZE)
    yield _SEND, _CHALLENGE + nonce
    answer = yield _RECV, b""
    if not hmac.compare_digest(answer or b"", _digest(authkey, nonce)):
        yield _SEND, _FAILURE
        raise AuthenticationError("digest received was wrong (the peer has a different authkey)")
    yield _SEND, _WELCOME


def _answer_steps(authkey: bytes) -> Steps:
    challenge = (yield _RECV, b"") or b""
    if not challenge.startswith(_CHALLENGE) or len(challenge) != len(_CHALLENGE) + _NONCE_SIZE:
        raise AuthenticationError("peer did not send a procly challenge")
    yield _SEND, _digest(authkey, challenge[len(_CHALLENGE) :])
    verdict = yield _RECV, b""
    if verdict != _WELCOME:
        raise AuthenticationError("digest sent was rejected (the peer has a different authkey)")


def _steps(authkey: bytes, server: bool) -> Steps:
    if server:
        yield from _deliver_steps(authkey)
        yield from _answer_steps(authkey)
    else:
        yield from _answer_steps(authkey)
        yield from _deliver_steps(authkey)


def _frame_length(header: bytes) -> int:
    """The length a handshake frame header announces.

    Raises:
        AuthenticationError: it is not a plain frame of at most 256 bytes (nothing else
            is read before authentication: no large, out-of-band or memfd frames).
    """
    (n,) = _HEADER.unpack(header)
    if not 0 <= n <= _MAX_HANDSHAKE_FRAME:
        raise AuthenticationError(
            f"peer sent an invalid handshake frame (header announces {n}; a handshake frame is "
            f"0 to {_MAX_HANDSHAKE_FRAME} bytes)"
        )
    return int(n)


def _run_over_connection(conn: Any, steps: Steps) -> None:
    """Drive *steps* over a blocking Connection (the public challenge functions).

    A procly Connection is read frame by frame here (plain frames only, nothing else is
    accepted before authentication); any other object needs ``send_bytes`` and
    ``recv_bytes(maxlength)``.
    """
    frame: bytes | None = None
    try:
        while True:
            try:
                op, data = steps.send(frame)
            except StopIteration:
                return
            frame = None
            if op == _SEND:
                conn.send_bytes(data)
            elif isinstance(conn, Connection):
                handle = conn._check_readable()
                n = _frame_length(conn._read_exact(handle, 4) or b"")
                frame = conn._read_exact(handle, n) if n else b""
            else:
                frame = conn.recv_bytes(_MAX_HANDSHAKE_FRAME)
    except BlockingIOError:
        raise AuthenticationError("peer did not complete the handshake in time") from None
    except EOFError:
        raise AuthenticationError("peer closed the connection during the handshake") from None
    except MessageError as exc:
        raise AuthenticationError(f"peer sent an invalid handshake frame: {exc}") from None


def deliver_challenge(connection: Connection, authkey: bytes) -> None:
    """Challenge the peer to prove it knows *authkey*.

    Raises:
        AuthenticationError: the answer is wrong, malformed, or late.
    """
    _check_authkey(authkey)
    _run_over_connection(connection, _deliver_steps(authkey))


def answer_challenge(connection: Connection, authkey: bytes) -> None:
    """Answer the peer's challenge with *authkey*.

    Raises:
        AuthenticationError: the peer rejected the answer or did not speak the protocol.
    """
    _check_authkey(authkey)
    _run_over_connection(connection, _answer_steps(authkey))


class _Handshake:
    """One socket's handshake in progress: the protocol's state and the frame being read.

    Reads exactly the bytes of each frame, never past the last one, so whatever the peer
    sends after authenticating is left for the Connection.
    """

    def __init__(self, sock: socket.socket, authkey: bytes, server: bool, deadline: float, peer: Any = None) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline = deadline
        self.evicted = False
        self._steps = _steps(authkey, server)
        self._buf = bytearray()
        self._size: int | None = None  # None while the 4-byte header is being read

    def want(self) -> int:
        """How many bytes the frame being read still lacks."""
        return (4 if self._size is None else self._size) - len(self._buf)

    def feed(self, data: bytes) -> bytes | None:
        """Take bytes read; return the frame once whole."""
        self._buf += data
        if self._size is None:
            if len(self._buf) < 4:
                return None
            self._size = _frame_length(bytes(self._buf))
            self._buf.clear()
        if len(self._buf) < self._size:
            return None
        frame = bytes(self._buf)
        self._buf.clear()
        self._size = None
        return frame

    def advance(self, frame: bytes | None) -> bool:
        """Send what the protocol sends until it wants a frame; True once it is done.

        Sends are a few dozen bytes into an empty socket buffer: they do not block.
        """
        while True:
            try:
                op, data = self._steps.send(frame)
            except StopIteration:
                return True
            frame = None
            if op == _RECV:
                return False
            try:
                self.sock.sendall(_HEADER.pack(len(data)) + data)
            except OSError as exc:
                raise AuthenticationError(f"handshake failed: {exc}") from None

    def late(self) -> AuthenticationError:
        return AuthenticationError("peer did not complete the handshake in time")

    def closed(self) -> AuthenticationError:
        if self.evicted:
            return AuthenticationError(
                "connection dropped during the handshake: the server holds too many connections in handshake"
            )
        return AuthenticationError("peer closed the connection during the handshake")


def _peer_key(sock: socket.socket, address: Any) -> Any:
    """Who a connection comes from, for the per-peer cap: a process (Unix), a host (TCP)."""
    if sock.family == socket.AF_UNIX:
        try:
            return ("pid", peer_credentials(sock)[0])
        except OSError:
            return ("pid", None)
    return ("host", address[0] if isinstance(address, tuple) and address else address)


class HandshakeGate:
    """Caps the connections a server holds in handshake, in all and per peer.

    A connection admitted when a cap is reached pushes out the oldest one in handshake
    (of its own peer first) if that one has been at it for ``grace`` seconds: an
    authenticating client needs milliseconds, so a burst of honest connections from one
    process is not cut short. Past ``hard`` times a cap the oldest goes whatever its
    age. A connection pushed out has its socket shut down, so the thread or loop
    authenticating it sees the end of the stream at once.
    """

    def __init__(
        self,
        max_total: int = MAX_IN_HANDSHAKE,
        max_per_peer: int = MAX_IN_HANDSHAKE_PER_PEER,
        grace: float = 1.0,
        hard: int = 4,
    ) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.grace = grace
        self.hard = hard
        self.evicted = 0  # connections pushed out so far
        self._lock = threading.Lock()
        # id -> (handshake, when admitted), oldest first
        self._held: collections.OrderedDict[int, tuple[Any, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def _over(self, entries: list[tuple[Any, float]], cap: int, now: float) -> Any:
        """The entry to push out of *entries* (oldest first) under *cap*, or None."""
        if len(entries) < cap:
            return None
        oldest, since = entries[0]
        return oldest if len(entries) >= cap * self.hard or now - since >= self.grace else None

    def admit(self, handshake: Any) -> list[Any]:
        """Hold *handshake* (anything with ``sock``, ``peer`` and ``evicted``); return those
        pushed out to make room (already shut down)."""
        out: list[Any] = []
        with self._lock:
            now = time.monotonic()
            held = list(self._held.values())
            victim = self._over([e for e in held if e[0].peer == handshake.peer], self.max_per_peer, now)
            if victim is not None:
                out.append(victim)
            victim = self._over([e for e in held if e[0] is not victim], self.max_total, now)
            if victim is not None:
                out.append(victim)
            for h in out:
                del self._held[id(h)]
                h.evicted = True
            self._held[id(handshake)] = (handshake, now)
            self.evicted += len(out)
        for h in out:
            try:
                h.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return out

    def release(self, handshake: Any) -> None:
        """The handshake is over (either way)."""
        with self._lock:
            self._held.pop(id(handshake), None)


def _handshake(
    sock: socket.socket,
    authkey: bytes | None,
    server: bool,
    timeout: float,
    gate: HandshakeGate | None = None,
    address: Any = None,
) -> Connection:
    """Wrap an accepted/connected socket, authenticating both ways if *authkey* is set.

    The whole handshake must end within *timeout* seconds. With a *gate*, the
    connection counts against its caps while in handshake (and may be pushed out).

    Raises:
        AuthenticationError: the handshake failed, ran late, or was pushed out; the
            socket is closed.
    """
    # socket.setdefaulttimeout() would make the descriptor non-blocking: Connections block.
    sock.setblocking(True)
    if authkey is None:
        return Connection(sock.detach())
    handshake = _Handshake(sock, authkey, server, time.monotonic() + timeout)
    if gate is not None:
        handshake.peer = _peer_key(sock, address)
        gate.admit(handshake)
    try:
        try:
            _run_handshake(sock, handshake)
        except OSError as exc:
            raise AuthenticationError(f"handshake failed: {exc}") from exc
    except AuthenticationError:
        sock.close()
        raise
    finally:
        if gate is not None:
            gate.release(handshake)
    return Connection(sock.detach())


def _run_handshake(sock: socket.socket, handshake: _Handshake) -> None:
    """Exchange the challenge frames on *sock* until *handshake* is done.

    Raises:
        AuthenticationError: the peer failed, closed the socket, or ran past the deadline.
        OSError: the socket failed.
    """
    done = handshake.advance(None)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
    while not done:
        remaining = handshake.deadline - time.monotonic()
        if remaining <= 0:
            raise handshake.late()
        if not poller.poll(poll_ms(remaining)):
            continue
        try:
            data = sock.recv(handshake.want(), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            continue
        if not data:
            raise handshake.closed()
        frame = handshake.feed(data)
        if frame is not None:
            done = handshake.advance(frame)


class Listener:
    """A bound socket that accepts Connections (``multiprocessing.connection.Listener``).

    *address* defaults to a fresh Unix socket in a private temporary directory, or to
    ``('127.0.0.1', 0)`` for ``family='AF_INET'``: loopback unless told otherwise.
    With *authkey* every accepted connection must pass the mutual HMAC challenge first,
    within ``handshake_timeout`` seconds in all.

    Raises:
        TypeError: *authkey* is not bytes.
        ValueError: *family* and *address* disagree.
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        address: Address = None,
        family: str | None = None,
        backlog: int = 1,
        authkey: bytes | None = None,
    ) -> None:
        self._authkey = _check_authkey(authkey)
        self._tempdir: str | None = None
        family = family or (address_type(address) if address is not None else "AF_UNIX")
        if address is None:
            if family == "AF_UNIX":
                self._tempdir = tempfile.mkdtemp(prefix="procly-")
                address = os.path.join(self._tempdir, "listener.sock")
            elif family == "AF_INET6":
                address = ("::1", 0)
            else:
                address = ("127.0.0.1", 0)
        elif address_type(address) != family:
            raise ValueError(f"address {address!r} does not belong to family {family}")
        self._family = family
        self._socket = socket.socket(_family(family), socket.SOCK_STREAM)
        self._socket.setblocking(True)
        try:
            if family != "AF_UNIX":
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind(address)
            self._socket.listen(max(backlog, 1))
        except BaseException:
            self._socket.close()
            self._socket = None  # half-built: nothing for close() or __del__ to do
            self._cleanup_path()
            raise
        self._address = self._socket.getsockname()
        self._unlink = family == "AF_UNIX" and isinstance(address, str) and not address.startswith("\0")
        self._last_accepted: Any = None
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.handshake_gate = HandshakeGate()
        # Handshakes under way (socket descriptor -> state, peer address), kept between
        # accept() calls; and failures waiting to be raised, one per call.
        self._pending: dict[int, tuple[_Handshake, Any]] = {}
        self._failures: collections.deque[AuthenticationError] = collections.deque()
        self._accept_lock = threading.Lock()

    def _cleanup_path(self) -> None:
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def accept(self) -> Connection:
        """Accept one connection (authenticating it if the listener has an authkey).

        With an authkey, the handshakes of connections that arrive meanwhile go on side
        by side: the first to authenticate is returned, the others stay for the next
        call.

        Raises:
            AuthenticationError: one peer failed authentication (or did not finish it
                within ``handshake_timeout``); the listener stays open and the next
                ``accept()`` works.
            OSError: the listener is closed.
        """
        if self._socket is None:
            raise OSError("listener is closed")
        if self._authkey is None:
            sock, self._last_accepted = self._socket.accept()
            return _handshake(sock, None, True, self.handshake_timeout)
        with self._accept_lock:
            return self._accept_authenticated()

    def _drop(self, handshake: _Handshake) -> None:
        self._pending.pop(handshake.sock.fileno(), None)
        self.handshake_gate.release(handshake)
        handshake.sock.close()

    def _accept_authenticated(self) -> Connection:
        assert self._authkey is not None
        while True:
            if self._failures:
                raise self._failures.popleft()
            listening = self._socket
            if listening is None:
                raise OSError("listener is closed")
            now = time.monotonic()
            self._expire_late(now)
            if self._failures:
                continue
            for fd, _events in self._poll(listening, now):
                if fd == listening.fileno():
                    self._start_one(listening)
                elif fd in self._pending:
                    conn = self._step(*self._pending[fd])
                    if conn is not None:
                        return conn

    def _expire_late(self, now: float) -> None:
        """Drop the pending handshakes past their deadline (each one's error is queued)."""
        for handshake, _ in list(self._pending.values()):
            if handshake.deadline <= now:
                self._drop(handshake)
                self._failures.append(handshake.late())

    def _poll(self, listening: socket.socket, now: float) -> list[tuple[int, int]]:
        """Wait for a new peer or data from a pending one, until the first deadline."""
        poller = select.poll()
        poller.register(listening.fileno(), select.POLLIN)
        for fd in self._pending:
            poller.register(fd, select.POLLIN | select.POLLPRI)
        wait = min((h.deadline for h, _ in self._pending.values()), default=None)
        return poller.poll(poll_ms(None if wait is None else wait - now))

    def _start_one(self, listening: socket.socket) -> None:
        try:
            sock, address = listening.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        handshake = _Handshake(
            sock,
            self._authkey,  # type: ignore[arg-type]  # set: accept() handshakes only with a key
            True,
            time.monotonic() + self.handshake_timeout,
            _peer_key(sock, address),
        )
        for out in self.handshake_gate.admit(handshake):
            self._drop(out)
            self._failures.append(out.closed())
        self._pending[sock.fileno()] = (handshake, address)
        try:
            handshake.advance(None)
        except AuthenticationError as exc:
            self._drop(handshake)
            self._failures.append(exc)

    def _step(self, handshake: _Handshake, address: Any) -> Connection | None:
        """Read what one pending peer sent; its Connection once authenticated."""
        try:
            try:
                data = handshake.sock.recv(handshake.want())
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                raise AuthenticationError(f"handshake failed: {exc}") from exc
            if not data:
                raise handshake.closed()
            frame = handshake.feed(data)
            if frame is None or not handshake.advance(frame):
                return None
        except AuthenticationError as exc:
            self._drop(handshake)
            self._failures.append(exc)
            return None
        self._pending.pop(handshake.sock.fileno(), None)
        self.handshake_gate.release(handshake)
        handshake.sock.setblocking(True)
        self._last_accepted = address
        return Connection(handshake.sock.detach())

    def close(self) -> None:
        """Stop listening and remove the socket file; closing twice is harmless.

        Connections still in handshake are closed too.
        """
        sock, self._socket = self._socket, None
        for handshake, _ in list(getattr(self, "_pending", {}).values()):
            handshake.sock.close()
        if hasattr(self, "_pending"):
            self._pending.clear()
        if sock is not None:
            sock.close()
            if getattr(self, "_unlink", False):
                try:
                    os.unlink(self._address)
                except OSError:
                    pass
        self._cleanup_path()

    @property
    def address(self) -> Address:
        """The address the listener is bound to (with the real port if 0 was asked)."""
        return self._address

    @property
    def last_accepted(self) -> Address:
        """The address of the peer last accepted (None before the first)."""
        return self._last_accepted

    def fileno(self) -> int:
        if self._socket is None:
            raise OSError("listener is closed")
        return self._socket.fileno()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_socket", None) is not None:
            self.close()


def Client(  # noqa: N802 - stdlib name
    address: Address, family: str | None = None, authkey: bytes | None = None
) -> Connection:
    """Connect to a Listener at *address* and return the Connection.

    The handshake (with an authkey) must end within ``HANDSHAKE_TIMEOUT`` seconds.

    Raises:
        TypeError: *authkey* is not bytes.
        AuthenticationError: the listener and this client have different authkeys, or
            the listener did not complete the handshake in time.
        OSError: nobody listens there (ConnectionRefusedError, FileNotFoundError).
    """
    authkey = _check_authkey(authkey)
    family = family or address_type(address)
    sock = socket.socket(_family(family), socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return _handshake(sock, authkey, False, HANDSHAKE_TIMEOUT)
