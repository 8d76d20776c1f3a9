"""``Popen`` for the spawn method (``multiprocessing.popen_spawn_posix``): see :mod:`procly.popen_fork`."""

from __future__ import annotations

from typing import Any

from . import popen_fork
from ._compat import lazy_submodules as _lazy_submodules
from .context import set_spawning_popen as set_spawning_popen

__all__ = ["Popen"]


class Popen(popen_fork.Popen):
    """Start *process_obj* in a fresh interpreter (spawn) and hold the running child.

    Raises:
        procly.StartError: the interpreter cannot be started.
        procly.PicklingError: the process object cannot be pickled (nothing is started).
    """

    method = "spawn"

    def duplicate_for_child(self, fd: int) -> Any:
        """Descriptors reach a spawned child through its start data: pickle them as Process arguments.

        Raises:
            RuntimeError: always, once the child is started (the standard library's Popen
                hands descriptors over while it is starting the child; procly does that
                for objects pickled as the Process's arguments).
        """
        raise RuntimeError(
            "procly hands descriptors to a spawned child while starting it: pass the object as an argument "
            "of the Process instead"
        )


__getattr__ = _lazy_submodules(__name__, "popen_fork", "reduction", "spawn", "util")
