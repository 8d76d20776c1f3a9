"""ThreadPool and procly.dummy: the same API on threads."""

from __future__ import annotations

import threading
import time

import pytest

import procly
from procly import dummy
from procly.pool import ThreadPool


def test_thread_pool_api_without_pickling():
    with ThreadPool(3) as pool:
        lock = threading.Lock()
        assert pool.apply(lambda: lock) is lock  # passed by reference
        assert pool.map(lambda x: x * 2, range(10)) == [x * 2 for x in range(10)]
        assert pool.starmap(max, [(1, 2), (5, 3)]) == [2, 5]
        assert list(pool.imap(str, range(5))) == ["0", "1", "2", "3", "4"]
        assert sorted(pool.imap_unordered(abs, [-1, -2, 3])) == [1, 2, 3]
        with pytest.raises(ZeroDivisionError):
            pool.apply(lambda: 1 / 0)
        with pytest.raises(procly.TimeoutError):
            pool.apply_async(time.sleep, (1,)).get(timeout=0.05)


def test_thread_pool_close_join_terminate():
    pool = ThreadPool(1)
    blocker = pool.apply_async(time.sleep, (0.3,))
    queued = pool.apply_async(time.sleep, (5,))
    with pytest.raises(ValueError):
        pool.join()
    pool.terminate()
    pool.join()
    assert blocker.get(5) is None
    with pytest.raises(procly.PoolTerminatedError):
        queued.get(5)
    with pytest.raises(ValueError):
        pool.apply_async(abs, (1,))


def test_dummy_module():
    q = dummy.Queue()
    t = dummy.Process(target=q.put, args=("from a thread",))
    t.start()
    t.join()
    assert q.get() == "from a thread" and t.exitcode == 0
    a, b = dummy.Pipe()
    a.send(1)
    assert b.poll(0.1) and b.recv() == 1
    with dummy.Pool(2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
    v = dummy.Value("i", 3)
    v.value += 1
    assert v.value == 4 and list(dummy.Array("i", [1, 2])) == [1, 2]
    ns = dummy.Manager().Namespace(x=1)
    assert ns.x == 1


def test_thread_pool_shares_the_pool_api():
    from procly._pool_api import PoolAPI

    assert issubclass(ThreadPool, PoolAPI)
    for name in ("apply", "map", "map_async", "starmap", "starmap_async", "imap", "imap_unordered", "__enter__"):
        assert getattr(ThreadPool, name) is getattr(PoolAPI, name), name  # written once, for every pool


def test_thread_pool_reports_progress_and_results_as_the_pool_does():
    seen = []
    with ThreadPool(2) as pool:
        assert pool.map(abs, [-1, -2, -3], on_result=seen.append) == [1, 2, 3]
        assert sorted(seen) == [1, 2, 3]
        seen.clear()
        assert list(pool.imap(abs, [-4, -5], on_result=seen.append)) == [4, 5]
        assert sorted(seen) == [4, 5]
        assert pool.starmap(max, [(1, 2)], retries=2) == [2]
        with pytest.raises(ValueError, match="task_timeout"):
            pool.map(abs, [1], task_timeout=1)
