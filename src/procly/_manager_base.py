"""BaseManager: starts (or connects to) a manager server and creates shared objects in it."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from . import _process
from ._connection import Pipe
from ._errors import ProcessError
from ._finalize import Finalize
from ._manager_proxies import AutoProxy, _client_state, _request, manager_key
from ._manager_server import Server, _run_server
from ._manager_wire import Token, _check_serializer

_ManagerT = TypeVar("_ManagerT", bound="BaseManager")


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
            args=(
                self._registry,
                self._address,
                self._authkey,
                writer,
                initializer,
                tuple(initargs),
                self._serializer,
                self._Server,
            ),
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
        ident, exposed = _request(
            self._address, self._authkey, "create", typeid, args, kwargs, serializer=self._serializer
        )
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
                # Counted as this process's proxy from the request on: the last of its
                # others dropped meanwhile (in another thread) would end the lease that the
                # new object's first reference is held under, before its proxy holds one.
                clients, key = _client_state(), manager_key(self._address, self._serializer, self._authkey)
                clients.proxy_born(key)
                try:
                    token, exp = self._create(typeid, *args, **kwargs)
                    proxy = proxytype(
                        token, serializer=self._serializer, manager=self, authkey=self._authkey, exposed=exp
                    )
                    # the proxy holds its own reference
                    _request(self._address, self._authkey, "decref", token.id, serializer=self._serializer)
                finally:
                    clients.proxy_gone(key)
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
