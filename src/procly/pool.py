"""Process pools (``multiprocessing.pool``): see :mod:`procly._pool` for the design.

``Pool`` adds, beyond the standard library: ``task_timeout=`` and ``retries=`` (on the
pool and per call), ``WorkerLostError`` / ``TaskTimeoutError`` for tasks whose worker
died or was stopped, awaitable results and ``async for`` over imap iterators,
``statistics()``, and ``worker_state``: a dict in each worker that initializers and tasks
share.
"""

from ._pool import Pool as Pool
from ._pool import PoolState as PoolState
from ._pool_results import ApplyResult as ApplyResult
from ._pool_results import AsyncResult as AsyncResult
from ._pool_results import IMapIterator as IMapIterator
from ._pool_results import IMapUnorderedIterator as IMapUnorderedIterator
from ._pool_results import MapResult as MapResult
from ._pool_worker import MaybeEncodingError as MaybeEncodingError
from ._pool_worker import RemoteTraceback as RemoteTraceback
from ._pool_worker import worker_state as worker_state
from ._thread_pool import ThreadPool as ThreadPool

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

_PUBLIC = (Pool, ThreadPool, ApplyResult, MapResult, IMapIterator, IMapUnorderedIterator, RemoteTraceback)
for _obj in (*_PUBLIC, MaybeEncodingError):
    _obj.__module__ = __name__
del _obj
