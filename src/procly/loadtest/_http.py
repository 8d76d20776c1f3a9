"""HTTP/1.1 keep-alive load from one process: many connections on one event loop.

Each connection is a :class:`_Slot` driven by callbacks (no coroutine per request):
httptools parses the response, the slot records it and writes the next request
from the same callback. Timeouts are found by a sweep a few times a second instead
of a timer per request. Every failure is counted by kind and the slot reconnects
(with a growing pause while connecting fails), so no fault of the target ends the run.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from typing import Any

import httptools

from ._clock import PreciseTimer
from ._config import HttpTarget
from ._schedule import Schedule
from ._stats import Recorder
from ._writes import WriteBatch

_CONNECTING, _IDLE, _WAITING, _BUSY, _DONE = range(5)
_BACKOFF_FIRST = 0.01
_BACKOFF_MAX = 1.0


def connect_error_kind(exc: BaseException) -> str:
    """A short name for why a connection could not be made."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls certificate"
    if isinstance(exc, ssl.SSLError):
        return "tls handshake"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, ConnectionResetError):  # e.g. the target died with it in its accept queue
        return "connect reset"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "connect timeout"
    if isinstance(exc, socket.gaierror):
        return "name resolution"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"connect {errno.errorcode.get(exc.errno, exc.errno)}"
    return f"connect {type(exc).__name__}"


def set_nodelay(transport: Any) -> None:
    """No Nagle delay: a request (or an answer) goes out the moment it is written."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Protocol(asyncio.Protocol):
    """One TCP connection: feeds bytes to httptools and reports to its slot."""

    __slots__ = ("slot", "parser", "transport")

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.slot.load.recorder.bytes_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.slot.failed(self, "malformed response")

    def on_message_complete(self) -> None:
        self.slot.completed(self, self.parser.get_status_code(), self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.lost(self, exc)


class _HeadProtocol(_Protocol):
    """For HEAD: the answer ends with its headers (a Content-Length announces no body here)."""

    __slots__ = ()

    def on_headers_complete(self) -> None:
        status, keep_alive = self.parser.get_status_code(), self.parser.should_keep_alive()
        self.parser = httptools.HttpResponseParser(self)
        self.slot.completed(self, status, keep_alive)

    def on_message_complete(self) -> None:
        pass  # completed with its headers: a body a server sent anyway is not a second answer


class _Slot:
    """One of the process's connections, and the requests it sends one after another."""

    __slots__ = ("load", "state", "protocol", "due", "sent", "backoff", "handle")

    def __init__(self, load: HttpLoad) -> None:
        self.load = load
        self.state = _CONNECTING
        self.protocol: _Protocol | None = None
        self.due: float | None = None  # the request that must go first on the next connection
        self.sent = 0.0
        self.backoff = 0.0
        self.handle: asyncio.Handle | asyncio.TimerHandle | None = None

    # connecting
    def connect(self) -> None:
        self.state = _CONNECTING
        self.protocol = None
        self.load.loop.create_task(self._connect())

    async def preconnect(self) -> None:
        """Open this slot's connection before the run starts (no request is sent): the first
        requests then find it ready, and connecting is not counted in their latency. A
        failure before the start is not counted: the run makes its own attempt. Still
        connecting at the start, it goes on as the run's attempt."""
        self.state = _CONNECTING
        await self._connect()

    async def _connect(self) -> None:
        load = self.load
        try:
            _, protocol = await asyncio.wait_for(
                load.loop.create_connection(
                    lambda: load.protocol_type(self), load.target.connect_host, load.target.port, **load.tls_options
                ),
                load.timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            if load.started:
                self._connect_failed(connect_error_kind(exc))
            elif self.state == _CONNECTING:
                self.state = _IDLE  # ahead of the start: the run connects again, and counts that attempt
            return
        if self.state == _DONE:
            protocol.transport.close()
            return
        self.protocol = protocol
        self.backoff = 0.0
        self.state = _IDLE
        if not load.started:
            return  # opened ahead: the run's start sends its first request
        if self.due is not None:
            due, self.due = self.due, None
            self._send(due)
        else:
            self.issue()

    def _connect_failed(self, kind: str) -> None:
        if self.state == _DONE:
            return
        if self.load.schedule.open_loop:
            self._connect_failed_paced(kind)
            return
        # A failed connection stands for one request (the one waiting for it, or the next):
        # it uses up the budget, and is an error unless it falls in the warm-up (which may
        # end between two ticks, so the warm-up's discard alone would not drop it).
        due = self.due if self.due is not None else self.load.schedule.next_start(time.monotonic())
        self.due = None
        if due is None:
            self.finish()
            return
        if due >= self.load.recorder.measure_from:
            self.load.recorder.error(kind)
        self.backoff = min(max(self.backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
        self.state = _WAITING
        self.handle = self.load.loop.call_later(self.backoff, self.connect)

    def _connect_failed_paced(self, kind: str) -> None:
        """Rate mode: the failure fails the request that was due on this connection (if one
        was); the next attempt waits for the next request's due time, so that a target that
        refuses connections gets them at the rate, one error per request due."""
        self._count_error(kind)
        due = self.load.schedule.next_start(time.monotonic())
        if due is None:
            self.finish()
            return
        self.due = due
        self.state = _WAITING
        self.load.pacer.call_at(due, self._connect_when_due, due)

    def _connect_when_due(self, due: float) -> None:
        if self.state == _WAITING and self.due == due:
            self.connect()  # the request due goes out first on the new connection

    # requests
    def issue(self, now: float | None = None) -> None:
        """Send the next request, or wait for its due time; *now* is given when an answer
        has just come on this connection (a request due meanwhile waited for it: late)."""
        answered = now is not None
        if now is None:
            now = time.monotonic()
        due = self.load.schedule.next_start(now)
        if due is None:
            self.finish()
        elif due > now:
            # Never early: the pacer writes it once the clock has reached ``due``.
            self.state = _WAITING
            self.due = due
            self.load.pacer.call_at(due, self.paced, due)
        else:
            # In closed loop due == now: the send time needs no second clock read.
            if answered and due < now and self.load.schedule.open_loop and due >= self.load.recorder.measure_from:
                self.load.recorder.late += 1  # due while this connection was busy
            self._send(due, now)

    def paced(self, due: float) -> None:
        """The pacer's call: ``due`` has come."""
        if self.state != _WAITING or self.due != due:
            return  # finished or stopped meanwhile
        now = time.monotonic()
        recorder = self.load.recorder
        if due >= recorder.measure_from:
            recorder.send_lags.append(int((now - due) * 1e6))
        self._send(due, now)

    def _send(self, due: float, now: float | None = None) -> None:
        protocol = self.protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            self.due = due
            self.connect()
            return
        self.handle = None
        self.due = due
        self.state = _BUSY
        self.sent = self.load.last_send = time.monotonic() if now is None else now
        protocol.transport.write(self.load.request)

    def completed(self, protocol: _Protocol, status: int, keep_alive: bool) -> None:
        if protocol is not self.protocol or self.state != _BUSY:
            return
        now = time.monotonic()
        recorder = self.load.recorder
        due = self.due
        if due >= recorder.measure_from:
            self.load.last_answer = now
            recorder.latencies.append(int((now - due) * 1e6))
            if status == 200:
                recorder.ok += 1
            else:
                recorder.statuses[status] += 1
                if status >= 400:
                    recorder.errors[f"http {status}"] += 1
        if keep_alive:
            schedule = self.load.schedule
            if schedule.open_loop:
                self.load.pacer.poll(now)  # sends due meanwhile go now, not after the loop's batch
                self.due = None
                self.state = _IDLE
                self.issue(now)
                return
            # Closed loop, the hot path: the next request goes out at once on this connection
            # (as issue() and _send() would send it, without their branches for rate mode).
            due = schedule.next_start(now)
            if due is None:
                self.due = None
                self.state = _IDLE
                self.finish()
            else:
                self.due = self.sent = due  # rewritten when the batch writes it
                self.load.writes.add(self)
            return
        # The server will close: the next request goes on a new connection.
        self.due = None
        self.state = _IDLE
        self.protocol = None
        protocol.transport.close()
        if self.load.schedule.exhausted:
            self.finish()
        else:
            self.connect()

    def write_queued(self, now: float) -> None:
        """Write the request queued in the load's WriteBatch (closed loop), timed from *now*."""
        protocol = self.protocol
        if self.state != _BUSY or protocol is None or protocol.transport is None or protocol.transport.is_closing():
            return  # failed or finished while queued
        self.sent = now
        if self.due >= self.load.recorder.measure_from:
            self.due = now  # timed from the write; a warm-up request stays one (and unrecorded)
        protocol.transport.write(self.load.request)

    def write_failed(self, exc: Exception) -> None:
        if self.protocol is not None:
            self.failed(self.protocol, f"write {type(exc).__name__}")

    def _count_error(self, kind: str) -> None:
        """Count the failure of the request in flight, unless it was a warm-up request."""
        if self.due is not None and self.due >= self.load.recorder.measure_from:
            self.load.recorder.error(kind)

    def failed(self, protocol: _Protocol, kind: str) -> None:
        """The request on ``protocol`` failed (bad bytes, timeout): count it, drop the connection."""
        if protocol is not self.protocol:
            return
        was_busy = self.state == _BUSY
        self.protocol = None
        if protocol.transport is not None:
            protocol.transport.abort()
        if not self.load.started:
            return  # opened ahead (bytes before any request): the run connects again
        if was_busy:
            self._count_error(kind)
            self.due = None
        self._next_connection()

    def lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        if not self.load.started:
            return  # opened ahead and closed before the start: the run connects again
        if self.state == _BUSY:
            kind = (
                "closed by server"
                if exc is None
                else ("reset" if isinstance(exc, ConnectionResetError) else f"lost {type(exc).__name__}")
            )
            self._count_error(kind)
            self.due = None
            self._next_connection()
        elif self.state == _IDLE:
            self._next_connection()
        # _WAITING: the pending _send notices the closed transport and reconnects.

    def _next_connection(self) -> None:
        if self.state == _DONE:
            return
        if self.load.schedule.exhausted:
            self.finish()
        else:
            self.connect()

    def finish(self) -> None:
        if self.state == _DONE:
            return
        self.state = _DONE
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None
        self.load.slot_finished()


class HttpLoad:
    """The HTTP load of one worker process."""

    def __init__(
        self,
        target: HttpTarget,
        request: bytes,
        connections: int,
        schedule: Schedule,
        recorder: Recorder,
        timeout: float,
        insecure: bool = False,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.request = request
        self.protocol_type = _HeadProtocol if request.startswith(b"HEAD ") else _Protocol
        self.tls_options: dict[str, Any] = {}
        if target.tls:
            context = ssl.create_default_context()
            if insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self.tls_options = {"ssl": context, "server_hostname": target.host}
        self.schedule = schedule
        self.recorder = recorder
        self.timeout = timeout
        self.pacer = PreciseTimer(self.loop)  # rate mode: each request written at its due time
        self.writes = WriteBatch(self.loop)  # closed loop: the pass's requests written together
        self.slots = [_Slot(self) for _ in range(connections)]
        self._running = len(self.slots)
        self._finished = self.loop.create_future()
        self.started = False  # False while connections are opened ahead of the start
        self.last_answer = 0.0  # when the last measured answer came (monotonic; 0: none yet)
        self.last_send = 0.0  # when the last request went out at its due time (rate mode; 0: none yet)
        self._ahead: list[asyncio.Task[None]] = []

    async def prepare(self, start: float) -> None:
        """Open the connections ahead of the run, waiting at most until *start* (monotonic);
        a connection still being made then becomes the run's attempt (see Slot.preconnect)."""
        self._ahead = [self.loop.create_task(slot.preconnect()) for slot in self.slots]
        await asyncio.wait(self._ahead, timeout=max(0.0, start - time.monotonic()))

    def close_prepared(self) -> None:
        """Close what :meth:`prepare` opened, for a run stopped before its start."""
        for task in self._ahead:
            task.cancel()
        for slot in self.slots:
            slot.state = _DONE  # a connection that completes after this is closed at once
            if slot.protocol is not None and slot.protocol.transport is not None:
                slot.protocol.transport.close()
            slot.protocol = None
        self.pacer.close()

    async def run(self) -> None:
        """Drive every connection until the schedule is spent or :meth:`stop` ends the run."""
        self.started = True
        # (No prepare(): nothing opened ahead, every slot connects now.)
        ahead = zip(self.slots, self._ahead, strict=False)
        still_connecting = {slot for slot, task in ahead if not task.done()}
        for slot in self.slots:
            if slot in still_connecting:
                continue  # opened ahead and not done yet: it sends once connected
            if slot.protocol is not None and slot.state == _IDLE:
                slot.issue()  # opened ahead
            else:
                slot.connect()
        sweep = self.loop.create_task(self._sweep_timeouts())
        try:
            await self._finished
        finally:
            sweep.cancel()
            self.pacer.close()

    def stop(self, grace: float) -> None:
        """No new requests; requests in flight get ``grace`` seconds, then every connection is closed."""
        self.schedule.stop()
        for slot in self.slots:
            if slot.state in (_WAITING, _CONNECTING, _IDLE):
                slot.finish()
        self.loop.call_later(grace, self._abandon)

    def _abandon(self, count_unanswered: bool = False) -> None:
        """End every connection now. *count_unanswered* (the run's time is up, not a stop):
        a measured request still waiting for its answer, or due and never sent, is an error."""
        if count_unanswered:
            recorder = self.recorder
            for slot in self.slots:
                if slot.state == _BUSY or (slot.state in (_WAITING, _CONNECTING) and slot.due is not None):
                    if slot.due is not None and slot.due >= recorder.measure_from:
                        recorder.error("unanswered at the end" if slot.state == _BUSY else "not sent by the end")
            # Rate mode: requests due before the deadline that no connection was free to send.
            while (due := self.schedule.next_start(time.monotonic())) is not None:
                if due >= recorder.measure_from:
                    recorder.error("not sent by the end")
        self.schedule.stop()
        for slot in self.slots:
            slot.finish()
        self.pacer.close()

    def slot_finished(self) -> None:
        self._running -= 1
        if self._running == 0 and not self._finished.done():
            self._finished.set_result(None)

    async def _sweep_timeouts(self) -> None:
        period = min(max(self.timeout / 4, 0.01), 0.25)
        # A request sent before the end gets its whole timeout; the sweep that fails it may
        # come a period after that.
        grace_after_deadline = self.timeout + 2 * period
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for slot in self.slots:
                if slot.state == _BUSY and now - slot.sent > self.timeout and slot.protocol is not None:
                    slot.failed(slot.protocol, "timeout")
            deadline = self.schedule.deadline
            if deadline is not None and now > deadline + grace_after_deadline:
                # Rate mode's backlog (requests due before the end, sent late) may still be out.
                self._abandon(count_unanswered=True)
                return
