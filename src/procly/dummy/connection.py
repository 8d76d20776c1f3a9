"""Connections between threads (``multiprocessing.dummy.connection``), on queues."""

from __future__ import annotations

from queue import Queue
from typing import Any

__all__ = ["Client", "Listener", "Pipe"]

families = ["AF_INET"]


class Connection:
    """One end of an in-process channel."""

    def __init__(self, inbox: Queue[Any], outbox: Queue[Any]) -> None:
        self._out = outbox
        self._in = inbox
        self.send = self.send_bytes = outbox.put
        self.recv = self.recv_bytes = inbox.get

    def poll(self, timeout: float = 0.0) -> bool:
        if self._in.qsize() > 0:
            return True
        if timeout <= 0.0:
            return False
        with self._in.not_empty:
            self._in.not_empty.wait(timeout)
        return self._in.qsize() > 0

    def close(self) -> None:
        pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802
    a: Queue[Any] = Queue()
    b: Queue[Any] = Queue()
    return Connection(a, b), Connection(b, a)


class Listener:
    """Accepts Connections made by :func:`Client` with this listener as the address."""

    def __init__(self, address: Any = None, family: Any = None, backlog: int = 1) -> None:
        self._backlog_queue: Queue[Any] | None = Queue(backlog)

    def accept(self) -> Connection:
        if self._backlog_queue is None:
            raise OSError("listener is closed")
        return Connection(*self._backlog_queue.get())

    def close(self) -> None:
        self._backlog_queue = None

    @property
    def address(self) -> Queue[Any] | None:
        return self._backlog_queue

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


def Client(address: Queue[Any]) -> Connection:  # noqa: N802
    a: Queue[Any] = Queue()
    b: Queue[Any] = Queue()
    address.put((b, a))
    return Connection(a, b)
