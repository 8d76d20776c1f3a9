"""Locks, semaphores, conditions, events and barriers across processes."""

from __future__ import annotations

import pickle
import sys
import threading
import time

import pytest

import procly

from . import targets


def test_lock_excludes_other_processes(ctx):
    lock = ctx.Lock()
    r, w = ctx.Pipe()
    p = ctx.Process(target=targets.hold_lock, args=(lock, w, 0.5))
    p.start()
    assert r.recv() == "held"
    assert lock.acquire(False) is False
    started = time.monotonic()
    assert lock.acquire(timeout=0.1) is False
    assert time.monotonic() - started >= 0.09
    assert lock.acquire(timeout=10) is True
    lock.release()
    p.join(10)
    r.close()
    w.close()


def test_counter_under_lock_is_exact(ctx):
    counter = ctx.Value("i", 0, lock=False)
    lock = ctx.Lock()
    workers = [ctx.Process(target=targets.add_many, args=(counter, lock, 500)) for _ in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(30)
    assert counter.value == 1500


def test_lock_errors_and_repr():
    lock = procly.Lock()
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()
    assert repr(lock) == "<Lock(owner=None)>"
    with lock:
        assert "MainProcess" in repr(lock)
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(lock)


def test_rlock_is_recursive_and_owned():
    rlock = procly.RLock()
    assert rlock.acquire() and rlock.acquire()
    assert rlock._count() == 2
    rlock.release()
    rlock.release()
    with pytest.raises(AssertionError, match="not owned"):
        rlock.release()
    rlock.acquire()
    errors = []

    def other():
        try:
            rlock.release()
        except AssertionError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors, "another thread must not release an RLock it does not own"
    rlock.release()


def test_semaphores(ctx):
    sem = ctx.Semaphore(2)
    assert sem.get_value() == 2
    assert sem.acquire() and sem.acquire()
    assert not sem.acquire(timeout=0.05)
    p = ctx.Process(target=targets.semaphore_release, args=(sem, 2))
    p.start()
    p.join(10)
    assert sem.get_value() == 2
    bounded = ctx.BoundedSemaphore(1)
    with pytest.raises(ValueError):
        bounded.release()
    with pytest.raises(ValueError):
        ctx.Semaphore(-1)


def test_condition_wait_notify(ctx):
    cond = ctx.Condition()
    flag = ctx.Value("i", 0)
    with cond:
        p = ctx.Process(target=targets.condition_notifier, args=(cond, flag))
        p.start()
        assert cond.wait_for(lambda: flag.value == 1, timeout=10)
    p.join(10)
    with cond:
        assert cond.wait(0.05) is False
    with pytest.raises(AssertionError, match="must acquire"):
        cond.wait(0)
    with pytest.raises(AssertionError):
        cond.notify()


def test_event(ctx):
    event = ctx.Event()
    assert not event.is_set() and event.wait(0.05) is False
    p = ctx.Process(target=targets.event_setter, args=(event, 0.2))
    p.start()
    assert event.wait(10) is True and event.is_set()
    event.clear()
    assert not event.is_set()
    p.join(10)


def test_barrier(ctx):
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    workers = [ctx.Process(target=targets.barrier_wait, args=(barrier, results)) for _ in range(2)]
    for p in workers:
        p.start()
    index = barrier.wait(10)
    got = sorted([index, results.get(timeout=10), results.get(timeout=10)])
    assert got == [0, 1, 2]
    for p in workers:
        p.join(10)
    assert barrier.n_waiting == 0 and not barrier.broken
    barrier.abort()
    assert barrier.broken
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(1)


def test_acquire_is_interrupted_by_signals():
    """A blocked acquire lets a signal handler's exception through (Ctrl-C works)."""
    import os
    import signal

    lock = procly.Lock()
    lock.acquire()

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            lock.acquire()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        lock.release()
    assert os.getpid()


def test_acquire_and_release_keep_the_reference_counts_of_their_results():
    # An extension built with the headers of Python 3.12+ must still give new references
    # to True/False/None (a 3.11 interpreter would otherwise free True).
    lock = procly.RLock()
    before = (sys.getrefcount(True), sys.getrefcount(None))
    for _ in range(10_000):
        lock.acquire()
        lock.acquire(False)
        lock.release()
        lock.release()
    import gc

    gc.collect()
    after = (sys.getrefcount(True), sys.getrefcount(None))
    assert abs(after[0] - before[0]) < 100 and abs(after[1] - before[1]) < 100, (before, after)


def test_semaphore_held_by_many_threads_keeps_its_count():
    """Threads acquiring and releasing one semaphore at once: the per-process count of
    acquisitions ends at zero and the value where it started (atomic counters, so this
    holds on a free-threaded build too)."""
    sem = procly.Semaphore(8)
    start = threading.Barrier(8)

    def churn() -> None:
        start.wait(timeout=30)
        for _ in range(2000):
            with sem:
                pass

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert sem._count() == 0
    assert sem.get_value() == 8
