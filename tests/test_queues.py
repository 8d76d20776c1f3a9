"""Queue, JoinableQueue and SimpleQueue across processes."""

from __future__ import annotations

import queue
import threading

import pytest

import procly

from . import targets


def test_put_get_across_processes(ctx):
    q = ctx.Queue()
    items = [1, "two", [3], {"four": 4}, None, b"x" * 200_000]
    p = ctx.Process(target=targets.put_items, args=(q, items))
    p.start()
    assert [q.get(timeout=10) for _ in items] == items
    p.join(10)
    q.close()
    q.join_thread()


def test_items_of_an_exited_process_are_delivered(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=targets.put_then_exit, args=(q, 20, 10))
    p.start()
    got = [q.get(timeout=10) for _ in range(20)]
    p.join(10)
    assert p.exitcode == 0 and got[3] == bytes([3]) * 10


def test_join_before_get_does_not_deadlock(ctx):
    """The standard library's documented trap: join a child whose big items nobody read yet."""
    q = ctx.Queue()
    p = ctx.Process(target=targets.put_then_exit, args=(q, 3, 8 * 1024 * 1024))
    p.start()
    p.join(30)
    assert p.exitcode == 0, "the child must be able to exit before its items are read"
    items = [q.get(timeout=10) for _ in range(3)]
    assert [len(i) for i in items] == [8 * 1024 * 1024] * 3 and items[2][:1] == bytes([2])


def test_bounded_queue_full_empty_timeouts():
    q = procly.Queue(2)
    assert q.empty() and q.qsize() == 0
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert q.get() == 1 and q.get_nowait() == 2
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.put(1)
    with pytest.raises(ValueError, match="closed"):
        q.get()


def test_unpicklable_item_raises_at_put():
    q = procly.Queue()
    with pytest.raises(procly.PicklingError):
        q.put(threading.Lock())
    q.put("fine")
    assert q.get(timeout=5) == "fine"


def test_joinable_queue(ctx):
    q = ctx.JoinableQueue()
    results = ctx.Queue()
    worker = ctx.Process(target=targets.consume_and_mark, args=(q, results))
    worker.start()
    for i in range(5):
        q.put(i)
    q.put(None)
    q.join()
    assert sorted(results.get(timeout=10) for _ in range(5)) == [0, 2, 4, 6, 8]
    worker.join(10)
    with pytest.raises(ValueError, match="too many"):
        q.task_done()


def test_simple_queue(ctx):
    q = ctx.SimpleQueue()
    assert q.empty()
    p = ctx.Process(target=targets.put_items, args=(q, ["a", "b"]))
    p.start()
    assert [q.get(), q.get()] == ["a", "b"]
    p.join(10)
    q.close()
