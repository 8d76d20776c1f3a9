"""Every exception procly raises, in one tree.

The roots are the names ``multiprocessing`` users already catch, so existing
``except`` clauses keep working::

    Exception
    └── ProcessError                      (multiprocessing.ProcessError)
        ├── BufferTooShort                recv_bytes_into() buffer too small
        ├── TimeoutError                  a wait ran out of time (also builtins.TimeoutError)
        ├── AuthenticationError           HMAC challenge failed or peer spoke garbage
        ├── ConnectionClosedError         you closed this connection (also OSError)
        ├── MessageError                  a frame was malformed or over the size limit
        │                                 (also OSError: the connection is unusable)
        ├── StartError                    a child could not be started (also OSError)
        ├── PicklingError                 an object cannot be serialized
        │                                 (also pickle.PicklingError and TypeError)
        ├── BrokenProcessPool             an executor's task could not run: its worker died,
        │   │                             the initializer failed, the task did not unpickle
        │   │                             (also concurrent.futures.BrokenExecutor, a RuntimeError)
        │   └── WorkerLostError           a pool worker died while running a task
        ├── TaskTimeoutError              a task ran past its task_timeout and was stopped
        └── PoolTerminatedError           the pool was terminated before the task finished

``TimeoutError`` subclasses the builtin ``TimeoutError`` as well, so
``except TimeoutError`` written against either one catches procly's.

Every exception here survives a pickle round trip with its attributes intact:
they travel between processes.
"""

from __future__ import annotations

import _pickle as pickle  # the C module: pickle.py would also import re and enum
import builtins

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any

    from ._pool_errors import BrokenProcessPool, WorkerLostError

__all__ = [
    "AuthenticationError",
    "BrokenProcessPool",
    "BufferTooShort",
    "ConnectionClosedError",
    "MessageError",
    "PicklingError",
    "ProcessError",
    "PoolTerminatedError",
    "StartError",
    "TaskTimeoutError",
    "TimeoutError",
    "WorkerLostError",
]


class ProcessError(Exception):
    """Base class of every procly error (same role as multiprocessing.ProcessError)."""


class BufferTooShort(ProcessError):
    """``recv_bytes_into()`` was given a buffer smaller than the message.

    ``args[0]`` holds the whole message as bytes, as in the standard library.
    """


class TimeoutError(ProcessError, builtins.TimeoutError):  # noqa: A001 - mirrors multiprocessing
    """A blocking call ran out of time before it could complete."""


class AuthenticationError(ProcessError):
    """The peer failed the HMAC challenge, or sent something that is not a handshake."""


class ConnectionClosedError(ProcessError, OSError):
    """This end of the connection was closed by the caller; it cannot be used any more.

    Distinct from ``EOFError``, which means the *peer* went away.
    """


class MessageError(ProcessError, OSError):
    """A frame on the wire was malformed, truncated, or larger than the allowed maximum.

    The connection is left in an undefined position in the stream and must be closed.
    """


class StartError(ProcessError, OSError):
    """A child process could not be started (fork/exec failed, or it died during start-up)."""


class PicklingError(ProcessError, pickle.PicklingError, TypeError):
    """An object could not be serialized; the message names it and the reason."""


class TaskTimeoutError(ProcessError):
    """The task ran longer than its ``task_timeout``: its worker was ended and replaced."""


class PoolTerminatedError(ProcessError):
    """The pool was terminated before this task produced a result."""


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in another process, attached as its ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    """Attach the other process's traceback text *tb* to *exc* (as a RemoteTraceback
    ``__cause__``) and return *exc*; raises nothing."""
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc


def signal_name(signum: int) -> str | None:
    """The name of signal *signum* (``"SIGKILL"``), or None for a number with no name."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return None


def __getattr__(name: str) -> Any:
    # BrokenProcessPool and WorkerLostError subclass concurrent.futures.BrokenExecutor:
    # imported on first use, so that ``import procly`` does not import concurrent.futures
    # (and logging with it).
    if name in ("BrokenProcessPool", "WorkerLostError"):
        from . import _pool_errors

        return getattr(_pool_errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
