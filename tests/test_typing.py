"""procly's public API is typed: mypy (strict) accepts src/procly, and user code sees real types.

``tests/typing_cases.py`` holds the cases (``assert_type`` and ``# type: ignore[...]`` lines
that must be errors); it is only type-checked, never run. Both checks use the
``[tool.mypy]`` configuration of pyproject.toml and a mypy cache in a temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import procly
from procly import queues
from procly.managers import DictProxy, ListProxy
from procly.pool import ApplyResult, IMapIterator, MapResult

pytest.importorskip("mypy", reason="mypy is in the test extra")

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "typing_cases.py"


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # MYPYPATH first: this checkout's procly, not another one installed in the environment.
    env = {**os.environ, "MYPYPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
               str(cache), "--no-color-output", "--no-error-summary", *args]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(300)
def test_package_passes_mypy_strict(mypy_cache: Path) -> None:
    """``mypy src/procly`` under the project's configuration (strict) reports nothing."""
    result = _mypy(mypy_cache, "--strict", "src/procly")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.timeout(300)
def test_user_code_sees_typed_api(mypy_cache: Path) -> None:
    """The cases in typing_cases.py check under --strict: each assert_type holds and each
    ``# type: ignore[...]`` line is a real error (an unused one would be reported)."""
    result = _mypy(mypy_cache, "--strict", "--follow-imports=silent", str(CASES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_wrong_expectation_is_reported(mypy_cache: Path, tmp_path: Path) -> None:
    """The check can fail: a wrong assert_type about procly is an error."""
    wrong = tmp_path / "wrong_types.py"
    wrong.write_text(
        "from typing import assert_type\n"
        "import procly\n\n\n"
        "def square(x: int) -> int:\n"
        "    return x * x\n\n\n"
        "def check() -> None:\n"
        "    with procly.Pool(1) as pool:\n"
        "        assert_type(pool.map(square, [1]), list[str])\n"
        "    assert_type(procly.Queue[int]().get(), str)\n"
    )
    result = _mypy(mypy_cache, "--strict", "--follow-imports=silent", str(wrong))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("assert-type") == 2, result.stdout


def test_generic_names_subscript_at_run_time() -> None:
    """``procly.Queue[int]`` in an annotation evaluated at run time works, and still makes
    the default context's queue; isinstance checks against the class."""
    import typing

    def takes(q: procly.Queue[int], s: procly.SimpleQueue[str], j: procly.JoinableQueue[bytes]) -> None: ...

    hints = typing.get_type_hints(takes)
    assert typing.get_args(hints["q"]) == (int,)
    queue = procly.Queue[int]()
    try:
        assert isinstance(queue, queues.Queue)
        assert isinstance(queue, procly.Queue)
        assert not isinstance(object(), procly.Queue)
        queue.put(7)
        assert queue.get(timeout=10) == 7
    finally:
        queue.close()
        queue.join_thread()
    assert procly.get_context("spawn").SimpleQueue[str] is not None
    assert queues.Queue[int] is not None and ApplyResult[int] is not None
    assert MapResult[int] is not None and IMapIterator[str] is not None
    assert typing.get_args(DictProxy[str, int]) == (str, int) and typing.get_args(ListProxy[int]) == (int,)
    with pytest.raises(TypeError):
        procly.Lock[int]  # noqa: B018


def test_import_stays_light() -> None:
    """Typing adds no imports at run time: ``import procly`` loads none of the later layers."""
    code = (
        "import sys, procly\n"
        "heavy = [m for m in ('procly.queues', 'procly.managers', 'procly.pool', 'procly.sharedctypes',"
        " 'procly.futures', 'concurrent.futures', 'multiprocessing') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
