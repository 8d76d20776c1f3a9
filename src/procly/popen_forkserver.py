"""``Popen`` for the forkserver method (``multiprocessing.popen_forkserver``): see :mod:`procly.popen_fork`."""

from __future__ import annotations

from . import popen_spawn_posix
from ._compat import lazy_submodules as _lazy_submodules
from .context import set_spawning_popen as set_spawning_popen

__all__ = ["Popen"]


class Popen(popen_spawn_posix.Popen):
    """Have this process's fork server start *process_obj* and hold the running child.

    Raises:
        procly.StartError: the fork server cannot be reached or failed to fork.
        procly.PicklingError: the process object cannot be pickled (nothing is started).
    """

    method = "forkserver"


__getattr__ = _lazy_submodules(__name__, "forkserver", "popen_fork", "reduction", "spawn", "util")
