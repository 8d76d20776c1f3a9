"""The fork start method: the child is a copy of this process."""

from __future__ import annotations

import os

from .. import _finalize, _process, _state
from .._errors import StartError
from .base import DirectChild
from .child import become

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any


class ForkStarter:
    """Fork this process; the child runs the Process object it inherited."""

    method = "fork"

    def start(self, process: Any) -> DirectChild:
        state = _state.get()
        lifeline = state.lifeline()
        parent_name = state.current.name
        parent_pid = os.getpid()
        _process._flush_std_streams()
        try:
            pid = os.fork()
        except OSError as exc:
            raise StartError(f"cannot fork: {exc}") from exc
        if pid == 0:
            exitcode = 1
            try:
                become(process, parent_name, parent_pid, lifeline)
                _finalize.run_after_forkers()
                exitcode = process._bootstrap()
            finally:
                os._exit(exitcode)
        return DirectChild(pid)
