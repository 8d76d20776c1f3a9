"""Logging, finalizers and after-fork hooks (``multiprocessing.util``)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any

from . import _finalize, _state
from ._compat import lazy_submodules as _lazy_submodules
from ._finalize import Finalize as Finalize
from ._finalize import register_after_fork as register_after_fork
from ._finalize import run_finalizers as _run_finalizers

__all__ = [
    "Finalize",
    "ForkAwareThreadLock",
    "debug",
    "get_logger",
    "get_temp_dir",
    "info",
    "is_exiting",
    "log_to_stderr",
    "register_after_fork",
    "sub_debug",
    "sub_warning",
]

# Linux has abstract Unix socket names ("\0..." addresses), which Listener accepts.
abstract_sockets_supported = True

# The registries, under the names CPython's test-suite inspects.
_finalizer_registry = _finalize._registry
_afterfork_registry = _finalize._after_fork

LOGGER_NAME = "procly"
DEFAULT_LOGGING_FORMAT = "[%(levelname)s/%(processName)s] %(message)s"
SUBDEBUG = 5
SUBWARNING = 25


def get_logger() -> logging.Logger:
    """procly's logger; silent until configured or :func:`log_to_stderr` is called."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers and logger.level == logging.NOTSET:
        logger.propagate = False
    return logger


def log_to_stderr(level: int | str | None = None) -> logging.Logger:
    """Make procly's logger print to stderr (at *level*, if given) and return it."""
    logger = get_logger()
    if not any(getattr(h, "_procly", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(DEFAULT_LOGGING_FORMAT))
        handler._procly = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if level:
        logger.setLevel(level)
    return logger


def sub_debug(msg: str, *args: Any) -> None:
    """Log at SUBDEBUG on procly's logger; the record names the caller's file and line."""
    get_logger().log(SUBDEBUG, msg, *args, stacklevel=2)


def debug(msg: str, *args: Any) -> None:
    get_logger().debug(msg, *args, stacklevel=2)


def info(msg: str, *args: Any) -> None:
    get_logger().info(msg, *args, stacklevel=2)


def sub_warning(msg: str, *args: Any) -> None:
    get_logger().log(SUBWARNING, msg, *args, stacklevel=2)


def is_exiting() -> bool:
    """Whether this process is running its exit clean-up."""
    return _state.get().exiting


_temp_dirs: dict[int, str] = {}


def get_temp_dir() -> str:
    """A private temporary directory for this process, removed at exit."""
    pid = os.getpid()
    path = _temp_dirs.get(pid)
    if path is None:
        import shutil

        path = _temp_dirs[pid] = tempfile.mkdtemp(prefix="procly-")
        Finalize(None, shutil.rmtree, args=(path, True), exitpriority=-100)
        _state.get().ensure_exit_hook()
    return path


def _exit_function() -> None:
    _state.run_exit_hook()


def _run_after_forkers() -> None:
    from ._finalize import run_after_forkers

    run_after_forkers()


def _cleanup_tests() -> None:
    """Run pending finalizers (the name CPython's test-suite calls at tear-down)."""
    _run_finalizers(0)
    _run_finalizers()


class ForkAwareThreadLock:
    """A threading.Lock that a forked child gets back unlocked."""

    def __init__(self) -> None:
        self._reset()
        register_after_fork(self, ForkAwareThreadLock._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> None:
        self._lock.release()


# --------------------------------------------------------------------------- standard library names

NOTSET = 0
DEBUG = 10
INFO = 20
try:
    MAXFD = os.sysconf("SC_OPEN_MAX")
except (AttributeError, ValueError, OSError):  # pragma: no cover - Linux has it
    MAXFD = 256


class ForkAwareLocal(threading.local):
    """A ``threading.local`` that a forked child gets back empty."""

    def __init__(self) -> None:
        register_after_fork(self, lambda obj: obj.__dict__.clear())

    def __reduce__(self) -> Any:
        return type(self), ()


def is_abstract_socket_namespace(address: Any) -> bool:
    """Whether *address* names a Linux abstract Unix socket (starts with a NUL byte)."""
    if not address:
        return False
    if isinstance(address, bytes):
        return address[0] == 0
    if isinstance(address, str):
        return address[0] == "\0"
    raise TypeError(f"address type of {address!r} unrecognized")


def close_all_fds_except(fds: Any) -> None:
    """Close every descriptor of this process but those in *fds*."""
    keep = sorted({-1, *fds, MAXFD})
    for low, high in zip(keep, keep[1:], strict=False):
        os.closerange(low + 1, high)


def close_fds(*fds: int) -> None:
    """Close each descriptor in *fds*."""
    for fd in fds:
        os.close(fd)


def spawnv_passfds(path: str, args: Any, passfds: Any) -> int:
    """Start program *path* with argument list *args*, inheriting only *passfds*; return its pid.

    The caller reaps the child (``os.waitpid``).

    Raises:
        OSError: the program cannot be started.
    """
    import subprocess

    popen = subprocess.Popen([os.fsdecode(a) for a in args], executable=path, pass_fds=sorted(passfds), close_fds=True)
    popen.returncode = 0  # the caller owns and reaps the pid: keep subprocess from doing it
    return popen.pid


def _args_from_interpreter_flags() -> list[str]:
    """The interpreter's flags (-X, -W, -O...) as this one was started (for a child interpreter)."""
    import subprocess

    return list(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]


__getattr__ = _lazy_submodules(__name__, "process")
