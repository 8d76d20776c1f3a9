"""The coordinator: starts the worker processes, merges what they report, builds the report.

It blocks in one :func:`procly.connection.wait` over every worker's connection and
sentinel, so a worker that dies is noticed at once (its share is reported lost, the
rest go on) and Ctrl-C stops everything within a second with the data gathered so far.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import get_context
from .._errors import signal_name
from ..connection import wait
from ._config import LoadTestConfig
from ._report import Report, TimelinePoint
from ._stats import Interval, http_error_count, percentile_ms
from ._worker import STOP_GRACE, TICK, worker_main

#: How long workers may take to start and prepare (spawn on a busy machine is slow).
READY_TIMEOUT = 60.0
#: After a stop, how long the coordinator waits for final reports before ending workers.
STOP_WAIT = STOP_GRACE + 0.6
#: The live line for second k of the run is shown this long after it ends: its ticks are in by then.
PROGRESS_DELAY = 0.1


class LoadTestError(RuntimeError):
    """The load test could not run at all (a worker could not import the callable, ...)."""


@dataclass
class Progress:
    """What the live progress line shows, once a second."""

    elapsed: float
    requests: int
    rate: float
    errors: int
    p50_ms: float
    p99_ms: float
    warming_up: bool
    p95_ms: float = 0.0


@dataclass
class _WorkerState:
    index: int
    process: object
    conn: object
    ready: bool = False
    done: bool = False
    lost: str | None = None


class Tally:
    """Merges what workers report into one total and a per-second timeline."""

    def __init__(self, config: LoadTestConfig) -> None:
        self.config = config
        self.total = Interval()
        self.buckets: dict[int, Interval] = {}
        self.measure_start = 0.0
        self.last_done = 0.0
        self.last_outcome = 0.0  # wall time of the last answer or error any worker counted (0: none)
        self.last_send = 0.0  # ... of the last request sent at its due time (rate mode; 0: none)
        self.last_tick = 0.0  # wall time of the latest measured interval received
        self._last_progress_count = 0
        self._last_progress_tick = 0.0
        #: The latest count of running users (or connections) each worker reported, by worker index.
        self.active_users: dict[int, int] = {}

    def add(self, kind: str, wall_time: float, wire: dict | None, worker: int | None = None) -> None:
        """A worker's ``tick`` or ``done`` message (``worker``: its index, for the users gauge)."""
        if worker is not None:
            if kind == "done":
                self.active_users[worker] = 0
            elif wire is not None and "active_users" in wire:
                self.active_users[worker] = int(wire["active_users"])
        if wire is not None:
            interval = Interval.from_wire(wire)
            self.total.add(interval)
            self.last_tick = max(self.last_tick, wall_time)
            when = wall_time
            if kind == "done":
                self.last_outcome = max(self.last_outcome, wire.get("last_outcome_wall") or 0.0)
                self.last_send = max(self.last_send, wire.get("last_send_wall") or 0.0)
                # The final interval's outcomes came by the last of them, not when the worker
                # had closed everything and reported.
                when = min(wall_time, wire.get("last_outcome_wall") or wall_time)
            bucket = int(max(0.0, when - self.measure_start - TICK / 2))
            self.buckets.setdefault(bucket, Interval()).add(interval)
        if kind == "done":
            self.last_done = max(self.last_done, wall_time)

    def covered(self, now: float) -> float:
        """Seconds of the measured run the figures cover: to the latest report (tick or end)."""
        return max(0.0, (max(self.last_tick, self.last_done) or now) - self.measure_start)

    def progress(self) -> Progress:
        """The live line's figures.

        ``rate`` is the requests reported since the previous call over the time those
        reports cover (from the start, or the previous call's latest tick, to the latest
        tick), not over the wall time between calls: the first second shows the real rate.
        """
        now = time.time()
        total = self.total
        previous, self._last_progress_count = self._last_progress_count, total.requests
        since = max(self._last_progress_tick, self.measure_start)
        covered = self.last_tick - since
        rate = (total.requests - previous) / covered if covered > 0 else 0.0
        if covered > 0:
            self._last_progress_tick = self.last_tick
        else:
            self._last_progress_count = previous  # nothing new yet: count it with the next report
        return Progress(
            elapsed=self.covered(now),  # the line's label: the time its figures cover
            requests=total.requests,
            rate=rate,
            errors=total.error_count,
            p50_ms=percentile_ms(total.histogram, 50),
            p99_ms=percentile_ms(total.histogram, 99),
            warming_up=now < self.measure_start,
            p95_ms=percentile_ms(total.histogram, 95),
        )

    def _empty(self, second: int) -> bool:
        bucket = self.buckets.get(second)
        return bucket is None or (bucket.requests == 0 and bucket.error_count == 0)

    def report(self, workers_lost: list[str], interrupted: bool) -> Report:
        # The time the requests took: to the last outcome, answer or error (the requests in
        # flight at the deadline are counted, so is the time they took; a think time or the
        # closing of connections after it is not) ...
        start = self.measure_start
        outcomes_end = (self.last_outcome or self.last_done or time.time()) - start
        elapsed = outcomes_end
        duration = self.config.effective_duration
        budget = self.config.requests
        total = self.total
        attempts = total.requests + total.error_count - http_error_count(total.errors)  # as the report counts them
        spent = budget is not None and attempts >= budget
        if duration is not None and not spent and not interrupted and not workers_lost:
            if self.config.rate or self.config.rate_stages:
                # ... in rate mode, the time it took to send them: the duration, or longer
                # when a busy target held the sends back (the answers' latency is not the
                # rate's: a rate held is the rate asked) ...
                elapsed = max(duration, self.last_send - start if self.last_send else 0.0)
            else:
                # ... and at least the duration the run had to send them in.
                elapsed = max(elapsed, duration)
        elapsed = max(elapsed, 1e-9)
        timeline_end = max(elapsed, outcomes_end)
        last_bucket = max(self.buckets, default=-1)
        # Ticks go on while the last users think or the last connections close: seconds past
        # the end that hold nothing are no part of the run.
        while last_bucket >= timeline_end - 1e-9 and self._empty(last_bucket):
            last_bucket -= 1
        timeline = [
            # The last second, cut short by the end, covers only part of it: its rate is over that part.
            TimelinePoint.from_interval(
                second,
                self.buckets.get(second, Interval()),
                1.0 if second < last_bucket else min(1.0, max(timeline_end - second, 1e-3)),
            )
            for second in range(last_bucket + 1)
        ]
        return Report.build(
            config=self.config,
            total=self.total,
            elapsed=elapsed,
            timeline=timeline,
            workers_lost=workers_lost,
            interrupted=interrupted,
        )


def run_load_test(
    config: LoadTestConfig,
    on_progress: Callable[[Progress], None] | None = None,
    on_tick: Callable[[Tally], None] | None = None,
) -> Report:
    """Run the load test ``config`` describes and return its report.

    ``on_progress`` gets the live line's figures once a second; ``on_tick`` gets the
    coordinator's :class:`Tally` itself once a second and once at the end (the live
    dashboard and the metrics exporter read it; it must not keep it).

    Ctrl-C (KeyboardInterrupt) stops the workers and still returns the report of what
    ran, with ``interrupted`` set.

    Raises:
        LoadTestError: the workers could not start the load (e.g. the callable does not
            import, or the URL's host does not resolve: it is resolved once, here, and
            every connection goes to that address).
    """
    try:
        config = config.resolved()
    except ValueError as exc:
        raise LoadTestError(str(exc)) from None
    ctx = get_context(config.start_method)
    workers: list[_WorkerState] = []
    try:
        for index in range(config.worker_count):
            parent_conn, child_conn = ctx.Pipe()
            process = ctx.Process(
                target=worker_main, args=(config, index, child_conn), name=f"procly-loadtest-{index}", daemon=True
            )
            process.start()
            child_conn.close()
            workers.append(_WorkerState(index, process, parent_conn))
        return _Coordinator(config, workers, on_progress, on_tick).run()
    finally:
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in workers:
            worker.process.join(2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


class _Coordinator:
    def __init__(
        self,
        config: LoadTestConfig,
        workers: list[_WorkerState],
        on_progress: Callable[[Progress], None] | None,
        on_tick: Callable[[Tally], None] | None = None,
    ) -> None:
        self.config = config
        self.workers = workers
        self.on_progress = on_progress
        self.on_tick = on_tick
        self._measure_start_mono = 0.0  # set by run()
        self._next_second = -(2**62)  # the live line's next second (none shown yet)
        self.tally = Tally(config)
        self.interrupted = False

    def run(self) -> Report:
        self._wait_ready()
        wall_start = time.time() + 0.05
        self.tally.measure_start = wall_start + self.config.warmup
        # The measured start on the monotonic clock, once: the live line's seconds count from it.
        self._measure_start_mono = time.monotonic() + (self.tally.measure_start - time.time())
        for worker in self._live():
            worker.conn.send(("go", wall_start))
        try:
            self._collect(deadline=None)
        except KeyboardInterrupt:
            self.interrupted = True
            self._stop_all()
            try:
                self._collect(deadline=time.monotonic() + STOP_WAIT)
            except KeyboardInterrupt:
                pass
        for worker in self._live():
            worker.lost = "stopped by force after it did not finish in time"
            worker.process.terminate()
        return self._report()

    def _live(self) -> list[_WorkerState]:
        return [w for w in self.workers if not w.done and w.lost is None]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while any(not w.ready for w in self._live()):
            pending = [w for w in self._live() if not w.ready]
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise LoadTestError(f"{len(pending)} worker(s) did not start within {READY_TIMEOUT:g} s")
            for worker in self._ready_workers(pending, timeout):
                message = self._receive(worker)
                if message is None:
                    continue
                if message[0] == "ready":
                    worker.ready = True
                elif message[0] == "failed":
                    raise LoadTestError(f"worker {worker.index} could not start the load: {message[1]}")
        if not self._live():
            raise LoadTestError(
                "every worker died before the load started: " + "; ".join(w.lost or "" for w in self.workers)
            )

    def _ready_workers(self, candidates: list[_WorkerState], timeout: float | None) -> list[_WorkerState]:
        by_handle: dict[object, _WorkerState] = {}
        for worker in candidates:
            by_handle[worker.conn] = worker
            by_handle[worker.process.sentinel] = worker
        ready = wait(list(by_handle), timeout)
        seen: list[_WorkerState] = []
        for handle in ready:
            worker = by_handle[handle]
            if worker not in seen:
                seen.append(worker)
        return seen

    def _receive(self, worker: _WorkerState) -> tuple | None:
        """The worker's next message; None (and the worker marked lost) if it died."""
        if worker.conn.poll():
            try:
                return worker.conn.recv()
            except (EOFError, OSError):
                pass
        if worker.process.is_alive() and worker.process.exitcode is None:
            # The connection was readable only because the worker is closing it: its exit follows.
            worker.process.join(1.0)
        code = worker.process.exitcode
        worker.lost = f"worker {worker.index} (pid {worker.process.pid}) died: " + _describe_exit(code)
        return None

    def _next_progress(self) -> float:
        """When to show the live line next (monotonic): just after the next second of the
        measured run ends, once the workers' ticks for it are in (their ticks fall on the
        measured start + k * TICK). Never the same second twice."""
        start = self._measure_start_mono
        second = max(math.floor(time.monotonic() - PROGRESS_DELAY - start) + 1, self._next_second)
        if second == 0:
            second = 1  # second 0 is the start: nothing measured to show yet
        self._next_second = second + 1
        return start + second + PROGRESS_DELAY

    def _collect(self, deadline: float | None) -> None:
        next_progress = self._next_progress()
        while self._live():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            timeout = next_progress - now
            if deadline is not None:
                timeout = min(timeout, deadline - now)
            for worker in self._ready_workers(self._live(), max(timeout, 0.0)):
                message = self._receive(worker)
                if message is not None:
                    self._handle(worker, message)
            if time.monotonic() >= next_progress:
                self._progress()
                next_progress = self._next_progress()

    def _handle(self, worker: _WorkerState, message: tuple) -> None:
        kind = message[0]
        if kind == "tick" or kind == "done":
            self.tally.add(kind, message[1], message[2], worker.index)
            if kind == "done":
                worker.done = True

    def _stop_all(self) -> None:
        for worker in self._live():
            try:
                worker.conn.send(("stop",))
            except OSError:
                pass

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.tally.progress())
        if self.on_tick is not None:
            self.on_tick(self.tally)

    def _report(self) -> Report:
        return self.tally.report([w.lost for w in self.workers if w.lost], self.interrupted)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "it closed its connection but is still running"
    if code < 0:
        return f"killed by {signal_name(-code) or f'signal {-code}'}"
    return f"exit code {code}"
