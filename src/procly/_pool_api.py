"""The map-like half of the Pool API, shared by the local Pool and the Dask Pool.

A pool provides ``apply_async``, ``_map_async(func, iterable, star, ...)`` and
``_imap(iterator_cls, func, iterable, ...)``; this mixin builds the public calls on them.
"""

from __future__ import annotations

import enum

from ._pool_results import ApplyResult, IMapIterator, IMapUnorderedIterator, MapResult
from ._typing import TypeVar

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

_S = TypeVar("_S")
_T = TypeVar("_T")
_PoolT = TypeVar("_PoolT", bound="PoolAPI")


class PoolState(enum.Enum):
    RUNNING = "running"  # accepting work
    CLOSED = "closed"  # no new work; finishing what was submitted
    TERMINATED = "terminated"  # workers ended, outstanding results failed


class PoolAPI:
    """apply, map, map_async, starmap, starmap_async, imap and imap_unordered, and the
    context manager; a pool keeps its :class:`PoolState` in ``_state``."""

    _state: PoolState

    def _check_running(self) -> None:
        if self._state is not PoolState.RUNNING:
            raise ValueError("Pool not running")

    def terminate(self) -> None:
        raise NotImplementedError

    def __enter__(self: _PoolT) -> _PoolT:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def apply_async(self, func: Callable[..., _T], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None,
                    callback: Callable[[_T], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None, *,
                    task_timeout: float | None = None, retries: int | None = None) -> ApplyResult[_T]:  # fmt: skip
        raise NotImplementedError

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], star: bool, chunksize: int | None,
                   callback: Callable[[Any], Any] | None, error_callback: Callable[[BaseException], Any] | None,
                   task_timeout: float | None, retries: int | None, progress: bool | str = False,
                   on_result: Callable[[Any], Any] | None = None) -> MapResult[Any]:  # fmt: skip
        raise NotImplementedError

    def _imap(self, iterator_cls: type[IMapIterator[Any]], func: Callable[..., Any], iterable: Iterable[Any],
              chunksize: int | None, task_timeout: float | None, retries: int | None, progress: bool | str = False,
              on_result: Callable[[Any], Any] | None = None) -> IMapIterator[Any]:  # fmt: skip
        raise NotImplementedError

    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None) -> _T:
        """``apply_async(...).get()``."""
        return self.apply_async(func, args, kwds).get()

    def map_async(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = None,
                  callback: Callable[[list[_T]], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None, *,
                  task_timeout: float | None = None, retries: int | None = None, progress: bool | str = False,
                  on_result: Callable[[_T], Any] | None = None) -> MapResult[_T]:  # fmt: skip
        """Apply *func* to every item of *iterable*; return a MapResult at once.

        *progress* (True or a label) shows a tqdm bar; *on_result(value)* is called for
        every finished item, in the pool's own thread.
        """
        return self._map_async(func, iterable, False, chunksize, callback, error_callback, task_timeout, retries,
                               progress, on_result)  # fmt: skip

    def map(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = None, *,
            task_timeout: float | None = None, retries: int | None = None, progress: bool | str = False,
            on_result: Callable[[_T], Any] | None = None) -> list[_T]:  # fmt: skip
        """``[func(x) for x in iterable]``, computed by the workers, in order."""
        return self.map_async(func, iterable, chunksize, task_timeout=task_timeout, retries=retries,
                              progress=progress, on_result=on_result).get()  # fmt: skip

    def starmap_async(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]], chunksize: int | None = None,
                      callback: Callable[[list[_T]], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None, *,
                      task_timeout: float | None = None, retries: int | None = None, progress: bool | str = False,
                      on_result: Callable[[_T], Any] | None = None) -> MapResult[_T]:  # fmt: skip
        """Like map_async, calling ``func(*args)`` for each tuple of arguments."""
        return self._map_async(func, iterable, True, chunksize, callback, error_callback, task_timeout, retries,
                               progress, on_result)  # fmt: skip

    def starmap(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]], chunksize: int | None = None, *,
                task_timeout: float | None = None, retries: int | None = None, progress: bool | str = False,
                on_result: Callable[[_T], Any] | None = None) -> list[_T]:  # fmt: skip
        """``[func(*args) for args in iterable]``, computed by the workers, in order."""
        return self.starmap_async(func, iterable, chunksize, task_timeout=task_timeout, retries=retries,
                                  progress=progress, on_result=on_result).get()  # fmt: skip

    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = None, *,
             task_timeout: float | None = None, retries: int | None = None, progress: bool | str = False,
             on_result: Callable[[_T], Any] | None = None) -> IMapIterator[_T]:  # fmt: skip
        """Lazily map *func* over *iterable*; results in input order (*progress*, *on_result*: see map_async).

        The input is read lazily with a bounded look-ahead, so an endless generator works.
        """
        return self._imap(IMapIterator, func, iterable, chunksize, task_timeout, retries, progress, on_result)

    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int | None = None, *,
                       task_timeout: float | None = None, retries: int | None = None, progress: bool | str = False,
                       on_result: Callable[[_T], Any] | None = None) -> IMapIterator[_T]:  # fmt: skip
        """Lazily map *func* over *iterable*; results as they complete."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, task_timeout, retries, progress,
                          on_result)  # fmt: skip
