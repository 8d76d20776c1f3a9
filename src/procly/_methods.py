"""The start-method registry: the methods there are, the default one, their starters.

A leaf: the lower layers (``_start/``, a child setting itself up) read and set the
default method here without importing the ``context`` facade, which builds the
contexts on top of this registry.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any

__all__ = ["METHODS", "adopt_parents", "choose", "chosen", "default_method", "starter"]

METHODS = ("fork", "spawn", "forkserver")

# Each method's starter, imported on first use, so that ``import procly`` does not load
# what the other methods need (subprocess, tempfile...).
_STARTER_CLASSES = {
    "fork": ("._start.fork", "ForkStarter"),
    "spawn": ("._start.spawn", "SpawnStarter"),
    "forkserver": ("._start.forkserver", "ForkServerStarter"),
}
_starters: dict[str, Any] = {}
_chosen: str | None = None


def default_method() -> str:
    """The method used when none is chosen: the running Python's own default (Linux)."""
    return "forkserver" if sys.version_info >= (3, 14) else "fork"


def chosen() -> str | None:
    """The default method chosen for this process, or None while none is."""
    return _chosen


def choose(method: str | None) -> None:
    """Make *method* this process's default (None: undecided again). Checks nothing:
    ``procly.set_start_method()`` does."""
    global _chosen
    _chosen = method


def adopt_parents(method: str) -> None:
    """In a child: use the parent's *method* unless one was already chosen here."""
    if _chosen is None and method in METHODS:
        choose(method)


def starter(method: str) -> Any:
    """The starter of *method* (created on first use).

    Raises:
        KeyError: *method* is not one of METHODS.
    """
    obj = _starters.get(method)
    if obj is None:
        module, name = _STARTER_CLASSES[method]
        obj = _starters[method] = getattr(importlib.import_module(module, __package__), name)()
    return obj
