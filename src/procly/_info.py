"""``procly.info()``: what this installation of procly is and runs on."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any


def info() -> dict[str, Any]:
    """Describe this procly installation: version, SemLock backend, Python, start methods.

    Keys: ``version``; ``semlock`` ("c-extension", or "ctypes" for the pure-Python
    fallback); ``semlock_reason`` (why the fallback is used, "" otherwise);
    ``sem_clockwait`` (whether timed waits use libc's sem_clockwait); ``python``;
    ``implementation``; ``executable``; ``platform``; ``start_methods`` (the default
    first); ``cpu_count``.

    Raises nothing.
    """
    import platform  # here, not at import: importing procly stays cheap

    import procly

    from ._semlock_backend import BACKEND, REASON, semlock

    return {
        "version": procly.__version__,
        "semlock": BACKEND,
        "semlock_reason": REASON,
        "sem_clockwait": bool(getattr(semlock, "HAVE_SEM_CLOCKWAIT", False)),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "platform": platform.platform(),
        "start_methods": list(procly.get_all_start_methods()),
        "cpu_count": os.cpu_count(),
    }


def version_line() -> str:
    """One line for ``procly --version``: version, SemLock backend and Python."""
    facts = info()
    backend = facts["semlock"]
    if facts["semlock_reason"]:
        backend += f": {facts['semlock_reason']}"
    return (
        f"procly {facts['version']} (semlock: {backend}; Python {facts['python']}; "
        f"start methods: {', '.join(facts['start_methods'])})"
    )
