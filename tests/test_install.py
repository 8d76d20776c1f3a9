"""procly.install() and ``python -m procly run``: code that imports multiprocessing runs on procly.

Every check runs in a fresh interpreter (this test process has imported the standard
library's multiprocessing, which install() refuses to shadow), with a timeout, and
asserts on what the program printed.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from tests.conftest import METHODS

TIMEOUT = 120


def run_python(args: list[str], cwd: str | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def run_script(tmp_path, source: str, *args: str, name: str = "script.py") -> subprocess.CompletedProcess:
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    return run_python(["-m", "procly", "run", str(script), *args], cwd=str(tmp_path))


def last_json(out: subprocess.CompletedProcess) -> object:
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- install() in-process

IN_PROCESS = """
import json, sys
import procly
procly.install()
import multiprocessing, multiprocessing.pool, multiprocessing.queues, multiprocessing.context
import concurrent.futures
import procly.futures, procly.pool, procly.queues
real = sorted(n for n, m in sys.modules.items()
              if n.startswith("multiprocessing") and not getattr(m, "__name__", "").startswith("procly"))
print(json.dumps({
    "package": multiprocessing is procly,
    "pool": multiprocessing.pool.Pool is procly.pool.Pool,
    "queues": multiprocessing.queues.Queue is procly.queues.Queue,
    "full": multiprocessing.queues.Full.__module__,
    "context": multiprocessing.context.BaseContext.__module__,
    "executor": concurrent.futures.ProcessPoolExecutor is procly.futures.ProcessPoolExecutor,
    "real": real,
    "stdlib_executor": "concurrent.futures.process" in sys.modules,
    "forbidden": "_multiprocessing" in sys.modules,
    "spec": procly.pool.__spec__.name,
}))
"""


def test_install_in_process_gives_procly_modules():
    result = last_json(run_python(["-c", IN_PROCESS]))
    assert result == {
        "package": True,
        "pool": True,
        "queues": True,
        "full": "queue",
        "context": "procly.context",
        "executor": True,
        "real": [],
        "stdlib_executor": False,
        "forbidden": False,
        "spec": "procly.pool",  # the module keeps its own spec under the alias
    }


def test_install_patches_concurrent_futures_imported_before():
    code = (
        "import concurrent.futures, sys, procly; procly.install(); "
        "import procly.futures; "
        "print(concurrent.futures.ProcessPoolExecutor is procly.futures.ProcessPoolExecutor, "
        "'concurrent.futures.process' in sys.modules)"
    )
    out = run_python(["-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_install_refuses_after_the_real_multiprocessing():
    code = (
        "import multiprocessing, procly\n"
        "try:\n    procly.install()\n"
        "except RuntimeError as exc:\n    print('refused', 'python -m procly run' in str(exc))\n"
    )
    out = run_python(["-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused", "True"]


def test_install_is_idempotent_and_uninstall_restores_the_standard_library():
    code = (
        "import sys, procly, procly._install as i\n"
        "procly.install(); procly.install()\n"
        "import multiprocessing.pool\n"
        "assert multiprocessing.pool.Pool is procly.pool.Pool\n"
        "i.uninstall()\n"
        "import multiprocessing\n"
        "print(multiprocessing.__name__, multiprocessing.__file__.endswith('multiprocessing/__init__.py'))\n"
    )
    out = run_python(["-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["multiprocessing", "True"]


def test_unknown_submodule_says_procly_has_none():
    code = (
        "import procly; procly.install()\n"
        "try:\n    import multiprocessing.popen_spawn_win32\nexcept ImportError as exc:\n    print(exc)\n"
        "try:\n    import multiprocessing.no_such_thing\nexcept ModuleNotFoundError as exc:\n    print(exc)\n"
    )
    out = run_python(["-c", code])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "Linux only" in lines[0]
    assert "no module 'no_such_thing'" in lines[1]


# --------------------------------------------------------------------------- public names

SUBMODULES = [
    "", "connection", "context", "dummy", "dummy.connection", "forkserver", "heap", "managers", "pool",
    "popen_fork", "popen_forkserver", "popen_spawn_posix", "process", "queues", "reduction", "resource_sharer",
    "resource_tracker", "shared_memory", "sharedctypes", "spawn", "synchronize", "util",
]  # fmt: skip

# Names that are not API: a loop variable the standard library leaves behind, and the
# source template its sharedctypes compiles properties from (procly builds them directly).
NOT_API = {("process", "name"), ("sharedctypes", "template")}
# Names from other modules that the standard library's modules re-export as their own API.
REEXPORTED = {("queues", "Full"), ("queues", "Empty"), ("synchronize", "sem_unlink")}


def stdlib_public_names() -> dict[str, list[str]]:
    """Public names of each stdlib multiprocessing submodule, without the modules and
    functions it merely imported (``os``, ``partial``, ``WeakSet``...)."""
    names: dict[str, list[str]] = {}
    for sub in SUBMODULES:
        module = importlib.import_module("multiprocessing" + ("." + sub if sub else ""))
        wanted = []
        for name in dir(module):
            if name.startswith("_") or (sub, name) in NOT_API:
                continue
            value = getattr(module, name)
            if isinstance(value, types.ModuleType):
                if value.__name__.startswith("multiprocessing"):
                    wanted.append(name)
                continue
            origin = getattr(value, "__module__", None)
            foreign = callable(value) and origin and not origin.startswith("multiprocessing")
            if foreign and (sub, name) not in REEXPORTED and not sub.startswith("dummy"):
                continue
            wanted.append(name)
        names[sub] = wanted
    return names


NAMES_CHECK = """
import importlib, json, sys, types
import procly
procly.install()
expected = json.loads(sys.argv[1])
missing = {}
for sub, names in expected.items():
    module = importlib.import_module("multiprocessing" + ("." + sub if sub else ""))
    assert module.__name__ == "procly" + ("." + sub if sub else ""), module
    lost = [n for n in names if not hasattr(module, n)]
    for n in names:
        value = getattr(module, n, None)
        if isinstance(value, types.ModuleType) and not value.__name__.startswith("procly"):
            lost.append(n + " (not procly's)")
    if lost:
        missing[sub] = lost
print(json.dumps(missing))
"""


def test_every_public_name_of_the_standard_library_submodules_exists():
    expected = stdlib_public_names()
    assert sum(len(v) for v in expected.values()) > 300  # the comparison compares something
    out = run_python(["-c", NAMES_CHECK, json.dumps(expected)])
    assert last_json(out) == {}


# --------------------------------------------------------------------------- python -m procly run

CHILDREN = """
import json, sys
import multiprocessing
import multiprocessing.pool

def not_procly():
    forbidden = {"_multiprocessing", "concurrent.futures.process"}
    return sorted(n for n, m in sys.modules.items() if n in forbidden or (
        n.startswith("multiprocessing") and not getattr(m, "__name__", "").startswith("procly")))

def report(q):
    import multiprocessing, sys
    q.put([multiprocessing.__name__, sys.modules["__main__"].__name__, not_procly()])

def square(x):
    return x * x

if __name__ == "__main__":
    method = sys.argv[1]
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=report, args=(q,))
    p.start()
    child = q.get(timeout=60)
    p.join(60)
    with ctx.Pool(2) as pool:
        squares = pool.map(square, range(8))
    print(json.dumps({"child": child, "exitcode": p.exitcode, "squares": squares, "argv": sys.argv[1:],
                      "pool": multiprocessing.pool.Pool.__module__, "main": __name__, "parent": not_procly()}))
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", METHODS)
def test_run_script_aliases_in_children(tmp_path, method):
    result = last_json(run_script(tmp_path, CHILDREN, method, "extra"))
    main = "__main__" if method == "fork" else "__mp_main__"
    assert result == {
        "child": ["procly", main, []],
        "exitcode": 0,
        "squares": [x * x for x in range(8)],
        "argv": [method, "extra"],
        "pool": "procly.pool",
        "main": "__main__",
        "parent": [],
    }


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_run_module_aliases_in_children(tmp_path, method):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "job.py").write_text(textwrap.dedent(CHILDREN))
    result = last_json(run_python(["-m", "procly", "run", "-m", "mypkg.job", method], cwd=str(tmp_path)))
    assert result["child"] == ["procly", "__mp_main__", []]
    assert result["parent"] == []
    assert result["squares"] == [x * x for x in range(8)]
    assert result["argv"] == [method]


def test_run_start_method_option(tmp_path):
    source = "import multiprocessing\nif __name__ == '__main__':\n    print(multiprocessing.get_start_method())\n"
    (tmp_path / "m.py").write_text(source)
    out = run_python(["-m", "procly", "run", "--start-method", "spawn", str(tmp_path / "m.py")])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "spawn"


def test_run_exit_status_and_errors(tmp_path):
    (tmp_path / "exit3.py").write_text("import sys\nsys.exit(3)\n")
    assert run_python(["-m", "procly", "run", str(tmp_path / "exit3.py")]).returncode == 3
    (tmp_path / "boom.py").write_text("raise ValueError('boom')\n")
    out = run_python(["-m", "procly", "run", str(tmp_path / "boom.py")])
    assert out.returncode == 1 and "ValueError: boom" in out.stderr
    out = run_python(["-m", "procly", "run"])
    assert out.returncode == 2 and "usage" in out.stderr
    out = run_python(["-m", "procly", "run", str(tmp_path / "missing.py")])
    assert out.returncode != 0 and "missing.py" in out.stderr


# --------------------------------------------------------------------------- the standard library's helpers

SPAWNING = """
import json, os, sys
import multiprocessing
from multiprocessing.context import assert_spawning, get_spawning_popen
from multiprocessing import reduction

class OnlyInherited:
    def __reduce__(self):
        assert_spawning(self)
        return OnlyInherited, ()

def child(obj, handle, q):
    fd = handle.detach()
    os.write(fd, b"from child")
    os.close(fd)
    q.put(type(obj).__name__)

if __name__ == "__main__":
    method = sys.argv[1]
    ctx = multiprocessing.get_context(method)
    result = {"outside": get_spawning_popen() is None}
    try:
        reduction.ForkingPickler.dumps(OnlyInherited())
    except RuntimeError as exc:
        result["refused"] = "through inheritance" in str(exc)
    r, w = os.pipe()
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(OnlyInherited(), reduction.DupFd(w), q))
    p.start()
    os.close(w)
    result["child"] = q.get(timeout=60)
    result["pipe"] = os.read(r, 100).decode()
    p.join(60)
    result["exitcode"] = p.exitcode
    print(json.dumps(result))
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_assert_spawning_and_dupfd_while_starting_a_child(tmp_path, method):
    result = last_json(run_script(tmp_path, SPAWNING, method))
    assert result == {"outside": True, "refused": True, "child": "OnlyInherited", "pipe": "from child", "exitcode": 0}


LENT_FD = """
import json, os, sys
import multiprocessing
from multiprocessing import reduction

def child(q_in, q_out):
    handle = q_in.get(timeout=60)
    fd = handle.detach()
    os.write(fd, b"lent")
    os.close(fd)
    q_out.put("done")

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    q_in, q_out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=child, args=(q_in, q_out))
    p.start()
    r, w = os.pipe()
    q_in.put(reduction.DupFd(w))  # not while starting a child: lent through the resource sharer
    os.close(w)
    print(json.dumps([q_out.get(timeout=60), os.read(r, 100).decode()]))
    p.join(60)
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", METHODS)
def test_dupfd_through_a_queue_is_lent(tmp_path, method):
    assert last_json(run_script(tmp_path, LENT_FD, method)) == ["done", "lent"]


TRACKER = """
import json, os, sys
import multiprocessing
from multiprocessing import resource_tracker, shared_memory

def create(q, unregister):
    shm = shared_memory.SharedMemory(create=True, size=64)
    if unregister:
        resource_tracker.unregister(shm._name, "shared_memory")
    q.put(shm.name)
    shm.close()

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    names = []
    for unregister in (False, True):
        q = ctx.Queue()
        p = ctx.Process(target=create, args=(q, unregister))
        p.start()
        names.append(q.get(timeout=60))
        p.join(60)
    # The creator's tracker unlinks a registered segment when the creator ends.
    import time
    deadline = time.monotonic() + 30
    while os.path.exists("/dev/shm/" + names[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = [os.path.exists("/dev/shm/" + name) for name in names]
    for name, there in zip(names, survived):
        if there:
            shared_memory.SharedMemory(name).unlink()
    try:
        resource_tracker.register("x", "semaphore")
    except ValueError as exc:
        refused = "named semaphores" in str(exc)
    print(json.dumps({"survived": survived, "refused": refused}))
"""


@pytest.mark.timeout(180)
def test_resource_tracker_unregister_keeps_a_segment(tmp_path):
    # The registered segment is unlinked by the creator's tracker when the creator ends;
    # the unregistered one survives it (the script unlinks what is left either way).
    assert last_json(run_script(tmp_path, TRACKER)) == {"survived": [False, True], "refused": True}


def test_pool_worker_helper_runs_the_standard_library_protocol():
    import queue

    import procly.pool

    tasks, results = queue.Queue(), queue.Queue()
    tasks.put((1, 0, pow, (2, 5), {}))
    tasks.put((1, 1, int, ("x",), {}))
    tasks.put(None)
    procly.pool.worker(tasks, results, wrap_exception=True)
    first, second = results.get_nowait(), results.get_nowait()
    assert first == (1, 0, (True, 32))
    job, i, (ok, wrapped) = second
    assert (job, i, ok) == (1, 1, False)
    import pickle

    exc = pickle.loads(pickle.dumps(wrapped))
    assert isinstance(exc, ValueError) and "int()" in str(exc.__cause__)
    assert procly.pool.mapstar((abs, [-1, -2])) == [1, 2]
    assert procly.pool.starmapstar((pow, [(2, 3)])) == [8]
    with pytest.raises(AssertionError):
        procly.pool.worker(tasks, results, maxtasks=0)


def test_xml_listener_and_socket_client_roundtrip():
    import threading

    from procly import connection

    with connection.XmlListener(authkey=b"k") as listener:

        def serve() -> None:
            with listener.accept() as conn:
                conn.send(conn.recv() + [3])

        thread = threading.Thread(target=serve)
        thread.start()
        with connection.XmlClient(listener.address, authkey=b"k") as client:
            client.send([1, 2])
            assert client.poll(30)
            assert client.recv() == [1, 2, 3]
        thread.join(30)
    with connection.SocketListener(connection.arbitrary_address("AF_UNIX"), "AF_UNIX") as listener:
        client = connection.SocketClient(listener.address)
        server = listener.accept()
        client.send("plain")
        assert server.recv() == "plain"
        client.close()
        server.close()


# --------------------------------------------------------------------------- third-party packages

PEBBLE = """
import json, sys, time
import multiprocessing
from concurrent.futures import TimeoutError as FutureTimeout
from pebble import ProcessPool

def square(x):
    return x * x

def stuck(x):
    time.sleep(120)

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    result = {"context": type(ctx).__module__}
    with ProcessPool(max_workers=2, context=ctx) as pool:
        result["map"] = list(pool.map(square, range(6)).result())
        future = pool.schedule(stuck, args=(1,), timeout=0.5)
        try:
            future.result(timeout=60)
        except FutureTimeout:
            result["timeout"] = True
        result["after"] = pool.schedule(square, args=(7,)).result(timeout=60)
    print(json.dumps(result))
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", METHODS)
def test_pebble_process_pool(tmp_path, method):
    pytest.importorskip("pebble")
    result = last_json(run_script(tmp_path, PEBBLE, method))
    assert result == {"context": "procly.context", "map": [0, 1, 4, 9, 16, 25], "timeout": True, "after": 49}


LOGURU = """
import sys
import multiprocessing
import procly
from loguru import logger

def set_logger(parent_logger):
    global logger
    logger = parent_logger

def work(i):
    logger.info("task {}", i)
    return i

def one(parent_logger):
    parent_logger.info("process")

if __name__ == "__main__":
    method = sys.argv[1]
    logger.remove()
    logger.add(sys.stdout, enqueue=True, context=procly.get_context(method), format="{message}")
    logger.add(sys.stdout, enqueue=True, context=method, format="str {message}",
               filter=lambda record: "process" in record["message"])
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2, initializer=set_logger, initargs=(logger,)) as pool:
        assert pool.map(work, range(4)) == [0, 1, 2, 3]
    p = ctx.Process(target=one, args=(logger,))
    p.start()
    p.join(60)
    logger.complete()
    logger.remove()
    print("exitcode", p.exitcode)
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", METHODS)
def test_loguru_enqueue_with_a_procly_context(tmp_path, method):
    pytest.importorskip("loguru")
    out = run_script(tmp_path, LOGURU, method)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("task")) == [f"task {i}" for i in range(4)]
    assert "process" in lines and "str process" in lines
    assert lines[-1] == "exitcode 0"


TQDM = """
import io, json, sys
import concurrent.futures
import multiprocessing
from tqdm.contrib.concurrent import process_map

def square(x):
    return x * x

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    bar = io.StringIO()
    results = process_map(square, range(30), max_workers=2, chunksize=3, file=bar)
    print(json.dumps({"results": results, "executor": concurrent.futures.ProcessPoolExecutor.__module__,
                      "stdlib": "concurrent.futures.process" in sys.modules, "bar": "/30" in bar.getvalue()}))
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", METHODS)
def test_tqdm_process_map_runs_on_procly_executor(tmp_path, method):
    pytest.importorskip("tqdm")
    result = last_json(run_script(tmp_path, TQDM, method))
    assert result == {"results": [x * x for x in range(30)], "executor": "procly.futures", "stdlib": False, "bar": True}


JOBLIB = """
import json, sys
import multiprocessing
import numpy as np
from joblib import Parallel, delayed

def square(x):
    return x * x

def total(a):
    return float(a.sum())

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    squares = Parallel(n_jobs=2, backend="multiprocessing")(delayed(square)(i) for i in range(10))
    big = np.ones(300_000)  # above joblib's memmapping threshold
    totals = Parallel(n_jobs=2, backend="multiprocessing")(delayed(total)(big) for _ in range(3))
    real = sorted(n for n, m in sys.modules.items()
                  if n.startswith("multiprocessing") and not getattr(m, "__name__", "").startswith("procly"))
    print(json.dumps({"squares": squares, "totals": totals, "real": real}))
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", METHODS)
def test_joblib_multiprocessing_backend(tmp_path, method):
    pytest.importorskip("joblib")
    pytest.importorskip("numpy")
    result = last_json(run_script(tmp_path, JOBLIB, method))
    assert result == {"squares": [i * i for i in range(10)], "totals": [300000.0] * 3, "real": []}


DASK = """
import json, sys
import concurrent.futures
import dask
import dask.bag as db

def inc(x):
    return x + 1

if __name__ == "__main__":
    with dask.config.set(scheduler="processes", num_workers=2, **{"multiprocessing.context": sys.argv[1]}):
        total = sum(db.from_sequence(range(100), npartitions=8).map(inc).map(lambda x: x * 2).compute())
        try:
            db.from_sequence([1, 0], npartitions=2).map(lambda x: 1 / x).compute()
            raised = None
        except ZeroDivisionError as exc:
            raised = type(exc).__name__
    real = sorted(n for n, m in sys.modules.items()
                  if n.startswith(("multiprocessing", "concurrent.futures.process"))
                  and not getattr(m, "__name__", "").startswith("procly"))
    print(json.dumps({"total": total, "raised": raised, "real": real,
                      "executor": concurrent.futures.ProcessPoolExecutor.__module__}))
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", METHODS)
def test_dask_multiprocessing_scheduler(tmp_path, method):
    """dask's "processes" scheduler runs on procly's executor; a task's exception comes back as itself."""
    pytest.importorskip("dask")
    result = last_json(run_script(tmp_path, DASK, method))
    assert result == {"total": 10100, "raised": "ZeroDivisionError", "real": [], "executor": "procly.futures"}


def test_run_is_listed_in_the_cli_help():
    out = run_python(["-m", "procly", "--help"])
    assert out.returncode == 0 and "run" in out.stdout
    out = run_python(["-m", "procly", "run", "--help"])
    assert out.returncode == 0 and "procly run" in out.stdout


def test_install_imports_nothing_of_the_standard_library():
    code = (
        "import sys, procly; procly.install(); import multiprocessing.managers, multiprocessing.pool; "
        "print(sorted(n for n, m in sys.modules.items() if 'multiprocessing' in n "
        "and not getattr(m, '__name__', '').startswith('procly')))"
    )
    out = run_python(["-c", code], cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


FUTURES_OFF = """
import sys
import procly
procly.install(futures=False)
import concurrent.futures
import multiprocessing

def where(_):
    import concurrent.futures, sys
    return [concurrent.futures.ProcessPoolExecutor.__module__, sys.modules["multiprocessing"].__name__]

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(1) as pool:
        child = pool.apply(where, (0,))
    print(concurrent.futures.ProcessPoolExecutor.__module__, child)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_install_without_futures_is_passed_to_children(tmp_path, method):
    script = tmp_path / "off.py"
    script.write_text(FUTURES_OFF)
    out = run_python([str(script), method])
    assert out.returncode == 0, out.stderr
    # The name stays the standard library's (running on procly's modules), in the children too.
    assert out.stdout.strip() == "concurrent.futures.process ['concurrent.futures.process', 'procly']"
