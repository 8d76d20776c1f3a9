"""The spawn start method: the child is a fresh interpreter.

The parent pickles the Process (collecting the descriptors it references), starts
``python -c ...spawn_main()`` with those descriptors passed through, and writes the
preparation data and the pickle down a pipe the child reads at start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .. import _handoff, _serialization, _state
from .._connection import Connection
from .._errors import StartError
from .base import DirectChild
from .child import write_start_data
from .prepare import preparation_data

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any

_CHILD_CODE = "from procly._start.child import spawn_main; spawn_main()"


def interpreter_command(executable: str | None = None) -> list[str]:
    """The interpreter and its flags (-X, -W, -O...) as this one was started."""
    try:
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - present in every supported CPython
        flags = []
    return [executable or sys.executable, *flags]


def launch(argv: list[str], pass_fds: list[int], env: dict[str, str] | None = None) -> int:
    """Start *argv* with exactly *pass_fds* inherited, and *env* added to this process's
    environment; return its pid (we reap it ourselves)."""
    try:
        popen = subprocess.Popen(argv, pass_fds=pass_fds, close_fds=True, env={**os.environ, **env} if env else None)
    except OSError as exc:
        raise StartError(f"cannot start {argv[0]}: {exc}") from exc
    # The Popen object only launched the child: the caller owns and reaps the pid.
    # Marking it finished keeps subprocess from reaping it or warning about it.
    popen.returncode = 0
    return popen.pid


class SpawnStarter:
    """Run a new interpreter that unpickles the Process and runs it."""

    method = "spawn"

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable

    def start(self, process: Any) -> DirectChild:
        state = _state.get()
        lifeline = state.lifeline() if process._watches_lifeline else None
        data = preparation_data(process.name, self.method)
        with _handoff.collecting() as handoff:
            payload = _serialization.dumps_for_start(process)
        data["fds"] = handoff.fds
        read_fd, write_fd = os.pipe()
        try:
            argv = interpreter_command(self.executable) + [
                "-c",
                _CHILD_CODE,
                str(read_fd),
                str(lifeline) if lifeline is not None else "-",
            ]
            pass_fds = [read_fd, *handoff.fds] + ([lifeline] if lifeline is not None else [])
            pid = launch(argv, pass_fds, process._config.get("env"))
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        child = DirectChild(pid)
        with Connection(write_fd, readable=False) as conn:
            try:
                write_start_data(conn, data, payload)
            except BrokenPipeError:
                pass  # the child died before reading; its exit code will tell why
        return child
