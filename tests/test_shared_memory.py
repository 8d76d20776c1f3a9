"""SharedMemory and ShareableList: by name, across processes, and never leaked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from procly.shared_memory import ShareableList, SharedMemory

from . import targets
from .conftest import wait_until


def test_shared_memory_between_processes(ctx):
    shm = SharedMemory(create=True, size=100)
    try:
        assert shm.size >= 100 and os.path.exists(f"/dev/shm/{shm.name}")
        for arg in (shm.name, shm):  # attach by name, or pass the object itself
            p = ctx.Process(target=targets.write_shared, args=(arg, b"hello"))
            p.start()
            p.join(10)
            assert bytes(shm.buf[:5]) == b"hello"
            shm.buf[:5] = b"\0" * 5
    finally:
        shm.close()
        shm.unlink()
    assert not os.path.exists(f"/dev/shm/{shm.name}")
    with pytest.raises(ValueError):
        _ = shm.buf


def test_shared_memory_errors():
    with pytest.raises(ValueError):
        SharedMemory(create=True, size=0)
    with pytest.raises(ValueError):
        SharedMemory(size=-1)
    with pytest.raises(FileNotFoundError):
        SharedMemory("psm_does_not_exist")
    shm = SharedMemory("psm_procly_test_name", create=True, size=10)
    try:
        with pytest.raises(FileExistsError):
            SharedMemory("psm_procly_test_name", create=True, size=10)
        other = SharedMemory("psm_procly_test_name")
        assert other.size == shm.size
        other.close()
    finally:
        shm.close()
        shm.unlink()


def test_standard_library_hooks_name_and_flags(monkeypatch):
    """CPython's tests patch shared_memory._make_filename and subclass with _flags; both
    behave as there, and a name with a NUL byte is refused with ValueError."""
    from procly import shared_memory

    names = iter([shared_memory._SHM_NAME_PREFIX + "procly_hook_a"])
    monkeypatch.setattr(shared_memory, "_make_filename", lambda: next(names))
    shm = SharedMemory(create=True, size=16)
    try:
        assert shm._name == "/psm_procly_hook_a" and shm.name == "psm_procly_hook_a"

        class AttachOrCreate(SharedMemory):
            _flags = os.O_CREAT | os.O_RDWR

        again = AttachOrCreate(shm.name)
        assert again.size == shm.size
        again.close()
        with pytest.raises(ValueError):
            SharedMemory(shm.name + "\0a")
        with pytest.raises(ValueError, match="name"):
            SharedMemory()
    finally:
        shm.close()
        shm.unlink()
    assert not os.path.exists("/dev/shm/psm_procly_hook_a")
    with pytest.raises(FileNotFoundError):
        shm.unlink()  # a name is removed once, as with the standard library


def test_shareable_list(ctx):
    sl = ShareableList([1, "text", 2.5, None, True, b"raw"])
    try:
        assert list(sl) == [1, "text", 2.5, None, True, b"raw"] and len(sl) == 6
        assert sl.format == "q8sdxxxxxx?xxxxxxxx?8s" and sl.index(2.5) == 2 and sl.count(1) == 2  # True == 1
        p = ctx.Process(target=targets.bump_list, args=(sl,))
        p.start()
        p.join(10)
        assert sl[0] == 2 and sl[1] == "changed"
        attached = ShareableList(name=sl.shm.name)
        assert attached[-1] == b"raw"
        attached.shm.close()
        with pytest.raises(ValueError):
            sl[1] = "much too long for this slot"
        with pytest.raises(ValueError):
            sl[0] = "more than eight bytes"
        with pytest.raises(TypeError):
            sl[0] = [1, 2]
        sl[0] = "short"  # any type that fits its slot, as in the standard library
        assert sl[0] == "short" and sl._get_packing_format(0) == "8s"
        sl[0] = 2
        with pytest.raises(IndexError):
            sl[10]
        sl[3] = 7  # number slots may change between int, float, bool and None
        assert sl[3] == 7
    finally:
        sl.shm.close()
        sl.shm.unlink()


INTEROP = """
import multiprocessing.resource_tracker as stdlib_tracker
from multiprocessing import shared_memory as stdlib_shared_memory

import pytest
from procly.shared_memory import ShareableList

items = ["howdy", b"HoWdY", -273.154, 100, None, True, 42, "encodés", "", "ééééé"]
ours = ShareableList(items)
theirs = stdlib_shared_memory.ShareableList(name=ours.shm.name)
stdlib_tracker.unregister(theirs.shm._name, "shared_memory")  # 3.11 would unlink it at exit
assert list(theirs) == items and theirs.format == ours.format, (list(theirs), theirs.format, ours.format)
theirs[3] = 2.5
theirs[0] = "hi"
assert ours[3] == 2.5 and ours[0] == "hi"
theirs.shm.close()
ours.shm.close()
ours.shm.unlink()

items = items[:-1]  # the standard library cuts "ééééé" (10 bytes) to the 8 its slot has
made = stdlib_shared_memory.ShareableList(items)
attached = ShareableList(name=made.shm.name)
assert list(attached) == items and attached.format == made.format
attached[4] = 7
attached[1] = b"raw"
assert made[4] == 7 and made[1] == b"raw"
with pytest.raises(ValueError, match="exceeds available storage"):
    attached[1] = b"123456789"
attached.shm.close()
made.shm.close()
made.shm.unlink()
print("ok")
"""


def test_shareable_list_interoperates_with_the_standard_library(tmp_path):
    """Same layout: a list made by either library reads and writes in the other (in a
    child interpreter, where the standard library's own tracker process lives and ends)."""
    script = tmp_path / "interop.py"
    script.write_text(INTEROP)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(TypeError, match="cannot hold a list"):
        ShareableList([[1]])


LEAKER = """
import sys, time
from procly.shared_memory import SharedMemory
if __name__ == "__main__":
    shm = SharedMemory(create=True, size=4096)
    print(shm.name, flush=True)
    if sys.argv[1] == "exit":
        sys.stdin.readline()  # the test has seen the segment
        sys.exit(0)        # forgot to unlink
    time.sleep(60)         # will be SIGKILLed
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_forgotten_segments_are_unlinked(tmp_path, how):
    script = tmp_path / "leaker.py"
    script.write_text(LEAKER)
    proc = subprocess.Popen([sys.executable, str(script), how], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        name = proc.stdout.readline().strip()
        assert os.path.exists(f"/dev/shm/{name}")
        if how == "sigkill":
            proc.send_signal(signal.SIGKILL)
        else:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        proc.wait(10)
        assert wait_until(lambda: not os.path.exists(f"/dev/shm/{name}"), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stdin.close()


def test_shared_ndarray_written_in_place_by_children_and_pool_tasks(ctx):
    import numpy as np

    from procly.shared_memory import ndarray

    array = ndarray((6, 1000), dtype=np.float64, fill=0.0)
    name = array._shm.name
    p = ctx.Process(target=targets.fill_rows, args=(array, 0, 2, 1.0))
    p.start()
    p.join(10)
    with ctx.Pool(2) as pool:
        pool.starmap(targets.fill_rows, [(array, 2, 4, 2.0), (array, 4, 6, 3.0)])
    assert array[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    view = array[3:]
    assert float(view.sum()) == 2.0 * 1000 + 3.0 * 2000
    del array, view
    import gc

    gc.collect()
    assert wait_until(lambda: not os.path.exists(f"/dev/shm/{name}"), timeout=5), "freed with its last holder"


@pytest.mark.timeout(30)
def test_tracker_ends_and_unlinks_when_its_owners_end_closes():
    # The owner's death must read as the end of the tracker's pipe even where no signal
    # stops the tracker's read: the tracker keeps no copy of the owner's end of it.
    from procly import shared_memory
    from procly._connection import Pipe

    name = "procly-test-" + os.urandom(6).hex()
    os.close(os.open(shared_memory._path(name), os.O_CREAT | os.O_RDWR, 0o600))
    reader, writer = Pipe(duplex=True)
    pid = os.fork()
    if pid == 0:  # as the tracker's fork start hands them over: both ends
        signal.alarm(20)  # a tracker that never sees the end dies here, not never
        try:
            shared_memory._track(reader, writer)
        finally:
            os._exit(1)
    reader.close()
    assert writer.recv() == "ready"
    writer.send("R" + name)
    writer.close()  # the owner is gone
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not os.path.exists(shared_memory._path(name))
