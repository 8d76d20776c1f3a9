"""The documentation site builds in strict mode, and the tutorial's command is named as documented.

The build needs the ``docs`` extra (mkdocs, mkdocs-material, mkdocstrings[python]; the
``test`` extra has them too); without it the build test is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import procly

ROOT = Path(__file__).resolve().parent.parent
HAVE_MKDOCS = all(importlib.util.find_spec(m) is not None for m in ("mkdocs", "material", "mkdocstrings_handlers"))


def _env(**extra: str) -> dict[str, str]:
    here = str(Path(procly.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    env.update(extra)
    return env


def _nav_pages(text: str) -> list[str]:
    return re.findall(r":\s*([\w./-]+\.md)\s*$", text, re.M)


def test_every_page_is_in_the_nav_and_exists() -> None:
    nav = _nav_pages((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert "architecture.md" in nav
    assert set(nav) == pages, set(nav) ^ pages


@pytest.mark.skipif(not HAVE_MKDOCS, reason="the docs extra (mkdocs, mkdocs-material, mkdocstrings) is not installed")
@pytest.mark.timeout(180)
def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=_env(NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert not warnings, warnings
    # The API reference was generated from the docstrings, and the README's figures were included.
    pool_page = (site / "api" / "pool" / "index.html").read_text(encoding="utf-8")
    assert 'id="procly.pool.Pool.imap"' in pool_page and "task_timeout" in pool_page
    benchmarks = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "process start+join" in benchmarks and "--8&lt;--" not in benchmarks


# Imports that the tutorial must not need: a plain ``pip install procly`` has none of them.
BLOCKER = """\
import sys
BLOCKED = {"hdrh", "uvloop", "httptools", "tqdm", "numpy", "distributed", "dask", "pytest"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the tutorial must not need it")
        return None
sys.meta_path.insert(0, Block())
from procly.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["tutorial", "demo"])
@pytest.mark.timeout(120)
def test_tutorial_runs_without_the_extras(command: str, tmp_path: Path) -> None:
    script = tmp_path / "plain_procly.py"
    script.write_text(BLOCKER, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), command, "--method", "spawn", "--only", "pipe"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1/1 runs showed what the tutorial says" in proc.stdout, proc.stdout
    assert "Mars Loo" in proc.stdout  # the tutorial is named


def test_help_names_the_tutorial_and_keeps_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "procly", "--help"], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"tutorial \(demo\)\s+run the tutorial's examples", proc.stdout), proc.stdout
