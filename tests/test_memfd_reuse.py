"""Memfds of big messages reused once their receiver's mapping is gone (``_memfd_reuse``)."""

from __future__ import annotations

import gc
import os
import struct

import numpy as np
import pytest

import procly
from procly import _connection, _memfd_reuse

BIG = 300_000  # float64 items: 2.4 MB, past the memfd threshold


def _lent_inodes(conn) -> set[int]:
    reuse = conn._reuse
    return {os.fstat(memfd.fd).st_ino for memfd in reuse._lent.values()} if reuse else set()


def _spare_inodes(conn) -> set[int]:
    reuse = conn._reuse
    return {os.fstat(memfd.fd).st_ino for memfd in reuse._spare} if reuse else set()


def test_a_memfd_is_reused_only_after_its_mapping_is_gone():
    left, right = procly.Pipe()
    left.send(np.full(BIG, 1.0))
    first = _lent_inodes(left)
    kept = right.recv()
    kept[:10] = -1.0  # written by the receiver: its private copy of those pages
    left.send(np.full(BIG, 2.0))  # the first memfd is still mapped: a new one
    second = right.recv()
    assert _lent_inodes(left) > first and len(_lent_inodes(left)) == 2
    assert kept[0] == -1.0 and kept[10] == 1.0 and second.sum() == 2.0 * BIG

    del kept
    gc.collect()
    right.send("ack")  # names the first memfd back
    assert left.recv() == "ack"
    assert _spare_inodes(left) == first
    left.send(np.full(BIG, 3.0))  # written into the first memfd's pages
    assert _lent_inodes(left) >= first and not _spare_inodes(left)
    third = right.recv()
    assert third.sum() == 3.0 * BIG and second.sum() == 2.0 * BIG
    third += 1  # still writable, copy-on-write
    assert third[0] == 4.0
    left.close()
    right.close()


def test_a_mapping_alive_at_fork_is_never_named_back():
    left, right = procly.Pipe()
    left.send(np.full(BIG, 5.0))
    first = _lent_inodes(left)
    kept = right.recv()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child keeps the inherited mapping and checks it after the parent moved on
        code = 1
        try:
            os.read(go_read, 1)  # the sender has written its next message into some memfd
            code = 0 if kept.sum() == 5.0 * BIG else 3
        finally:
            os._exit(code)
    os.close(go_read)
    try:
        del kept
        gc.collect()
        right.send("ack")
        assert left.recv() == "ack"
        assert not _spare_inodes(left)  # not named back: the child may still map it
        left.send(np.full(BIG, 6.0))
        assert right.recv().sum() == 6.0 * BIG
        assert first < _lent_inodes(left)  # the first still counts as lent; a new one carried 6.0
    finally:
        os.write(go_write, b"g")
        os.close(go_write)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    left.close()
    right.close()


def test_a_forked_sender_does_not_write_into_its_parents_spares():
    left, right = procly.Pipe()
    left.send(np.full(BIG, 1.0))
    right.recv()
    gc.collect()
    right.send("ack")
    assert left.recv() == "ack"
    spare = _spare_inodes(left)
    assert spare
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            left.send(np.full(BIG, 7.0))  # must not take the parent's spare
            code = 0 if not _lent_inodes(left) & spare else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    left.send(np.full(BIG, 8.0))  # the parent's own send takes its spare
    assert _lent_inodes(left) == spare
    assert right.recv().sum() == 7.0 * BIG
    assert right.recv().sum() == 8.0 * BIG
    left.close()
    right.close()


def test_a_receiver_that_keeps_everything_costs_a_bounded_number_of_descriptors():
    left, right = procly.Pipe()
    kept = []
    for i in range(_memfd_reuse.MAX_LENT + 8):
        left.send(np.full(BIG, float(i)))
        kept.append(right.recv())
    assert len(left._reuse._lent) <= _memfd_reuse.MAX_LENT
    assert [a[0] for a in kept] == [float(i) for i in range(len(kept))]
    left.close()
    right.close()


def test_one_way_pipes_keep_no_memfds():
    reader, writer = procly.Pipe(duplex=False)
    for value in (1.0, 2.0, 3.0):
        writer.send(np.full(BIG, value))
        assert reader.recv()[0] == value
    assert writer._reuse is None or not writer._reuse._lent
    reader.close()
    writer.close()


def test_named_back_frames_are_checked():
    left, right = procly.Pipe()
    # Unknown tokens are ignored and the message behind them arrives.
    frame = struct.pack("!iIQQ", _connection._NAMED_BACK, 2, 12345, 67890)
    os.write(left.fileno(), frame + struct.pack("!i", 5) + b"hello")
    assert right.recv_bytes() == b"hello"
    # Too many named at once is a malformed frame.
    os.write(left.fileno(), struct.pack("!iI", _connection._NAMED_BACK, 10_000))
    with pytest.raises(procly.MessageError, match="named back"):
        right.recv()
    assert right.closed
    left.close()


def test_pool_arguments_changed_in_place_come_back_right(ctx):
    arrays = [np.full(BIG, float(i)) for i in range(12)]
    with ctx.Pool(2) as pool:
        results = pool.map(_double_in_place, arrays, chunksize=1)
        again = pool.map(_double_in_place, arrays, chunksize=1)
    assert [r[0] for r in results] == [2.0 * i for i in range(12)]
    assert [r[-1] for r in again] == [2.0 * i for i in range(12)]
    assert [a[0] for a in arrays] == [float(i) for i in range(12)]  # the parent's own are untouched


def _double_in_place(a):
    a *= 2
    return a


def test_spare_memfds_stay_within_one_budget_for_the_whole_process(monkeypatch):
    monkeypatch.setattr(_memfd_reuse._budget, "limit", _memfd_reuse._budget.used + 3_000_000)  # one 2.4 MB memfd
    pipes = [procly.Pipe(), procly.Pipe()]
    for left, right in pipes:
        left.send(np.full(BIG, 1.0))
        right.recv()  # dropped at once
    gc.collect()
    for left, right in pipes:
        right.send("ack")
        assert left.recv() == "ack"
    assert [len(_spare_inodes(left)) for left, _ in pipes] == [1, 0]
    used = _memfd_reuse._budget.used
    pipes[0][0].close()  # its spare goes, and its bytes back to the budget
    assert _memfd_reuse._budget.used < used
    for left, right in pipes:
        left.close()
        right.close()


def test_buffer_layout_puts_big_buffers_on_pages_and_packs_small_ones():
    """Buffers of a page or more start on a page; smaller ones (empty ones too) follow
    the one before without a gap; none overlaps; the size ends with the last buffer."""
    page, buffer_layout = _memfd_reuse.PAGE, _memfd_reuse.buffer_layout
    sizes = [10, page + 1, 0, 100, page, 3 * page - 7, 0]
    starts, total = buffer_layout(sizes)
    ends = [start + size for start, size in zip(starts, sizes, strict=True)]
    assert all(start % page == 0 for start, size in zip(starts, sizes, strict=True) if size >= page)
    assert all(starts[i] == ends[i - 1] for i in range(1, len(sizes)) if sizes[i] < page)
    assert all(starts[i] >= ends[i - 1] for i in range(1, len(sizes)))
    assert starts[0] == 0 and total == ends[-1]
    assert buffer_layout([]) == ([], 0)
