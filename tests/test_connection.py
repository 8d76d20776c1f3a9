"""Connection and Pipe: framing, errors, directions, big and out-of-band messages."""

from __future__ import annotations

import array
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import procly
from procly import _serialization
from procly.connection import Connection, Pipe, wait

from . import targets


def test_send_recv_objects_both_ways():
    a, b = Pipe()
    for obj in ([1, "str", None], {"k": (1.5, b"x")}, "", 0, None, set(range(5))):
        a.send(obj)
        assert b.recv() == obj
        b.send(obj)
        assert a.recv() == obj
    a.close()
    b.close()


def test_send_bytes_offset_size_and_recv_bytes_into():
    a, b = Pipe()
    a.send_bytes(b"hello world", 6)
    assert b.recv_bytes() == b"world"
    a.send_bytes(b"hello world", 0, 5)
    assert b.recv_bytes() == b"hello"
    a.send_bytes(array.array("i", [1, 2, 3]))
    assert b.recv_bytes() == array.array("i", [1, 2, 3]).tobytes()
    for bad in ((-1, None), (20, None), (0, -1), (5, 10)):
        with pytest.raises(ValueError):
            a.send_bytes(b"hello world", *bad)
    buf = bytearray(16)
    a.send_bytes(b"abcd")
    assert b.recv_bytes_into(buf, 2) == 4
    assert bytes(buf[:6]) == b"\0\0abcd"
    arr = array.array("i", [0] * 4)
    a.send_bytes(array.array("i", [7, 8]))
    assert b.recv_bytes_into(arr, 4) == 8  # the offset is in bytes, as in the standard library
    assert list(arr) == [0, 7, 8, 0]
    a.send_bytes(b"x" * 40)
    with pytest.raises(procly.BufferTooShort) as info:
        b.recv_bytes_into(bytearray(8))
    assert info.value.args[0] == b"x" * 40
    a.send_bytes(b"after")  # the stream is still in step
    assert b.recv_bytes() == b"after"
    a.close()
    b.close()


def test_recv_bytes_maxlength_closes():
    a, b = Pipe()
    a.send_bytes(b"x" * 100)
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(10)
    assert b.closed
    a.close()


def test_eof_and_closed_errors_are_distinct():
    a, b = Pipe()
    a.send("last")
    a.close()
    assert b.recv() == "last"
    with pytest.raises(EOFError):
        b.recv()
    with pytest.raises(EOFError):
        b.recv_bytes()
    assert b.poll(0) is True  # readable: the peer is gone
    b.close()
    b.close()
    for action in (b.recv, lambda: b.send(1), b.fileno, b.poll, lambda: b.send_bytes(b"")):
        with pytest.raises(procly.ConnectionClosedError):
            action()
    assert isinstance(procly.ConnectionClosedError("x"), OSError)


def test_send_to_dead_peer_is_broken_pipe():
    a, b = Pipe()
    b.close()
    with pytest.raises(BrokenPipeError):
        a.send_bytes(b"x" * 1000)
    a.close()


def test_one_way_pipe_refuses_wrong_direction():
    r, w = Pipe(duplex=False)
    assert r.readable and not r.writable and w.writable and not w.readable
    with pytest.raises(OSError, match="read-only"):
        r.send(1)
    with pytest.raises(OSError, match="write-only"):
        w.recv()
    w.send("ok")
    assert r.recv() == "ok"
    r.close()
    w.close()


def test_poll_timeouts():
    a, b = Pipe()
    assert b.poll() is False
    assert b.poll(0.05) is False
    a.send(1)
    assert b.poll(None) is True
    assert b.recv() == 1
    a.close()
    b.close()


def test_context_manager_and_repr():
    a, b = Pipe()
    with a, b:
        assert "fd=" in repr(a)
    assert a.closed and b.closed and "closed" in repr(a)


def test_constructor_validation():
    with pytest.raises(ValueError):
        Connection(-1)
    r, w = os.pipe()
    with pytest.raises(ValueError):
        Connection(r, readable=False, writable=False)
    os.close(r)
    os.close(w)


def test_unpicklable_object_sends_nothing():
    a, b = Pipe()
    with pytest.raises(procly.PicklingError, match="lock"):
        a.send(threading.Lock())
    with pytest.raises(TypeError):  # PicklingError is a TypeError too
        a.send(i for i in range(3))
    a.send("still in step")
    assert b.recv() == "still in step"
    a.close()
    b.close()


def test_garbage_frames_raise_clear_errors():
    a, b = Pipe()
    os.write(a.fileno(), struct.pack("!i", 5) + b"\x80\x05jnk")
    with pytest.raises(pickle.UnpicklingError, match="not a valid pickle"):
        b.recv()
    os.write(a.fileno(), struct.pack("!i", -7))
    with pytest.raises(procly.MessageError, match="malformed"):
        b.recv()
    assert b.closed
    a.close()
    c, d = Pipe()
    d.max_message_size = 1024
    os.write(c.fileno(), struct.pack("!i", 2**30))
    with pytest.raises(procly.MessageError, match="at most 1024"):
        d.recv()
    assert d.closed  # the oversized frame cost this connection, nothing else
    c.close()


def test_truncated_frame_is_eof():
    a, b = Pipe()
    os.write(a.fileno(), struct.pack("!i", 100) + b"short")
    a.close()
    with pytest.raises(EOFError, match="middle of a message"):
        b.recv_bytes()
    b.close()


def test_large_objects_travel_out_of_band():
    payload = np.arange(1_000_000, dtype=np.float64)
    oob: list = []
    data = _serialization.dumps(payload, oob)
    assert len(data) < 1000 and len(oob) == 1 and oob[0].nbytes == payload.nbytes
    a, b = Pipe()
    for obj in (payload, {"a": payload, "b": payload[::2]}, b"y" * 300_000, bytearray(b"z" * 300_000)):
        sender = threading.Thread(target=a.send, args=(obj,))  # bigger than the socket buffer
        sender.start()
        got = b.recv()
        sender.join()
        if isinstance(obj, dict):
            np.testing.assert_array_equal(got["a"], obj["a"])
            np.testing.assert_array_equal(got["b"], obj["b"])
        elif isinstance(obj, np.ndarray):
            np.testing.assert_array_equal(got, obj)
            got[0] = 42.0  # received arrays are writable
        else:
            assert type(got) is type(obj) and got == obj
    view = memoryview(b"m" * 200_000)
    sender = threading.Thread(target=a.send, args=(view,))
    sender.start()
    assert bytes(b.recv()) == bytes(view)
    sender.join()
    a.close()
    b.close()


def test_messages_through_a_child(ctx):
    a, b = ctx.Pipe()
    p = ctx.Process(target=targets.echo, args=(b,))
    p.start()
    b.close()
    big = np.random.default_rng(1).random((512, 1024))
    for obj in ([1, "str", None], b"x" * (16 * 1024 * 1024), big, lambda x: x + 1):
        a.send(obj)
        back = a.recv()
        if isinstance(obj, np.ndarray):
            np.testing.assert_array_equal(back, obj)
        elif callable(obj):
            assert back(1) == 2
        else:
            assert back == obj
    a.send(None)
    a.close()
    p.join(10)
    assert p.exitcode == 0


def test_one_way_pipe_passed_to_child(ctx):
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.send_value, args=(w, "via one-way pipe"))
    p.start()
    w.close()
    assert r.recv() == "via one-way pipe"
    p.join(10)
    r.close()


def test_connection_sent_through_a_connection_works(lending):
    """Outside process start-up a Connection is lent (the standard library's resource sharer)."""
    a, b = Pipe()
    c, d = Pipe()
    a.send(d)
    d2 = b.recv()
    c.send("through the copy")
    assert d2.recv() == "through the copy"
    for end in (a, b, c, d, d2):
        end.close()


def test_wait_on_connections_and_sentinels(ctx):
    a, b = ctx.Pipe()
    c, d = ctx.Pipe()
    assert wait([a, c], timeout=0.05) == []
    p = ctx.Process(target=targets.send_value, args=(b, "hi"))
    p.start()
    ready = wait([a, c, p.sentinel], timeout=10)
    assert a in ready and c not in ready
    assert a.recv() == "hi"
    p.join(10)
    assert wait([p.sentinel], timeout=0) == [p.sentinel]
    with pytest.raises(TypeError):
        wait([object()], 0)
    for conn in (a, b, c, d):
        conn.close()


def test_child_killed_mid_conversation_gives_eof(ctx):
    a, b = ctx.Pipe()
    p = ctx.Process(target=targets.echo, args=(b,))
    p.start()
    b.close()
    a.send(1)
    assert a.recv() == 1
    p.kill()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    with pytest.raises(EOFError):
        a.recv()
    a.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_message_over_4_gib():
    a, b = Pipe()
    size = 4 * 1024**3 + 17
    big = bytearray(size)
    big[-1] = 7
    sender = threading.Thread(target=a.send_bytes, args=(big,))
    sender.start()
    got = b.recv_bytes()
    sender.join()
    assert len(got) == size and got[-1] == 7
    a.close()
    b.close()


def test_send_and_receive_a_descriptor(ctx, tmp_path):
    from procly import reduction

    target = tmp_path / "out"
    a, b = ctx.Pipe()
    p = ctx.Process(target=targets.write_through_received_fd, args=(b, b"through an fd"))
    p.start()
    with open(target, "wb") as f:
        reduction.send_handle(a, f.fileno(), p.pid)
    p.join(10)
    assert target.read_bytes() == b"through an fd"
    os.write(a.fileno(), b"\0")  # data without a descriptor
    with pytest.raises(RuntimeError, match="without a file descriptor"):
        reduction.recv_handle(b)
    a.close()
    b.close()


def _doubled_by_a_child(ctx, sent):
    """*sent* (an array or a list of them) sent over a duplex Pipe to a child that doubles
    each array in place (so it must be writable there) and sends it back."""
    parent, child = ctx.Pipe()
    p = ctx.Process(target=targets.double_and_send_back, args=(child,))
    p.start()
    child.close()
    parent.send(sent)
    back = parent.recv()
    p.join(30)
    parent.close()
    assert p.exitcode == 0  # the child could write to what it received
    return back


def test_big_buffers_cross_a_duplex_pipe_in_a_memfd(ctx):
    from procly import _connection

    big = np.arange(_connection.MEMFD_THRESHOLD // 8 * 2, dtype=np.float64)
    back = _doubled_by_a_child(ctx, big)
    assert np.array_equal(back, big * 2) and back.flags.writeable
    back[0] = -1.0  # copy-on-write: nobody else sees it
    assert big[0] == 0.0


def test_several_buffers_in_one_memfd_arrive_whole_and_page_aligned(ctx):
    """Buffers of odd sizes in one memfd frame each start on a page (see page_aligned):
    they arrive whole, and the arrays rebuilt over the mapping are page-aligned."""
    from procly import _connection

    sizes = [_connection.MEMFD_THRESHOLD + 3, 70_001, 65_539]
    arrays = [np.arange(n, dtype=np.uint8) for n in sizes] + [np.arange(8_193, dtype=np.float64)]
    back = _doubled_by_a_child(ctx, arrays)
    assert all(np.array_equal(got, sent * 2) for got, sent in zip(back, arrays, strict=True))
    assert all(got.ctypes.data % 4096 == 0 for got in back)


def test_memfd_frames_are_checked():
    from procly import _connection

    # A memfd announced on an OS pipe (which cannot carry descriptors) is refused.
    r, w = os.pipe()
    os.write(w, struct.pack("!iIQQQ", _connection._IN_MEMFD, 1, 1, 10, 0))
    conn = Connection(r, writable=False)
    with pytest.raises(procly.MessageError, match="cannot carry"):
        conn.recv()
    assert conn.closed
    os.close(w)
    # ... and one announced on a socket but sent without its descriptor too.
    a, b = socket.socketpair()
    a.sendall(struct.pack("!iIQQQ", _connection._IN_MEMFD, 1, 1, 10, 0) + b"F")
    conn = Connection(b.detach())
    with pytest.raises(procly.MessageError, match="did not arrive"):
        conn.recv()
    a.close()


def test_buffered_connection_reads_ahead_across_every_frame_kind():
    np = pytest.importorskip("numpy")
    from procly._connection import BufferedConnection

    left, right = procly.Pipe()
    reader = BufferedConnection.adopt(right)
    assert right.closed
    big = np.arange(300_000, dtype=np.float64)  # 2.4 MB: travels in a memfd
    mid = np.arange(20_000, dtype=np.int64)  # 160 KB: out of band, streamed
    sent = [1, "two", big, b"x" * 100_000, mid, {"k": big[:10]}, None]

    def send_rest():
        for obj in sent[3:]:  # these may fill the socket: sent while the reader reads
            left.send(obj)
        left.send_bytes(b"raw")

    for obj in sent[:3]:  # small, and a memfd's envelope: they wait in the socket together
        left.send(obj)
    sender = threading.Thread(target=send_rest)
    sender.start()
    assert reader.recv() == 1
    assert reader.buffered() and reader.poll(0)  # the rest came with the first read
    assert reader.recv() == "two"
    got = reader.recv()
    assert np.array_equal(got, big) and got.flags.writeable
    assert reader.recv() == b"x" * 100_000
    assert np.array_equal(reader.recv(), mid)
    assert np.array_equal(reader.recv()["k"], big[:10])
    assert reader.recv() is None
    assert reader.recv_bytes() == b"raw"
    sender.join(10)
    assert not reader.poll(0)
    left.close()
    with pytest.raises(EOFError):
        reader.recv()
    reader.close()


@pytest.fixture
def lending():
    """Stop this process's descriptor lending desk after the test (its socket is ours)."""
    from procly import resource_sharer

    yield
    resource_sharer.stop()


def test_connections_and_sockets_cross_queues(ctx, lending):
    """Pickled outside process start-up, a Connection or a socket is lent and fetched by the receiver."""
    here, there = ctx.Pipe()
    left, right = socket.socketpair()
    q = ctx.Queue()
    p = ctx.Process(target=targets.use_lent_connection, args=(q,))
    p.start()
    q.put(there)
    q.put(right)
    assert here.recv() == ("via the connection", p.pid)
    assert left.recv(100) == b"via the socket"
    p.join(10)
    assert p.exitcode == 0
    for end in (here, there, left, right):
        end.close()
    q.close()
    q.join_thread()


def test_a_lent_descriptor_is_fetched_once_and_only_with_its_key(lending):
    from procly import _fd_sharer
    from procly._connection import _rebuild_connection

    a, b = procly.Pipe()
    rebuild, args = b.__reduce__()
    assert rebuild is _rebuild_connection
    token = args[0]
    address, key = token
    with socket.socket(socket.AF_UNIX) as intruder:  # a wrong key: refused, nothing lent is lost
        intruder.connect(address)
        intruder.sendall(os.urandom(len(key)))
        assert intruder.recv(1) == b"\x00"
    with socket.socket(socket.AF_UNIX) as garbage:  # a peer that sends half a key and leaves
        garbage.connect(address)
        garbage.sendall(b"xx")
    c = rebuild(*args)
    a.send("hello")
    assert c.recv() == "hello"
    with pytest.raises(procly.ProcessError, match="unpickled already"):
        _fd_sharer.borrow(address, key)
    for end in (a, b, c):
        end.close()


def test_buffered_connection_keeps_its_buffer_bounded_under_partial_reads():
    """Messages that never end on a read boundary: the consumed prefix is dropped, nothing is lost."""
    from procly._connection import BufferedConnection

    left, right = procly.Pipe()
    reader = BufferedConnection.adopt(right)
    messages = [bytes([i % 256]) * (30_000 + 97 * i) for i in range(300)]  # ~13 MB, odd sizes under 64 KiB

    def send_all():
        for message in messages:
            left.send_bytes(message)

    sender = threading.Thread(target=send_all)
    sender.start()
    for i, expected in enumerate(messages):
        if i % 20 == 0:
            time.sleep(0.02)  # a slow reader: the sender's writes land in pieces, reads end mid-message
        assert reader.recv_bytes() == expected, f"message {i} differs"
        assert len(reader._rbuf) <= 2 * BufferedConnection.READ_AHEAD + 70_000 * 2
    sender.join(10)
    left.close()
    reader.close()


def test_recv_ready_takes_every_whole_message_read_ahead_and_leaves_the_rest():
    """One call returns the whole plain messages waiting; a garbage frame among them, a
    special frame and a partial frame stay for the next recv(), which handles or reports them."""
    from procly._connection import _HEADER, BufferedConnection

    left, right = procly.Pipe()
    reader = BufferedConnection.adopt(right)
    for i in range(5):
        left.send((i, "reply"))
    garbage = b"\x80\x05not a pickle"
    os.write(left.fileno(), _HEADER.pack(len(garbage)) + garbage)
    left.send("after the garbage")
    left.send(np.arange(300_000, dtype=np.float64))  # a memfd frame
    left.send("after the array")
    frame = pickle.dumps("split in two", 5)
    os.write(left.fileno(), _HEADER.pack(len(frame)) + frame[:3])  # half a frame so far
    assert reader.poll(10)  # everything above was written by this thread: the first read takes it all
    assert reader.recv_ready() == [(i, "reply") for i in range(5)]
    with pytest.raises(pickle.UnpicklingError, match="not a valid pickle"):
        reader.recv_ready()
    assert reader.recv_ready() == ["after the garbage"]  # stops before the memfd frame
    got = reader.recv_ready()
    assert np.array_equal(got[0], np.arange(300_000, dtype=np.float64))
    assert got[1:] == ["after the array"]  # the half frame stays
    os.write(left.fileno(), frame[3:])
    assert reader.recv_ready() == ["split in two"]
    left.close()
    with pytest.raises(EOFError):
        reader.recv_ready()
    reader.close()


SOCKET_AFTER_PICKLER = """
import sys, procly
from procly import _serialization

_serialization.dumps(lambda: 1)  # a Pickler made while socket is not imported yet
assert "socket" not in sys.modules
import socket

left, right = socket.socketpair()
r, w = procly.Pipe()
w.send(left)
got = r.recv()
got.sendall(b"hi")
print(right.recv(2).decode(), got.family == left.family)
"""


def test_a_socket_imported_after_procly_still_crosses(tmp_path):
    """procly imports socket only once it makes one; a socket the program creates later
    still pickles as a lent descriptor."""
    script = tmp_path / "late_socket.py"
    script.write_text(SOCKET_AFTER_PICKLER)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["hi", "True"]


def test_buffered_connection_keeps_the_size_limit_and_reports_the_end():
    from procly._connection import BufferedConnection

    left, right = procly.Pipe()
    right.max_message_size = 1000
    reader = BufferedConnection.adopt(right)
    left.send("small")
    assert reader.recv() == "small"  # read in one call from an empty buffer
    left.send(b"x" * 5000)
    with pytest.raises(procly.MessageError, match="at most 1000"):
        reader.recv()
    assert reader.closed

    left, right = procly.Pipe()
    reader = BufferedConnection.adopt(right)
    left.send(1)
    left.close()
    assert reader.recv() == 1
    with pytest.raises(EOFError):
        reader.recv()


@pytest.mark.parametrize("helper", ["write_all", "pwrite_all"])
def test_a_write_that_makes_no_progress_raises_instead_of_looping(monkeypatch, tmp_path, helper):
    """A descriptor that takes part of a message and then nothing (a full device, a
    broken driver) ends the write with OSError; it is not retried for ever."""
    from procly import _fds

    calls = []

    def short_write(fd, data, *offset):
        calls.append(len(data))
        return 3 if len(calls) == 1 else 0

    monkeypatch.setattr(os, "write" if helper == "write_all" else "pwrite", short_write)
    with open(tmp_path / "target", "wb") as file:
        args = (file.fileno(), b"0123456789") + ((0,) if helper == "pwrite_all" else ())
        with pytest.raises(OSError, match="no progress"):
            getattr(_fds, helper)(*args)
    assert calls == [10, 7]
