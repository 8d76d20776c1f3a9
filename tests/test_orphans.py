"""When a parent is SIGKILLed: daemons and helpers end, non-daemonic children finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from .conftest import pid_state, wait_until

PARENT = """
import sys, time, procly
from tests import targets

if __name__ == "__main__":
    ctx = procly.get_context(sys.argv[1])
    daemon = ctx.Process(target=targets.sleep, args=(60,), daemon=True)
    daemon.start()
    worker = ctx.Process(target=targets.write_file_later, args=(sys.argv[2], 1.5))
    worker.start()
    server = procly._state.get().forkserver
    helper = server._process.pid if server else 0
    print(daemon.pid, worker.pid, helper, flush=True)
    time.sleep(60)
"""


def _gone(pid: int) -> bool:
    return pid_state(pid) in (None, "Z")


@pytest.mark.timeout(40)
def test_parent_sigkill_ends_daemons_and_helpers_not_workers(ctx, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    marker = tmp_path / "worker-done"
    parent = subprocess.Popen(
        [sys.executable, str(script), ctx.get_start_method(), str(marker)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        daemon_pid, worker_pid, helper_pid = map(int, parent.stdout.readline().split())
        assert not _gone(daemon_pid) and not _gone(worker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_until(lambda: _gone(daemon_pid), timeout=5), "daemonic child outlived its parent"
        if helper_pid:
            assert wait_until(lambda: _gone(helper_pid), timeout=5), "fork server outlived its owner"
        # The non-daemonic child keeps the standard semantics: it finishes its work.
        assert wait_until(marker.exists, timeout=10), "non-daemonic child did not finish"
        assert marker.read_text() == "done"
        assert wait_until(lambda: _gone(worker_pid), timeout=5)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


HOLDER = """
import sys, time, procly

if __name__ == "__main__":
    ctx = procly.get_context(sys.argv[1])
    lock, array, queue = ctx.Lock(), ctx.Array("i", 100), ctx.Queue()
    queue.put("x" * 1000)
    lock.acquire()
    pool = ctx.Pool(2)
    pool.apply(abs, (-1,))
    if sys.argv[2] == "busy":  # the workers are in the middle of long tasks
        pool.map_async(time.sleep, [30] * 4, chunksize=1)
    manager = ctx.Manager()
    shared = manager.dict()
    helpers = [p.pid for p in procly.active_children()]
    print(" ".join(map(str, helpers)), flush=True)
    time.sleep(60)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool_state", ["idle", "busy"])
def test_sigkilled_parent_leaves_nothing_behind(ctx, tmp_path, pool_state):
    """Locks, arrays, queues, a pool (idle, or its workers in long tasks) and a manager:
    after SIGKILL, no process, nothing in /dev/shm."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    before = set(os.listdir("/dev/shm"))
    parent = subprocess.Popen([sys.executable, str(script), ctx.get_start_method(), pool_state],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        helpers = list(map(int, parent.stdout.readline().split()))
        assert len(helpers) >= 3  # two pool workers and the manager
        assert set(os.listdir("/dev/shm")) == before, "procly must not use named shared memory"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        for pid in helpers:
            assert wait_until(lambda pid=pid: _gone(pid), timeout=10), f"helper {pid} outlived its parent"
        assert set(os.listdir("/dev/shm")) == before
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


NESTED_PARENT = """
import sys, time, procly
from tests import targets

if __name__ == "__main__":
    ctx = procly.get_context(sys.argv[1])
    pool = ctx.Pool(1)
    result = pool.apply_async(targets.start_grandchildren_and_sleep, (sys.argv[1], sys.argv[2]))
    while True:
        time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_parent_sigkill_ends_what_pool_tasks_started(ctx, tmp_path):
    script = tmp_path / "nested.py"
    script.write_text(NESTED_PARENT)
    pids_file = tmp_path / "pids"
    parent = subprocess.Popen(
        [sys.executable, str(script), ctx.get_start_method(), str(pids_file)],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert wait_until(lambda: pids_file.exists() and pids_file.read_text().endswith("\n"), timeout=30)
        pids = [int(x) for x in pids_file.read_text().split()]
        assert not any(_gone(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        # The worker (a daemon) ends with its owner, and takes its task's children with it:
        # a procly child and a plain subprocess.
        assert wait_until(lambda: all(_gone(pid) for pid in pids), timeout=15), [pid_state(p) for p in pids]
    finally:
        if parent.poll() is None:
            parent.kill()
