"""The serializer: cloudpickle where needed, __main__ rules, errors, out-of-band buffers."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import procly
from procly import _errors, _serialization, reduction

from . import targets
from .conftest import reducer_registered


def test_lambdas_closures_and_local_classes_round_trip():
    factor = 3

    class Local:
        def __init__(self, v):
            self.v = v

    for fn in (lambda x: x * factor, Local):
        back = _serialization.loads(_serialization.dumps(fn))
        assert back(2) == 6 if fn is not Local else back(5).v == 5


def test_importable_functions_pickle_by_reference():
    data = _serialization.dumps(os.path.join)
    assert b"posixpath" in data and len(data) < 100
    assert _serialization.loads(data) is os.path.join


def test_error_names_the_object_and_is_both_kinds():
    import threading

    with pytest.raises(procly.PicklingError) as info:
        _serialization.dumps({"key": threading.Lock()})
    assert "lock" in str(info.value) and "dict" in str(info.value)
    assert isinstance(info.value, pickle.PicklingError) and isinstance(info.value, TypeError)


def test_garbage_is_a_clear_unpickling_error():
    with pytest.raises(pickle.UnpicklingError, match="not a valid pickle"):
        _serialization.loads(b"\x80\x05garbage")


def test_out_of_band_threshold():
    small = np.zeros(10)
    big = np.zeros(_serialization.OUT_OF_BAND_THRESHOLD // 8 + 1)
    oob: list = []
    _serialization.dumps([small, big], oob)
    assert [b.nbytes for b in oob] == [big.nbytes]
    payload = _serialization.dumps(big)  # without a list, everything stays in band
    assert len(payload) > big.nbytes


def test_register_custom_reducer():
    class Point:
        def __init__(self, x):
            self.x = x

    calls = []

    def reduce_point(p):
        calls.append(p)
        return (dict, ([("x", p.x)],))

    with reducer_registered(Point, reduce_point):
        assert _serialization.loads(_serialization.dumps(Point(4))) == {"x": 4}
        assert calls
    with pytest.raises(TypeError):
        reduction.register("not a type", reduce_point)


@pytest.mark.parametrize("cls", [getattr(_errors, name) for name in _errors.__all__])
def test_every_public_exception_survives_pickling(cls):
    exc = cls("message", 42) if cls is not _errors.BufferTooShort else cls(b"data")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and back.args == exc.args
    assert isinstance(back, procly.ProcessError)


MAIN_SCRIPT = """
import procly

class Box:
    def __init__(self, v):
        self.v = v

def make(conn, v):
    conn.send(Box(v))

if __name__ == "__main__":
    for method in ("fork", "spawn", "forkserver"):
        ctx = procly.get_context(method)
        r, w = ctx.Pipe()
        p = ctx.Process(target=make, args=(w, method))
        p.start()
        box = r.recv()
        p.join()
        # by reference: the class keeps its identity across processes
        print(method, type(box) is Box, box.v, p.exitcode)
"""


def test_main_module_script_keeps_class_identity(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == [f"{m} True {m} 0" for m in ("fork", "spawn", "forkserver")]


REPL_CODE = textwrap.dedent(
    """
    import procly
    def square(conn, x):
        conn.send(x * x)
    for method in ("fork", "spawn", "forkserver"):
        ctx = procly.get_context(method)
        r, w = ctx.Pipe()
        p = ctx.Process(target=square, args=(w, 7))
        p.start()
        print(method, r.recv())
        p.join()
    """
)


@pytest.mark.parametrize("mode", ["-c", "stdin"])
def test_targets_defined_in_unimportable_main(mode):
    """``python -c`` and a REPL-like stdin: __main__ functions travel by value."""
    if mode == "-c":
        argv, stdin = [sys.executable, "-c", REPL_CODE], None
    else:
        argv, stdin = [sys.executable, "-"], REPL_CODE
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fork", "49", "spawn", "49", "forkserver", "49"]


class _WithClassmethod:
    @classmethod
    def make(cls):
        return cls.__name__

    def method(self):
        return "bound"


def test_bound_methods_pickle_by_reference():
    """A classmethod of an importable class keeps its module (cloudpickle would copy it)."""
    data = _serialization.dumps(_WithClassmethod.make)
    assert b"<dynamic-code>" not in data and b"co_code" not in data
    assert _serialization.loads(data)() == "_WithClassmethod"
    assert _serialization.loads(_serialization.dumps(_WithClassmethod().method))() == "bound"


GUARDED_SCRIPT = """import sys
import procly

class Top:
    def __init__(self, v): self.v = v

def top(x):
    return x + 1

def child_put(q, item):
    q.put(item)

if __name__ == "__main__":
    procly.set_start_method(sys.argv[1])
    pool = procly.Pool(2)

    def inner(x):
        return x * 3

    factor = 5
    closure = lambda x: x * factor

    class Guarded:
        def __init__(self, v): self.v = v
        def get(self): return self.v

    def target(q, obj):
        q.put((obj.get(), isinstance(obj, Guarded)))

    print(pool.map(inner, range(3)), pool.map(closure, range(3)), pool.map(top, range(3)))
    print(pool.apply(Guarded, (7,)).get())
    q = procly.Queue()
    p = procly.Process(target=target, args=(q, Guarded(4)))
    p.start(); print(q.get(timeout=10)); p.join()
    p = procly.Process(target=child_put, args=(q, Top(9)))
    p.start(); r = q.get(timeout=10); print(r.v, type(r) is Top); p.join()
    pool.close(); pool.join()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_main_functions_defined_after_the_pool_started(tmp_path, method):
    """Functions, closures and classes defined under the main guard, after the workers
    started: the reference carries a copy the children fall back on; top-level names keep
    their identity."""
    script = tmp_path / "script.py"
    script.write_text(GUARDED_SCRIPT)
    out = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[0, 3, 6] [0, 5, 10] [1, 2, 3]", "7", "(4, True)", "9 True"]


def test_top_level_names_of_the_main_script(tmp_path):
    script = tmp_path / "m.py"
    script.write_text(
        "import os\nA = 1\ndef f(): pass\nclass C: pass\ntry:\n    g = 2\nexcept ImportError:\n    h = 3\n"
        "if __name__ == '__main__':\n    def inner(): pass\n    B = 2\nelse:\n    other = 1\n"
        "if '__main__' == __name__:\n    skipped = 1\n"
    )
    assert _serialization._top_level_names(str(script)) == {"A", "f", "C", "g", "h", "other"}
    assert _serialization._top_level_names(str(tmp_path / "missing.py")) is None


@pytest.mark.parametrize("mode", ["r", "rb", "w", "r+b"])
def test_open_files_are_refused_not_copied(tmp_path, mode):
    path = tmp_path / "data.txt"
    path.write_text("content that must not be copied into a pickle")
    with open(path, mode) as f, pytest.raises(procly.PicklingError, match="open file"):
        _serialization.dumps((lambda: None, f))
    # In-memory streams are plain data and still travel.
    assert _serialization.loads(_serialization.dumps(io.BytesIO(b"x"))).getvalue() == b"x"


def test_pool_refuses_an_open_file_argument(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x")
    with procly.get_context("fork").Pool(1) as pool, open(path) as f:
        with pytest.raises(procly.PicklingError, match="open file"):
            pool.apply_async(len, (f,))
        assert pool.apply(len, ("ok",)) == 2


DYNAMIC_MAIN_CLASS = """
import sys, threading, procly

def _make():
    def run(self, conn):
        conn.send(type(self).__name__)
    return type("Holder", (), {"lock": threading.Lock(), "run": run, "__module__": "__main__"})

globals()["Holder"] = _make()  # defined at import, but not by a statement the source shows

if __name__ == "__main__":
    ctx = procly.get_context(sys.argv[1])
    r, w = ctx.Pipe()
    p = ctx.Process(target=Holder().run, args=(w,))
    p.start()
    print(r.recv())
    p.join()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_main_class_that_cannot_be_copied_travels_by_reference(tmp_path, method):
    # Not among the names the script's source defines, so a copy would be carried along;
    # it holds a lock and cannot be copied: the plain reference, as the standard library.
    script = tmp_path / "dynamic.py"
    script.write_text(DYNAMIC_MAIN_CLASS)
    out = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0 and out.stdout == "Holder\n", out.stderr


def test_functions_by_reference_skip_cloudpickle_and_match_its_bytes():
    """A module function travels by reference through the C pickler alone, byte for byte
    what procly's (cloudpickle) Pickler makes; lambdas and local functions still go to it."""
    from procly import _serialization

    for func in (targets.square, targets.worker_pid):
        assert _serialization._function_by_reference(func, True) is not None
        assert _serialization.dumps(func) == _serialization._dump_with_pickler(func, None, True)

    def local(x):
        return x

    for func in (local, lambda x: x):
        assert _serialization._function_by_reference(func, True) is None
        assert _serialization.loads(_serialization.dumps(func))(5) == 5


FIRST_POOL = """
import sys, procly

def double(x):
    return 2 * x

if __name__ == "__main__":
    with procly.get_context(sys.argv[1]).Pool(1) as pool:
        assert pool.apply(double, (21,)) == 42
    print("cloudpickle" in sys.modules)
"""


def test_a_pool_of_plain_functions_never_imports_cloudpickle(tmp_path):
    """A first (fork) Pool running a top-level function of the main script starts
    without importing cloudpickle (14 ms): the reference is pickled by the C pickler.
    (spawn and forkserver pickle the worker's Process object, which still goes through
    procly's Pickler in the parent; their children never import it.)"""
    method = "fork"
    script = tmp_path / "first_pool.py"
    script.write_text(FIRST_POOL)
    out = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


NESTED_DATA = """
import sys, procly

if __name__ == "__main__":
    a, b = procly.Pipe()
    message = ("tick", 1.5, {"statuses": {200: 7, 404: 1}, "by_name": {"GET /": {"ok": [1, 2.5, None]}}, "h": b"x"})
    a.send(message)
    assert b.recv() == message
    print("cloudpickle" in sys.modules)
"""


def test_small_nested_plain_data_goes_through_the_c_pickler(tmp_path):
    """Small nested containers of scalars (int keys, five levels) are plain data: sending
    them never builds (or imports) cloudpickle's Pickler."""
    script = tmp_path / "nested.py"
    script.write_text(NESTED_DATA)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_plain_data_check_has_bounds():
    assert _serialization._is_plain({1: {"a": [(1, 2.0, None)]}})
    assert _serialization._is_plain([[[[[1]]]]])
    assert not _serialization._is_plain([[[[[[1]]]]]])  # deeper than five levels
    assert not _serialization._is_plain([list(range(10))] * 10)  # more than 64 items in all
    assert not _serialization._is_plain(list(range(17)))  # one container over 16 items
    assert not _serialization._is_plain({(1, 2): 3})  # a key that is not a scalar
    assert not _serialization._is_plain({"f": len})


def test_modules_registered_by_value_travel_by_value(tmp_path, monkeypatch):
    """cloudpickle.register_pickle_by_value (Dask's way to ship a module its workers lack)
    is honoured for the module's functions and classes sent on their own."""
    import importlib

    import cloudpickle

    (tmp_path / "shipped_by_value.py").write_text("def f(x):\n    return x + 1\n\nclass C:\n    k = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("shipped_by_value")
    cloudpickle.register_pickle_by_value(module)
    try:
        func_bytes, class_bytes = _serialization.dumps(module.f), _serialization.dumps(module.C)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules["shipped_by_value"]
    (tmp_path / "shipped_by_value.py").unlink()  # the module cannot be imported again
    assert _serialization.loads(func_bytes)(1) == 2
    assert _serialization.loads(class_bytes).k == 7


def test_a_start_payload_that_needs_cloudpickle_forgets_the_abandoned_attempt():
    """dumps_for_start tries the C pickler first; one that gives up half way (here at a
    local function, after the connection) leaves no descriptor recorded twice."""
    from procly import _handoff

    r, w = procly.Pipe()

    def local():
        pass

    try:
        with _handoff.collecting() as handoff:
            payload = _serialization.dumps_for_start((w, local))
        assert handoff.fds == [w.fileno()]
        assert b"cloudpickle" in payload  # the local function went by value
        with _handoff.collecting() as handoff:
            _serialization.dumps_for_start((w, targets.square))
        assert handoff.fds == [w.fileno()]
    finally:
        r.close()
        w.close()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_local_target_with_connections_starts_by_value(method):
    ctx = procly.get_context(method)
    r1, w1 = ctx.Pipe(duplex=False)
    r2, w2 = ctx.Pipe(duplex=False)

    def child(first, second):  # local: copied by value once the C pickler gives up
        first.send("one")
        second.send("two")

    p = ctx.Process(target=child, args=(w1, w2))
    p.start()
    assert (r1.recv(), r2.recv()) == ("one", "two")
    p.join(30)
    assert p.exitcode == 0
    for end in (r1, w1, r2, w2):
        end.close()
