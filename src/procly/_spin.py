"""Spin briefly before a blocking wait.

A round trip between processes costs a scheduler wake-up at each hop that finds its
reader asleep: tens of µs on a VM, where an idle virtual CPU halts and must be woken
by the host. The answer to a proxy call, a pool worker's next task or a task's reply
usually comes within a few tens of µs, so watching the descriptors that long keeps
both ends awake, and only a slower peer lets them sleep. The spin yields the CPU on
every turn, so it costs nothing to a thread or process that has work.
"""

from __future__ import annotations

import os
import select
import time

SPIN_SECONDS = 0.0001  # how long to watch before blocking


class Spinner:
    """Watches one descriptor (or a caller's poll object) for up to SPIN_SECONDS."""

    __slots__ = ("_poll",)

    def __init__(self, fd: int | None = None, poller: select.poll | select.epoll | None = None) -> None:
        if poller is None:
            poller = select.poll()
            poller.register(fd, select.POLLIN)  # type: ignore[arg-type]
        self._poll = poller.poll

    def wait(self, seconds: float = SPIN_SECONDS) -> list[tuple[int, int]]:
        """Return the ready events as soon as there are some, or [] after *seconds*."""
        poll = self._poll
        events = poll(0)
        if events:
            return events
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            os.sched_yield()
            events = poll(0)
            if events:
                return events
        return []
