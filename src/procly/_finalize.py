"""Finalizers run at exit, in priority order (``multiprocessing.util.Finalize``)."""

from __future__ import annotations

import itertools
import os
import threading
import weakref

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["Finalize", "register_after_fork", "run_after_forkers", "run_finalizers"]

_registry: dict[tuple[Any, int], Finalize] = {}
_counter = itertools.count()
_after_fork: weakref.WeakValueDictionary[tuple[int, int, Callable[..., Any]], Any] = weakref.WeakValueDictionary()
_after_fork_counter = itertools.count()
_lock = threading.Lock()


class Finalize:
    """Call ``callback(*args, **kwargs)`` when *obj* is collected, or at process exit.

    Finalizers with an *exitpriority* run at exit, highest priority first (same
    priority: most recently created first). Without *obj*, *exitpriority* is required.

    Raises:
        TypeError: neither *obj* nor *exitpriority* is given.
    """

    def __init__(
        self,
        obj: Any,
        callback: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        exitpriority: int | None = None,
    ) -> None:
        if exitpriority is not None and not isinstance(exitpriority, int):
            raise TypeError(f"exitpriority ({exitpriority!r}) must be None or int, not {type(exitpriority)}")
        if obj is not None:
            self._weakref: Any = weakref.ref(obj, self)
        elif exitpriority is None:
            raise ValueError("Without object, exitpriority cannot be None")
        else:
            self._weakref = None
        self._callback: Callable[..., Any] | None = callback
        self._args = args
        self._kwargs = kwargs or {}
        self._key = (exitpriority, next(_counter))
        self._pid = os.getpid()
        _registry[self._key] = self

    def __call__(self, wr: Any = None) -> Any:
        """Run the callback once (if it has not run) and return its result."""
        try:
            del _registry[self._key]
        except KeyError:
            return None
        if self._pid != os.getpid() or self._callback is None:
            return None
        result = self._callback(*self._args, **self._kwargs)
        self._callback = self._args = self._kwargs = self._key = self._weakref = None  # type: ignore[assignment]
        return result

    def cancel(self) -> None:
        """Forget the finalizer without running it."""
        try:
            del _registry[self._key]
        except KeyError:
            pass
        else:
            self._callback = self._weakref = None

    def still_active(self) -> bool:
        """Whether the callback has neither run nor been cancelled."""
        return self._key in _registry

    def __repr__(self) -> str:
        name = getattr(self._callback, "__name__", self._callback)
        return f"<{type(self).__name__} object, callback={name}, exitpriority={self._key[0] if self._key else None}>"


def run_finalizers(minpriority: int | None = None) -> None:
    """Run finalizers whose exit priority is at least *minpriority* (all with one if None)."""
    keys = list(_registry)  # other threads may add finalizers meanwhile
    if minpriority is None:
        pending = [key for key in keys if key[0] is not None]
    else:
        pending = [key for key in keys if key[0] is not None and key[0] >= minpriority]
    for key in sorted(pending, reverse=True):
        finalizer = _registry.get(key)
        if finalizer is not None:
            try:
                finalizer()
            except Exception:
                import traceback

                traceback.print_exc()
    if minpriority is None:
        _registry.clear()


def register_after_fork(obj: Any, func: Callable[[Any], Any]) -> None:
    """Call ``func(obj)`` in every child started by procly's fork method while *obj* lives."""
    _after_fork[(next(_after_fork_counter), id(obj), func)] = obj


def run_after_forkers() -> None:
    """In a forked child: drop inherited finalizers and run the after-fork callbacks."""
    _registry.clear()
    for (_, _, func), obj in sorted(_after_fork.items()):
        try:
            func(obj)
        except Exception:
            import traceback

            traceback.print_exc()
