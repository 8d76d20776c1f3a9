"""Virtual users running the flows of a scenario, in one worker process.

Each virtual user is one asyncio task with its own :class:`User`: a keep-alive HTTP/1.1
connection to the target (reopened when the server closes it), cookies, default headers,
a random generator, its data row and a ``state`` dict for anything the flows keep. In a
loop it picks a flow (at random, by weight) and runs it; a flow that raises is counted by
exception class and the user goes on with its next iteration. Requests are recorded under
their ``name``; checks are counted per check name, pass and fail, and never stop the user.

Latency is measured from the moment a request is written to the moment its response is
complete: think time (:meth:`User.think`) and connecting are never part of it.
"""

from __future__ import annotations

import asyncio
import gc
import json as jsonlib
import os
import random
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import httptools

from ._config import HttpTarget, split_evenly
from ._http import connect_error_kind, set_nodelay
from ._scenario import FlowSpec, Scenario
from ._schedule import Schedule
from ._stats import MAX_NAMES, OTHER_NAMES, Interval, NameRecorder, Recorder, check_tally
from ._writes import WriteBatch

#: How often the number of running users follows ``--stages``.
RAMP_PERIOD = 0.1
#: Users started at once begin at most this many per second (a worker's 10,000 users over
#: one second), so that thousands of connections do not open in the same instant and the
#: users' requests do not all fall in the same beat of their think time.
START_RATE = 10_000
_PRESENT: Any = ...  # a JSON field or header that must merely exist
_JSON = jsonlib.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps(separators=) builds one a call


class _StopUser(BaseException):
    """Ends a virtual user: the run is over, its budget spent, or the ramp retires it.

    A BaseException, so that a flow's ``except Exception`` does not swallow it.
    """


class RequestFailed(Exception):
    """A request got no response (refused, reset, timeout, malformed answer); ``kind`` says which."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Response:
    """The answer to one request of a flow.

    ``status`` is 0 and ``error`` says why when no response came (connection refused,
    timeout, ...). Header names are lower case.
    """

    __slots__ = ("status", "_raw", "_headers", "body", "error", "elapsed_ms", "name", "_expected")

    def __init__(
        self,
        status: int,
        raw_headers: bytes | list[tuple[bytes, bytes]],
        body: bytes,
        error: str | None,
        elapsed_ms: float,
        name: str,
        expected: frozenset[int] | None = None,
    ) -> None:
        self.status = status
        self._expected = expected  # the request's expect=: which statuses count as ok
        self._raw = raw_headers
        self._headers: dict[str, str] | None = None
        self.body = body
        self.error = error
        self.elapsed_ms = elapsed_ms
        self.name = name

    @property
    def headers(self) -> dict[str, str]:
        """The response's headers, names in lower case (decoded when first asked for)."""
        if self._headers is None:
            raw = self._raw
            pairs = _header_lines(raw) if isinstance(raw, bytes) else raw
            self._headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in pairs}
        return self._headers

    @property
    def ok(self) -> bool:
        """A response came and its status is one the request expected (``expect=``; by
        default, any below 400): the same verdict as the run's error count."""
        if self.error is not None or self.status == 0:
            return False
        expected = self._expected
        return self.status < 400 if expected is None else self.status in expected

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ValueError: the body is not JSON.
        """
        return jsonlib.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.name} {self.status or self.error} {len(self.body)} bytes>"


class FlowRecorder(Recorder):
    """A worker's tallies for flows: one :class:`Recorder` per request name, checks, exceptions."""

    __slots__ = ("names", "checks", "exceptions", "exception_samples", "iterations")

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.names: dict[str, Recorder] = {}
        self.checks: dict[str, list[int]] = {}
        self.exceptions: Counter[str] = Counter()
        self.exception_samples: dict[str, str] = {}  # the first of each class this interval
        self.iterations = 0

    def named(self, name: str) -> Recorder:
        recorder = self.names.get(name)
        if recorder is None:
            recorder = self._new_name(OTHER_NAMES if len(self.names) >= MAX_NAMES else name)
        return recorder

    def _new_name(self, name: str) -> Recorder:
        recorder = self.names.get(name)
        if recorder is None:
            recorder = self.names[name] = NameRecorder(name)
            recorder.measure_from = self.measure_from
        return recorder

    def check(self, name: str, passed: bool) -> None:
        check_tally(self.checks, name)[0 if passed else 1] += 1

    def fold(self) -> None:
        for recorder in self.names.values():
            recorder.fold()

    def take(self) -> Interval:
        total = Interval(histogram=self._empty_histogram())
        by_name = {}
        for name, recorder in self.names.items():
            sub = recorder._take_own()
            total.add(sub)
            by_name[name] = sub
        total.bytes_received += self.bytes_received
        total.by_name = by_name
        total.checks = {name: list(tally) for name, tally in self.checks.items()}
        total.exceptions = dict(self.exceptions)
        total.exception_samples = self.exception_samples
        total.iterations = self.iterations
        self.bytes_received = 0
        self.checks = {}
        self.exceptions = Counter()
        self.exception_samples = {}
        self.iterations = 0
        return total

    def take_wire(self) -> dict[str, Any]:
        """``take().to_wire()``, as a worker's tick sends it, the total's histograms then
        reused (each name's are sparse: a new one costs little)."""
        interval = self.take()
        wire = interval.to_wire()
        self.recycle(interval)
        return wire

    def discard(self) -> None:
        super().discard()
        for recorder in self.names.values():
            recorder.discard()
        self.checks = {}
        self.exceptions = Counter()
        self.exception_samples = {}
        self.iterations = 0


class _Connection(asyncio.Protocol):
    """One user's keep-alive connection: one request at a time, parsed by httptools."""

    __slots__ = (
        "transport",
        "parser",
        "waiter",
        "status",
        "headers",
        "body",
        "recorder",
        "head",
        "closed",
        "loop",
        "sent",
        "cookies",
        "chunks",
        "outgoing",
    )

    def __init__(self, recorder: FlowRecorder, loop: asyncio.AbstractEventLoop) -> None:
        self.recorder = recorder
        self.loop = loop
        self.sent = 0.0  # when the request in flight was written; 0: none in flight
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Any] | None = None
        self.status = 0
        self.headers = b""  # the answer's status line and headers, as they came
        self.body: list[bytes] = []
        self.head = False
        self.closed = False
        self.cookies: list[bytes] | None = None  # the Set-Cookie values of the answer, if any
        self.chunks: bytes | None = None  # what came of the answer until its headers were complete
        self.outgoing = b""  # the request queued in the load's WriteBatch

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.recorder.bytes_received += len(data)
        if self.chunks is not None:
            self.chunks += data  # the first chunk is kept as it is (b"" + data is data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._abort("malformed response")

    def on_headers_complete(self) -> None:
        # The headers are cut from the bytes received (decoded only if a flow asks for them):
        # no parser callback per header.
        raw, self.chunks = self.chunks, None
        if raw:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                end = raw.find(b"\n\n")
            head = self.headers = raw[:end] if end >= 0 else raw
            if head.lower().find(b"set-cookie") >= 0:  # not `in`: it tries the needle as an int first
                self.cookies = [value for name, value in _header_lines(head) if name.lower() == b"set-cookie"]
        if self.head:
            self._complete()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.head:  # a HEAD answer was completed with its headers
            self._answer(self.parser)

    def _complete(self) -> None:
        parser = self.parser
        if self.head:
            self.parser = httptools.HttpResponseParser(self)
        self._answer(parser)

    def _answer(self, parser: Any) -> None:
        """Hand the waiting request its answer: status, headers, body, keep-alive."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            body = self.body
            waiter.set_result(
                (
                    parser.get_status_code(),
                    self.headers,
                    body[0] if len(body) == 1 else b"".join(body),
                    parser.should_keep_alive(),
                    # Complete now: the user resumes later in the loop's pass, after the
                    # other answers of that pass (not client time to count as latency).
                    time.monotonic(),
                )
            )

    def _fail(self, kind: str) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(RequestFailed(kind))

    def _abort(self, kind: str) -> None:
        """Fail the request in flight and drop the connection at once (no more bytes read)."""
        self._fail(kind)
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None:
            self._fail("closed by server")
        else:
            self._fail("reset" if isinstance(exc, ConnectionResetError) else f"lost {type(exc).__name__}")

    def send(self, data: bytes, head: bool, writes: WriteBatch) -> asyncio.Future[Any]:
        """Queue the request *data* in *writes*; the future gets the answer."""
        self.head = head
        self.headers = b""
        self.body = []
        self.cookies = None
        self.chunks = b""
        waiter = self.waiter = self.loop.create_future()
        self.outgoing = data
        writes.add(self)
        return waiter

    def write_queued(self, now: float) -> None:
        data, self.outgoing = self.outgoing, b""
        waiter = self.waiter
        if waiter is None or waiter.done() or self.transport.is_closing():
            return  # failed, cancelled or closed while queued
        self.sent = now  # the sweep fails it after the timeout
        self.transport.write(data)

    def write_failed(self, exc: Exception) -> None:
        self._abort(f"write {type(exc).__name__}")


class User:
    """One virtual user: its session (connection, cookies, default headers) and state.

    Attributes:
        id: the user's number, unique in the run (0, 1, 2, ...).
        state: a dict for whatever the flows keep between steps and iterations.
        headers: default headers sent with every request (a request's own headers win).
        cookies: the cookies the server set (``Set-Cookie``), sent back with every request.
        row: this user's row of the ``--data`` CSV file (a dict), or None without data.
        rng: this user's :class:`random.Random`, seeded from ``--seed`` when given.
    """

    def __init__(self, load: FlowLoad, user_id: int) -> None:
        self._load = load
        self.id = user_id
        self.state: dict[str, Any] = {}
        self.headers: dict[str, str] = {}
        self.cookies: dict[str, str] = {}
        seed = load.scenario.seed
        self.rng = random.Random(None if seed is None else seed * 1_000_003 + user_id)
        self.row: dict[str, str] | None = load.row_for(self)
        self._connection: _Connection | None = None
        self._in_request = False
        self._steps = 0  # requests and think times so far: each of them lets the loop run
        self._retired = False
        self._task: asyncio.Task[None] | None = None

    # requests

    def get(self, path: str, **options: Any) -> Coroutine[Any, Any, Response]:
        """GET ``path`` (relative to the base URL); await it. See :meth:`request` for the options."""
        return self.request("GET", path, **options)

    def post(self, path: str, **options: Any) -> Coroutine[Any, Any, Response]:
        """POST ``path``; await it. See :meth:`request` for the options."""
        return self.request("POST", path, **options)

    def put(self, path: str, **options: Any) -> Coroutine[Any, Any, Response]:
        """PUT ``path``; await it. See :meth:`request` for the options."""
        return self.request("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> Coroutine[Any, Any, Response]:
        """PATCH ``path``; await it. See :meth:`request` for the options."""
        return self.request("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> Coroutine[Any, Any, Response]:
        """DELETE ``path``; await it. See :meth:`request` for the options."""
        return self.request("DELETE", path, **options)

    def head(self, path: str, **options: Any) -> Coroutine[Any, Any, Response]:
        """HEAD ``path``; await it. See :meth:`request` for the options."""
        return self.request("HEAD", path, **options)

    async def request(  # noqa: C901 - every request's path, kept in one function
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: bytes | str | Mapping[str, Any] | None = None,
        expect: int | Iterable[int] | None = None,
    ) -> Response:
        """Send one request on this user's connection and return its :class:`Response`.

        ``name`` groups the request's statistics (default: the method and the path
        without its query); ``json`` sends a JSON body, ``data`` bytes, text or a form.
        ``expect``: the status (or statuses) this request should get: one of them is no
        error even if it is 4xx or 5xx, any other is one even if it is 2xx (by default
        a status of 400 or more is an HTTP error). A request that gets no response is
        counted as an error under its name and returns a Response with status 0 and
        ``error`` set: it does not raise.

        Raises:
            ValueError: ``path`` is an absolute URL of another host than the target, or
                ``expect`` holds something that is not an HTTP status.
            RuntimeError: this user's previous request has not been answered yet: a user
                sends one request at a time, on its one connection.
        """
        load = self._load
        if self._in_request:
            raise RuntimeError(
                "a virtual user sends one request at a time: await each request before the next "
                "(for requests in parallel, use more users)"
            )
        payload, name = load.encode(self, method, path, name, params, headers, json, data)
        expected = None if expect is None else _expected_statuses(expect)
        issued = time.monotonic()  # as the schedule counts it: in the warm-up or measured
        if self._retired or load.schedule.next_start(issued) is None:
            raise _StopUser
        recorder = load.recorder.names.get(name) or load.recorder.named(name)
        self._in_request = True
        self._steps += 1
        try:
            connection = self._connection
            if connection is None or connection.closed:
                try:
                    connection = await self._connect()
                except RequestFailed as exc:
                    if issued >= recorder.measure_from:
                        recorder.error(exc.kind)
                    return Response(0, b"", b"", exc.kind, 0.0, name)
            waiter = connection.send(payload, method == "HEAD", load.writes)
            try:
                status, raw_headers, content, keep_alive, now = await waiter
            except RequestFailed as exc:
                return self._no_answer(exc.kind, connection, recorder, name, issued)
            except asyncio.CancelledError:
                # Cancelled in flight (a flow's wait_for ran out, say): its answer may still
                # come on this connection, and must not be taken for the next request's.
                self._drop_connection()
                if load.time_up and issued >= recorder.measure_from:
                    recorder.error("unanswered at the end")  # sent, and given its whole timeout
                raise
            finally:
                sent, connection.sent = connection.sent, 0.0
            started = sent or now
            if not keep_alive:
                self._drop_connection()
            if issued >= recorder.measure_from:
                load.last_answer = now
                _record(recorder, status, now - started, expected)
            if connection.cookies is not None:
                self._set_cookies(connection.cookies)
            return Response(status, raw_headers, content, None, (now - started) * 1000, name, expected)
        finally:
            self._in_request = False
            if self._retired or load.stopping:
                raise _StopUser

    def _no_answer(self, kind: str, connection: _Connection, recorder: Recorder, name: str, issued: float) -> Response:
        """The request written on *connection* failed (*kind*): count it, drop the connection."""
        now = time.monotonic()
        started = connection.sent or now  # 0: failed before it was written
        self._drop_connection()
        if issued >= recorder.measure_from:
            recorder.error(kind)
        return Response(0, b"", b"", kind, (now - started) * 1000, name)

    async def _connect(self) -> _Connection:
        load = self._load
        try:
            _, connection = await asyncio.wait_for(
                load.loop.create_connection(
                    lambda: _Connection(load.recorder, load.loop),
                    load.target.connect_host,
                    load.target.port,
                    **load.tls_options,
                ),
                load.timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise RequestFailed(connect_error_kind(exc)) from None
        self._connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.close()

    def _set_cookies(self, headers: list[bytes]) -> None:
        for value in headers:
            self._set_cookie(value.decode("latin-1"))

    def _set_cookie(self, header: str) -> None:
        pair, _, attributes = header.partition(";")
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            return
        expired = False
        for attribute in attributes.split(";"):
            key, _, setting = attribute.strip().partition("=")
            if key.lower() == "max-age":
                try:
                    expired = int(setting.strip()) <= 0
                except ValueError:
                    pass
        if expired:
            self.cookies.pop(name, None)
        else:
            self.cookies[name] = value.strip()

    # checks, think time, data

    def check(
        self,
        response: Response,
        name: str | None = None,
        *,
        status: int | Iterable[int] | None = None,
        header: Mapping[str, str | None] | None = None,
        contains: str | bytes | None = None,
        json: Mapping[str, Any] | None = None,
        predicate: Callable[[Response], bool] | None = None,
    ) -> bool:
        """Check a response; count each check as passed or failed; return True if all passed.

        ``status``: the status (or one of several); ``header``: ``{name: text}``, the header
        exists and contains the text (``...`` or None: merely exists); ``contains``: the body
        contains it; ``json``: ``{"path.to.field": value}`` (dotted, list indices as numbers;
        ``...``: the field exists); ``predicate``: a function of the response.

        With ``name``, all the given conditions form one check of that name; without,
        each condition is a check of its own named after it (``status is 200``). A failed
        check is not an error and does not stop the user.
        """
        results: list[tuple[str, bool]] = []
        if status is not None:
            results.append(_check_status(response, status))
        if header is not None:
            results += _check_headers(response, header)
        if contains is not None:
            results.append(_check_contains(response, contains))
        if json is not None:
            results += _check_json(response, json)
        if predicate is not None:
            results.append(_check_predicate(response, predicate))
        if not results:
            raise TypeError("check() needs at least one condition: status, header, contains, json or predicate")
        return self._record_checks(name, results)

    def _record_checks(self, name: str | None, results: list[tuple[str, bool]]) -> bool:
        """Count the *results* (as one check *name*, or each under its label); True if all passed."""
        recorder = self._load.recorder
        measured = time.monotonic() >= recorder.measure_from
        if name is not None:
            passed = all(ok for _, ok in results)
            if measured:
                recorder.check(name, passed)
            return passed
        if measured:
            for label, ok in results:
                recorder.check(label, ok)
        return all(ok for _, ok in results)

    async def think(self, low: float, high: float | None = None) -> None:
        """Wait ``low`` seconds, or a random time between ``low`` and ``high`` (never counted as latency)."""
        seconds = low if high is None else self.rng.uniform(low, high)
        self._steps += 1
        load = self._load
        deadline = load.schedule.deadline
        ends_run = False
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            # A think that outlasts the run ends the user: asyncio.sleep may wake up to a
            # millisecond early, and the clock alone would let another iteration start.
            ends_run, seconds = seconds >= left, min(seconds, left)
        await asyncio.sleep(max(seconds, 0.0))  # think(0) too lets the loop run
        if ends_run or self._retired or load.stopping:
            raise _StopUser

    def next_row(self) -> dict[str, str]:
        """Another row of the ``--data`` file: the next in turn (or a random one with ``--data-order random``).

        Raises:
            LookupError: the run has no ``--data``.
        """
        return self._load.next_row(self)


_MISSING: Any = object()


def _header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    """The (name, value) pairs of an answer's status line and headers, values without surrounding blanks."""
    pairs = []
    for line in head.splitlines()[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            pairs.append((name.strip(), value.strip(b" \t")))
    return pairs


def _json_field(document: Any, path: str) -> Any:
    value = document
    for part in path.split(".") if path else []:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


class FlowLoad:
    """The virtual users of one worker process, running a scenario's flows."""

    def __init__(
        self,
        scenario: Scenario,
        url: str,
        users: int,
        schedule: Schedule,
        recorder: FlowRecorder,
        timeout: float,
        insecure: bool,
        stages: Any,
        worker_index: int,
        worker_count: int,
        address: str | None = None,
    ) -> None:
        """*address*: the target's host as the coordinator resolved it (every connection goes there)."""
        import ssl

        self.loop = asyncio.get_running_loop()
        self.scenario = scenario
        self.flows, self.starts = scenario.flows()
        self.weights = [spec.weight for spec in self.flows]
        self.target = HttpTarget.from_url(url, address)
        base_path = urllib.parse.urlsplit(url).path
        self.prefix = base_path.rstrip("/")
        self.tls_options: dict[str, Any] = {}
        if self.target.tls:
            context = ssl.create_default_context()
            if insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self.tls_options = {"ssl": context, "server_hostname": self.target.host}
        self.users_share = users
        self.schedule = schedule
        self.recorder = recorder
        self.timeout = timeout
        self.stages = stages
        self.worker_index = worker_index
        self.worker_count = worker_count
        self.stopping = False
        self.time_up = False  # set by the watchdog: what is still out then is counted
        self.last_answer = 0.0  # when the last measured answer came (monotonic; 0: none yet)
        self.users: list[User] = []  # running, in order of start
        self.started = 0
        self.row_turn = 0
        self.rng = random.Random(None if scenario.seed is None else scenario.seed * 7919 + worker_index)
        self._head = (f"Host: {self.target.host_header}\r\nUser-Agent: procly-loadtest\r\n").encode("latin-1")
        self._done: asyncio.Future[None] = self.loop.create_future()
        self.writes = WriteBatch(self.loop)
        self._bare: dict[tuple[str, str, str | None], tuple[bytes, str]] = {}
        self._heads: dict[tuple[Any, ...], tuple[bytes, str]] = {}

    # what users share

    def path_for(self, path: str) -> str:
        if path[:1] == "/" and not self.prefix:
            return path
        if path.startswith(("http://", "https://")):
            parts = urllib.parse.urlsplit(path)
            if (
                parts.hostname != self.target.host
                or (parts.port or (443 if parts.scheme == "https" else 80)) != self.target.port
            ):
                raise ValueError(
                    f"{path!r} is not on the target {self.target.host_header}: "
                    "a scenario's requests go to the URL given on the command line"
                )
            return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not path.startswith("/"):
            path = "/" + path
        return self.prefix + path

    def encode(
        self,
        user: User,
        method: str,
        path: str,
        name: str | None,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        json: Any,
        data: bytes | str | Mapping[str, Any] | None,
    ) -> tuple[bytes, str]:
        """A request's bytes and the name its statistics go under (see :meth:`User.request`).

        Raises:
            ValueError: ``path`` is an absolute URL of another host than the target.
            TypeError: ``json`` is not JSON serializable.
        """
        if params or headers or user.headers or user.cookies:
            path, name = _target(self.path_for(path), method, name, params)
            body, extra = _encode_body(json, data)
            return self.request_bytes(method, path, user, headers, extra, body), name
        if json is None and data is None:
            # The common bare request: its bytes and name found once per method, path and name.
            key = (method, path, name)
            known = self._bare.get(key)
            if known is None:
                target, name = _target(self.path_for(path), method, name, None)
                known = (self.bare_request(method, target), name)
                if len(self._bare) < 10_000:
                    self._bare[key] = known
            return known
        # No headers of the session's: the request line, the fixed headers and the body's own are
        # built once per method, path, name and content type; then the body's length and the body.
        body, extra = _encode_body(json, data)
        key = (method, path, name, *extra)
        known = self._heads.get(key)
        if known is None:
            target, name = _target(self.path_for(path), method, name, None)
            own = "".join([f"{header}: {value}\r\n" for header, value in extra])
            known = (f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._head + own.encode("latin-1"), name)
            if len(self._heads) < 10_000:
                self._heads[key] = known
        head, name = known
        if body or method in ("POST", "PUT", "PATCH"):
            return b"".join((head, b"Content-Length: %d\r\n\r\n" % len(body), body)), name
        return head + b"\r\n", name

    def request_bytes(
        self,
        method: str,
        path: str,
        user: User,
        headers: Mapping[str, str] | None,
        extra: list[tuple[str, str]],
        body: bytes,
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self._head]
        merged = dict(user.headers)
        if headers:
            merged.update(headers)
        names = {key.lower() for key in merged}
        for name, value in extra:
            if name.lower() not in names:
                merged[name] = value
        if user.cookies and "cookie" not in names:
            merged["Cookie"] = "; ".join(f"{k}={v}" for k, v in user.cookies.items())
        if body or method in ("POST", "PUT", "PATCH"):
            merged["Content-Length"] = str(len(body))
        for key, value in merged.items():
            lines.append(f"{key}: {value}\r\n".encode("latin-1"))
        lines.append(b"\r\n")
        lines.append(body)
        return b"".join(lines)

    def bare_request(self, method: str, path: str) -> bytes:
        """A request without a body or headers of its own (GET, HEAD, DELETE, or an empty POST)."""
        length = b"Content-Length: 0\r\n" if method in ("POST", "PUT", "PATCH") else b""
        return f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + self._head + length + b"\r\n"

    def _global_id(self, local: int) -> int:
        # Users are numbered across processes: worker w's k-th user is w + k * workers.
        return self.worker_index + local * self.worker_count

    def row_for(self, user: User) -> dict[str, str] | None:
        rows = self.scenario.rows
        if not rows:
            return None
        if self.scenario.random_rows:
            return user.rng.choice(rows)
        return rows[user.id % len(rows)]

    def next_row(self, user: User) -> dict[str, str]:
        rows = self.scenario.rows
        if not rows:
            raise LookupError("next_row(): this run has no --data file")
        if self.scenario.random_rows:
            return user.rng.choice(rows)
        row = rows[self._global_id(self.row_turn) % len(rows)]
        self.row_turn += 1
        return row

    # running

    async def run(self) -> None:
        """Run the users until the deadline, the request budget, or :meth:`stop`."""
        deadline = self.schedule.deadline
        watchdog = None
        if deadline is not None:
            # A request sent before the end gets its whole timeout (the sweep that fails it may
            # come a period after that); a user in a long think time is ended then too.
            grace = self.timeout + 2 * min(max(self.timeout / 4, 0.01), 0.25)
            watchdog = self.loop.call_later(max(0.0, deadline - time.monotonic()) + grace, self._time_is_up)
        ramp = None
        sweep = self.loop.create_task(self._sweep_timeouts())
        # Thousands of users are thousands of long-lived objects (tasks, connections, sessions):
        # the cyclic collector would traverse all of them again and again, stalling the loop for
        # hundreds of milliseconds. Objects alive at start (and users added by the ramp) are
        # frozen out of its reach; what requests create is young and collected as usual.
        gc.collect()
        try:
            if self.stages is None:
                self._set_users(self.users_share, spread=min(1.0, self.users_share / START_RATE))
                gc.freeze()
                if not self.users:
                    return
            else:
                ramp = self.loop.create_task(self._ramp())
            await self._done
        finally:
            sweep.cancel()
            if ramp is not None:
                ramp.cancel()
            if watchdog is not None:
                watchdog.cancel()
            for user in self.users:
                user._drop_connection()
            gc.unfreeze()

    async def _sweep_timeouts(self) -> None:
        # One sweep a few times a second instead of a timer per request.
        period = min(max(self.timeout / 4, 0.01), 0.25)
        while True:
            await asyncio.sleep(period)
            limit = time.monotonic() - self.timeout
            late = [
                user._connection
                for user in self.users
                if user._connection is not None and 0.0 < user._connection.sent < limit
            ]
            for connection in late:
                connection._fail("timeout")

    async def _ramp(self) -> None:
        start = self.schedule.start
        while not self.stopping:
            now = time.monotonic()
            if (self.schedule.deadline is not None and now >= self.schedule.deadline) or self.schedule.exhausted:
                break
            total = round(self.stages.value_at(now - start))
            before = self.started
            self._set_users(split_evenly(total, self.worker_count)[self.worker_index])
            if self.started - before > 100:
                gc.freeze()
            await asyncio.sleep(RAMP_PERIOD)
        if not self.stopping:
            # The end of the stages: no user starts a request any more; those out get their
            # whole timeout (the watchdog counts what is still out after it).
            self._end_intake()

    def _set_users(self, count: int, spread: float = 0.0) -> None:
        active = [user for user in self.users if not user._retired]
        if count > len(active):
            new = count - len(active)
            for k in range(new):
                user = User(self, self._global_id(self.started))
                self.started += 1
                self.users.append(user)
                user._task = self.loop.create_task(self._run_user(user, spread * k / new))
                # Not in the coroutine's ``finally``: a task cancelled before it starts never runs it.
                user._task.add_done_callback(lambda _, user=user: self._user_ended(user))  # type: ignore[misc]
        elif count < len(active):
            for user in reversed(active[count:]):
                self._retire(user)

    def _retire(self, user: User) -> None:
        user._retired = True
        if not user._in_request and user._task is not None:
            user._task.cancel()

    async def _run_user(self, user: User, delay: float) -> None:
        recorder = self.recorder
        flows: list[FlowSpec] = self.flows
        try:
            await self._begin_user(user, delay)
            schedule = self.schedule
            while not (self.stopping or user._retired):
                func = flows[0].func if len(flows) == 1 else user.rng.choices(flows, self.weights)[0].func
                steps = user._steps
                try:  # as _guarded, inline: this is the hot path
                    await func(user)
                except (_StopUser, asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # noqa: BLE001 - counted (SystemExit too), and the user goes on
                    self._count_exception(exc)
                now = time.monotonic()
                if now >= recorder.measure_from:
                    recorder.iterations += 1
                if user._steps == steps:
                    await asyncio.sleep(0)  # a flow that neither requested nor thought must not hold the loop
                if (schedule.deadline is not None and now >= schedule.deadline) or schedule.exhausted:
                    break
        except (_StopUser, asyncio.CancelledError):
            pass
        finally:
            user._drop_connection()

    def _user_ended(self, user: User) -> None:
        user._drop_connection()
        self.users.remove(user)
        if not self.users and (self.stages is None or self.stopping) and not self._done.done():
            self._done.set_result(None)

    async def _begin_user(self, user: User, delay: float) -> None:
        """Wait *delay* seconds (users start spread out), then run the scenario's start
        functions for *user*."""
        if delay:
            await asyncio.sleep(delay)
        for start in self.starts:
            await self._guarded(start, user)

    def _count_exception(self, exc: BaseException) -> None:
        """Count an exception a flow raised (in the measured part of the run)."""
        if time.monotonic() >= self.recorder.measure_from:
            kind = type(exc).__name__
            self.recorder.exceptions[kind] += 1
            if kind not in self.recorder.exception_samples:
                self.recorder.exception_samples[kind] = describe_exception(exc, self.scenario.path)

    async def _guarded(self, func: Callable[[User], Any], user: User) -> None:
        try:
            await func(user)
        except (_StopUser, asyncio.CancelledError, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - counted (SystemExit too), and the user goes on
            self._count_exception(exc)

    def stop(self, grace: float) -> None:
        """No new requests; requests in flight get ``grace`` seconds, then every user is ended."""
        if self.stopping:
            return
        self._end_intake()
        self.loop.call_later(grace, self._abandon)

    def _end_intake(self) -> None:
        """No new requests: users not in one end now, the others once answered."""
        self.stopping = True
        self.schedule.stop()
        for user in list(self.users):
            if not user._in_request and user._task is not None:
                user._task.cancel()
        if not self.users and not self._done.done():
            self._done.set_result(None)

    def _time_is_up(self) -> None:
        """The run's deadline and grace have passed: end every user; a request still out is
        counted as an error (not so for a stop, a Ctrl-C, which ends what it interrupts)."""
        self.time_up = True
        self._abandon()

    def _abandon(self) -> None:
        self.stopping = True
        self.schedule.stop()
        for user in list(self.users):
            if user._task is not None:
                user._task.cancel()
        if not self.users and not self._done.done():
            self._done.set_result(None)


def describe_exception(exc: BaseException, scenario_path: str) -> str:
    """``KeyError: 'token' (shop.py:12 in checkout)``: the exception and where in the
    scenario it was raised (the deepest frame of the scenario file, else the deepest)."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails is still counted
        message = "(its message could not be made)"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if frame.filename == scenario_path] or frames
    if ours:
        frame = ours[-1]
        text += f" ({os.path.basename(frame.filename)}:{frame.lineno} in {frame.name})"
    return text[:300]


def _encode_body(json: Any, data: bytes | str | Mapping[str, Any] | None) -> tuple[bytes, list[tuple[str, str]]]:
    """A request's body and the headers that describe it: JSON, a form, text or bytes."""
    if json is not None:
        return _json_bytes(json), [("Content-Type", "application/json")]
    if isinstance(data, Mapping):
        return urllib.parse.urlencode(data).encode(), [("Content-Type", "application/x-www-form-urlencoded")]
    if isinstance(data, str):
        return data.encode(), []
    return (b"" if data is None else bytes(data)), []


def _c_encoder() -> Any:
    """The C encoder behind ``_JSON`` (json builds one anew for every call), or None without it."""
    make = getattr(jsonlib.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        return make(
            {},  # markers: circular references are found as json.dumps finds them
            _JSON.default,
            jsonlib.encoder.encode_basestring_ascii,
            None,
            _JSON.key_separator,
            _JSON.item_separator,
            _JSON.sort_keys,
            _JSON.skipkeys,
            _JSON.allow_nan,
        )
    except TypeError:  # pragma: no cover - another signature: the encoder's own path
        return None


_C_JSON = _c_encoder()


def _json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON (ASCII), as ``_JSON.encode`` makes it, with one C encoder for every call.

    Raises:
        TypeError: a value is not JSON serializable.
        ValueError: a circular reference, or a float out of range.
    """
    global _C_JSON
    if _C_JSON is not None:
        try:
            return "".join(_C_JSON(value, 0)).encode()
        except BaseException:
            _C_JSON = _c_encoder()  # its markers may keep the failed call's containers
    return _JSON.encode(value).encode()  # raises what json.dumps raises


def _record(recorder: Any, status: int, seconds: float, expected: frozenset[int] | None = None) -> None:
    """Count a response of *status* that took *seconds* under its request's name. An error:
    a status of 400 or more, or, where the request named the statuses it *expected*, any
    other (``http 404``, or ``http 200 unexpected`` for one under 400)."""
    recorder.latencies.append(int(seconds * 1e6))
    if status == 200:
        recorder.ok += 1  # as in the single-URL load: the common case is one integer add
    else:
        recorder.statuses[status] += 1
    if expected is None:
        if status >= 400:
            recorder.errors[f"http {status}"] += 1
    elif status not in expected:
        recorder.errors[f"http {status}" if status >= 400 else f"http {status} unexpected"] += 1


def _expected_statuses(expect: int | Iterable[int]) -> frozenset[int]:
    """``expect=`` as a set of statuses.

    Raises:
        ValueError: something in it is not an HTTP status (an int from 100 to 599).
    """
    statuses = (expect,) if isinstance(expect, int) else tuple(expect)
    if not statuses:
        raise ValueError("expect= names no status: give one (expect=404) or several (expect=(200, 404))")
    for status in statuses:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"expect={expect!r}: an HTTP status is a whole number from 100 to 599")
    return frozenset(statuses)


def _target(path: str, method: str, name: str | None, params: Mapping[str, Any] | None) -> tuple[str, str]:
    """The request's path with *params* in its query, and its name (default: the method
    and the path without its query)."""
    if name is None:
        name = f"{method} {path.split('?', 1)[0]}"
    if params:
        path += ("&" if "?" in path else "?") + urllib.parse.urlencode(params)
    return path, name


def _check_status(response: Response, status: int | Iterable[int]) -> tuple[str, bool]:
    """The check that the response's status is *status* (or one of them)."""
    wanted = (status,) if isinstance(status, int) else tuple(status)
    label = f"status is {wanted[0]}" if len(wanted) == 1 else f"status in {list(wanted)}"
    return label, response.status in wanted


def _check_contains(response: Response, contains: str | bytes) -> tuple[str, bool]:
    """The check that the response's body contains *contains*."""
    needle = contains.encode() if isinstance(contains, str) else contains
    # find(), not `in`: a bytes `in` test raises and clears a TypeError inside each time.
    return f"body contains {contains!r}", response.body.find(needle) >= 0


def _check_predicate(response: Response, predicate: Callable[[Response], bool]) -> tuple[str, bool]:
    """The check that *predicate(response)* is true (a predicate that raises fails it)."""
    try:
        passed = bool(predicate(response))
    except Exception:  # noqa: BLE001 - a predicate that raises is a failed check
        passed = False
    return getattr(predicate, "__name__", "predicate"), passed


def _check_headers(response: Response, header: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """check(header=...): each header exists, and contains its text if one is given."""
    results = []
    for key, text in header.items():
        value = response.headers.get(key.lower())
        passed = value is not None and (text is None or text is _PRESENT or text in value)
        results.append((f"header {key}" + ("" if text is None or text is _PRESENT else f" has {text!r}"), passed))
    return results


def _check_json(response: Response, fields: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """check(json=...): each dotted field exists, and equals its value if one is given."""
    try:
        document = response.json()
    except ValueError:
        document = _MISSING
    results = []
    for path, expected in fields.items():
        found = _json_field(document, path)
        passed = found is not _MISSING and (expected is _PRESENT or found == expected)
        results.append((f"json {path}" + ("" if expected is _PRESENT else f" == {expected!r}"), passed))
    return results
