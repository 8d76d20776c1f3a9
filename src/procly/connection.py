"""Connections between processes (``multiprocessing.connection``).

``Pipe()`` for related processes, ``Listener`` / ``Client`` over Unix or TCP sockets
(loopback by default, mutual HMAC-SHA256 authentication before anything is unpickled),
and ``wait()`` over any mix of connections, sockets and process sentinels.
"""

from ._connection import Connection as Connection
from ._connection import Pipe as Pipe
from ._errors import AuthenticationError as AuthenticationError
from ._errors import BufferTooShort as BufferTooShort
from ._listener import Client as Client
from ._listener import Listener as Listener
from ._listener import address_type as address_type
from ._listener import answer_challenge as answer_challenge
from ._listener import deliver_challenge as deliver_challenge
from ._listener import families as families
from ._wait import wait as wait

__all__ = ["Client", "Connection", "Listener", "Pipe", "wait"]

for _obj in (Connection, Pipe, Client, Listener, wait):
    _obj.__module__ = __name__
del _obj


# --------------------------------------------------------------------------- standard library names

import tempfile as _tempfile  # noqa: E402
from typing import Any as _Any  # noqa: E402
from typing import Callable as _Callable  # noqa: E402

from . import _listener  # noqa: E402
from ._compat import lazy_submodules as _lazy_submodules  # noqa: E402

BUFSIZE = 8192
CONNECTION_TIMEOUT = _listener.HANDSHAKE_TIMEOUT  # seconds an authentication handshake may take
# procly's handshake (HMAC-SHA256 both ways; not the standard library's wire format).
MESSAGE_LENGTH = _listener._NONCE_SIZE
CHALLENGE = _listener._CHALLENGE
_CHALLENGE = CHALLENGE  # the name Python 3.12+ uses
WELCOME = _listener._WELCOME
FAILURE = _listener._FAILURE
default_family = "AF_UNIX"


def arbitrary_address(family: str) -> _Any:
    """A fresh address of *family* to listen on (port 0: the system picks one).

    Raises:
        ValueError: *family* is not one of :data:`families`.
    """
    if family == "AF_INET":
        return ("localhost", 0)
    if family == "AF_INET6":
        return ("::1", 0)
    if family == "AF_UNIX":
        from .util import get_temp_dir

        return _tempfile.mktemp(prefix="listener-", dir=get_temp_dir())
    raise ValueError(f"unrecognized family {family!r}")


class SocketListener(Listener):
    """A Listener without authentication (the standard library's low-level listener)."""

    def __init__(self, address: _Any, family: str, backlog: int = 1) -> None:
        super().__init__(address, family, backlog)


def SocketClient(address: _Any) -> Connection:  # noqa: N802 - the standard library's name
    """Connect to *address* without authentication.

    Raises:
        OSError: nobody listens there.
    """
    return Client(address)


class ConnectionWrapper:
    """A Connection whose ``send``/``recv`` use *dumps*/*loads* instead of pickle."""

    def __init__(self, conn: Connection, dumps: _Callable[[_Any], bytes], loads: _Callable[[bytes], _Any]) -> None:
        self._conn = conn
        self._dumps = dumps
        self._loads = loads
        for attr in ("fileno", "close", "poll", "recv_bytes", "send_bytes"):
            setattr(self, attr, getattr(conn, attr))

    def send(self, obj: _Any) -> None:
        """Send *obj* encoded with *dumps*."""
        self._conn.send_bytes(self._dumps(obj))

    def recv(self) -> _Any:
        """Receive one message and decode it with *loads*."""
        return self._loads(self._conn.recv_bytes())

    def __enter__(self) -> "ConnectionWrapper":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._conn.close()


def _xml_dumps(obj: _Any) -> bytes:
    import xmlrpc.client

    return xmlrpc.client.dumps((obj,), None, None, None, True).encode("utf-8")


def _xml_loads(s: bytes) -> _Any:
    import xmlrpc.client

    (obj,), _method = xmlrpc.client.loads(s.decode("utf-8"))
    return obj


class XmlListener(Listener):
    """A Listener whose connections exchange XML-RPC encoded values instead of pickles."""

    def accept(self) -> ConnectionWrapper:  # type: ignore[override]
        """Accept one connection (authenticated if the listener has an authkey).

        Raises:
            AuthenticationError: that peer failed authentication.
            OSError: the listener is closed.
        """
        return ConnectionWrapper(super().accept(), _xml_dumps, _xml_loads)


def XmlClient(*args: _Any, **kwds: _Any) -> ConnectionWrapper:  # noqa: N802 - the standard library's name
    """Connect like :func:`Client`; the connection exchanges XML-RPC encoded values.

    Raises:
        OSError: nobody listens there.
        AuthenticationError: the authkeys differ.
    """
    return ConnectionWrapper(Client(*args, **kwds), _xml_dumps, _xml_loads)


def reduce_connection(conn: Connection) -> _Any:
    """How to pickle *conn* through :func:`procly.reduction.DupFd` (the standard library's reducer)."""
    from .reduction import DupFd

    return rebuild_connection, (DupFd(conn.fileno()), conn.readable, conn.writable)


def rebuild_connection(df: _Any, readable: bool, writable: bool) -> Connection:
    """The Connection of :func:`reduce_connection`: over the descriptor ``df.detach()`` gives."""
    return Connection(df.detach(), readable, writable)


__getattr__ = _lazy_submodules(__name__, "reduction", "util")
