"""The standard library's per-method ``Popen`` classes (``multiprocessing.popen_fork``).

``Popen(process_obj)`` starts *process_obj* (a procly Process) with this module's
method and is the handle on the running child: ``pid``, ``returncode``, ``sentinel``
(a pidfd, or the fork server's status socket), ``poll()``, ``wait()``, ``terminate()``,
``kill()``, ``close()``. ``Process.start()`` does the same and keeps the process's
bookkeeping (``active_children()``, joining at exit); use it unless you need a Popen.
"""

from __future__ import annotations

import os
from typing import Any

from ._compat import lazy_submodules as _lazy_submodules

__all__ = ["Popen"]


class Popen:
    """Start *process_obj* with the ``fork`` method and hold the running child.

    Raises:
        procly.StartError: the OS refused to create the process.
    """

    method = "fork"

    def __init__(self, process_obj: Any) -> None:
        from .context import _concrete_contexts

        self.returncode: int | None = None
        self.finalizer = None
        self._handle = _concrete_contexts[self.method].starter.start(process_obj)
        self.pid: int = self._handle.pid
        self.sentinel: int = self._handle.sentinel

    def duplicate_for_child(self, fd: int) -> int:
        """The descriptor the child will see for *fd* (under fork: the same one)."""
        return fd

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        """The exit code if the child has ended (waiting for it unless *flag* is ``os.WNOHANG``), else None."""
        if self.returncode is None:
            self.returncode = self._handle.poll() if flag & os.WNOHANG else self._handle.wait(None)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to *timeout* seconds (None: for ever) for the child; its exit code, or None."""
        if self.returncode is None:
            self.returncode = self._handle.wait(timeout)
        return self.returncode

    def terminate(self) -> None:
        """Send SIGTERM (nothing once the child has ended)."""
        if self.returncode is None and self._handle.poll() is None:
            self._handle.terminate()

    def kill(self) -> None:
        """Send SIGKILL (nothing once the child has ended)."""
        if self.returncode is None and self._handle.poll() is None:
            self._handle.kill()

    def close(self) -> None:
        """Release the sentinel's descriptor."""
        self._handle.close()


__getattr__ = _lazy_submodules(__name__, "util")
