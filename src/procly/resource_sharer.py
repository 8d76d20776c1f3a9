"""The process's descriptor lending desk (``multiprocessing.resource_sharer``).

Connections and sockets pickled outside process start-up are lent through it; see
:mod:`procly._fd_sharer`.
"""

from __future__ import annotations

from . import _state

__all__ = ["stop"]


def stop(timeout: float | None = None) -> None:
    """Stop lending descriptors in this process (closing those nobody fetched).

    A later pickled Connection starts a new lending desk. *timeout* is accepted for
    the standard library's signature; stopping does not wait.
    """
    state = _state.get()
    with state.lock:
        sharer, state._fd_sharer = state._fd_sharer, None
    if sharer is not None:
        sharer.stop()
