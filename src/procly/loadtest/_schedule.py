"""When the next request may start: closed loop, a request budget, or a fixed rate.

Fixed-rate mode is open loop, as in wrk2: request k is *due* at ``start + k / rate``
whether or not earlier requests have come back, and its latency is measured from
that due time, not from when a free connection finally sent it. A server that
stalls therefore shows its stall in every request that was due meanwhile (the
coordinated-omission correction) instead of in one slow sample.

With several processes, each takes every n-th request of the one schedule (its *lane*):
process i of n sends requests i, i + n, i + 2n, ... So the processes' requests interleave
at the rate, instead of n schedules at rate/n sending together in bursts of n (and each
rounding its count up).
"""

from __future__ import annotations

import math
import threading
from typing import Any


class Schedule:
    """Hands out start times until the run's deadline or request budget is reached."""

    def __init__(
        self,
        start: float,
        deadline: float | None,
        budget: int | None,
        rate: float | Any | None,
        measure_from: float | None = None,
        lane: int = 0,
        lanes: int = 1,
    ) -> None:
        """``rate``: requests/s, or a :class:`~procly.loadtest._stages.Stages` ramp of them (from
        ``start``), of the whole run; this schedule hands out lane ``lane`` of ``lanes`` of it."""
        if not 0 <= lane < lanes:
            raise ValueError(f"lane {lane} of {lanes}: a lane is 0 <= lane < lanes")
        self.start = start
        self.lane = lane
        self.lanes = lanes
        self.deadline = deadline
        self.budget = budget
        self.profile = rate if rate is not None and not isinstance(rate, (int, float)) else None
        self.interval = None if rate is None or self.profile is not None else 1.0 / rate
        #: Open loop: requests are due at times set by the rate, not when the previous one came back.
        self.open_loop = rate is not None
        # Requests due before ``measure_from`` are the warm-up: they do not count against the budget.
        self.measure_from = start if measure_from is None else measure_from
        self.issued = 0
        self.measured = 0
        self.stopped = False
        # Open loop: the budget counts the whole schedule's measured requests, from the
        # first one due after the warm-up (index first_measured), over every lane.
        self.first_measured = self._first_measured() if self.open_loop else 0

    def _due_offset(self, index: int) -> float | None:
        """When request *index* of the whole schedule is due, from the start (None: never)."""
        if self.profile is not None:
            offset: float | None = self.profile.time_of_count(index)
            return offset
        assert self.interval is not None
        return index * self.interval

    def _first_measured(self) -> int:
        warmup = self.measure_from - self.start
        if warmup <= 0:
            return 0
        if self.interval is not None:
            index = max(0, math.ceil(warmup / self.interval) - 1)
        else:
            index = 0
        while (offset := self._due_offset(index)) is not None and offset < warmup:
            index += 1
        return index

    def _over_budget(self) -> bool:
        if self.budget is None:
            return False
        if self.open_loop:
            return self.issued * self.lanes + self.lane >= self.first_measured + self.budget
        return self.measured >= self.budget

    def next_start(self, now: float) -> float | None:
        """The time the next request is due (``now`` in closed loop), or None when the run is over."""
        if self.stopped or self._over_budget():
            return None
        if self.open_loop:
            offset = self._due_offset(self.issued * self.lanes + self.lane)
            if offset is None:
                return None
            due = self.start + offset
        else:
            due = now
        if self.deadline is not None and due >= self.deadline:
            return None
        self.issued += 1
        if due >= self.measure_from:
            self.measured += 1
        return due

    def stop(self) -> None:
        self.stopped = True

    @property
    def exhausted(self) -> bool:
        return self.stopped or self._over_budget()


class LockedSchedule(Schedule):
    """A schedule shared by the threads that drive a synchronous callable."""

    def __init__(
        self,
        start: float,
        deadline: float | None,
        budget: int | None,
        rate: float | None,
        measure_from: float | None = None,
        lane: int = 0,
        lanes: int = 1,
    ) -> None:
        super().__init__(start, deadline, budget, rate, measure_from, lane, lanes)
        self._lock = threading.Lock()

    def next_start(self, now: float) -> float | None:
        with self._lock:
            return super().next_start(now)
