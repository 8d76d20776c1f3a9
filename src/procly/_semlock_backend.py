"""Which implementation of SemLock procly uses: the C extension or its ctypes fallback.

``procly._semlock`` (C, built at install time when a compiler is there) is preferred.
``procly._semlock_ctypes`` (pure Python over libc) is used when the extension is
missing or cannot be loaded, or when the environment sets ``PROCLY_PURE_PYTHON=1``.
Both place the same POSIX semaphore in the same shared memory, so processes using
different backends still share locks.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

FORCE_ENV = "PROCLY_PURE_PYTHON"


def _select() -> tuple[ModuleType, str, str]:
    if os.environ.get(FORCE_ENV, "") not in ("", "0"):
        return importlib.import_module("procly._semlock_ctypes"), "ctypes", f"{FORCE_ENV} is set"
    try:
        return importlib.import_module("procly._semlock"), "c-extension", ""
    except ImportError as exc:
        return importlib.import_module("procly._semlock_ctypes"), "ctypes", f"C extension unavailable ({exc})"


#: the module providing SemLock, SEMAPHORE, RECURSIVE_MUTEX and SEM_SIZE;
#: BACKEND: "c-extension" or "ctypes"; REASON: why the fallback is used ("" otherwise)
if TYPE_CHECKING:  # both backends have the fallback's (typed) API
    from . import _semlock_ctypes

    semlock = _semlock_ctypes

    BACKEND: str
    REASON: str
else:
    semlock, BACKEND, REASON = _select()
