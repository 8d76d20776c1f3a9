"""The Pool on Dask: a real loopback cluster started with Dask's own CLIs, and LocalCluster.

The CLI cluster (a scheduler and two workers with nannies, on 127.0.0.1) is started once
for the module; its fixture checks at the end that no process of it is left.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import procly
from procly import PicklingError, TaskTimeoutError, WorkerLostError
from procly._demo import EXAMPLES

from .conftest import descendants, pid_state

distributed = pytest.importorskip("distributed")
from procly.dask import Executor, Pool  # noqa: E402

pytestmark = [
    pytest.mark.timeout(120),
    # Dask's client keeps connections open between tests; processes are checked by the fixtures.
    pytest.mark.allow_leaks,
]

DASK = str(Path(sys.executable).with_name("dask"))


def alive(pid: int) -> bool:
    return pid_state(pid) not in (None, "Z")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1; yields the scheduler address."""
    workdir = tmp_path_factory.mktemp("dask")
    scheduler_file = workdir / "scheduler.json"
    # Dask gives up on a task after it killed 2 workers (default 4): keeps the worker-loss test short.
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1", "PYTHONPATH": os.getcwd()}
    log = (workdir / "cluster.log").open("w")
    scheduler = subprocess.Popen(
        [
            DASK,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--dashboard-address",
            "127.0.0.1:0",
            "--scheduler-file",
            str(scheduler_file),
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    workers = [
        subprocess.Popen(
            [
                DASK,
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--name",
                f"w{i}",
                "--local-directory",
                str(workdir),
            ],
            env=env,
            stdout=log,
            stderr=log,
        )
        for i in range(2)
    ]
    started = [scheduler, *workers]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        client = distributed.Client(scheduler_file=str(scheduler_file), set_as_default=False)
        client.wait_for_workers(2, timeout=60)
        address = client.scheduler.address
        client.close()
        yield address
    finally:
        everything = set().union(*(descendants(p.pid) for p in started)) | {p.pid for p in started}
        for proc in [*workers, scheduler]:
            proc.terminate()
        for proc in [*workers, scheduler]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in everything) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in everything if alive(pid)], "cluster processes left behind"


@pytest.fixture
def pool(cluster):
    with Pool(address=cluster) as pool:
        yield pool


def square(x):
    return x * x


def add(a, b):
    return a + b


class TwoArgError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code, self.detail = code, detail


def raise_two_arg():
    raise TwoArgError(7, "detail")


def worker_pid(_=None):
    return os.getpid()


def slow_square(x):
    time.sleep(0.3)
    return x * x


def die():
    os._exit(3)


INITIALIZED = []


def remember(value):
    INITIALIZED.append(value)


def initialized(_=None):
    return list(INITIALIZED)


# --- the seed document's example ---------------------------------------------------------


def test_seed_pool_example_prints_the_same_on_a_loopback_cluster(cluster, tmp_path):
    source = (Path(procly.__file__).parent / "examples" / "pool.py").read_text()
    changed = source.replace("p = Pool(processes=4)", f"p = Pool(processes=4, backend='dask', address={cluster!r})")
    assert changed != source
    script = tmp_path / "pool_on_dask.py"
    script.write_text(changed)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    lines = out.stdout.splitlines()
    example = next(e for e in EXAMPLES if e.script == "pool")
    assert out.returncode == 0, out.stderr
    assert example.check(lines), lines


# --- the Pool API on the CLI cluster -----------------------------------------------------


def test_map_starmap_apply_and_results(pool):
    assert pool.map(square, range(50)) == [x * x for x in range(50)]
    assert pool.map(square, range(7), chunksize=3) == [x * x for x in range(7)]
    assert pool.map(square, []) == []
    assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.apply(add, (2, 3)) == 5
    assert pool.apply(lambda x: x + 1, (1,)) == 2  # lambdas travel with cloudpickle
    result = pool.map_async(square, range(5))
    result.wait(30)
    assert result.ready() and result.successful() and result.get() == [0, 1, 4, 9, 16]
    assert pool.starmap_async(add, [(1, 1)]).get(30) == [2]


def test_callbacks(pool):
    got, errors = [], []
    pool.apply_async(square, (4,), callback=got.append).wait(30)
    pool.apply_async(raise_two_arg, error_callback=errors.append).wait(30)
    pool.map_async(square, range(3), callback=got.append).wait(30)
    assert got == [16, [0, 1, 4]]
    assert len(errors) == 1 and isinstance(errors[0], TwoArgError)


def test_imap_is_lazy_and_ordered(pool):
    assert list(pool.imap(square, iter(range(20)), chunksize=3)) == [x * x for x in range(20)]
    assert sorted(pool.imap_unordered(square, range(20))) == sorted(x * x for x in range(20))

    def endless():
        n = 0
        while True:
            yield n
            n += 1

    results = pool.imap(square, endless(), chunksize=5)
    assert [next(results) for _ in range(30)] == [x * x for x in range(30)]


def test_errors_keep_their_type(pool):
    with pytest.raises(TwoArgError) as info:
        pool.apply(raise_two_arg)
    assert info.value.code == 7 and info.value.detail == "detail"
    with pytest.raises(ZeroDivisionError):
        pool.map(lambda x: 1 / x, [1, 0, 2])
    result = pool.apply_async(raise_two_arg)
    result.wait(30)
    assert result.ready() and not result.successful()


def test_get_timeout_raises_procly_timeout_error(pool):
    result = pool.apply_async(time.sleep, (2,))
    with pytest.raises(procly.TimeoutError):
        result.get(timeout=0.1)
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    assert result.get(timeout=30) is None


def test_identical_impure_calls_are_independent(pool):
    values = [pool.apply_async(random.random) for _ in range(4)]
    assert len({v.get(30) for v in values}) == 4
    assert len(set(pool.map(lambda _: random.random(), range(6), chunksize=1))) == 6


def test_unpicklable_arguments_raise_in_the_caller(pool):
    import threading

    with pytest.raises(PicklingError, match="lock"):
        pool.apply_async(square, (threading.Lock(),))
    with pytest.raises(PicklingError, match="function"):
        lock = threading.Lock()
        pool.apply_async(lambda: lock)
    assert pool.apply(square, (3,)) == 9  # the pool goes on


def test_big_arguments_are_scattered_once(pool, monkeypatch):
    numpy = pytest.importorskip("numpy")
    big = numpy.ones(1 << 18)  # 2 MiB
    calls = []
    original = pool.client.scatter
    monkeypatch.setattr(pool.client, "scatter", lambda *a, **k: calls.append(1) or original(*a, **k))
    results = pool.starmap(lambda a, i: float(a.sum()) + i, [(big, i) for i in range(12)], chunksize=2)
    assert results == [float(1 << 18) + i for i in range(12)]
    assert len(calls) == 1
    assert pool.apply(lambda a: a.shape, (big,)) == big.shape
    assert len(calls) == 2


def test_closing_does_not_shut_down_a_cluster_it_did_not_start(cluster):
    pool = Pool(address=cluster)
    assert pool.map(square, [3]) == [9]
    pool.close()
    pool.join()
    with pytest.raises(ValueError):
        pool.apply_async(square, (1,))
    with distributed.Client(cluster, set_as_default=False) as client:
        assert len(client.nthreads()) == 2


def test_user_client_is_left_open(cluster):
    with distributed.Client(cluster, set_as_default=False) as client:
        with procly.Pool(backend="dask", client=client) as pool:
            assert pool.map(square, [2]) == [4]
        assert client.status == "running"
        assert client.submit(square, 5).result(30) == 25


def test_task_timeout_stops_the_task_and_the_pool_goes_on(pool):
    with pytest.raises(TaskTimeoutError, match="ran longer than 1"):  # not procly.TimeoutError: it was stopped
        pool.apply_async(time.sleep, (60,), task_timeout=1).get(30)
    assert pool.map(square, range(4)) == [0, 1, 4, 9]


def test_worker_killed_mid_map_the_map_still_completes(cluster):
    with Pool(address=cluster) as pool:
        pids = pool.client.run(worker_pid)  # {address: worker process pid}
        first = threading.Event()
        result = pool.map_async(slow_square, range(16), chunksize=1, on_result=lambda _: first.set())
        assert first.wait(60)  # the map is under way
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        assert result.get(timeout=90) == [x * x for x in range(16)]
        pool.client.wait_for_workers(2, timeout=60)  # the nanny restarts it


def test_a_task_that_keeps_killing_workers_fails_with_worker_lost(cluster):
    with Pool(address=cluster) as pool:
        with pytest.raises(WorkerLostError, match="died"):
            pool.apply_async(die).get(timeout=90)
        pool.client.wait_for_workers(2, timeout=60)
        assert pool.map(square, range(3)) == [0, 1, 4]


def test_executor_on_the_cluster(cluster):
    with Executor(address=cluster) as executor:
        futures = [executor.submit(square, i) for i in range(5)]
        assert sorted(f.result(30) for f in concurrent.futures.as_completed(futures)) == [0, 1, 4, 9, 16]
        assert list(executor.map(add, [1, 2], [10, 20], chunksize=1)) == [11, 22]
        failed = executor.submit(raise_two_arg)
        assert isinstance(failed.exception(30), TwoArgError)


# --- a LocalCluster started (and ended) by the pool ----------------------------------------


def test_local_cluster_pool_runs_initializer_and_cleans_up():
    before = descendants(os.getpid())
    with procly.Pool(2, initializer=remember, initargs=("ready",), backend="dask") as pool:
        assert pool.map(initialized, range(4), chunksize=1) == [["ready"]] * 4
        assert len(pool.client.nthreads()) == 2
        assert len(set(pool.map(worker_pid, range(8), chunksize=1))) >= 1
    deadline = time.monotonic() + 15
    while cluster_processes(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not cluster_processes(before), "the local cluster left processes behind"


def cluster_processes(before: set[int]) -> set[int]:
    """Our new descendants, except the standard library's resource tracker: Dask's nannies use
    multiprocessing, whose tracker serves the whole process and ends with it."""
    left = set()
    for pid in descendants(os.getpid()) - before:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"multiprocessing.resource_tracker" in f.read():
                    continue
        except OSError:
            continue
        left.add(pid)
    return left


def test_bad_options():
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(2, maxtasksperchild=5)
    with pytest.raises(ValueError, match="backend"):
        procly.Pool(2, backend="ray")
    with pytest.raises(ValueError, match="client or an address"):
        Pool(client=object(), address="tcp://127.0.0.1:1")


def test_importing_procly_does_not_import_dask():
    code = (
        "import sys, procly, procly.pool\nprint(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


# --- procly loadtest --dask ----------------------------------------------------------------


def test_loadtest_on_the_cluster_merges_every_task(cluster):
    out = subprocess.run(
        [sys.executable, "-m", "procly.cli", "loadtest", "--dask", cluster, "-d", "1.5", "-c", "8", "--json", "-"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert "2 processes" in report["description"]  # one task per worker thread
    assert report["requests"] > 100 and report["errors"] == 0 and report["timeline"]
    assert 0 <= report["target_served"] - report["requests"] <= 8
    assert sum(point["requests"] for point in report["timeline"]) == report["requests"]


def test_loadtest_call_on_the_cluster_spends_the_budget_exactly(cluster):
    from procly.loadtest import LoadTestConfig
    from procly.loadtest._dask import run_on_dask

    report = run_on_dask(
        LoadTestConfig(call="tests.loadtest_targets:quick", processes=2, connections=3, requests=300), cluster
    )
    assert report.requests == 300 and report.errors == 0 and not report.workers_lost


def test_progress_bar_and_on_result_on_the_cluster(pool, capsys):
    seen = []
    assert pool.map(square, range(12), chunksize=3, on_result=seen.append, progress="dask") == [
        x * x for x in range(12)
    ]
    assert sorted(seen) == sorted(x * x for x in range(12))
    assert "12/12" in capsys.readouterr().err
    seen.clear()
    assert list(pool.imap(square, range(5), on_result=seen.append)) == [0, 1, 4, 9, 16]
    assert sorted(seen) == [0, 1, 4, 9, 16]
