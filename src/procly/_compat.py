"""Helpers for the standard library's names in procly's public modules.

``multiprocessing.context.reduction``, ``multiprocessing.queues.connection`` and the like
are submodules that the standard library's modules import and that third-party code
reaches through them. procly's modules give them lazily (a module ``__getattr__``), so
that importing one facade does not import the others.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any, Callable


def lazy_submodules(
    module_name: str, *names: str, fallback: Callable[[str], Any] | None = None
) -> Callable[[str], Any]:
    """A module ``__getattr__`` giving submodule ``procly.<name>`` for each of *names*.

    Other attributes go to *fallback* (another ``__getattr__``) or raise AttributeError.
    """
    wanted = frozenset(names)

    def __getattr__(name: str) -> Any:  # noqa: N807 - module __getattr__
        if name in wanted:
            return importlib.import_module(f"procly.{name}")
        if fallback is not None:
            return fallback(name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__
