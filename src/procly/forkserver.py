"""Forkserver-method helpers (``multiprocessing.forkserver``)."""

from __future__ import annotations

import os
import struct
from typing import Any

from ._compat import lazy_submodules as _lazy_submodules
from ._start.forkserver import _MAX_FDS
from .context import _concrete_contexts

__all__ = ["ForkServer", "ensure_running", "get_inherited_fds", "set_forkserver_preload"]


def set_forkserver_preload(modules_names: list[str]) -> None:
    """Modules the fork server imports once, before forking any child."""
    _concrete_contexts["forkserver"].set_forkserver_preload(modules_names)


def ensure_running() -> None:
    """Start this process's fork server now if it is not running (else on first use)."""
    _concrete_contexts["forkserver"].starter.ensure_running()


def get_inherited_fds() -> None:
    """Kept for compatibility: procly hands descriptors to children explicitly."""
    return None


class ForkServer:
    """This process's fork server (the standard library's class; procly starts one per process).

    procly's fork server is given Process objects, not raw descriptors: use
    ``get_context("forkserver").Process(...).start()`` (or :mod:`procly.popen_forkserver`).
    """

    def ensure_running(self) -> None:
        """Start the fork server now if it is not running."""
        ensure_running()

    def get_inherited_fds(self) -> None:
        """Kept for compatibility: procly hands descriptors to children explicitly."""
        return get_inherited_fds()

    def set_forkserver_preload(self, modules_names: list[str]) -> None:
        """Modules the fork server imports once, before forking any child."""
        set_forkserver_preload(modules_names)

    def connect_to_new_process(self, fds: list[int]) -> Any:
        """The standard library's low-level start request; procly's server protocol differs.

        Raises:
            NotImplementedError: always: procly's fork server forks a child for a pickled
                Process object it is sent with its descriptors; start a Process instead.
        """
        return connect_to_new_process(fds)

    @property
    def _forkserver_pid(self) -> int:
        return int(_concrete_contexts["forkserver"].starter.ensure_running()._process.pid)


_forkserver = ForkServer()
_ForkServerView = ForkServer  # the earlier name

# --------------------------------------------------------------------------- standard library names

MAXFDS_TO_SEND = _MAX_FDS
SIGNED_STRUCT = struct.Struct("q")


def connect_to_new_process(fds: list[int]) -> Any:
    """The standard library's low-level start request; procly's server protocol differs.

    Raises:
        NotImplementedError: always: procly's fork server forks a child for a pickled
            Process object it is sent with its descriptors; start a Process instead.
    """
    raise NotImplementedError(
        "procly's fork server starts Process objects (sent with their descriptors), not raw descriptor "
        "requests: use get_context('forkserver').Process(...).start()"
    )


def main(*args: Any, **kwargs: Any) -> None:
    """The standard library's fork server program; procly's is started by :func:`ensure_running`.

    Raises:
        NotImplementedError: always: procly's fork server takes its listener, lifeline and
            start data on its command line (``procly._start.forkserver.serve``).
    """
    raise NotImplementedError(
        "procly's fork server program is procly._start.forkserver.serve, started by ensure_running(); "
        "it does not take the standard library's arguments"
    )


def read_signed(fd: int) -> int:
    """Read one signed 64-bit integer (native byte order) from descriptor *fd*.

    Raises:
        EOFError: the descriptor reached its end first.
    """
    data = b""
    while len(data) < SIGNED_STRUCT.size:
        chunk = os.read(fd, SIGNED_STRUCT.size - len(data))
        if not chunk:
            raise EOFError("unexpected EOF")
        data += chunk
    return int(SIGNED_STRUCT.unpack(data)[0])


def write_signed(fd: int, n: int) -> None:
    """Write *n* as a signed 64-bit integer (native byte order) to descriptor *fd*.

    Raises:
        RuntimeError: the descriptor accepts no more bytes.
    """
    msg = SIGNED_STRUCT.pack(n)
    while msg:
        nbytes = os.write(fd, msg)
        if nbytes == 0:
            raise RuntimeError("should not get here")
        msg = msg[nbytes:]


__getattr__ = _lazy_submodules(__name__, "connection", "process", "reduction", "resource_tracker", "spawn", "util")
