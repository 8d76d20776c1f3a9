"""Child side of every start method: become the Process, run it, report the exit code."""

from __future__ import annotations

import _pickle as pickle  # the C module: pickle.py would also import re and enum
import os
import sys

from .. import _handoff, _methods, _process, _serialization, _state
from .._connection import Connection
from .prepare import prepare

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any


def become(process: Any, parent_name: str, parent_pid: int, lifeline: int | None) -> None:
    """Make this fresh child the running *process*: new state, parent handle, lifeline."""
    parent = _process.open_parent(parent_name, parent_pid)
    _state.reset_for_child(process, parent, lifeline, watch=process._watches_lifeline)
    if process._start_method is not None:
        # A child started with a given method uses it by default too (as CPython does).
        _methods.choose(process._start_method)


def run_from_pipe(data_fd: int, lifeline: int | None, fds: list[int] | None = None) -> int:
    """Read preparation data and the pickled Process from *data_fd*, run it, return its code.

    The parent writes two frames: the preparation data (builtins only) and the Process.
    The descriptors the Process references were passed alongside: under spawn their
    numbers are listed in the preparation data; the fork server passes *fds* instead.
    """
    with Connection(data_fd, writable=False) as conn:
        data: dict[str, Any] = pickle.loads(conn.recv_bytes())
        prepare(data)
        _methods.adopt_parents(data["start_method"])
        if data.get("log_level") is not None:
            from ..util import get_logger

            get_logger().setLevel(data["log_level"])
        # Objects unpickled below (proxies, connections to the parent) authenticate with
        # the parent's key: make it ours before they are rebuilt.
        _state.get().current.authkey = data["authkey"]
        with _handoff.install(fds if fds is not None else data["fds"]):
            process = _serialization.loads(conn.recv_bytes())
    become(process, data["parent_name"], data["parent_pid"], lifeline)
    return int(process._bootstrap())


def spawn_main() -> None:
    """Entry point of a spawned interpreter: ``python -c '...spawn_main()' DATA_FD LIFELINE_FD``."""
    data_fd = int(sys.argv[1])
    lifeline = int(sys.argv[2]) if sys.argv[2] != "-" else None
    exitcode = run_from_pipe(data_fd, lifeline)
    sys.exit(exitcode)


def write_start_data(conn: Connection, data: dict[str, Any], payload: bytes) -> None:
    """Parent side of :func:`run_from_pipe`."""
    conn.send_bytes(pickle.dumps(data, _serialization.PROTOCOL))
    conn.send_bytes(payload)


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
