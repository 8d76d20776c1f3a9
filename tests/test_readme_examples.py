"""Every ```python block of README.md and docs/*.md runs as shown, under every start method.

Each block is written to a file in a temporary folder and run as a script in a fresh
interpreter (``python example.py``), through a small wrapper that first calls
``procly.set_start_method(METHOD)`` and then runs the file as ``__main__`` (so spawn and
forkserver children re-import it as they would a user's script). A block passes when it
exits 0 within its time limit.

A block that is not meant to run alone is marked in the markdown, on the line before its
fence, with an HTML comment that says why::

    <!-- fragment: needs a module of your own -->

Blocks that import numpy or distributed (or ask for ``backend="dask"``) are skipped where
those packages are missing. Anything else printed or raised is the block's failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import procly

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
METHODS = ("fork", "spawn", "forkserver")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>.*)$")
FRAGMENT = re.compile(r"^\s*<!--\s*fragment\b(?P<why>.*?)-->\s*$")
TIMEOUT = 120  # seconds a block may take under one start method (a local Dask cluster is slow to start)

WRAPPER = """\
import runpy, sys
import procly
procly.set_start_method(sys.argv[1], force=True)
path = sys.argv[2]
sys.argv[:] = [path]
runpy.run_path(path, run_name="__main__")
"""


@dataclass(frozen=True)
class Block:
    source: Path
    line: int  # 1-based line of the opening fence
    code: str
    fragment: str | None  # why it does not run alone, or None

    @property
    def name(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}"

    def needs(self) -> list[str]:
        """The optional packages this block imports."""
        wanted = []
        if re.search(r"^\s*(import|from)\s+numpy\b", self.code, re.M):
            wanted.append("numpy")
        if (
            re.search(r"^\s*(import|from)\s+(distributed|dask|procly\.dask)\b", self.code, re.M)
            or 'backend="dask"' in self.code
        ):
            wanted.append("distributed")
        if re.search(r"\bprogress=(True|\"|')", self.code):
            wanted.append("tqdm")
        if re.search(r"^\s*(import|from)\s+procly\.loadtest\b", self.code, re.M):
            wanted += ["uvloop", "httptools", "hdrh"]
        return wanted


def python_blocks(path: Path) -> list[Block]:
    """The fenced blocks of *path* whose info string starts with ``python`` or ``py``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent, info = match["fence"], len(match["indent"]), match["info"].strip()
        start = i
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        language = info.split()[0].lower() if info else ""
        if language not in ("python", "py", "python3"):
            continue
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        fragment = FRAGMENT.match(before)
        reason = fragment["why"].strip(" :") if fragment else None
        if reason is None and 'title="fragment"' in info:
            reason = "title=fragment"
        blocks.append(Block(path, start + 1, "\n".join(body) + "\n", reason))
    return blocks


ALL_BLOCKS = [block for source in SOURCES for block in python_blocks(source)]
RUNNABLE = [block for block in ALL_BLOCKS if block.fragment is None]


def test_blocks_were_found() -> None:
    """The extraction sees the README's examples (a broken parser must not pass by finding nothing)."""
    readme = [b for b in RUNNABLE if b.source.name == "README.md"]
    assert len(readme) >= 5, [b.name for b in ALL_BLOCKS]
    assert any("Pool" in b.code for b in readme)


def test_fragments_say_why() -> None:
    """Every block kept from running is marked with a reason, and there are few of them."""
    fragments = [b for b in ALL_BLOCKS if b.fragment is not None]
    assert all(b.fragment for b in fragments), [b.name for b in fragments if not b.fragment]
    assert len(fragments) <= max(3, len(ALL_BLOCKS) // 5), [b.name for b in fragments]


def test_every_block_compiles() -> None:
    """Fragments included: each is valid Python."""
    for block in ALL_BLOCKS:
        compile(block.code, block.name, "exec")


def test_parser_reads_markers_and_fences(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n\n```python\nprint(1)\n```\n\n<!-- fragment: needs your module -->\n```python\nf(x)\n```\n"
        "```\nnot python\n```\n```py\nprint(2)\n```\n",
        encoding="utf-8",
    )
    blocks = python_blocks(doc)
    assert [(b.line, b.code, b.fragment) for b in blocks] == [
        (3, "print(1)\n", None),
        (8, "f(x)\n", "needs your module"),
        (14, "print(2)\n", None),
    ]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
@pytest.mark.timeout(TIMEOUT + 30)
def test_block_runs(block: Block, method: str, tmp_path: Path) -> None:
    for package in block.needs():
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{block.name} needs {package}")
    (tmp_path / "run_example.py").write_text(WRAPPER, encoding="utf-8")
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    # The children import the procly this test imported.
    here = str(Path(procly.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run(
            [sys.executable, str(tmp_path / "run_example.py"), method, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.name} under {method}: still running after {TIMEOUT} s\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, (
        f"{block.name} under {method} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
