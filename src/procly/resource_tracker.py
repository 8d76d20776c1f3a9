"""The resource tracker (``multiprocessing.resource_tracker``), on procly's shared memory tracker.

procly's own locks, Values and Arrays live in unnamed memory: the only named resources
it creates are :class:`procly.shared_memory.SharedMemory` segments, which the creating
process registers with its tracker process (see :mod:`procly.shared_memory`); the
tracker unlinks whatever is still registered when that process exits or dies.

This module is the standard library's interface to it, for code that calls
``resource_tracker.register(name, "shared_memory")`` / ``unregister(...)`` itself (the
common way to keep a tracker from unlinking a segment another process owns). Resource
types other than ``"shared_memory"`` and ``"noop"`` are refused: procly creates no named
semaphores, and its tracker cleans nothing else.

Unlike the standard library's, procly does not register a segment a process merely
attaches to; ``unregister`` of a name this process never registered is harmless.
"""

from __future__ import annotations

from typing import Any

from ._compat import lazy_submodules as _lazy_submodules

__all__ = ["ensure_running", "register", "unregister"]

RESOURCE_TYPES = ("noop", "shared_memory")


class ReentrantCallError(RuntimeError):
    """The tracker was called again from inside one of its own calls (kept for the standard library's name)."""


def cleanup_noop(name: str) -> None:
    """The clean-up of a ``"noop"`` resource: nothing."""


def _check(name: Any, rtype: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"resource name must be a str, not {type(name).__name__}")
    if rtype not in RESOURCE_TYPES:
        raise ValueError(
            f"procly's resource tracker tracks {' and '.join(map(repr, RESOURCE_TYPES))} resources, not {rtype!r} "
            "(procly creates no named semaphores; its locks use unnamed memory)"
        )


class ResourceTracker:
    """This process's tracker of named resources (procly's shared memory tracker)."""

    def ensure_running(self) -> None:
        """Start this process's tracker process if it is not running."""
        from .shared_memory import _tracker

        _tracker()

    def getfd(self) -> int:
        """The descriptor this process talks to its tracker on (starting the tracker if needed)."""
        from .shared_memory import _tracker

        return _tracker()._writer.fileno()

    def register(self, name: str, rtype: str) -> None:
        """Have the tracker clean *name* up (unlink it) if this process ends without doing so.

        Raises:
            ValueError: *rtype* is not ``"shared_memory"`` or ``"noop"``.
            TypeError: *name* is not a str.
        """
        _check(name, rtype)
        if rtype == "shared_memory":
            from .shared_memory import _tracker

            _tracker().register(name.lstrip("/"))

    def unregister(self, name: str, rtype: str) -> None:
        """Have the tracker forget *name*: it will not unlink it.

        Raises:
            ValueError: *rtype* is not ``"shared_memory"`` or ``"noop"``.
            TypeError: *name* is not a str.
        """
        _check(name, rtype)
        if rtype == "shared_memory":
            from .shared_memory import _untrack

            _untrack(name.lstrip("/"))

    def _stop(self) -> None:
        """Kept for the standard library's test-suite: procly's tracker ends with its owner."""


_resource_tracker = ResourceTracker()
ensure_running = _resource_tracker.ensure_running
register = _resource_tracker.register
unregister = _resource_tracker.unregister
getfd = _resource_tracker.getfd


def main(fd: int) -> None:
    """The standard library's tracker program; procly's tracker is not a separate program.

    Raises:
        NotImplementedError: always: procly's tracker is a forked child of the process
            it serves (started by :func:`ensure_running`), not a program run with a descriptor.
    """
    raise NotImplementedError(
        "procly's resource tracker is a forked child of the process it serves (see ensure_running()), "
        "not a program started with a descriptor"
    )


__getattr__ = _lazy_submodules(__name__, "spawn", "util")
