"""The starter protocol and the handle of a child this process created itself."""

from __future__ import annotations

import os
import signal
import threading

from .._wait import wait

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Protocol

    # What the starters and their handles provide (for type checkers and readers).
    class ChildHandle(Protocol):
        """What a Process holds once started; one implementation per kind of parenthood."""

        pid: int
        sentinel: int  # ready for reading once the child has ended

        def poll(self) -> int | None:
            """The exit code if the child has ended (reaping it), else None."""

        def wait(self, timeout: float | None) -> int | None:
            """Wait up to *timeout* seconds (None: for ever); the exit code, or None."""

        def terminate(self) -> None:
            """SIGTERM, unless the child has already ended."""

        def kill(self) -> None:
            """SIGKILL, unless the child has already ended."""

        def close(self) -> None:
            """Release the handle's descriptors."""

    class Starter(Protocol):
        """A start method."""

        method: str

        def start(self, process: object) -> ChildHandle:
            """Create the child that will run ``process._bootstrap()`` and return its handle."""


_HAVE_WAITID_PIDFD = hasattr(os, "waitid") and hasattr(os, "P_PIDFD")


class PidfdSignals:
    """terminate()/kill() through a pidfd, and never once the exit code is known."""

    returncode: int | None
    _pidfd: int | None

    def _signal(self, signum: int) -> None:
        if self.returncode is None and self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)


class DirectChild(PidfdSignals):
    """A child created by this process (fork, spawn): a pidfd plus waitpid.

    The pidfd is the sentinel and the target of signals, so neither can hit an unrelated
    process that reused the PID after the child was reaped.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd: int | None = os.pidfd_open(pid)
        self.sentinel = self._pidfd
        self._lock = threading.Lock()

    def _reap(self, flags: int) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, flags)
                except ChildProcessError:
                    # Reaped behind our back (SIGCHLD set to SIG_IGN, or os.wait in user code).
                    pid, status = self.pid, 255 << 8
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        # Block on the pidfd without reaping (WNOWAIT), so that no lock is held while
        # blocking and other threads can still poll(); then reap.
        if self._pidfd is not None:
            if timeout is None and _HAVE_WAITID_PIDFD:
                try:
                    os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOWAIT)
                except ChildProcessError:
                    pass  # reaped by another thread meanwhile
            elif not wait([self._pidfd], timeout):
                return None
        return self._reap(0)

    def close(self, _close: Any = os.close) -> None:
        # os.close is bound now: at interpreter exit the os module may be cleared first.
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            _close(fd)

    def __del__(self) -> None:
        if getattr(self, "_pidfd", None) is not None:
            self.close()
