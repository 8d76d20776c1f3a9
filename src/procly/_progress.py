"""Progress reporting for map-like Pool calls: a tqdm bar and an ``on_result`` hook.

tqdm is optional (``pip install procly[progress]``) and imported only when a call asks
for ``progress=True``.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Callable


class Progress:
    """Counts finished items of one call; updates a bar and calls ``on_result`` per item."""

    def __init__(self, total: int | None, progress: bool | str, on_result: Callable[[Any], Any] | None) -> None:
        self._bar: Any = None
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError("progress=True needs tqdm: pip install 'procly[progress]'") from None
            self._bar = tqdm(total=total, desc=progress if isinstance(progress, str) else None, unit="task")
        self._on_result = on_result
        self._lock = threading.Lock()
        self.total = total
        self.done = 0

    def add(self, values: list[Any]) -> None:
        """Items finished (called by the pool's supervisor thread)."""
        if self._on_result is not None:
            for value in values:
                try:
                    self._on_result(value)
                except Exception:  # noqa: BLE001 - a failing hook must not break the pool
                    import traceback

                    traceback.print_exc()
        with self._lock:
            self.done += len(values)
            if self._bar is not None:
                self._bar.update(len(values))

    def settle(self, success: bool, values: list[Any]) -> None:
        """A map chunk ended: count its items, and close the bar once all are in or one
        failed (called before the result is set, so the bar is complete when map returns)."""
        if success:
            self.add(values)
        if not success or self.done == self.total:
            self.close()

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def wanted(progress: bool | str, on_result: Callable[[Any], Any] | None) -> bool:
    return bool(progress) or on_result is not None
