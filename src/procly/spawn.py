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
    return _concrete_contexts["spawn"].starter.executable or sys.executable


# --------------------------------------------------------------------------- standard library names

from typing import Any  # noqa: E402

from ._compat import lazy_submodules as _lazy_submodules  # noqa: E402
from ._start import prepare as _prepare  # noqa: E402
from ._start import spawn as _spawn  # noqa: E402
from .context import _default_context  # noqa: E402

WINEXE = False
WINSERVICE = False
get_start_method = _default_context.get_start_method
set_start_method = _default_context.set_start_method
#: Kept for the standard library's name; procly keeps no replaced main modules.
old_main_modules: list[Any] = []


def get_command_line(**kwds: Any) -> list[str]:
    """The command that starts a spawned child: the interpreter, its flags and procly's start code.

    procly appends two arguments when it starts a child: the descriptor its start data
    arrives on, and its lifeline descriptor (``-`` for none). *kwds* are accepted for the
    standard library's signature; procly passes nothing else on the command line.
    """
    return [*_spawn.interpreter_command(get_executable()), "-c", _spawn._CHILD_CODE]


def is_forking(argv: list[str]) -> bool:
    """Whether *argv* is the standard library's spawned-child command line (``--multiprocessing-fork``).

    procly's own spawned children never show it: they run :func:`spawn_main` from ``-c``.
    """
    return len(argv) >= 2 and argv[1] == "--multiprocessing-fork"


def get_preparation_data(name: str) -> dict[str, Any]:
    """What a spawned child named *name* needs to look like this process (procly's format: plain builtins)."""
    return _prepare.preparation_data(name, "spawn")


def prepare(data: dict[str, Any]) -> None:
    """Apply :func:`get_preparation_data` in a child: paths, argv, working directory, main module."""
    _prepare.prepare(data)


def import_main_path(main_path: str) -> None:
    """Import the script *main_path* as the main module, as ``__mp_main__`` (its ``__main__`` block does not run)."""
    _prepare._import_main(None, main_path)


def spawn_main(pipe_handle: int, parent_pid: int | None = None, tracker_fd: int | None = None) -> None:
    """Run the child whose start data (procly's format) arrives on descriptor *pipe_handle*, then exit.

    *parent_pid* and *tracker_fd* are accepted for the standard library's signature (the
    start data names the parent). Never returns.
    """
    from ._start.child import run_from_pipe

    sys.exit(run_from_pipe(pipe_handle, None))


__getattr__ = _lazy_submodules(__name__, "process", "reduction", "util")
