"""SharedMemoryManager: SharedMemory and ShareableList blocks owned by a manager process.

The blocks are created in the caller (they are ordinary named shared memory) and
handed to the manager's server, which unlinks every block it holds when it stops:
at ``shutdown()``, at the end of a ``with`` block, or when its owner dies. The
server also registers them with its own tracker, so a manager that is SIGKILLed
still leaves nothing in /dev/shm.
"""

from __future__ import annotations

import threading
from typing import Any

from . import shared_memory
from ._manager_base import BaseManager
from ._manager_proxies import _request
from ._manager_server import Server


class SharedMemoryServer(Server):
    """A manager server that also owns shared memory blocks by name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.segments: set[str] = set()
        self._segments_lock = threading.Lock()

    def _handle_track_segment(self, peer: int | str | None, name: str) -> tuple[Any, ...]:
        with self._segments_lock:
            self.segments.add(name)
        shared_memory._tracker().register(name)
        return ("ok", None)

    def _handle_release_segment(self, peer: int | str | None, name: str) -> tuple[Any, ...]:
        with self._segments_lock:
            self.segments.discard(name)
        shared_memory._release(name)
        return ("ok", None)

    def _handle_list_segments(self, peer: int | str | None) -> tuple[Any, ...]:
        with self._segments_lock:
            return ("ok", sorted(self.segments))

    def serve_forever(self) -> None:
        try:
            super().serve_forever()
        finally:
            with self._segments_lock:
                names, self.segments = list(self.segments), set()
            for name in names:
                shared_memory._release(name)


SharedMemoryServer.handlers = {
    **Server.handlers,
    "track_segment": SharedMemoryServer._handle_track_segment,
    "release_segment": SharedMemoryServer._handle_release_segment,
    "list_segments": SharedMemoryServer._handle_list_segments,
}


class SharedMemoryManager(BaseManager):
    """A manager whose ``SharedMemory(size)`` and ``ShareableList(sequence)`` live until it shuts down.

    Raises (from the two factories):
        ValueError: a bad size or sequence, as for the classes themselves.
        OSError: the manager is not running.
    """

    _Server = SharedMemoryServer

    def SharedMemory(self, size: int) -> shared_memory.SharedMemory:  # noqa: N802 - stdlib name
        """A new block of ``size`` bytes, owned by the manager."""
        block = shared_memory.SharedMemory(create=True, size=size, track=False)
        self._hand_over(block.name, block)
        return block

    def ShareableList(self, sequence: Any) -> shared_memory.ShareableList:  # noqa: N802 - stdlib name
        """A new ShareableList holding ``sequence``, owned by the manager."""
        shareable = shared_memory.ShareableList(sequence)
        shared_memory._untrack(shareable.shm.name)
        self._hand_over(shareable.shm.name, shareable.shm)
        return shareable

    def _hand_over(self, name: str, block: shared_memory.SharedMemory) -> None:
        try:
            _request(self._address, self._authkey, "track_segment", name, serializer=self._serializer)
        except BaseException:
            block.close()
            block.unlink()
            raise

    def _list_segments(self) -> list[str]:
        return list(_request(self._address, self._authkey, "list_segments", serializer=self._serializer))
