"""The public surface: names, the hard rule, and a cheap import."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import subprocess
import sys

import pytest

import procly
import procly.connection

# Names of multiprocessing.__all__ that later layers (synchronization, shared memory,
# queues, managers, pool) will bring. The test fails as soon as one lands without being
# removed from here, so this list always tells the truth.
NOT_YET: set[str] = set()


def test_all_covers_multiprocessing_except_pending_layers():
    missing = set(multiprocessing.__all__) - set(procly.__all__)
    assert missing == NOT_YET
    for name in procly.__all__:
        assert hasattr(procly, name), name
    assert procly.__all__ == sorted(procly.__all__, key=str.lower) or sorted(procly.__all__) == procly.__all__


def test_connection_module_covers_stdlib():
    assert set(multiprocessing.connection.__all__) <= set(procly.connection.__all__)


def test_public_objects_say_procly():
    assert procly.Process.__module__ == "procly"
    assert procly.ProcessError.__module__ == "procly"
    assert procly.connection.Connection.__module__ == "procly.connection"


def test_context_exposes_the_api():
    for method in ("fork", "spawn", "forkserver"):
        ctx = procly.get_context(method)
        for name in ("Process", "Pipe", "current_process", "parent_process", "active_children", "cpu_count"):
            assert hasattr(ctx, name)


HARD_RULE = """
import sys, procly

def child(conn):
    conn.send(sorted(m for m in sys.modules if m in FORBIDDEN or m.startswith("multiprocessing.")))

FORBIDDEN = {"multiprocessing", "_multiprocessing", "concurrent.futures.process"}

if __name__ == "__main__":
    bad = set()
    for method in ("fork", "spawn", "forkserver"):
        ctx = procly.get_context(method)
        r, w = ctx.Pipe()
        p = ctx.Process(target=child, args=(w,))
        p.start()
        bad.update(r.recv())
        p.join()
        from procly.connection import Listener, Client, wait
        with Listener(authkey=b"k") as l:
            pass
    bad.update(m for m in sys.modules if m in FORBIDDEN or m.startswith("multiprocessing."))
    print(sorted(bad))
"""


def test_procly_never_imports_multiprocessing(tmp_path):
    script = tmp_path / "rule.py"
    script.write_text(HARD_RULE)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# Modules that cost a fresh interpreter milliseconds and that neither `import procly`
# nor a spawned child running a plain function needs; loaded on first use instead.
HEAVY = ("numpy", "tqdm", "dask", "typing", "cloudpickle", "concurrent.futures", "inspect", "logging",
         "dataclasses", "asyncio", "ast", "random", "subprocess", "traceback")  # fmt: skip

CHILD_MODULES = """
import sys, procly

def report(conn):
    conn.send(sorted(sys.modules))

if __name__ == "__main__":
    print(sorted(sys.modules))
    r, w = procly.get_context("spawn").Pipe()
    p = procly.get_context("spawn").Process(target=report, args=(w,))
    p.start()
    print(r.recv())
    p.join()
"""


def test_import_and_a_spawned_child_stay_lean(tmp_path):
    """What `import procly` loads, and what a spawned child running a plain top-level
    function of the main script loads, leave out every heavy module (a fork server's
    children inherit the server's modules instead: no import at their start)."""
    script = tmp_path / "lean.py"
    script.write_text(CHILD_MODULES)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr, out.stderr
    parent, *children = (eval(line) for line in out.stdout.splitlines())  # noqa: S307 - our own lists
    assert len(children) == 1
    for loaded in (parent, *children):
        assert [m for m in loaded if m.startswith(HEAVY)] == []


BARE_CHILD = """
import sys, procly

def report():
    print(sorted(sys.modules), flush=True)

if __name__ == "__main__":
    print(sorted(sys.modules), flush=True)
    p = procly.get_context("spawn").Process(target=report)
    p.start()
    p.join()
"""

# What the standard library's start-up imports and procly's does without: pickle.py (with
# re and enum; the C _pickle is enough), socket and selectors (until a socket is made),
# signal (until a process is signalled).
START_HEAVY = ("pickle", "re", "enum", "socket", "selectors", "signal", "subprocess")


def test_import_and_a_bare_spawned_child_skip_what_they_do_not_use(tmp_path):
    """`import procly`, and a spawned child whose target takes no connection, import
    none of START_HEAVY: a third of a spawned child's start-up went to them."""
    script = tmp_path / "bare.py"
    script.write_text(BARE_CHILD)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr, out.stderr
    parent, child = (eval(line) for line in out.stdout.splitlines())  # noqa: S307 - our own lists
    assert "procly._start.child" in child
    for loaded in (parent, child):
        assert [m for m in loaded if m in START_HEAVY] == []


POOL_MODULES = """
import sys, procly

def loaded(_):
    return sorted(sys.modules)

if __name__ == "__main__":
    with procly.get_context(sys.argv[1]).Pool(2) as pool:
        worker = pool.apply(loaded, (0,))
        assert pool.map(abs, [-1, -2]) == [1, 2]
    print(sorted(sys.modules))
    print(worker)
"""

# What a Pool of plain functions (builtins included) never needs: concurrent.futures
# (and the logging it brings) come with an error to raise, traceback with a task that
# fails, cloudpickle with a function that must travel by value; typing never.
POOL_HEAVY = ("numpy", "cloudpickle", "concurrent.futures", "logging", "traceback", "asyncio", "inspect", "typing")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_pool_that_meets_no_error_stays_lean(tmp_path, method):
    """Under spawn and forkserver too: the workers' Process objects go through the C
    pickler (every function in them travels by reference), so the parent does not
    import cloudpickle to start them."""
    script = tmp_path / "lean_pool.py"
    script.write_text(POOL_MODULES)
    out = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr, out.stderr
    parent, worker = (eval(line) for line in out.stdout.splitlines())  # noqa: S307 - our own lists
    for who, loaded in (("parent", parent), ("worker", worker)):
        assert [m for m in loaded if m.startswith(POOL_HEAVY)] == [], who


def test_util_log_records_name_the_caller():
    """util.info() and friends log with the caller's file and line, not procly's."""
    import io
    import logging

    from procly import util

    logger = util.get_logger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelno)s %(filename)s %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(util.SUBDEBUG)
    try:
        util.info("one")
        util.debug("two")
        util.sub_debug("three")
        util.sub_warning("four")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    here = __file__.rsplit("/", 1)[-1]
    lines = stream.getvalue().splitlines()
    levels = (util.INFO, util.DEBUG, util.SUBDEBUG, util.SUBWARNING)
    words = ("one", "two", "three", "four")
    assert lines == [f"{level} {here} {word}" for level, word in zip(levels, words, strict=True)]
