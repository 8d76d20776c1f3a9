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
import mmap
import os
import threading
import weakref

from ._fds import pwrite_all

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any

PAGE = 4096  # big buffers in a memfd start at a multiple of this (see buffer_layout)
MAX_LENT = 16  # memfds a sender keeps while their receiver may still map them
MAX_SPARE = 4  # memfds named back and kept for reuse, per connection
SPARE_BUDGET_BYTES = 256 * 1024 * 1024  # ... and their bytes, over all of this process's connections
MAX_NAMED = 64  # tokens named back in one frame


class _SpareBudget:
    """The bytes of spare memfds this process keeps, over all its connections: an idle
    pool of many workers must not sit on gigabytes after one burst of big messages."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.lock = threading.Lock()

    def take(self, nbytes: int) -> bool:
        with self.lock:
            if self.used + nbytes > self.limit:
                return False
            self.used += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self.lock:
            self.used = max(0, self.used - nbytes)

    def reset_in_child(self) -> None:
        self.used = 0  # the child drops what its parent's connections kept
        self.lock = threading.Lock()


_budget = _SpareBudget(SPARE_BUDGET_BYTES)

# Bumped before every fork: a mapping made before a fork is never named back.
_fork_generation = [0]


def _count_fork() -> None:
    _fork_generation[0] += 1


os.register_at_fork(before=_count_fork, after_in_child=_budget.reset_in_child)


def buffer_layout(sizes: list[int]) -> tuple[list[int], int]:
    """Where buffers of *sizes* bytes start in a memfd, one after another from 0, and
    the memfd's size: a buffer of a page or more starts on a page boundary.

    The kernel copies a ``write`` with ``rep movsb``; when the destination runs a few
    bytes ahead of the source modulo 4 KiB, every load waits on the store just before
    it (4K aliasing): 1 MiB took 0.55-0.76 ms instead of 0.14 on this project's VM. A
    big ``bytes`` has its data 48 bytes into a page (a fresh array, 16), so from a page
    boundary it cannot be hit (a source a few bytes short of a page end, as a slice
    can be, still may), and an array rebuilt over a mapping of the memfd is aligned.
    The gap costs nothing (a hole, or stale bytes nobody reads); smaller buffers are
    packed, where a gap would cost more than the copy."""
    starts, end = [], 0
    for size in sizes:
        start = -(-end // PAGE) * PAGE if size >= PAGE else end
        starts.append(start)
        end = start + size
    return starts, end


class Memfd:
    """A memfd that this end writes messages into. Once it is reused, a shared mapping of
    it is kept too: copying into mapped pages costs a quarter of ``pwrite`` (which looks
    up every page), 0.33 ms against 1.8 ms for 8 MiB here."""

    __slots__ = ("fd", "size", "mapping")

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("procly-message", os.MFD_CLOEXEC)
        self.size = size
        self.mapping: mmap.mmap | None = None
        try:
            os.ftruncate(self.fd, size)
        except BaseException:
            self.close()
            raise

    def resize(self, size: int) -> None:
        """Grow (pages come on write) or shrink (the tail is freed) to *size* bytes."""
        self.unmap()
        os.ftruncate(self.fd, size)
        self.size = size

    def map(self) -> None:
        """Keep a shared mapping, its page tables filled in one go (the pages exist)."""
        if self.mapping is None and self.size:
            self.mapping = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)

    def unmap(self) -> None:
        mapping, self.mapping = self.mapping, None
        if mapping is not None:
            mapping.close()

    def write(self, buffers: list[memoryview]) -> None:
        """Write *buffers* where buffer_layout() puts them (one copy)."""
        views = [buf.cast("B") if buf.ndim != 1 or buf.format != "B" else buf for buf in buffers]
        starts, _ = buffer_layout([len(view) for view in views])
        if self.mapping is not None:
            with memoryview(self.mapping) as whole:
                for view, start in zip(views, starts, strict=True):
                    whole[start : start + len(view)] = view
            return
        for view, start in zip(views, starts, strict=True):
            pwrite_all(self.fd, view, start)

    def close(self) -> None:
        self.unmap()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MemfdReuse:
    """One Connection's memfds: those it lent to its peer, those it got back, and the
    tokens of the peer's memfds whose mapping here has ended."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._lent: collections.OrderedDict[int, Memfd] = collections.OrderedDict()  # by token
        self._spare: list[Memfd] = []  # smallest first
        self._spent: collections.deque[int] = collections.deque()  # the peer's tokens, to name back
        self._watched: dict[weakref.ref[Any], tuple[int, int]] = {}  # mapping -> (token, fork generation)
        self._tokens = itertools.count(int.from_bytes(os.urandom(7), "little") + 1)

    def _ours(self) -> bool:
        """False in a forked child: what the parent kept is dropped (this copy's descriptors
        and mappings closed)."""
        if self.pid == os.getpid():
            return True
        self.pid = os.getpid()
        self._lock = threading.Lock()
        kept = list(self._lent.values()) + self._spare
        self._lent, self._spare = collections.OrderedDict(), []
        self._spent.clear()
        self._watched.clear()
        for memfd in kept:
            memfd.close()
        return False

    # -- sending ---------------------------------------------------------------

    def memfd_for(self, size: int) -> Memfd:
        """A memfd of at least *size* bytes to write a message into: one named back
        (mapped), or a new one."""
        self._ours()
        with self._lock:
            fits = [memfd for memfd in self._spare if memfd.size >= size]
            memfd = fits[0] if fits else (self._spare[-1] if self._spare else None)
            if memfd is not None:
                self._spare.remove(memfd)
                _budget.give(memfd.size)
        if memfd is None:
            return Memfd(size)
        try:
            if memfd.size < size or memfd.size > 2 * size + (1 << 20):
                memfd.resize(size)
            memfd.map()
        except BaseException:
            memfd.close()
            raise
        return memfd

    def lend(self, memfd: Memfd) -> int:
        """Take *memfd* (about to be sent) and return the token its frame carries."""
        token = next(self._tokens)
        with self._lock:
            self._lent[token] = memfd
            dropped = self._lent.popitem(last=False)[1] if len(self._lent) > MAX_LENT else None
        if dropped is not None:
            dropped.close()  # its receiver is keeping it (or never names tokens back)
        return token

    def named_back(self, tokens: list[int]) -> None:
        """The peer's mappings of these memfds are gone: keep them for reuse."""
        if not self._ours():
            return
        closing = []
        with self._lock:
            for token in tokens:
                memfd = self._lent.pop(token, None)
                if memfd is None:
                    continue  # unknown, or already dropped: nothing to do
                if len(self._spare) < MAX_SPARE and _budget.take(memfd.size):
                    self._spare.append(memfd)
                else:
                    closing.append(memfd)
            self._spare.sort(key=lambda memfd: memfd.size)
        for memfd in closing:
            memfd.close()

    # -- receiving -------------------------------------------------------------

    def watch(self, mapping: Any, token: int) -> None:
        """Name *token* back once *mapping* (the mmap of a received memfd) is gone."""
        if not self._ours():
            return
        try:
            ref = weakref.ref(mapping, functools.partial(_mapping_gone, weakref.ref(self)))
        except TypeError:  # an mmap without weak references: the memfd is simply not reused
            return
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
            kept = list(self._lent.values()) + self._spare
            _budget.give(sum(memfd.size for memfd in self._spare))
            self._lent.clear()
            self._spare = []
            self._watched.clear()
            self._spent.clear()
        for memfd in kept:
            memfd.close()


def _mapping_gone(owner: weakref.ref[Any], ref: weakref.ref[Any]) -> None:
    reuse = owner()
    if reuse is None:
        return
    token, generation = reuse._watched.pop(ref, (0, -1))
    if token and generation == _fork_generation[0] and reuse.pid == os.getpid():
        reuse._spent.append(token)
