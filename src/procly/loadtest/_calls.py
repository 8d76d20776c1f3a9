"""Driving a Python callable concurrently: ``procly loadtest --call module:function``.

A coroutine function runs as N tasks on the worker's event loop; a plain function
runs in N threads of the worker process. Each call is one "request": its latency is
recorded, an exception is counted under its class name. A synchronous call cannot be
interrupted: one that overruns the timeout is counted as a timeout when it returns.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._schedule import LockedSchedule, Schedule
from ._stats import LockedRecorder, Recorder


def resolve_callable(spec: str) -> Callable[[], Any]:
    """Import ``module:function`` (dotted attributes allowed after the colon).

    The current directory is importable, as with ``python -m``.

    Raises:
        ValueError: ``spec`` is not ``module:function``, or names nothing callable.
        ImportError: the module cannot be imported.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--call wants MODULE:FUNCTION, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    return target


def is_async(func: Callable[..., Any]) -> bool:
    # An object whose __call__ is a coroutine function counts too.
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


class CallLoad:
    """N concurrent callers of one callable, in one worker process."""

    def __init__(
        self, func: Callable[[], Any], concurrency: int, schedule: Schedule, recorder: Recorder, timeout: float
    ) -> None:
        self.func = func
        self.concurrency = concurrency
        self.schedule = schedule
        self.recorder = recorder
        self.timeout = timeout
        self._tasks: list[asyncio.Task[None]] = []
        self._threads_done: asyncio.Future[None] | None = None
        self.last_answer = 0.0  # when the last measured call ended (monotonic; 0: none yet)
        self.last_send = 0.0  # when the last call started (0: none yet)

    # Synchronous callables run in threads, which share the schedule and the recorder.
    @staticmethod
    def schedule_type(func: Callable[..., Any]) -> type[Schedule]:
        return Schedule if is_async(func) else LockedSchedule

    @staticmethod
    def recorder_type(func: Callable[..., Any]) -> type[Recorder]:
        return Recorder if is_async(func) else LockedRecorder

    async def run(self) -> None:
        if is_async(self.func):
            self._tasks = [asyncio.create_task(self._async_caller()) for _ in range(self.concurrency)]
            await asyncio.gather(*self._tasks, return_exceptions=True)
        else:
            await self._run_threads()

    def stop(self, grace: float) -> None:
        self.schedule.stop()
        loop = asyncio.get_running_loop()
        loop.call_later(grace, self._abandon)

    def _abandon(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._set_threads_done()

    async def _async_caller(self) -> None:
        schedule = self.schedule
        while True:
            now = time.monotonic()
            due = schedule.next_start(now)
            if due is None:
                return
            if due > now:
                await asyncio.sleep(due - now)
                while time.monotonic() < due:  # loop timers may fire up to a millisecond early
                    await asyncio.sleep(0)
            self.last_send = time.monotonic()
            await self._call_once(due)

    async def _call_once(self, due: float) -> None:
        """Await one call due at *due*, and count it unless it was due in the warm-up."""
        recorder = self.recorder
        try:
            await asyncio.wait_for(self.func(), self.timeout)
        except asyncio.TimeoutError:
            outcome = "timeout"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = type(exc).__name__
        else:
            outcome = None
        if due < recorder.measure_from:
            return  # a warm-up call: its failure is not counted either
        now = time.monotonic()
        self.last_answer = now
        if outcome is None:
            recorder.success(now - due)
        else:
            recorder.error(outcome)

    async def _run_threads(self) -> None:
        loop = asyncio.get_running_loop()
        self._threads_done = loop.create_future()
        remaining = [self.concurrency]
        lock = threading.Lock()

        def caller() -> None:
            try:
                self._thread_caller()
            finally:
                with lock:
                    remaining[0] -= 1
                    last = remaining[0] == 0
                if last:
                    loop.call_soon_threadsafe(self._set_threads_done)

        for i in range(self.concurrency):
            # Daemon threads: a call that never returns must not keep the worker alive after its grace.
            threading.Thread(target=caller, name=f"procly-loadtest-caller-{i}", daemon=True).start()
        await self._threads_done

    def _set_threads_done(self) -> None:
        if self._threads_done is not None and not self._threads_done.done():
            self._threads_done.set_result(None)

    def _thread_caller(self) -> None:
        schedule, recorder, func, timeout = self.schedule, self.recorder, self.func, self.timeout
        while True:
            now = time.monotonic()
            due = schedule.next_start(now)
            if due is None:
                return
            if due > now:
                time.sleep(due - now)
            self.last_send = time.monotonic()
            try:
                func()
            except Exception as exc:
                if due >= recorder.measure_from:  # a warm-up call's failure is not counted either
                    recorder.error(type(exc).__name__)
                continue
            now = time.monotonic()
            latency = now - due
            if due < recorder.measure_from:
                continue
            self.last_answer = now  # threads end calls at nearly the same times: any late one will do
            if latency > timeout:
                recorder.error("timeout")
            else:
                recorder.success(latency)
