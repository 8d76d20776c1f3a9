"""What Pool calls return: AsyncResult, MapResult and the imap iterators.

Results are filled in by the pool's supervisor thread (``_set`` / ``_set_chunk``) and
read by user threads; callbacks run in the supervisor thread, as in the standard
library, so they should be quick.
"""

from __future__ import annotations

import _thread
import collections
import threading
import time

from ._errors import TimeoutError
from ._typing import Generic, TypeVar

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Callable, Generator

__all__ = ["ApplyResult", "AsyncResult", "IMapIterator", "IMapUnorderedIterator", "MapResult"]

_T = TypeVar("_T")

SERVE_SECONDS = 0.002  # how long a waiting thread may read its own reply (see ApplyResult._served)


def serve_first(serve: Callable[[float], Any] | None, done: bool, timeout: float | None) -> float | None:
    """Before a wait of *timeout* seconds (None: no limit) for a call's outcome, let
    *serve* read its reply in this thread for up to SERVE_SECONDS of it, unless there is
    nothing to serve or the outcome is in (*done*); return what is left of *timeout*."""
    if serve is None or done:
        return timeout
    if timeout is None:
        serve(SERVE_SECONDS)
        return None
    if timeout <= 0:
        return timeout
    began = time.monotonic()
    serve(min(timeout, SERVE_SECONDS))
    return max(0.0, timeout - (time.monotonic() - began))


class _Gate:
    """A one-shot ``threading.Event``: closed until ``set()``, then open for good.

    A result is made for every call, and an Event (a Condition over a lock) took longer
    to make here than the rest of ``apply_async``'s own work put together; this is one
    lock, held until the gate opens, and each waiter lets the next one through.
    """

    __slots__ = ("_lock", "_open")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._open = False

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        """Open the gate (once; later calls do nothing)."""
        if self._open:
            return
        try:
            # Open before the release: a waiter that gets the lock then sees it open, even
            # if it is interrupted before it can tell that it got it (see wait()).
            self._open = True
        finally:
            try:
                self._lock.release()
            except RuntimeError:  # another thread opened it at the same moment
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the gate is open, at most *timeout* seconds; whether it is."""
        if self._open:
            return True
        acquired = False
        try:
            acquired = self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout))
        finally:
            # The next waiter's turn. Once the gate is open the lock guards nothing, so
            # this also releases when the acquire's result was lost to an interruption
            # (a KeyboardInterrupt raised as it returned): a release too many only lets a
            # waiter through sooner, and one held for ever would keep them all waiting.
            if acquired or self._open:
                try:
                    self._lock.release()
                except RuntimeError:  # released already by a set() or a waiter racing this one
                    pass
        return acquired or self._open


class ApplyResult(Generic[_T]):
    """The result of ``apply_async`` (``multiprocessing.pool.AsyncResult``)."""

    def __init__(
        self,
        callback: Callable[[_T], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self._event = _Gate()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None
        # Set by the pool: stops the call's work when an awaiting asyncio task is cancelled.
        self._on_cancel: Callable[[], Any] | None = None
        # Set by the pool: reads the reply in the waiting thread, for up to the seconds
        # given (see Supervisor.serve_reply).
        self._serve: Callable[[float], Any] | None = None

    def ready(self) -> bool:
        """Whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call completed without raising.

        Raises:
            ValueError: the result is not ready yet.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or *timeout* seconds pass."""
        self._event.wait(self._served(timeout))

    def _served(self, timeout: float | None) -> float | None:
        """Read the reply here for a while if the pool allows it; the timeout left."""
        return serve_first(self._serve, self._event.is_set(), timeout)

    def get(self, timeout: float | None = None) -> _T:
        """The call's return value, or its exception raised here.

        Raises:
            procly.TimeoutError: not ready within *timeout* seconds (the task goes on).
            Exception: whatever the task raised, with the worker's traceback as
                ``__cause__``; procly.WorkerLostError / TaskTimeoutError when the
                worker died or was stopped.
        """
        # (Spinning here before sleeping was measured slower: it takes the GIL from the
        # supervisor thread that is about to deliver the result.)
        if not self._event.wait(self._served(timeout)):
            raise TimeoutError(f"no result within {timeout} seconds")
        if self._success:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def __await__(self) -> Generator[Any, None, _T]:
        """``await result`` in asyncio, without blocking the event loop."""
        import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle() -> None:
            if future.done():
                return
            if self._success:
                future.set_result(self._value)
            else:
                future.set_exception(self._value)

        def when_ready() -> None:
            self.wait()  # (may read the reply itself, as get() does)
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle)

        def cancel_work(done: Any) -> None:
            # The awaiting task was cancelled: cancel the work too, not just the wait.
            if done.cancelled() and not self.ready() and self._on_cancel is not None:
                self._on_cancel()

        future.add_done_callback(cancel_work)
        threading.Thread(target=when_ready, daemon=True).start()
        return future.__await__()

    def _set(self, success: bool, value: Any) -> None:
        self._success, self._value = success, value
        # Nothing left to cancel: let go of the tasks (they refer back to this result, a
        # cycle that would keep both, and whatever the callbacks hold, until a collection).
        self._on_cancel = self._serve = None
        callback = self._callback if success else self._error_callback
        if callback is not None:
            try:
                callback(value)
            except Exception:  # noqa: BLE001 - a failing callback must not kill the pool
                import traceback

                traceback.print_exc()
        self._event.set()


AsyncResult = ApplyResult


class MapResult(ApplyResult[list[_T]]):
    """The result of ``map_async``: a list filled chunk by chunk; the first error wins."""

    def __init__(
        self,
        length: int,
        chunk_starts: list[int],
        callback: Callable[[list[_T]], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> None:
        super().__init__(callback, error_callback)
        self._values: list[Any] = [None] * length
        self._starts = chunk_starts
        self._remaining = len(chunk_starts)
        self._lock = threading.Lock()
        if length == 0:
            self._set(True, [])

    def _set_chunk(self, index: int, success: bool, values: Any) -> None:
        with self._lock:
            if self._remaining <= 0:
                return  # complete, or failed already
            if success:
                start = self._starts[index]
                self._values[start : start + len(values)] = values
                self._remaining -= 1
                if self._remaining:
                    return
                values = self._values
            else:
                self._remaining = -1
        self._set(success, values)


class IMapIterator(Generic[_T]):
    """Results of ``imap`` in input order; ``next(timeout)`` as in the standard library."""

    def __init__(self, on_consumed: Callable[[], Any] | None = None) -> None:
        self._on_consumed = on_consumed  # gives the producer room for one more item
        self._cond = threading.Condition(threading.Lock())
        self._ready: dict[int, tuple[bool, Any]] = {}
        self._next_index = 0
        self._length: int | None = None  # known once the input is exhausted
        self._items: collections.deque[tuple[bool, Any]] = collections.deque()

    def __iter__(self) -> IMapIterator[_T]:
        return self

    def next(self, timeout: float | None = None) -> _T:
        """The next result, waiting up to *timeout* seconds.

        Raises:
            StopIteration: all results were returned.
            procly.TimeoutError: none arrived in time.
        """
        with self._cond:
            if not self._items and not self._finished():
                self._cond.wait_for(lambda: self._items or self._finished(), timeout)
            if not self._items:
                if self._finished():
                    raise StopIteration
                raise TimeoutError(f"no result within {timeout} seconds")
            success, value = self._items.popleft()
        if self._on_consumed is not None:
            self._on_consumed()
        if success:
            return value  # type: ignore[no-any-return]
        raise value

    __next__ = next

    def _finished(self) -> bool:
        return self._length is not None and self._next_index >= self._length and not self._items

    def _set_item(self, index: int, success: bool, value: Any) -> None:
        with self._cond:
            self._ready[index] = (success, value)
            while self._next_index in self._ready:
                self._items.append(self._ready.pop(self._next_index))
                self._next_index += 1
            self._cond.notify_all()

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            self._cond.notify_all()

    def __aiter__(self) -> _AsyncIterator[_T]:
        return _AsyncIterator(self)


class IMapUnorderedIterator(IMapIterator[_T]):
    """Results of ``imap_unordered``, as they complete."""

    def _set_item(self, index: int, success: bool, value: Any) -> None:
        with self._cond:
            self._items.append((success, value))
            self._next_index += 1
            self._cond.notify_all()


#: An adaptive imap chunk is sent once reading it has taken this long.
PARTIAL_CHUNK_SECONDS = 0.005


class LookAhead:
    """How far an imap feeder may read its input ahead of the caller: items that were
    read but not yet returned to the caller, at most *size* of them.

    ``weigh()`` lowers that bound when items are big (arrays, say): the input read ahead
    then stays near *budget* bytes, but never under *least* items, which keeps every
    worker busy. ``open()`` lifts the bound for good: the pool is being joined, so the
    input must be read to its end for the pool to finish (results stay readable
    afterwards, as in the standard library). ``stop()`` ends the feeder: the pool was
    terminated.
    """

    def __init__(self, size: int, least: int | None = None, budget: int | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._size = size
        self._least = min(size, least if least is not None else size)
        self._budget = budget
        self._limit = size
        self._taken = 0
        self._opened = False
        self.stopped = False

    def _room(self) -> bool:
        return self._taken < self._limit or self._opened or self.stopped

    def take(self) -> bool:
        """Wait for room for one more item; False if the feeder must stop."""
        with self._cond:
            if not self._room():
                self._cond.wait_for(self._room)
            if self.stopped:
                return False
            self._taken += 1
            return True

    def give(self) -> None:
        """The caller consumed one item."""
        with self._cond:
            self._taken -= 1
            if self._taken == self._limit - 1:
                self._cond.notify()

    def weigh(self, item_bytes: float) -> None:
        """Items of the input cost about *item_bytes* each once pickled: fit the bound."""
        if self._budget is None or item_bytes <= 0:
            return
        with self._cond:
            grown = self._limit
            self._limit = max(self._least, min(self._size, int(self._budget / item_bytes)))
            if self._limit > grown:
                self._cond.notify()

    def open(self) -> None:
        with self._cond:
            self._opened = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()


def feed_lazily(
    result: IMapIterator[Any],
    iterator: Any,
    chunksize: int | Callable[[], int],
    window: LookAhead,
    submit: Callable[[int, list[Any], Callable[[bool, Any], None]], int | None],
) -> None:
    """Read *iterator* in chunks as *window* allows and hand each chunk to *submit*.

    *chunksize* is a number, or a callable asked before each chunk (adaptive chunks:
    such a chunk also goes out as soon as reading it has taken PARTIAL_CHUNK_SECONDS,
    so a slow input never holds back results).

    *window* counts items the caller has not consumed yet (``result`` gives one back per
    item it returns), so the input is read only as fast as results are used: an
    endless generator runs in bounded memory. *submit(start, chunk, sink)* starts the
    work and returns the chunk's pickled size in bytes (or None), which sizes *window*;
    *sink(success, values)* fills the chunk's places in *result*. An exception
    raised by the input itself takes the place of the chunk it cut short and ends the input.
    Runs in a thread of its own; returns when the input ends or the window is stopped.
    """
    position = 0
    while not window.stopped:
        size = chunksize() if callable(chunksize) else chunksize
        chunk, ended = _read_chunk(iterator, size, window, adaptive=callable(chunksize))
        if ended is not None and not isinstance(ended, StopIteration):
            # The input itself raised: the error takes the place of the chunk it cut
            # short, whose items are dropped, as the standard library does.
            result._set_item(position, False, ended)
            position += 1
            break
        if chunk:
            _submit_chunk(result, position, chunk, window, submit)
            position += len(chunk)
        if ended is not None:
            break
    result._set_length(position)


def _read_chunk(iterator: Any, size: int, window: LookAhead, adaptive: bool) -> tuple[list[Any], Exception | None]:
    """Up to *size* items, as *window* allows, and what ended the input: None while it
    goes on, StopIteration at its end (or when the window stopped), or what it raised."""
    chunk: list[Any] = []
    began = time.monotonic()
    try:
        for _ in range(size):
            if not window.take():
                return chunk, StopIteration()
            chunk.append(next(iterator))
            if adaptive and time.monotonic() - began > PARTIAL_CHUNK_SECONDS:
                break
    except Exception as exc:  # noqa: BLE001 - StopIteration, or the input's own error
        return chunk, exc
    return chunk, None


def _submit_chunk(
    result: IMapIterator[Any],
    start: int,
    chunk: list[Any],
    window: LookAhead,
    submit: Callable[[int, list[Any], Callable[[bool, Any], None]], int | None],
) -> None:
    def sink(success: bool, values: Any, n: int = len(chunk)) -> None:
        for i in range(n):
            result._set_item(start + i, success, values[i] if success else values)

    try:
        nbytes = submit(start, chunk, sink)
    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable item fails its own places
        sink(False, exc)
    else:
        if nbytes is not None:
            window.weigh(nbytes / len(chunk))


class _AsyncIterator(Generic[_T]):
    """``async for`` over an imap iterator, waiting in a thread."""

    def __init__(self, iterator: IMapIterator[_T]) -> None:
        self._iterator = iterator

    def __aiter__(self) -> _AsyncIterator[_T]:
        return self

    async def __anext__(self) -> _T:
        import asyncio

        item = await asyncio.to_thread(self._next_or_end)
        if item is _END:
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    def _next_or_end(self) -> Any:
        # StopIteration cannot travel through a Future: turn it into a marker.
        try:
            return self._iterator.next()
        except StopIteration:
            return _END


_END = object()
