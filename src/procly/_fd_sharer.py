"""Lending a descriptor to whichever process unpickles it.

A Connection pickled while a child is being started travels with the child's start
data (``_handoff``). Pickled at any other time - sent through a Pipe, a Queue or a
Manager - it needs a descriptor that the receiving process can fetch later, from a
process that is not its parent: the standard library's resource sharer.

Here the owner keeps a duplicate under a random 128-bit key and serves it once, on a
Unix socket in the abstract namespace that a daemon thread listens on (started on
first use). The receiver connects, sends the key and receives the descriptor with
``SCM_RIGHTS``. Only a process of the same user (``SO_PEERCRED``) that knows the key -
which travels only inside the pickle - gets the descriptor; anything else costs one
connection. A descriptor nobody fetches stays lent until the owner exits.
"""

from __future__ import annotations

import os
import socket
import threading

from ._errors import ProcessError

KEY_BYTES = 16
HANDSHAKE_SECONDS = 5.0


class FdSharer:
    """This process's lending desk (one per process, created on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lent: dict[bytes, int] = {}
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.address = f"\0procly-fd-{os.getpid()}-{os.urandom(8).hex()}"
        self._listener.bind(self.address)
        self._listener.listen(64)
        self.pid = os.getpid()
        threading.Thread(target=self._serve, name="procly-fd-sharer", daemon=True).start()

    def lend(self, fd: int) -> bytes:
        """Keep a duplicate of *fd* for one borrower; return the key that fetches it."""
        key = os.urandom(KEY_BYTES)
        with self._lock:
            self._lent[key] = os.dup(fd)
        return key

    def stop(self) -> None:
        """Stop lending: the listening thread ends and unfetched descriptors are closed."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self._drop()

    def _drop(self) -> None:
        """Close this process's listening socket and the duplicates it holds (no shutdown:
        in a forked child the socket is still the parent's)."""
        self._listener.close()
        with self._lock:
            lent, self._lent = list(self._lent.values()), {}
        for fd in lent:
            os.close(fd)

    def _serve(self) -> None:
        while True:
            try:
                peer, _ = self._listener.accept()
            except OSError:
                return
            with peer:
                try:
                    self._answer(peer)
                except OSError:
                    pass  # a peer that went away or sent garbage costs its connection only

    def _answer(self, peer: socket.socket) -> None:
        from ._connection import peer_credentials

        _, uid, _ = peer_credentials(peer)
        if uid != os.getuid():
            return
        peer.settimeout(HANDSHAKE_SECONDS)
        key = peer.recv(KEY_BYTES, socket.MSG_WAITALL)
        with self._lock:
            fd = self._lent.pop(key, None) if len(key) == KEY_BYTES else None
        if fd is None:
            peer.sendall(b"\x00")  # unknown key: refused
            return
        try:
            socket.send_fds(peer, [b"\x01"], [fd])
        finally:
            os.close(fd)


def borrow(address: str, key: bytes) -> int:
    """Fetch the descriptor lent under *key* by the process listening at *address*.

    Raises:
        procly.ProcessError: the owner is gone, or it has no such descriptor (fetched
            already: a lent descriptor can be unpickled once).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(HANDSHAKE_SECONDS)
        try:
            sock.connect(address)
            sock.sendall(key)
            _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        except OSError as exc:
            raise ProcessError(f"the process that pickled this connection is gone ({exc})") from None
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ProcessError("this pickled connection was unpickled already (each pickle can be unpickled once)")
    return fds[0]


def reduce_fd(fd: int, what: str) -> tuple:
    """How to pickle descriptor *fd*: with a child's start data, or lent (see module doc).

    Returns arguments for :func:`rebuild_fd`.
    """
    from . import _handoff, _state

    if _handoff.is_collecting():
        return (_handoff.share_fd(fd, what),)
    sharer = _state.get().fd_sharer()
    return (sharer.address, sharer.lend(fd))


def rebuild_fd(*token: object) -> int:
    """The descriptor pickled by :func:`reduce_fd`, owned by the caller."""
    if len(token) == 1:
        return token[0]  # type: ignore[return-value]  # a SharedFd already unpickled to a duplicate
    return borrow(*token)  # type: ignore[arg-type]


def _forget_in_child() -> None:
    # A forked child must not hold the parent's listening socket and lent duplicates
    # (the parent's lending thread is not running here); it lends with its own desk.
    # (Not _state.get(): in a child that would replace the parent's state before other
    # at-fork hooks, such as the one closing the lifeline's write end, have seen it.)
    from . import _state

    state = _state._state
    sharer = state._fd_sharer if state is not None else None
    if sharer is not None and sharer.pid != os.getpid():
        state._fd_sharer = None
        sharer._drop()


os.register_at_fork(after_in_child=_forget_in_child)
