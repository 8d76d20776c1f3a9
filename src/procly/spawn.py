"""Spawn-method helpers kept for compatibility (``multiprocessing.spawn``)."""

from __future__ import annotations

import sys

from .context import _concrete_contexts

__all__ = ["freeze_support", "get_executable", "set_executable"]


def freeze_support() -> None:
    """No-op outside frozen Windows executables."""


def set_executable(executable: str) -> None:
    """Interpreter used to spawn children and the fork server."""
    _concrete_contexts["spawn"].set_executable(executable)


def get_executable() -> str:
    """Interpreter used to spawn children."""
    return _concrete_contexts["spawn"].starter.executable or sys.executable  # type: ignore[attr-defined]
