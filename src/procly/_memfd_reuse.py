"""Reusing the memfds that carry big message buffers over a Connection.

A fresh memfd costs far more than the copy into it: each 4 KiB page is allocated,
zeroed and charged to the cgroup on the first write, and freed again (page by page)
when the last descriptor and mapping go. On this project's VM, making and filling an
8 MiB memfd took 4.3 ms and freeing it 1.5 ms; refilling one that exists took 1.4 ms.

So the sender of a memfd frame keeps the memfd under a token that travels with the
frame. The receiver maps it; once the last buffer over that mapping is gone, it names
the token back on its next frame, and the sender writes a later message into the same
pages. Each end of a duplex Connection plays both parts (a pool worker's arguments come
one way, its results the other).

Safety: a memfd is reused only after its receiver's mapping is gone. A mapping still
alive when its process forks may live on in the child, so its token is never named
back. A forked child drops what its parent's connection kept. Each connection keeps a
bounded number of memfds; the rest are closed.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import random
import threading
import weakref
from typing import Any

MAX_LENT = 16  # memfds a sender keeps while their receiver may still map them
MAX_SPARE = 4  # memfds named back and kept for reuse
MAX_SPARE_BYTES = 256 * 1024 * 1024
MAX_NAMED = 64  # tokens named back in one frame

# Bumped before every fork: a mapping made before a fork is never named back.
_fork_generation = [0]


def _count_fork() -> None:
    _fork_generation[0] += 1


os.register_at_fork(before=_count_fork)


class MemfdReuse:
    """One Connection's memfds: those it lent to its peer, those it got back, and the
    tokens of the peer's memfds whose mapping here has ended."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._lent: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()  # token -> (fd, size)
        self._spare: list[tuple[int, int]] = []  # (size, fd)
        self._spent: collections.deque[int] = collections.deque()  # the peer's tokens, to name back
        self._watched: dict[weakref.ref, tuple[int, int]] = {}  # mapping -> (token, fork generation)
        self._tokens = itertools.count(random.getrandbits(62) + 1)

    def _ours(self) -> bool:
        """False in a forked child: what the parent kept is dropped (this copy's descriptors closed)."""
        if self.pid == os.getpid():
            return True
        self.pid = os.getpid()
        self._lock = threading.Lock()
        lent, spare = list(self._lent.values()), self._spare
        self._lent, self._spare = collections.OrderedDict(), []
        self._spent.clear()
        self._watched.clear()
        for fd, _ in lent:
            os.close(fd)
        for _, fd in spare:
            os.close(fd)
        return False

    # -- sending ---------------------------------------------------------------

    def memfd_for(self, size: int) -> tuple[int, int]:
        """A memfd of at least *size* bytes to write a message into (one named back, or a
        new one) and its size."""
        self._ours()
        with self._lock:
            fits = [entry for entry in self._spare if entry[0] >= size]
            entry = min(fits) if fits else max(self._spare, default=None)
            if entry is not None:
                self._spare.remove(entry)
        if entry is None:
            fd = os.memfd_create("procly-message", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            except BaseException:
                os.close(fd)
                raise
            return fd, size
        have, fd = entry
        if have < size or have > 2 * size + (1 << 20):
            try:
                os.ftruncate(fd, size)  # grown: pages come on write; shrunk: the tail is freed
            except BaseException:
                os.close(fd)
                raise
            have = size
        return fd, have

    def lend(self, fd: int, size: int) -> int:
        """Take *fd* (a memfd of *size* bytes, about to be sent) and return the token its
        frame carries."""
        token = next(self._tokens)
        with self._lock:
            self._lent[token] = (fd, size)
            dropped = self._lent.popitem(last=False)[1] if len(self._lent) > MAX_LENT else None
        if dropped is not None:
            os.close(dropped[0])  # its receiver is keeping it (or never names tokens back)
        return token

    def named_back(self, tokens: list[int]) -> None:
        """The peer's mappings of these memfds are gone: keep them for reuse."""
        if not self._ours():
            return
        closing = []
        with self._lock:
            for token in tokens:
                entry = self._lent.pop(token, None)
                if entry is None:
                    continue  # unknown (or already dropped): nothing to do
                fd, size = entry
                self._spare.append((size, fd))
            self._spare.sort()
            while len(self._spare) > MAX_SPARE or sum(s for s, _ in self._spare) > MAX_SPARE_BYTES:
                closing.append(self._spare.pop()[1])  # the biggest go first
        for fd in closing:
            os.close(fd)

    # -- receiving -------------------------------------------------------------

    def watch(self, mapping: Any, token: int) -> None:
        """Name *token* back once *mapping* (the mmap of a received memfd) is gone."""
        if not self._ours():
            return
        ref = weakref.ref(mapping, functools.partial(_mapping_gone, weakref.ref(self)))
        self._watched[ref] = (token, _fork_generation[0])

    def spent(self) -> list[int]:
        """Tokens to name back with the next frame (taken: each is named once)."""
        if not self._spent or not self._ours():
            return []
        tokens: list[int] = []
        while self._spent and len(tokens) < MAX_NAMED:
            tokens.append(self._spent.popleft())
        return tokens

    def close(self) -> None:
        """Close every memfd kept (the connection is closing)."""
        if not self._ours():
            return
        with self._lock:
            fds = [fd for fd, _ in self._lent.values()] + [fd for _, fd in self._spare]
            self._lent.clear()
            self._spare = []
            self._watched.clear()
            self._spent.clear()
        for fd in fds:
            os.close(fd)


def _mapping_gone(owner: weakref.ref, ref: weakref.ref) -> None:
    reuse = owner()
    if reuse is None:
        return
    token, generation = reuse._watched.pop(ref, (0, -1))
    if token and generation == _fork_generation[0] and reuse.pid == os.getpid():
        reuse._spent.append(token)
