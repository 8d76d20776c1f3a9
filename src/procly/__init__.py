"""procly: process-based parallelism, the whole ``multiprocessing`` API, done right.

``import procly as multiprocessing`` runs existing code unchanged. The functions and
classes here belong to the default context (see :mod:`procly.context`); use
``procly.get_context("spawn")`` and friends for a specific start method.

Importing procly is cheap and has no side effects: nothing starts, nothing is
registered, until the first process is started.
"""

from __future__ import annotations

from ._errors import AuthenticationError as AuthenticationError
from ._errors import BufferTooShort as BufferTooShort
from ._errors import ConnectionClosedError as ConnectionClosedError
from ._errors import MessageError as MessageError
from ._errors import PicklingError as PicklingError
from ._errors import PoolTerminatedError as PoolTerminatedError
from ._errors import ProcessError as ProcessError
from ._errors import StartError as StartError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._errors import TimeoutError as TimeoutError
from ._info import info as info
from .context import Process as Process
from .context import _default_context

__version__ = "0.1.0"

# The standard library's extra logging levels (also in procly.util).
SUBDEBUG = 5
SUBWARNING = 25

_ctx = _default_context

active_children = _ctx.active_children
allow_connection_pickling = _ctx.allow_connection_pickling
cpu_count = _ctx.cpu_count
current_process = _ctx.current_process
freeze_support = _ctx.freeze_support
get_all_start_methods = _ctx.get_all_start_methods
get_context = _ctx.get_context
get_logger = _ctx.get_logger
get_start_method = _ctx.get_start_method
log_to_stderr = _ctx.log_to_stderr
parent_process = _ctx.parent_process
Manager = _ctx.Manager
Pipe = _ctx.Pipe
Pool = _ctx.Pool
RawArray = _ctx.RawArray
RawValue = _ctx.RawValue
set_executable = _ctx.set_executable
set_forkserver_preload = _ctx.set_forkserver_preload
set_start_method = _ctx.set_start_method

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    # Resolved on first use at run time (module __getattr__ below); what a type checker sees.
    # The queue names are the generic classes (``procly.Queue[int]()``); at run time they are
    # the default context's factories, which accept the same subscript.
    from types import ModuleType
    from typing import Any

    from . import connection as connection
    from . import context as context
    from . import dummy as dummy
    from . import forkserver as forkserver
    from . import heap as heap
    from . import managers as managers
    from . import pool as pool
    from . import popen_fork as popen_fork
    from . import popen_forkserver as popen_forkserver
    from . import popen_spawn_posix as popen_spawn_posix
    from . import process as process
    from . import queues as queues
    from . import reduction as reduction
    from . import resource_sharer as resource_sharer
    from . import resource_tracker as resource_tracker
    from . import shared_memory as shared_memory
    from . import sharedctypes as sharedctypes
    from . import spawn as spawn
    from . import synchronize as synchronize
    from . import util as util
    from ._install import install as install
    from ._pool_errors import WorkerLostError as WorkerLostError
    from .futures import ProcessPoolExecutor as ProcessPoolExecutor
    from .queues import JoinableQueue as JoinableQueue
    from .queues import Queue as Queue
    from .queues import SimpleQueue as SimpleQueue

    Array = _ctx.Array
    Barrier = _ctx.Barrier
    BoundedSemaphore = _ctx.BoundedSemaphore
    Condition = _ctx.Condition
    Event = _ctx.Event
    Lock = _ctx.Lock
    RLock = _ctx.RLock
    Semaphore = _ctx.Semaphore
    Value = _ctx.Value
    reducer: ModuleType

__all__ = [
    "Array",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Condition",
    "ConnectionClosedError",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "MessageError",
    "PicklingError",
    "Pipe",
    "Pool",
    "PoolTerminatedError",
    "Process",
    "ProcessError",
    "ProcessPoolExecutor",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "StartError",
    "TaskTimeoutError",
    "TimeoutError",
    "Value",
    "WorkerLostError",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "info",
    "install",
    "log_to_stderr",
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
]

for _name in (
    "AuthenticationError",
    "BufferTooShort",
    "ConnectionClosedError",
    "MessageError",
    "PicklingError",
    "ProcessError",
    "StartError",
    "TimeoutError",
    "Process",
    "TaskTimeoutError",
    "PoolTerminatedError",
):
    globals()[_name].__module__ = __name__
del _name


_SUBMODULES = frozenset({
    "connection", "context", "dummy", "forkserver", "heap", "managers", "pool", "popen_fork", "popen_forkserver",
    "popen_spawn_posix", "process", "queues", "reduction", "resource_sharer", "resource_tracker", "shared_memory",
    "sharedctypes", "spawn", "synchronize", "util",
})  # fmt: skip


def __getattr__(name: str) -> Any:
    # reducer and the factories of later layers are resolved on first use, so that
    # ``import procly`` stays cheap for every child that pays for it.
    if name == "reducer":
        return _ctx.reducer
    if name == "WorkerLostError":  # a concurrent.futures.BrokenExecutor: see procly._errors
        from ._pool_errors import WorkerLostError

        return WorkerLostError
    if name in _SUBMODULES:
        # Submodules resolve on first use (the standard library's package has only those
        # imported that something imported).
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "install":
        from ._install import install

        return install
    if name == "ProcessPoolExecutor":
        from .futures import ProcessPoolExecutor

        return ProcessPoolExecutor
    try:
        return getattr(_ctx, name)
    except AttributeError:
        raise AttributeError(f"module 'procly' has no attribute {name!r}") from None
