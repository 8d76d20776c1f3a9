"""A load-test worker process: one event loop, its share of the connections.

Talks to the coordinator over one duplex Connection:

    worker -> coordinator   ("ready", pid) | ("failed", message)
                            ("tick", wall_time, interval | None)   every TICK seconds
                            ("done", wall_time, interval)
    coordinator -> worker   ("go", wall_start) | ("stop",)

``interval`` is :meth:`Interval.to_wire` of what was recorded since the last tick;
None while warming up. The coordinator gives one wall-clock start to every worker,
so their intervals line up on one time axis.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..connection import Connection
from ._config import HttpTarget, LoadTestConfig
from ._outbox import Outbox
from ._schedule import Schedule
from ._stats import FOLD_PERIOD, PACED_FOLD_PERIOD, Recorder, last_error_at

TICK = 0.5
#: How long requests in flight may still finish after a stop (Ctrl-C or the coordinator).
STOP_GRACE = 0.3
TICK_GIVES_WAY = 0.005  # a tick waits for a send due within this many seconds


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def worker_main(config: LoadTestConfig, index: int, conn: Connection) -> None:
    """Entry point of a worker process (the ``target`` of its Process)."""
    # The terminal sends Ctrl-C to every process of the group: the loop below handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = _new_loop()
    # Ticks go through the outbox: a coordinator slow to read never holds this loop.
    outbox = Outbox(conn.fileno(), loop, lost=lambda: worker._stop())
    worker = _Worker(config, index, outbox.send)
    try:
        loop.run_until_complete(worker.run_with_coordinator(conn))
    finally:
        outbox.flush()
        _close_loop(loop)
        conn.close()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs on *loop* (the control watcher, a connection still being
    made), let it end, then close the loop: no task is destroyed pending."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:  # bounded: a task of a user's flow may ignore its cancellation
        loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
    loop.close()


def run_share(
    config: LoadTestConfig, index: int, wall_start: float, should_stop: Callable[[], bool] = lambda: False
) -> list[tuple[Any, ...]]:
    """Run share ``index`` of the load in this thread, with no coordinator to talk to.

    For remote runners (a Dask task): returns every message a worker process would have
    sent, in order. ``should_stop`` is asked at every tick.
    """
    messages: list[tuple[Any, ...]] = []
    worker = _Worker(config, index, messages.append, should_stop)
    try:
        make_load = worker._prepare()
    except Exception as exc:
        return [("failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")]
    loop = _new_loop()
    try:
        loop.run_until_complete(worker.measure(make_load, wall_start))
    finally:
        _close_loop(loop)
        asyncio.set_event_loop(None)
    return messages


class _Worker:
    def __init__(
        self,
        config: LoadTestConfig,
        index: int,
        emit: Callable[[tuple[Any, ...]], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.share = config.share(index)
        self.emit = emit
        self.should_stop = should_stop
        self.load: Any = None
        self.stopping = False

    async def run_with_coordinator(self, conn: Connection) -> None:
        """The worker process's protocol: ready, wait for go, measure, done (see module doc)."""
        loop = asyncio.get_running_loop()
        try:
            make_load = self._prepare()
        except Exception as exc:
            self.emit(("failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
            return
        messages: asyncio.Queue[Any] = asyncio.Queue()
        loop.add_reader(conn.fileno(), self._read_control, conn, messages)
        # uvloop made it non-blocking: a control message is read whole, once the loop says
        # it has begun to arrive (the outbox's writes do not block in either mode).
        os.set_blocking(conn.fileno(), True)
        loop.add_signal_handler(signal.SIGINT, self._stop)
        self.emit(("ready", os.getpid()))
        message = await messages.get()
        if message[0] != "go":
            self.emit(("done", time.time(), None))
            return
        self._stop_on_message(messages)
        await self.measure(make_load, message[1])

    async def measure(self, make_load: _LoadFactory, wall_start: float) -> None:
        """Wait for the common start, run this share of the load, tick, and send the final interval."""
        start = time.monotonic() + (wall_start - time.time())
        config, share = self.config, self.share
        warmup_end = start + config.warmup
        duration = config.effective_duration
        deadline = None if duration is None else warmup_end + duration
        schedule = make_load.schedule_type(
            start, deadline, share.requests, share.rate, warmup_end, share.index, share.lanes
        )
        recorder = make_load.recorder_type()
        recorder.measure_from = warmup_end
        self.load = make_load.create(schedule, recorder)
        # Ahead of the start: open the connections (the first requests due must not wait for
        # them: in rate mode that wait would count in their latency) ...
        prepare = getattr(self.load, "prepare", None)
        if prepare is not None:
            await prepare(start)
        # ... and put the modules and objects alive now out of the cyclic collector's reach: a
        # full collection walking them all would hold the loop for milliseconds mid-run.
        gc.collect()
        gc.freeze()
        try:
            final = await self._run_from(start, schedule, recorder, warmup_end)
        finally:
            gc.unfreeze()
        self.emit(("done", time.time(), final))

    async def _run_from(
        self, start: float, schedule: Schedule, recorder: Recorder, warmup_end: float
    ) -> dict[str, Any] | None:
        """Run the load from *start* (monotonic), ticking; the final interval's wire form, or
        None for a run stopped before its start."""
        loop = asyncio.get_running_loop()
        # Not a moment early (the loop's timers may wake a millisecond before their time): a
        # request issued before the start would belong to no part of the run.
        while (left := start - time.monotonic()) > 0:
            await asyncio.sleep(left)
        if self.stopping or self.should_stop():  # stopped before the start
            close = getattr(self.load, "close_prepared", None)
            if close is not None:
                close()
            return None
        ticker = loop.create_task(self._tick(recorder, warmup_end))
        folder = loop.create_task(self._fold(recorder, PACED_FOLD_PERIOD if schedule.open_loop else FOLD_PERIOD))
        cpu_start = time.process_time()
        try:
            await self.load.run()
        finally:
            ticker.cancel()
            folder.cancel()
        final = recorder.take_wire()
        # The report's time runs to the last outcome (answer or error), not to a think time,
        # a sweep or the closing of connections after it; in rate mode to the last send.
        errored = last_error_at() if last_error_at() >= start else 0.0  # not an earlier run's (a Dask worker's)
        final["last_outcome_wall"] = _wall(max(getattr(self.load, "last_answer", 0.0), errored))
        final["last_send_wall"] = _wall(getattr(self.load, "last_send", 0.0))
        final["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        final["cpu_s"] = time.process_time() - cpu_start
        pacer = getattr(self.load, "pacer", None)
        final["watch_s"] = pacer.watched if pacer is not None else 0.0
        return final

    def _prepare(self) -> _LoadFactory:
        config, share = self.config, self.share
        scenario = config.scenario  # ramped users of the single-URL load too: a one-request flow
        if scenario is not None:
            from ._flows import FlowLoad, FlowRecorder

            url = config.url
            assert url is not None  # LoadTestConfig checks it: flows and stages are HTTP users
            scenario.flows()  # import it now: a failure is reported before the start
            return _LoadFactory(
                lambda schedule, recorder: FlowLoad(
                    scenario,
                    url,
                    share.connections,
                    schedule,
                    recorder,
                    config.timeout,
                    config.insecure,
                    config.stages,
                    share.index,
                    config.worker_count,
                    config.address,
                ),
                Schedule,
                FlowRecorder,
            )
        if config.url is not None:
            from ._http import HttpLoad

            target = HttpTarget.from_url(config.url, config.address)
            request = target.request_bytes(config.method, list(config.headers), config.body)
            name = f"{config.method} {target.path}"
            return _LoadFactory(
                lambda schedule, recorder: HttpLoad(
                    target, request, share.connections, schedule, recorder, config.timeout, config.insecure
                ),
                Schedule,
                lambda: Recorder(name),
            )
        from ._calls import CallLoad, resolve_callable

        call = config.call
        assert call is not None
        func = resolve_callable(call)
        return _LoadFactory(
            lambda schedule, recorder: CallLoad(func, share.connections, schedule, recorder, config.timeout),
            CallLoad.schedule_type(func),
            lambda: CallLoad.recorder_type(func)(call),
        )

    def _read_control(self, conn: Connection, messages: asyncio.Queue[Any]) -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            # The coordinator is gone: nobody will read a report, stop now.
            asyncio.get_running_loop().remove_reader(conn.fileno())
            message = ("stop",)
        messages.put_nowait(message)

    def _stop_on_message(self, messages: asyncio.Queue[Any]) -> None:
        async def watch() -> None:
            while (await messages.get())[0] != "stop":
                pass
            self._stop()

        asyncio.get_running_loop().create_task(watch())

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.load is not None:
            self.load.stop(STOP_GRACE)

    def _active_users(self) -> int:
        """Virtual users running now (flows), or this worker's connections (callers)."""
        users = getattr(self.load, "users", None)
        if isinstance(users, list):
            return sum(1 for user in users if not getattr(user, "_retired", False))
        return self.share.connections

    @staticmethod
    async def _fold(recorder: Recorder, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            recorder.fold()

    async def _tick(self, recorder: Recorder, warmup_end: float) -> None:
        # Ticks fall on warmup_end + k * TICK, by the clock rather than a sleep after the
        # previous one (which drifts): every second of the measured run ends on one, and the
        # coordinator shows it once that tick is in.
        now = time.monotonic()
        next_tick = warmup_end - int((warmup_end - now) / TICK) * TICK
        while next_tick <= now:
            next_tick += TICK
        while True:
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            await self._let_due_send_go_first()
            in_warmup = next_tick < warmup_end  # by the tick's time: the sleep may end a little early
            next_tick += TICK
            if in_warmup:
                recorder.discard()  # errors of the warm-up (its latencies are never recorded)
                self.emit(("tick", time.time(), None))
            else:
                wire = recorder.take_wire()
                wire["active_users"] = self._active_users()  # a gauge for the live views
                self.emit(("tick", time.time(), wire))
            if not self.stopping and self.should_stop():
                self._stop()

    async def _let_due_send_go_first(self) -> None:
        """Rate mode: a send due within TICK_GIVES_WAY waits for no tick.

        Encoding the histograms holds the loop for a millisecond or more; ticks fall on the
        whole half-seconds of the run, and so does a request due then at many rates (at
        200 requests/s, 1 in 100: the send lag's p99 came out in milliseconds)."""
        pacer = getattr(self.load, "pacer", None)
        heap = pacer.heap if pacer is not None else None
        if not heap:
            return
        first = heap[0][0]
        now = time.monotonic()
        if first - now > TICK_GIVES_WAY:
            return
        give_up = now + 2 * TICK_GIVES_WAY  # a pacer closed or stalled meanwhile holds no tick up
        if first - now > 0.002:
            await asyncio.sleep(first - now - 0.002)  # the loop's timers may fire 1 ms early
        while heap and heap[0][0] <= first and time.monotonic() < give_up:
            await asyncio.sleep(0)  # the pacer runs it through the loop's turns, at its time


def _wall(monotonic: float) -> float | None:
    """The wall-clock time of a ``time.monotonic()`` reading (None for 0: never)."""
    return time.time() - (time.monotonic() - monotonic) if monotonic else None


class _LoadFactory:
    """How a worker builds its load once the schedule and recorder exist."""

    def __init__(self, create: Any, schedule_type: type[Schedule], recorder_type: Callable[[], Recorder]) -> None:
        self.create = create
        self.schedule_type = schedule_type
        self.recorder_type = recorder_type
