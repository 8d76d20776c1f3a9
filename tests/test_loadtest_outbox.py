"""A worker's outbox: ticks bigger than the socket's buffer never block the worker's loop,
arrive whole and in order, and a coordinator that is gone stops the worker."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest
import uvloop

from procly import PicklingError
from procly.connection import Connection
from procly.loadtest._outbox import Outbox

pytestmark = pytest.mark.timeout(60)

BIG = 256 * 1024  # a tick of a flow with about a thousand names


@pytest.fixture(scope="module", autouse=True)
def _uvloop_signal_pipe():
    # uvloop opens a wake-up pipe for the whole process the first time a loop of its runs:
    # open it before the leak check takes its count.
    loop = uvloop.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


@pytest.fixture
def pair():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = uvloop.new_event_loop()
    yield left, right, loop
    loop.close()
    left.close()
    right.close()


def _fill(sock: socket.socket) -> int:
    """Write to *sock* until its buffer is full; the number of bytes written."""
    written = 0
    try:
        while True:
            written += sock.send(b"\0" * 65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return written


def _messages(count: int) -> list[tuple]:
    return [("tick", float(i), {"payload": bytes([i % 256]) * BIG, "n": i}) for i in range(count)]


def test_big_messages_queue_without_blocking_and_arrive_in_order(pair):
    left, right, loop = pair
    outbox = Outbox(left.fileno(), loop, lost=lambda: None)
    # Earlier bytes the coordinator has not read yet fill the socket ...
    filled = _fill(left)
    messages = _messages(24)  # 6 MiB: many times the socket's buffer
    # ... so a blocking write would hang here (the test's timeout).
    for message in messages:
        outbox.send(message)
    assert outbox.unwritten > len(messages) * BIG
    assert os.get_blocking(left.fileno())  # the reads of control messages need it

    received: list = []
    done = loop.create_future()

    def read() -> None:
        reader = Connection(os.dup(right.fileno()))
        try:
            left_over = filled
            while left_over:
                left_over -= len(right.recv(left_over))
            for _ in messages:
                received.append(reader.recv())
        finally:
            reader.close()
            loop.call_soon_threadsafe(done.set_result, None)

    thread = threading.Thread(target=read)
    thread.start()
    loop.run_until_complete(done)  # meanwhile the loop writes the rest as the socket takes it
    thread.join()
    assert outbox.unwritten == 0
    assert received == messages
    outbox.flush()


def test_flush_writes_what_is_left_before_the_worker_ends(pair):
    left, right, loop = pair
    outbox = Outbox(left.fileno(), loop, lost=lambda: None)
    messages = _messages(8)
    for message in messages:
        outbox.send(message)
    received: list = []

    def read() -> None:
        reader = Connection(os.dup(right.fileno()))
        try:
            received.extend(reader.recv() for _ in messages)
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    outbox.flush()  # no loop running: it waits for the reader
    thread.join()
    assert received == messages
    outbox.send(("late",))  # closed: dropped, not an error


def test_a_coordinator_gone_calls_lost_once_and_drops_the_rest(pair):
    left, right, loop = pair
    calls: list[int] = []
    lost = loop.create_future()

    def on_lost() -> None:
        calls.append(1)
        if not lost.done():
            lost.set_result(None)

    outbox = Outbox(left.fileno(), loop, lost=on_lost)
    for message in _messages(4):
        outbox.send(message)
    assert outbox.unwritten > 0
    right.close()
    loop.run_until_complete(lost)  # the queued write meets the closed end
    outbox.send(("tick", 1.0, None))
    loop.run_until_complete(_turns())
    assert calls == [1]
    assert outbox.unwritten == 0
    outbox.flush()  # no error with nobody to write to


async def _turns() -> None:
    for _ in range(3):  # a few rounds of the loop: a second lost() would have run
        await asyncio.sleep(0)


def test_an_unpicklable_message_raises_and_queues_nothing(pair):
    left, right, loop = pair
    outbox = Outbox(left.fileno(), loop, lost=lambda: None)
    with pytest.raises(PicklingError):
        outbox.send(("tick", 0.0, {"bad": threading.Lock()}))
    outbox.send(("ready", 7))
    outbox.flush()
    assert Connection(os.dup(right.fileno())).recv() == ("ready", 7)


def test_a_default_socket_timeout_changes_nothing(pair):
    """socket.setdefaulttimeout() in the user's code (a spawned worker imports their main
    module) must neither make a send wait for room nor count a full socket as a
    coordinator gone."""
    left, right, loop = pair
    lost: list[int] = []
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.5)
    try:
        outbox = Outbox(left.fileno(), loop, lost=lambda: lost.append(1))
    finally:
        socket.setdefaulttimeout(previous)
    assert os.get_blocking(left.fileno())
    filled = _fill(left)
    outbox.send(("tick", 1.0, {"payload": b"x" * BIG}))
    outbox.send(("tick", 2.0, None))
    loop.run_until_complete(_turns())
    assert not outbox.closed and not lost
    assert outbox.unwritten > BIG
    left_over = filled
    while left_over:
        left_over -= len(right.recv(left_over))
    received: list = []

    def read() -> None:
        reader = Connection(os.dup(right.fileno()))
        try:
            received.extend(reader.recv() for _ in range(2))
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    outbox.flush()
    thread.join()
    assert [message[1] for message in received] == [1.0, 2.0]
