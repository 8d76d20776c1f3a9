"""The public surface: names, the hard rule, and a cheap import."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import subprocess
import sys

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


def test_import_is_cheap_and_silent():
    code = "import sys, procly; print(sorted(m for m in sys.modules if m.startswith(('numpy', 'tqdm', 'dask'))))"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]"
    # cumulative import time of procly itself, in microseconds, from -X importtime
    line = [ln for ln in out.stderr.splitlines() if ln.rstrip().endswith("| procly")][0]
    assert int(line.split("|")[1]) < 300_000


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
