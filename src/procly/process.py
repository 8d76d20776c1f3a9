"""Process objects and the process tree (``multiprocessing.process``)."""

from __future__ import annotations

from ._process import AuthenticationString as AuthenticationString
from ._process import BaseProcess as BaseProcess
from ._process import _dangling as _dangling
from ._process import active_children as active_children
from ._process import current_process as current_process
from ._process import parent_process as parent_process

__all__ = ["BaseProcess", "active_children", "current_process", "parent_process"]


def _cleanup() -> None:
    """Reap ended children (the name CPython's test-suite calls)."""
    from . import _state

    _state.get().reap()


def _original_dir() -> str | None:
    import os

    try:
        return os.path.abspath(os.getcwd())
    except OSError:
        return None


#: The working directory when procly was first imported (the standard library's name).
ORIGINAL_DIR = _original_dir()
