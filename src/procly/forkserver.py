"""Forkserver-method helpers (``multiprocessing.forkserver``)."""

from __future__ import annotations

from .context import _concrete_contexts

__all__ = ["ensure_running", "get_inherited_fds", "set_forkserver_preload"]


def set_forkserver_preload(modules_names: list[str]) -> None:
    """Modules the fork server imports once, before forking any child."""
    _concrete_contexts["forkserver"].set_forkserver_preload(modules_names)


def ensure_running() -> None:
    """Start this process's fork server now if it is not running (else on first use)."""
    _concrete_contexts["forkserver"].starter.ensure_running()  # type: ignore[attr-defined]


def get_inherited_fds() -> None:
    """Kept for compatibility: procly hands descriptors to children explicitly."""
    return None


class _ForkServerView:
    """The standard library's ``forkserver._forkserver`` object, as far as tests use it."""

    def ensure_running(self) -> None:
        ensure_running()

    @property
    def _forkserver_pid(self) -> int:
        return _concrete_contexts["forkserver"].starter.ensure_running()._process.pid  # type: ignore[attr-defined]


_forkserver = _ForkServerView()
