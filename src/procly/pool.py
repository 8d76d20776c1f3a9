"""Process pools (``multiprocessing.pool``): see :mod:`procly._pool` for the design.

``Pool`` adds, beyond the standard library: ``task_timeout=`` and ``retries=`` (on the
pool and per call), ``WorkerLostError`` / ``TaskTimeoutError`` for tasks whose worker
died or was stopped, awaitable results and ``async for`` over imap iterators,
``statistics()``, and ``worker_state``: a dict in each worker that initializers and tasks
share.
"""

from __future__ import annotations

from ._errors import RemoteTraceback as RemoteTraceback
from ._pool import Pool as Pool
from ._pool_api import PoolState as PoolState
from ._pool_results import ApplyResult as ApplyResult
from ._pool_results import AsyncResult as AsyncResult
from ._pool_results import IMapIterator as IMapIterator
from ._pool_results import IMapUnorderedIterator as IMapUnorderedIterator
from ._pool_results import MapResult as MapResult
from ._pool_worker import MaybeEncodingError as MaybeEncodingError
from ._pool_worker import worker_state as worker_state

# The standard library's names for the states in ``Pool._state``.
RUN = PoolState.RUNNING
CLOSE = PoolState.CLOSED
TERMINATE = PoolState.TERMINATED

__all__ = [
    "CLOSE",
    "RUN",
    "TERMINATE",
    "ApplyResult",
    "AsyncResult",
    "IMapIterator",
    "IMapUnorderedIterator",
    "MapResult",
    "MaybeEncodingError",
    "Pool",
    "PoolState",
    "RemoteTraceback",
    "ThreadPool",
    "worker_state",
]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any as _Any

    from ._thread_pool import ThreadPool as ThreadPool

_PUBLIC = (Pool, ApplyResult, MapResult, IMapIterator, IMapUnorderedIterator, RemoteTraceback)
for _obj in (*_PUBLIC, MaybeEncodingError):
    _obj.__module__ = __name__
del _obj


# --------------------------------------------------------------------------- standard library names
# The helpers of the standard library's pool module, for code that builds its own worker
# loop or wraps exceptions the same way. procly's Pool itself does not use them.

import itertools as _itertools  # noqa: E402

from ._compat import lazy_submodules as _lazy_submodules  # noqa: E402
from ._errors import TimeoutError as TimeoutError  # noqa: E402
from ._errors import rebuild_exception as _rebuild_exception  # noqa: E402
from ._wait import wait as wait  # noqa: E402
from .context import _default_context  # noqa: E402

INIT = "INIT"  # the standard library's state of a pool being built (procly's are PoolState)
job_counter = _itertools.count()
get_context = _default_context.get_context


def mapstar(args: tuple[_Any, _Any]) -> list[_Any]:
    """``list(map(func, items))`` for ``args == (func, items)``."""
    return list(map(*args))


def starmapstar(args: tuple[_Any, _Any]) -> list[_Any]:
    """``list(itertools.starmap(func, items))`` for ``args == (func, items)``."""
    return list(_itertools.starmap(args[0], args[1]))


def rebuild_exc(exc: BaseException, tb: str) -> BaseException:
    """*exc* with the worker's traceback text attached as its ``__cause__`` (a RemoteTraceback)."""
    return _rebuild_exception(exc, tb)


class ExceptionWithTraceback:
    """An exception and its traceback, pickled so that the receiver gets the exception
    with the traceback text as ``__cause__`` (see :func:`rebuild_exc`)."""

    def __init__(self, exc: BaseException, tb: _Any) -> None:
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, tb))
        self.exc = exc
        self.tb = text

    def __reduce__(self) -> _Any:
        return rebuild_exc, (self.exc, self.tb)


def worker(
    inqueue: _Any,
    outqueue: _Any,
    initializer: _Any = None,
    initargs: tuple[_Any, ...] = (),
    maxtasks: int | None = None,
    wrap_exception: bool = False,
) -> None:
    """The standard library's pool worker loop over two queues.

    Runs ``initializer(*initargs)``, then gets ``(job, i, func, args, kwds)`` tasks from
    *inqueue* until ``None`` (or *maxtasks* tasks, or the queue is closed) and puts
    ``(job, i, (True, result))`` or ``(job, i, (False, exception))`` on *outqueue*. A
    result that cannot be put is replaced by a :class:`MaybeEncodingError`.

    Raises:
        AssertionError: *maxtasks* is not None or a positive int.
    """
    if maxtasks is not None and not (isinstance(maxtasks, int) and maxtasks >= 1):
        raise AssertionError(f"Maxtasks {maxtasks!r} is not valid")
    if initializer is not None:
        initializer(*initargs)
    completed = 0
    while maxtasks is None or completed < maxtasks:
        try:
            task = inqueue.get()
        except (EOFError, OSError):
            break
        if task is None:
            break
        job, i, func, args, kwds = task
        try:
            result = (True, func(*args, **kwds))
        except Exception as exc:  # noqa: BLE001 - the task's error is its result
            if wrap_exception:
                exc = ExceptionWithTraceback(exc, exc.__traceback__)  # type: ignore[assignment]
            result = (False, exc)
        try:
            outqueue.put((job, i, result))
        except Exception as exc:  # noqa: BLE001 - the result could not be sent
            outqueue.put((job, i, (False, MaybeEncodingError(exc, result[1]))))
        task = job = result = func = args = kwds = None  # type: ignore[assignment]
        completed += 1


def _thread_pool(name: str) -> _Any:
    # ThreadPool is built on concurrent.futures: imported when asked for.
    if name != "ThreadPool":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ._thread_pool import ThreadPool

    ThreadPool.__module__ = __name__
    return ThreadPool


__getattr__ = _lazy_submodules(__name__, "util", fallback=_thread_pool)
