"""Forkserver-method helpers (``multiprocessing.forkserver``)."""

from __future__ import annotations

from .context import _concrete_contexts

__all__ = ["set_forkserver_preload"]


def set_forkserver_preload(modules_names: list[str]) -> None:
    """Modules the fork server imports once, before forking any child."""
    _concrete_contexts["forkserver"].set_forkserver_preload(modules_names)
