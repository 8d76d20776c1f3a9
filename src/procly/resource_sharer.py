"""The process's descriptor lending desk (``multiprocessing.resource_sharer``).

Connections and sockets pickled outside process start-up are lent through it; see
:mod:`procly._fd_sharer`.
"""

from __future__ import annotations

from . import _state
from ._compat import lazy_submodules as _lazy_submodules

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


class DupFd:
    """A duplicate of a descriptor, lent to whichever process unpickles this object.

    ``detach()`` (in this process or any other of the same user that received the
    pickle) fetches the descriptor from this process's lending desk, once.
    """

    def __init__(self, fd: int) -> None:
        sharer = _state.get().fd_sharer()
        self._token = (sharer.address, sharer.lend(fd))

    def detach(self) -> int:
        """The descriptor (the caller owns it).

        Raises:
            procly.ProcessError: the lending process is gone, or it was fetched already.
        """
        from ._fd_sharer import borrow

        return borrow(*self._token)


__getattr__ = _lazy_submodules(__name__, "process", "reduction", "util")


__all__ += ["DupFd"]
