"""Shared fixtures: every start method, and a leak check around every test."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import pytest

import procly
from procly import _state

METHODS = ["fork", "spawn", "forkserver"]

# Tasks of the tests of callers reading their own pool replies nap this long, so that the
# reply comes after the wait has begun; with long_serving, the wait then reads for as
# long as it takes (see Supervisor.serve_reply).
NAP = 0.02


@pytest.fixture
def long_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    from procly import _pool_results

    monkeypatch.setattr(_pool_results, "SERVE_SECONDS", 60.0)


def record_settling_threads(supervisor: Any, monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The threads that settle a pool's replies from now on, one entry per batch read."""
    threads: list[threading.Thread] = []
    real = supervisor._settle_replies

    def settle(worker: Any, replies: Any) -> Any:
        threads.append(threading.current_thread())
        return real(worker, replies)

    monkeypatch.setattr(supervisor, "_settle_replies", settle)
    return threads


@pytest.fixture(params=METHODS)
def ctx(request: pytest.FixtureRequest) -> procly.context.BaseContext:
    """The procly context of each start method in turn."""
    return procly.get_context(request.param)


def child_pids(pid: int | None = None) -> set[int]:
    """PIDs whose parent is *pid* (this process by default), zombies included."""
    pid = pid or os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def _process_table() -> list[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every process."""
    table = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    table.append((int(entry), f.read().rsplit(")", 1)[1].split()))
            except OSError:
                continue
    return table


def descendants(pid: int) -> set[int]:
    """Every live (not zombie) descendant of *pid*."""
    children: dict[int, list[int]] = {}
    for child, fields in _process_table():
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def session_processes(session: int) -> list[int]:
    """Live processes of the session *session* (a process started with start_new_session)."""
    return [pid for pid, fields in _process_table() if int(fields[3]) == session and fields[0] != "Z"]


def pid_state(pid: int) -> str | None:
    """The /proc state letter of *pid* (Z for zombie), or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _join_feeders(before: set[threading.Thread]) -> None:
    """A queue collected at the end of a test stops its feeder thread, which releases the
    queue's socket and eventfd as it exits: wait for the feeders started since *before*
    (holding no reference to them afterwards: the Thread object keys their finalizer)."""
    for thread in set(threading.enumerate()) - before:
        if thread.name == "QueueFeederThread":
            thread.join(timeout=5)


def raising(error: Exception):
    """A stand-in for a zero-argument function (a pool's start seam, say) that raises *error*."""

    def raise_it() -> None:
        raise error

    return raise_it


@contextlib.contextmanager
def reducer_registered(type_: type, reduce):
    """``procly.reduction.register(type_, reduce)`` for the block only: register() has no
    way back, so the reducer table and the fast paths' type sets are restored after."""
    from procly import _serialization, reduction

    saved = (_serialization._plain_types, _serialization._small_types)
    reduction.register(type_, reduce)
    try:
        yield
    finally:
        _serialization._extra_reducers.pop(type_)
        _serialization._plain_types, _serialization._small_types = saved


def shift_complex(value):
    """A reducer for ``complex`` that adds 100 to the real part: shows that it ran."""
    return complex, (value.real + 100, value.imag)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll *predicate* until true or *timeout*: for observing other processes only."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _helpers() -> set[int]:
    """Helper processes that live as long as the test process once started."""
    from procly import shared_memory

    helpers = set()
    server = _state.get().forkserver
    if server is not None:
        helpers.add(server._process.pid)
    tracker = shared_memory._tracker_instance
    if tracker is not None:
        helpers.add(tracker._process.pid)
    return helpers


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _shm() -> set[str]:
    # procly makes no named semaphores: "sem.*" entries belong to other programs (a
    # standard library run beside this one), never to the test.
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest):
    """Fail a test that leaves a child process, a descriptor or a /dev/shm entry behind."""
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    before_children = child_pids() - _helpers()
    before_fds = _fds()
    before_shm = _shm()
    before_threads = set(threading.enumerate())
    yield
    import gc

    gc.collect()
    _join_feeders(before_threads)
    gc.collect()
    assert wait_until(lambda: not (child_pids() - _helpers() - before_children), timeout=5), (
        f"child processes left behind: {child_pids() - _helpers() - before_children}"
    )
    # The lifeline, the fork server's pidfd and its connection made ahead, and the heap's
    # arena live as long as the process.
    state = _state.get()
    kept = {state.lifeline_read, state.lifeline_write}
    if state.forkserver is not None:
        kept.add(state.forkserver._process.sentinel)
        if state.forkserver._spare is not None:
            kept.add(state.forkserver._spare[0])
    from procly import shared_memory

    tracker = shared_memory._tracker_instance
    if tracker is not None:
        kept.update({tracker._process.sentinel, tracker._writer.fileno()})
    leaked = _fds() - before_fds - kept
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    # procly's heap keeps the arenas it allocates from, two descriptors each (ours and
    # the mmap's own); check that no more than those are open, in the whole process.
    from procly import _heap

    arenas = len(_heap._heap._arenas) if _heap._heap is not None else 0
    heap_fds = {fd for fd in _fds() if _describe(fd).startswith("/memfd:procly-heap")}
    assert len(heap_fds) <= 2 * arenas, f"{len(heap_fds)} heap descriptors open for {arenas} arenas"
    leaked -= heap_fds
    assert not leaked, f"file descriptors left open: {[(fd, _describe(fd)) for fd in leaked]}"
    # Another process on the machine may have a segment open for a moment; what the test
    # left behind stays.
    assert wait_until(lambda: not (_shm() - before_shm), timeout=2), (
        f"/dev/shm entries left behind: {_shm() - before_shm}"
    )


def _describe(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaks: skip the leak check (the test checks leaks itself)")


@pytest.fixture
def descriptors_past_1023():
    """Hold enough descriptors that everything opened next is numbered past select()'s 1023."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1400, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    yield
    for fd in held:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
