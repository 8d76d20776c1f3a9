"""procly installs everywhere (issue 16): the abi3 manylinux wheel, every supported CPython,
the pure-Python SemLock fallback, an sdist install with no C compiler, a base install
without extras.

The wheel is built once per session (``tasks.build_release``: sdist, wheel from the
sdist, ``auditwheel repair``) and installed into fresh virtual environments. The default
run installs it into the running interpreter's CPython only; the other interpreters
found on the machine (pyenv's) are ``slow``. Installs are offline (``--no-index``) from a
wheelhouse holding the wheel and what it depends on (downloaded once through pip's cache).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest

import procly
from procly import _semlock_backend, _semlock_ctypes

ROOT = Path(__file__).resolve().parents[1]
SUPPORTED = (3, 11)
pytestmark = pytest.mark.timeout(300)


def _load_tasks():  # tasks.py is a script at the repository root, not a package
    spec = importlib.util.spec_from_file_location("procly_tasks", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tasks = _load_tasks()


def _pyenv_interpreters() -> dict[tuple[int, int], Path]:
    """(major, minor) -> python of each CPython that pyenv has (the newest patch release)."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found: dict[tuple[int, int], tuple[tuple[int, ...], Path]] = {}
    for exe in (root / "versions").glob("*/bin/python3"):
        m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", exe.parent.parent.name)  # CPython releases only
        if m:
            version = tuple(int(x) for x in m.groups())
            key = version[:2]
            if key not in found or found[key][0] < version:
                found[key] = (version, exe)
    return {key: exe for key, (_, exe) in sorted(found.items())}


PYENV = _pyenv_interpreters()
OTHER_SUPPORTED = {v: exe for v, exe in PYENV.items() if v >= SUPPORTED and v != sys.version_info[:2]}
# The release that reached its end of life last (3.10): dropped, not half-supported.
UNSUPPORTED = {v: exe for v, exe in PYENV.items() if v == (3, 10)}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for an installed procly: no PYTHONPATH to the source tree, no PROCLY_* knobs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("PROCLY_")
    }
    env.update(extra)
    return env


def run(
    argv: list[str | Path],
    *,
    timeout: float = 240,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else clean_env(),
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{argv} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, repaired wheel), built by tasks.py's own function with this interpreter."""
    missing = [m for m in ("build", "auditwheel", "setuptools") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the release tools are not installed here ({', '.join(missing)}): pip install 'procly[release]'")
    return tasks.build_release(sys.executable, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, release: tuple[Path, Path]) -> Path:
    """procly's wheel, its dependencies and a build backend, for offline installs."""
    house = tmp_path_factory.mktemp("wheelhouse")
    proc = run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "-q",
            "--only-binary=:all:",
            "-d",
            house,
            "cloudpickle>=2.2",
            "setuptools>=77",
        ],
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot fetch procly's dependencies for the test venvs: {proc.stderr[-500:]}")
    for artefact in release:
        (house / artefact.name).write_bytes(artefact.read_bytes())
    return house


def make_venv(python: str | Path, where: Path) -> Path:
    """A fresh virtual environment of *python* (with pip); returns its python."""
    run([python, "-m", "venv", where])
    return where / "bin" / "python"


def pip_install(vpython: Path, house: Path, *what: str | Path, env: dict[str, str] | None = None) -> None:
    run(
        [
            vpython,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "--no-index",
            "--find-links",
            house,
            *what,
        ],
        env=env,
    )


# What a user does first: a Lock, a Value, a Pool, under every start method.
SCRIPT = textwrap.dedent("""
    import json
    import procly

    def bump(counter, lock, n):
        for _ in range(n):
            with lock:
                counter.value += 1

    def square(x):
        return x * x

    if __name__ == "__main__":
        for method in ("fork", "spawn", "forkserver"):
            ctx = procly.get_context(method)
            lock = ctx.Lock()
            counter = ctx.Value("i", 0, lock=False)
            workers = [ctx.Process(target=bump, args=(counter, lock, 200)) for _ in range(3)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(60)
            assert [w.exitcode for w in workers] == [0, 0, 0], (method, [w.exitcode for w in workers])
            assert counter.value == 600, (method, counter.value)
            assert lock.acquire(timeout=5)
            assert not lock.acquire(timeout=0.05)
            lock.release()
            with ctx.Pool(2) as pool:
                assert pool.map(square, range(20)) == [x * x for x in range(20)], method
                assert pool.apply_async(square, (7,)).get(timeout=60) == 49
            print(method, "ok")
        info = procly.info()
        info["file"] = procly.__file__
        print(json.dumps(info))
""")


def check_installed(vpython: Path, tmp: Path, *, backend: str) -> dict:
    """Run SCRIPT and the command line in the venv of *vpython*; returns procly.info() there."""
    script = tmp / "lock_value_pool.py"
    script.write_text(SCRIPT)
    out = run([vpython, script], cwd=tmp).stdout.splitlines()
    assert out[:3] == ["fork ok", "spawn ok", "forkserver ok"], out
    info = json.loads(out[-1])
    assert Path(info["file"]).is_relative_to(vpython.parent.parent), info  # the installed copy
    assert info["semlock"] == backend, info
    assert info["start_methods"][0] in ("fork", "spawn", "forkserver")
    # The console script works with the base install (no loadtest extra).
    helped = run([vpython.parent / "procly", "--help"], cwd=tmp).stdout
    assert "loadtest" in helped and "demo" in helped
    version = run([vpython.parent / "procly", "--version"], cwd=tmp).stdout.strip()
    assert version.startswith(f"procly {procly.__version__} (semlock: {backend}"), version
    assert run([vpython, "-m", "procly", "--version"], cwd=tmp).stdout.strip() == version
    return info


# --- the wheel ---------------------------------------------------------------------------


def test_wheel_is_abi3_and_manylinux_2_28_or_older(release: tuple[Path, Path]) -> None:
    sdist, wheel = release
    name, version, python_tag, abi_tag, platform_tag = wheel.name.removesuffix(".whl").split("-")
    assert (name, version) == ("procly", procly.__version__)
    assert (python_tag, abi_tag) == ("cp311", "abi3")
    versions = tasks.manylinux_versions(wheel.name)
    assert versions and min(versions) <= (2, 28), platform_tag
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"procly-{version}.dist-info/METADATA").decode()
    assert "procly/_semlock.abi3.so" in names
    assert not [n for n in names if n.endswith(".c")]
    assert "Requires-Python: >=3.11" in metadata
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)


def test_manylinux_versions_of_tags() -> None:
    assert tasks.manylinux_versions("p-1-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl") == [
        (2, 17),
        (2, 17),
    ]
    assert tasks.manylinux_versions("p-1-cp311-abi3-manylinux_2_34_x86_64.whl") == [(2, 34)]
    assert tasks.manylinux_versions("p-1-cp311-abi3-linux_x86_64.whl") == []


def test_wheel_base_install_this_python(release: tuple[Path, Path], wheelhouse: Path, tmp_path: Path) -> None:
    """The wheel, no extras, in a fresh venv of the running CPython: library, start methods, CLI."""
    vpython = make_venv(sys.executable, tmp_path / "venv")
    pip_install(vpython, wheelhouse, "procly")
    assert run([vpython, "-c", "import hdrh"], check=False).returncode != 0  # really no extras
    check_installed(vpython, tmp_path, backend="c-extension")
    # The load tester names the extra it needs instead of a traceback.
    proc = run([vpython.parent / "procly", "loadtest", "--duration", "1s"], cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'procly[loadtest]'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted(OTHER_SUPPORTED), ids=lambda v: f"py{v[0]}.{v[1]}")
def test_wheel_every_other_python(
    version: tuple[int, int], release: tuple[Path, Path], wheelhouse: Path, tmp_path: Path
) -> None:
    vpython = make_venv(OTHER_SUPPORTED[version], tmp_path / "venv")
    pip_install(vpython, wheelhouse, "procly")
    info = check_installed(vpython, tmp_path, backend="c-extension")
    assert info["python"].startswith(f"{version[0]}.{version[1]}.")


@pytest.mark.parametrize("version", sorted(UNSUPPORTED), ids=lambda v: f"py{v[0]}.{v[1]}")
def test_older_python_refuses_the_wheel(version: tuple[int, int], release: tuple[Path, Path], tmp_path: Path) -> None:
    """3.10 is past its end of life: pip says no rather than installing something broken."""
    proc = run(
        [
            UNSUPPORTED[version],
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-index",
            "--target",
            tmp_path / "t",
            release[1],
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert "not a supported wheel" in proc.stderr, proc.stderr


# --- no compiler -------------------------------------------------------------------------


def test_sdist_install_without_a_compiler(release: tuple[Path, Path], wheelhouse: Path, tmp_path: Path) -> None:
    """pip install of the sdist where the C compiler fails: a working, pure-Python procly."""
    vpython = make_venv(sys.executable, tmp_path / "venv")
    env = clean_env(CC="/bin/false", LDSHARED="/bin/false", CXX="/bin/false")
    pip_install(vpython, wheelhouse, "--no-cache-dir", release[0], env=env)
    site = run([vpython, "-c", "import procly, os; print(os.path.dirname(procly.__file__))"], cwd=tmp_path)
    package = Path(site.stdout.strip())
    assert not list(package.glob("_semlock*.so")), "the extension was built after all"
    info = check_installed(vpython, tmp_path, backend="ctypes")
    assert "C extension unavailable" in info["semlock_reason"]


# --- the fallback, in this source tree ----------------------------------------------------


def _source_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def test_fallback_runs_the_synchronize_and_sharedctypes_tests() -> None:
    proc = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:randomly",
            "tests/test_synchronize.py",
            "tests/test_sharedctypes.py",
            "-k",
            "not fallback",
        ],
        env=_source_env(PROCLY_PURE_PYTHON="1"),
        cwd=ROOT,
        check=False,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", proc.stdout), proc.stdout[-2000:]


@pytest.mark.parametrize(
    "methods",
    [["spawn"], pytest.param(["fork", "spawn", "forkserver"], marks=pytest.mark.slow)],
    ids=["spawn", "every-method"],
)
def test_fallback_runs_the_tutorial_examples(methods: list[str]) -> None:
    argv = [sys.executable, "-m", "procly", "demo"]
    for method in methods:
        argv += ["--method", method]
    proc = run(argv, env=_source_env(PROCLY_PURE_PYTHON="1"), cwd=ROOT, check=False, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"(\d+)/\1 runs showed what the tutorial says", proc.stdout), proc.stdout[-2000:]


def test_backend_is_reported_and_forced_by_the_environment() -> None:
    code = "import procly, json; print(json.dumps(procly.info()))"
    forced = json.loads(run([sys.executable, "-c", code], env=_source_env(PROCLY_PURE_PYTHON="1")).stdout)
    assert (forced["semlock"], forced["semlock_reason"]) == ("ctypes", "PROCLY_PURE_PYTHON is set")
    here = procly.info()
    assert here["semlock"] == _semlock_backend.BACKEND
    assert set(here) >= {"version", "semlock", "python", "start_methods", "sem_clockwait"}


def _value_bumper(counter, n: int) -> None:
    from procly import _semlock_backend as backend

    assert backend.BACKEND == "ctypes", backend.BACKEND
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


def test_fallback_and_extension_share_a_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawned child on the fallback and this process (on either backend) share one semaphore."""
    monkeypatch.setenv("PROCLY_PURE_PYTHON", "1")
    ctx = procly.get_context("spawn")
    counter = ctx.Value("i", 0)
    child = ctx.Process(target=_value_bumper, args=(counter, 500))
    child.start()
    for _ in range(500):
        with counter.get_lock():
            counter.value += 1
    child.join(60)
    assert child.exitcode == 0
    assert counter.value == 1000


class _Keep(_semlock_ctypes.SemLock):
    """A subclass with a __dict__, as procly.synchronize's classes are."""


def _make(kind: int, value: int, maxvalue: int) -> _Keep:
    from procly import _heap

    block = _heap.allocate(_semlock_ctypes.SEM_SIZE)
    lock = _Keep(block.arena.buffer, block.offset, kind, maxvalue, value)
    lock.block = block  # keep the memory alive
    return lock


@pytest.mark.parametrize("clockwait", [True, False], ids=["sem_clockwait", "sem_timedwait-slices"])
def test_fallback_semantics(clockwait: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not clockwait:
        monkeypatch.setattr(_semlock_ctypes, "_sem_clockwait", None)
    elif _semlock_ctypes._sem_clockwait is None:
        pytest.skip("this libc has no sem_clockwait")
    lock = _make(_semlock_ctypes.SEMAPHORE, 1, 1)
    assert (lock.kind, lock.maxvalue, lock._get_value(), lock._is_zero()) == (0, 1, 1, False)
    assert lock.acquire() and lock._is_mine() and lock._count() == 1
    started = time.monotonic()
    assert lock.acquire(timeout=0.2) is False
    assert time.monotonic() - started >= 0.2  # never early, whatever the clock path
    assert lock.acquire(False) is False and lock.acquire(True, -1) is False
    # A release from another thread ends a long wait.
    waiter = threading.Thread(target=lambda: lock.release())
    waiter.start()
    assert lock.acquire(timeout=60) is True
    waiter.join()
    lock.release()
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()
    rlock = _make(_semlock_ctypes.RECURSIVE_MUTEX, 1, 1)
    with pytest.raises(AssertionError):
        rlock.release()
    assert rlock.acquire() and rlock.acquire(timeout=1) and rlock._count() == 2
    rlock.release()
    assert rlock._count() == 1 and rlock._is_zero()
    rlock._after_fork()
    assert rlock._count() == 0 and not rlock._is_mine()


def test_fallback_checks_its_arguments() -> None:
    from procly import _heap

    block = _heap.allocate(_semlock_ctypes.SEM_SIZE)
    with pytest.raises(ValueError, match="kind"):
        _semlock_ctypes.SemLock(block.arena.buffer, block.offset, 7, 1, 1)
    with pytest.raises(ValueError, match="does not fit"):
        _semlock_ctypes.SemLock(block.arena.buffer, len(block.arena.buffer) - 4, 0, 1, 1)
    keep = _Keep.__new__(_Keep)
    with pytest.raises(ValueError, match="not initialised"):
        keep.acquire()
    _semlock_ctypes.SemLock.__init__(keep, block.arena.buffer, block.offset, 0, 1, 1)
    keep.note = "subclass state"
    assert keep.__dict__ == {"note": "subclass state"}  # what synchronize pickles for a child
    with pytest.raises(RuntimeError, match="already"):
        _semlock_ctypes.SemLock.__init__(keep, block.arena.buffer, block.offset, 0, 1, 1)


def test_extension_without_sem_clockwait_times_out() -> None:
    """The C extension's older-libc path (sem_timedwait in monotonic-checked slices)."""
    if _semlock_backend.BACKEND != "c-extension":
        pytest.skip("the C extension is not built here")
    code = textwrap.dedent("""
        import time, procly
        assert procly.info()["sem_clockwait"] is False
        lock = procly.Lock()
        lock.acquire()
        started = time.monotonic()
        assert lock.acquire(timeout=0.3) is False
        assert time.monotonic() - started >= 0.3
        print("ok")
    """)
    proc = run([sys.executable, "-c", code], env=_source_env(PROCLY_NO_SEM_CLOCKWAIT="1"))
    assert proc.stdout.strip() == "ok"
