"""The embedded target: a small, fast HTTP/1.1 server to load-test against.

``procly loadtest`` with no URL starts it in its own process on 127.0.0.1 (an
ephemeral port) and ``procly serve-target`` runs it alone. It answers:

    /                 200 "ok"
    /bytes/N          200 with N bytes (N <= 16 MiB)
    /delay/MS         200 after MS milliseconds (MS <= 60000)
    /status/CODE      that status code
    /close            closes the connection without answering
    /garbage          bytes that are not HTTP
    /stats            200 with the number of requests served so far
    /echo             200, JSON: the request's method, path, headers and body
    /cookie/NAME/VAL  200, and sets the cookie NAME=VAL

Keep-alive and pipelined requests are answered in order. It counts every request it
parses, so a load test's report can be checked against it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time
from collections import deque
from http import HTTPStatus
from typing import Any

import httptools

from ..connection import Connection
from ._clock import PreciseTimer
from ._http import set_nodelay

MAX_BYTES = 16 * 1024 * 1024
MAX_DELAY_MS = 60_000


def _response(
    status: int, body: bytes, keep_alive: bool = True, content_type: str = "text/plain", extra: str = ""
) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nContent-Type: {content_type}\r\n{extra}"
        f"{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n"
    )
    return head.encode("latin-1") + body


_OK = _response(200, b"ok")
_OK_CLOSE = _response(200, b"ok", keep_alive=False)
_NOT_FOUND = _response(404, b"not found")
_GARBAGE = b"\x00\xffTHIS IS NOT HTTP\r\n\r\n\x17\x03"


class _Counter:
    def __init__(self) -> None:
        self.served = 0
        self.timer: Any = None  # the PreciseTimer of /delay answers


class _ServerProtocol(asyncio.Protocol):
    """One client connection: parse requests, queue their answers in order."""

    def __init__(self, counter: _Counter) -> None:
        self.counter = counter
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.echo_headers: list[tuple[str, str]] = []
        self.echo_body: list[bytes] = []
        # Answers not yet written, in request order: bytes, a future for a delayed one, or None = close.
        self.pending: deque[Any] = deque()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._write_now(_response(400, b"upgrade not supported", keep_alive=False))
            self.transport.close()
        except httptools.HttpParserError:
            self._write_now(_response(400, b"bad request", keep_alive=False))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.url.startswith(b"/echo"):  # kept for /echo only: the common path stays cheap
            self.echo_headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        if self.url.startswith(b"/echo"):
            self.echo_body.append(body)

    def on_message_complete(self) -> None:
        self.counter.served += 1
        url, self.url = self.url, b""
        keep_alive = self.parser.should_keep_alive()
        if url.startswith(b"/echo"):
            answer = self._echo(url)
        else:
            answer = self._answer(url.split(b"?", 1)[0])
        if answer is _OK and not keep_alive:
            answer = _OK_CLOSE
        if answer is not None and self.parser.get_method() == b"HEAD":
            answer = answer[: answer.index(b"\r\n\r\n") + 4]  # the headers a GET would get, no body
        self.pending.append(answer)
        if not keep_alive and answer is not None:
            self.pending.append(None)
        self._flush()

    def _echo(self, url: bytes) -> bytes:
        document = {
            "method": self.parser.get_method().decode("latin-1"),
            "path": url.decode("latin-1"),
            "headers": dict(self.echo_headers),
            "body": b"".join(self.echo_body).decode("utf-8", "replace"),
        }
        self.echo_headers, self.echo_body = [], []
        return _response(200, json.dumps(document).encode(), content_type="application/json")

    def _answer(self, path: bytes) -> Any:
        if path == b"/":
            return _OK
        parts = path.strip(b"/").split(b"/")
        name, arg = parts[0], parts[1] if len(parts) > 1 else b""
        if name == b"bytes" and arg.isdigit() and int(arg) <= MAX_BYTES:
            return _response(200, b"x" * int(arg))
        if name == b"delay" and arg.isdigit() and int(arg) <= MAX_DELAY_MS:
            future = asyncio.get_running_loop().create_future()
            # Never early (loop timers are only precise to the millisecond): see _clock.
            self.counter.timer.call_at(time.monotonic() + int(arg) / 1000.0, self._resolve, future, _OK)
            return future
        if name == b"status" and arg.isdigit() and 100 <= int(arg) <= 599:
            return _response(int(arg), f"status {int(arg)}".encode())
        if name == b"close" and not arg:
            return None
        if name == b"garbage" and not arg:
            return _GARBAGE
        if name == b"cookie" and len(parts) == 3 and parts[1].isalnum() and parts[2].isalnum():
            cookie = f"Set-Cookie: {parts[1].decode()}={parts[2].decode()}; Path=/\r\n"
            return _response(200, b"ok", extra=cookie)
        if name == b"stats" and not arg:
            return _response(200, str(self.counter.served).encode())
        return _NOT_FOUND

    def _resolve(self, future: asyncio.Future[bytes], data: bytes) -> None:
        if not future.done():
            future.set_result(data)
        self._flush()

    def _flush(self) -> None:
        while self.pending and self.transport is not None:
            head = self.pending[0]
            if head is None:
                self.pending.clear()
                self.transport.close()
                return
            if isinstance(head, asyncio.Future):
                if not head.done():
                    return
                head = head.result()
            self.pending.popleft()
            self.transport.write(head)

    def _write_now(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


def _tls_context(tls: tuple[str, str]) -> ssl.SSLContext:
    """The server's TLS context for the certificate and key files *tls*."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls)
    return context


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Future[None], embedded: bool) -> None:
    """SIGTERM (and SIGINT unless *embedded*) ends the server through *stop*."""
    # Embedded, Ctrl-C is for the load test: it stops the target when the report is done.
    signals = (signal.SIGTERM,) if embedded else (signal.SIGTERM, signal.SIGINT)
    if embedded:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in signals:
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))


def _stop_on_control(loop: asyncio.AbstractEventLoop, ready: Connection, stop: asyncio.Future[None]) -> None:
    """A message on (or the end of) the control connection *ready* ends the server through *stop*."""

    def on_control() -> None:
        try:
            ready.recv()
        except (EOFError, OSError):
            pass
        loop.remove_reader(ready.fileno())
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(ready.fileno(), on_control)


async def _serve(host: str, port: int, ready: Connection | None, announce: bool, tls: tuple[str, str] | None) -> None:
    loop = asyncio.get_running_loop()
    counter = _Counter()
    counter.timer = PreciseTimer(loop)
    context = _tls_context(tls) if tls is not None else None
    server = await loop.create_server(
        lambda: _ServerProtocol(counter), host, port, backlog=4096, reuse_address=True, ssl=context
    )
    bound = server.sockets[0].getsockname()
    scheme = "https" if tls is not None else "http"
    stop = loop.create_future()
    _stop_on_signals(loop, stop, embedded=ready is not None)
    if ready is not None:
        ready.send(("listening", scheme, bound[0], bound[1]))
        _stop_on_control(loop, ready, stop)
    if announce:
        print(f"procly target listening on {scheme}://{bound[0]}:{bound[1]}/  (Ctrl-C stops it)", flush=True)
    try:
        await stop
    finally:
        server.close()
        counter.timer.close()
        if ready is not None:
            try:
                ready.send(("served", counter.served))
            except OSError:
                pass
    if announce:
        print(f"procly target served {counter.served} requests", flush=True)


def serve_target(
    host: str = "127.0.0.1",
    port: int = 0,
    ready: Connection | None = None,
    announce: bool = False,
    tls: tuple[str, str] | None = None,
) -> None:
    """Run the target server until SIGTERM/SIGINT, or until ``ready`` says stop (or closes).

    With ``ready``, it sends ``("listening", scheme, host, port)`` once bound and
    ``("served", count)`` when it stops. ``tls`` is ``(certfile, keyfile)`` for https.
    """
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(host, port, ready, announce, tls))
    finally:
        loop.close()


class EmbeddedTarget:
    """The target server in a process of its own, for as long as the ``with`` block runs.

    Raises:
        RuntimeError: the server did not start within 30 s.
    """

    def __init__(
        self, host: str = "127.0.0.1", start_method: str | None = None, tls: tuple[str, str] | None = None
    ) -> None:
        self.host = host
        self.start_method = start_method
        self.tls = tls
        self.url = ""
        self.served: int | None = None
        self._process: Any = None
        self._conn: Any = None

    def __enter__(self) -> EmbeddedTarget:
        from .. import get_context

        ctx = get_context(self.start_method)
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=serve_target, args=(self.host, 0, child, False, self.tls), name="procly-loadtest-target", daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(30):
            self._stop()
            raise RuntimeError("the embedded target server did not start within 30 s")
        _, scheme, host, port = self._conn.recv()
        self.url = f"{scheme}://{host}:{port}/" if ":" not in host else f"{scheme}://[{host}]:{port}/"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._process is None:
            return
        try:
            self._conn.send(("stop",))
            if self._conn.poll(5):
                message = self._conn.recv()
                if message[0] == "served":
                    self.served = message[1]
        except (EOFError, OSError):
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()
        self._process = None
