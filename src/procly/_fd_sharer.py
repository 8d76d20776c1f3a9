"""Lending a descriptor to whichever process unpickles it.

A Connection pickled while a child is being started travels with the child's start
data (``_handoff``). Pickled at any other time - sent through a Pipe, a Queue or a
Manager - it needs a descriptor that the receiving process can fetch later, from a
process that is not its parent: the standard library's resource sharer.

Here the owner keeps a duplicate under a random 128-bit key and serves it once, on a
Unix socket in the abstract namespace that a daemon thread listens on (started on
first use). The receiver connects, sends the key, receives the descriptor with
``SCM_RIGHTS`` and says it got it. Only a process of the same user (``SO_PEERCRED``)
that knows the key - which travels only inside the pickle - gets the descriptor;
anything else costs one connection. Each peer is served in a thread of its own, within
``HANDSHAKE_SECONDS`` in all, and at most ``MAX_PEERS`` at once (a newcomer pushes out
the oldest): silent peers cannot hold up a borrower. A borrow that fails half way (no
acknowledgement) puts the descriptor back, so the borrower can try again. A descriptor
nobody fetches stays lent until the owner exits.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from ._errors import ProcessError

KEY_BYTES = 16
HANDSHAKE_SECONDS = 5.0
MAX_PEERS = 32  # peers served at once; a newcomer pushes out the oldest
_GOT_IT = b"\x01"


class _Peer:
    """A connection being served, as the handshake gate counts it."""

    __slots__ = ("sock", "peer", "evicted")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.peer = None  # all peers are of this user: one cap for all
        self.evicted = False


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
        from ._listener import HandshakeGate

        self._gate = HandshakeGate(MAX_PEERS, MAX_PEERS)
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
            served = _Peer(peer)
            self._gate.admit(served)
            threading.Thread(target=self._serve_one, args=(served,), name="procly-fd-sharer-peer", daemon=True).start()

    def _serve_one(self, served: _Peer) -> None:
        try:
            with served.sock:
                self._answer(served.sock)
        except OSError:
            pass  # a peer that went away, sent garbage or was too slow costs its connection only
        finally:
            self._gate.release(served)

    def _answer(self, peer: socket.socket) -> None:
        from ._fds import peer_credentials

        _, uid, _ = peer_credentials(peer)
        if uid != os.getuid():
            return
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        peer.settimeout(HANDSHAKE_SECONDS)
        key = peer.recv(KEY_BYTES, socket.MSG_WAITALL)
        with self._lock:
            fd = self._lent.pop(key, None) if len(key) == KEY_BYTES else None
        if fd is None:
            peer.sendall(b"\x00")  # unknown key: refused
            return
        taken = False
        try:
            socket.send_fds(peer, [b"\x01"], [fd])
            peer.settimeout(max(deadline - time.monotonic(), 0.001))
            taken = peer.recv(1) == _GOT_IT
        finally:
            if taken:
                os.close(fd)
            else:  # the borrower did not get it (or did not say so): lent again, for a retry
                with self._lock:
                    if self._listener.fileno() >= 0:
                        self._lent[key] = fd
                        fd = -1
                if fd >= 0:
                    os.close(fd)


def borrow(address: str, key: bytes) -> int:
    """Fetch the descriptor lent under *key* by the process listening at *address*.

    Raises:
        procly.ProcessError: the owner is gone, did not answer within
            ``HANDSHAKE_SECONDS`` (the descriptor stays lent: unpickling again retries),
            or has no such descriptor (fetched already: a lent descriptor can be
            unpickled once).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(True)
        try:
            sock.connect(address)  # blocking: with a timeout a full backlog is EAGAIN at once
        except OSError as exc:
            raise ProcessError(f"the process that pickled this connection is gone ({exc})") from None
        sock.settimeout(HANDSHAKE_SECONDS)
        try:
            sock.sendall(key)
            _, fds, _, _ = socket.recv_fds(sock, 1, 1)
            if len(fds) == 1:
                try:
                    sock.sendall(_GOT_IT)
                except OSError:
                    pass  # it has lent it again: the descriptor is ours all the same
        except TimeoutError:
            raise ProcessError(
                f"the process that pickled this connection did not hand it over within {HANDSHAKE_SECONDS} s "
                "(it stays lent: unpickling again retries)"
            ) from None
        except OSError as exc:
            raise ProcessError(
                f"the process that pickled this connection dropped the request ({exc}); "
                "it stays lent: unpickling again retries"
            ) from None
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
