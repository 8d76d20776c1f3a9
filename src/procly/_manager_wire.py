"""The managers' wire: what a proxy and a manager server send each other.

A request is a tuple ``(kind, *args)`` (see ``Server.handlers`` for the kinds); a
reply is ``("ok", value)``, ``("err", exception, traceback text)`` or, for a method
whose result is itself shared, ``("proxy", (typeid, id, exposed))``. Messages are
pickled, or marshalled with xmlrpc for ``serializer="xmlrpclib"``.
"""

from __future__ import annotations

from typing import Any

from . import _serialization
from ._connection import Connection
from ._errors import ProcessError, rebuild_exception


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


def _reply(conn: Any, reply: tuple[Any, ...]) -> bool:
    try:
        if type(conn) is Connection and len(reply) == 2 and type(reply[1]) in _serialization._small_types:
            conn._send_scalars(reply)  # ("ok", 42): d[k], d[k] = v
        else:
            conn.send(reply)
    except (OSError, EOFError):
        return False
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
        try:
            conn.send(("err", RemoteError(f"the reply could not be pickled: {exc}"), ""))
        except OSError:
            return False
    return True


def _unwrap(reply: tuple[Any, ...]) -> Any:
    if reply[0] == "ok":
        return reply[1]
    if reply[0] == "err":
        _, exc, tb = reply
        if exc is None:  # an xmlrpclib peer: only the traceback's text could travel
            raise RemoteError(tb)
        raise rebuild_exception(exc, tb) if tb else exc
    raise RemoteError(f"unexpected reply {reply[0]!r}")
