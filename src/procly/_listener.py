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

Every handshake frame is limited to 256 bytes and to ``handshake_timeout`` seconds, so a
peer that sends garbage, an enormous length prefix, or nothing at all costs one
connection (an :class:`AuthenticationError` from ``accept()``), never the listener.

Trust model: a peer that knows the authkey can make the other side unpickle arbitrary
data, which means run arbitrary code. Treat authkeys as secrets and bind to loopback
(the default) unless every host that can reach the port is trusted.
"""

from __future__ import annotations

import hmac
import os
import secrets
import shutil
import socket
import struct
import tempfile
from typing import Any

from ._connection import Connection
from ._errors import AuthenticationError, MessageError

__all__ = ["Client", "Listener", "answer_challenge", "deliver_challenge", "families"]

families = ["AF_UNIX", "AF_INET", "AF_INET6"]

_CHALLENGE = b"procly-auth/1 "
_TAG = b"procly-auth/1 response "
_WELCOME = b"#WELCOME#"
_FAILURE = b"#FAILURE#"
_NONCE_SIZE = 32
_MAX_HANDSHAKE_FRAME = 256
HANDSHAKE_TIMEOUT = 20.0

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


def _recv_handshake(conn: Connection) -> bytes:
    try:
        return conn.recv_bytes(_MAX_HANDSHAKE_FRAME)
    except MessageError as exc:
        raise AuthenticationError(f"peer sent an invalid handshake frame: {exc}") from None
    except BlockingIOError:
        raise AuthenticationError("peer did not complete the handshake in time") from None
    except EOFError:
        raise AuthenticationError("peer closed the connection during the handshake") from None


def deliver_challenge(connection: Connection, authkey: bytes) -> None:
    """Challenge the peer to prove it knows *authkey*.

    Raises:
        AuthenticationError: the answer is wrong, malformed, or late.
    """
    _check_authkey(authkey)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    connection.send_bytes(_CHALLENGE + nonce)
    answer = _recv_handshake(connection)
    if hmac.compare_digest(answer, _digest(authkey, nonce)):
        connection.send_bytes(_WELCOME)
    else:
        connection.send_bytes(_FAILURE)
        raise AuthenticationError("digest received was wrong (the peer has a different authkey)")


def answer_challenge(connection: Connection, authkey: bytes) -> None:
    """Answer the peer's challenge with *authkey*.

    Raises:
        AuthenticationError: the peer rejected the answer or did not speak the protocol.
    """
    _check_authkey(authkey)
    challenge = _recv_handshake(connection)
    if not challenge.startswith(_CHALLENGE) or len(challenge) != len(_CHALLENGE) + _NONCE_SIZE:
        raise AuthenticationError("peer did not send a procly challenge")
    connection.send_bytes(_digest(authkey, challenge[len(_CHALLENGE) :]))
    verdict = _recv_handshake(connection)
    if verdict != _WELCOME:
        raise AuthenticationError("digest sent was rejected (the peer has a different authkey)")


def _set_recv_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def _handshake(sock: socket.socket, authkey: bytes | None, server: bool, timeout: float) -> Connection:
    """Wrap an accepted/connected socket, authenticating both ways if *authkey* is set."""
    # socket.setdefaulttimeout() would make the descriptor non-blocking: Connections block.
    sock.setblocking(True)
    if authkey is None:
        return Connection(sock.detach())
    _set_recv_timeout(sock, timeout)
    conn = Connection(os.dup(sock.fileno()))
    try:
        if server:
            deliver_challenge(conn, authkey)
            answer_challenge(conn, authkey)
        else:
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
    except (AuthenticationError, OSError) as exc:
        conn.close()
        sock.close()
        if isinstance(exc, AuthenticationError):
            raise
        raise AuthenticationError(f"handshake failed: {exc}") from exc
    _set_recv_timeout(sock, 0)
    conn.close()
    return Connection(sock.detach())


class Listener:
    """A bound socket that accepts Connections (``multiprocessing.connection.Listener``).

    *address* defaults to a fresh Unix socket in a private temporary directory, or to
    ``('127.0.0.1', 0)`` for ``family='AF_INET'``: loopback unless told otherwise.
    With *authkey* every accepted connection must pass the mutual HMAC challenge first.

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
            self._cleanup_path()
            raise
        self._address = self._socket.getsockname()
        self._unlink = family == "AF_UNIX" and isinstance(address, str) and not address.startswith("\0")
        self._last_accepted: Any = None
        self.handshake_timeout = HANDSHAKE_TIMEOUT

    def _cleanup_path(self) -> None:
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def accept(self) -> Connection:
        """Accept one connection (authenticating it if the listener has an authkey).

        Raises:
            AuthenticationError: that one peer failed authentication; the listener
                stays open and the next ``accept()`` works.
            OSError: the listener is closed.
        """
        if self._socket is None:
            raise OSError("listener is closed")
        sock, self._last_accepted = self._socket.accept()
        return _handshake(sock, self._authkey, True, self.handshake_timeout)

    def close(self) -> None:
        """Stop listening and remove the socket file; closing twice is harmless."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
            if self._unlink:
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

    Raises:
        TypeError: *authkey* is not bytes.
        AuthenticationError: the listener and this client have different authkeys.
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
