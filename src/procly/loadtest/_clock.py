"""Callbacks at an exact monotonic time: never before it, a few microseconds after.

The event loop's own timers have millisecond granularity (libuv keeps its clock in
milliseconds) and may fire early, which made rate mode send requests before they were
due. :class:`PreciseTimer` keeps its callbacks in a heap and wakes the loop with one
Linux ``timerfd`` armed at the earliest due time (absolute, ``CLOCK_MONOTONIC``, the
clock of :func:`time.monotonic`): the kernel's high-resolution timer makes the loop's
poll return on time, and the process sleeps until then. A wake-up still comes some tens
of microseconds late, and on a VM whose idle virtual CPU the host must wake up, now and
then more than a millisecond late. So the timerfd fires early by what the recent wake-ups
took (twice their worst, forgotten by half every 10 s; never more than 2 ms, nor than the gap
since the previous call) and the pacer watches the clock for the rest: through the loop's
own turns, so that answers coming meanwhile are read at once, and for the last few
microseconds in one tight loop. Where wake-ups are prompt, the pacer sleeps most of the
time; where they are not, it spends a share of a core watching, reported apart from its
work (``watched``), so that no request goes out late for want of a wake-up. A busy loop
also calls :meth:`PreciseTimer.poll` between its own callbacks. Where there is no
timerfd, a loop timer wakes it ~2 ms early and it checks the clock on every loop turn
until then.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import os
import sys
import time
from collections.abc import Callable
from typing import Any

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1
#: Fallback: how long before the due time the loop timer wakes the pacer.
_SPIN = 0.002
#: With a timerfd, how long before the due time it wakes the pacer: the recent wake-ups'
#: worst lateness, times _EARLY_FACTOR, plus _EARLY_MARGIN; within these bounds ...
_EARLY_MIN = 50e-6
_EARLY_MAX = 0.002
_EARLY_FACTOR = 2.0
_EARLY_MARGIN = 20e-6
#: ... and the worst lateness is forgotten by half each _LATE_HALF_LIFE seconds (a VM's slow
#: wake-ups come and go: a short memory let a calm second put the pacer back to sleep).
_LATE_HALF_LIFE = 10.0
# Never more than the gap since the previous call, either. Watched through the loop's
# turns, the wait costs the answers nothing. On a 2-core VM at 2,000 requests/s,
# waking 50-100 µs early left the send lag's p99 at 0.6-1.5 ms (the host now and then
# took that long to wake the idle virtual CPU); waking by the recent wake-ups' lateness,
# 5 µs (0.3 ms at 200 requests/s). At 20,000 requests/s, watching the whole gap (rather
# than a third, in one tight loop) brought the send lag's p99 from 73-146 µs to 71-84 µs,
# the latency's p99 from 3.1-4.6 ms to 0.8-1.5 ms, and the requests due while their
# connection was busy from 470-4,000 to 38-124 a run.

#: The last stretch watched in one tight loop: less than a loop turn.
_LOOP_TURN = 10e-6
#: A loop turn between two watches shorter than this did nothing else: it counts as
#: watching (one that read an answer takes longer, and counts as work).
_IDLE_TURN = 20e-6


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc: Any = None


def _timerfd() -> int | None:
    """A non-blocking timerfd on CLOCK_MONOTONIC, or None where there is none."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
    except (OSError, AttributeError):
        return None
    return fd if fd >= 0 else None


def _set_timerfd(fd: int, when: float, spec: _Itimerspec, spec_ref: Any) -> None:
    """Arm ``fd`` for ``when`` (absolute); ``spec`` is reused, ``spec_ref`` is ``byref(spec)``."""
    seconds = int(when)
    nanoseconds = int((when - seconds) * 1e9) + 1  # round up: never before ``when``
    if nanoseconds >= 1_000_000_000:
        seconds, nanoseconds = seconds + 1, nanoseconds - 1_000_000_000
    value = spec.it_value
    value.tv_sec = seconds
    value.tv_nsec = nanoseconds
    if _libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME, spec_ref, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class PreciseTimer:
    """Runs ``callback(*args)`` at monotonic time ``when`` on the running loop (see module doc).

    Callbacks cannot be cancelled: a callback checks whether it is still wanted.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self.seq = 0
        self.armed_for = float("inf")
        self.handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self.fd = _timerfd()
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self.early = 0.0  # how long before the armed time the timerfd fires
        self.fire_at = 0.0  # when it is set to fire
        self.armed_at = 0.0  # when it was set
        self.wake_late = 0.0  # the worst lateness of a recent wake-up (decaying)
        self._late_since = time.monotonic()
        self.last_due = float("-inf")  # the due time of the last callback run
        #: Seconds spent watching the clock for a due time: CPU the loop could have slept
        #: through, not work (the worker's "busy" figure leaves it out).
        self.watched = 0.0
        self._watch_ended = 0.0  # when the last watch through a loop turn handed the loop back
        self._watch_handle: asyncio.Handle | None = None  # the watch's next turn, if one is due
        if self.fd is not None:
            self.loop.add_reader(self.fd, self._on_fd)

    @property
    def uses_timerfd(self) -> bool:
        return self.fd is not None

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self.heap, (when, self.seq, callback, args))
        self.seq += 1
        if when < self.armed_for:
            self._arm(when)

    def _arm(self, when: float) -> None:
        self.armed_for = when
        if self.fd is not None:
            # Woken early (see _EARLY_MIN), never more than the gap to the previous call.
            self.armed_at = time.monotonic()
            self.early = min(self._early(self.armed_at), max(0.0, when - self.last_due))
            self.fire_at = when - self.early
            _set_timerfd(self.fd, self.fire_at, self._spec, self._spec_ref)
            return
        if self.handle is not None:
            self.handle.cancel()
        gap = when - time.monotonic()
        if gap > _SPIN * 1.5:
            self.handle = self.loop.call_later(gap - _SPIN, self._run)
        else:
            self.handle = self.loop.call_soon(self._run)

    def poll(self, now: float) -> None:
        """Run the callbacks already due at ``now``: a busy loop calls this between its own
        callbacks, so a due call does not wait behind a whole batch of them."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            when, _, callback, args = heapq.heappop(heap)
            self.last_due = when
            callback(*args)

    def _decayed_late(self, now: float) -> float:
        return float(self.wake_late * 0.5 ** ((now - self._late_since) / _LATE_HALF_LIFE))

    def _early(self, now: float) -> float:
        late = self._decayed_late(now)
        return min(_EARLY_MAX, max(_EARLY_MIN, late * _EARLY_FACTOR + _EARLY_MARGIN))

    def note_wake_up(self, now: float) -> None:
        """The timerfd set to fire at ``fire_at`` was seen at *now*: remember how late. A
        timerfd set for a time already past when it was set (an overdue call, or a gap
        shorter than the early margin) involved no wake-up: it tells nothing."""
        if self.fire_at <= self.armed_at:
            return
        self.wake_late = max(now - self.fire_at, self._decayed_late(now))
        self._late_since = now

    def _on_fd(self) -> None:
        now = time.monotonic()
        try:
            os.read(self.fd, 8)  # type: ignore[arg-type]
        except BlockingIOError:
            pass  # re-armed since it fired: that expiry is gone, and so is its lateness
        else:
            self.note_wake_up(now)
        self._run()

    def _run(self) -> None:
        self.handle = None
        self.armed_for = float("inf")
        heap = self.heap
        now = time.monotonic()
        while heap:
            when = heap[0][0]
            if when > now:
                if self.fd is None or when - now > self.early:
                    break
                if when - now > _LOOP_TURN:
                    self._watch_through_loop(when, now)
                    return
                watch_from = now
                while now < when:  # the last few microseconds: watched, not slept
                    now = time.monotonic()
                self.watched += now - watch_from
            _, _, callback, args = heapq.heappop(heap)
            self.last_due = when
            callback(*args)
            now = time.monotonic()
        if heap and heap[0][0] < self.armed_for:
            self._arm(heap[0][0])

    def _watch_through_loop(self, when: float, now: float) -> None:
        """Come back to ``when``'s wait at the loop's next turn, after its I/O callbacks."""
        self.armed_for = when  # an earlier call arms the timerfd; this watch goes on meanwhile
        if self._watch_handle is None:  # one watch at a time (the timerfd may start a _run too)
            yield_from = time.monotonic()
            self.watched += yield_from - now
            os.sched_yield()  # a process that shares this CPU (a local target) runs first
            self._watch_handle = self.loop.call_soon(self._watch_turn)
            self._watch_ended = time.monotonic()
            if self._watch_ended - yield_from < _IDLE_TURN:
                self.watched += self._watch_ended - yield_from  # no one else ran: our own time

    def _watch_turn(self) -> None:
        self._watch_handle = None
        # The loop's turn since the watch handed it back: watching too, if it did nothing else
        # (reading an answer takes longer). Yielded time, another process's, is not counted.
        turn = time.monotonic() - self._watch_ended
        if turn < _IDLE_TURN:
            self.watched += turn
        self._run()

    def close(self) -> None:
        """Drop every pending callback and release the timerfd."""
        self.heap.clear()
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle = None
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None
