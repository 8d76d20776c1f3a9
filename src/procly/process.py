"""Process objects and the process tree (``multiprocessing.process``)."""

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
