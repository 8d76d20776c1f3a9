#!/usr/bin/env python3
"""Project tasks that need nothing but python3: each creates .venv on first use.

    python3 tasks.py demo          the main job: a 5-second load test of the built-in target server
    python3 tasks.py examples      the tutorial's examples, live, under every start method
    python3 tasks.py test          lint + the default test run (what CI runs)
    python3 tasks.py test-slow     soak / stress tests
    python3 tasks.py conformance   CPython's own multiprocessing tests against procly
    python3 tasks.py bench         benchmarks against the standard library
    python3 tasks.py bench-load    procly loadtest against wrk and locust on a loopback nginx
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PYTHON = BIN / "python"
STAMP = VENV / ".procly-installed"


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> None:
    """Create .venv and install procly with its test extras when missing or outdated."""
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    if not STAMP.exists() or STAMP.read_text() != _fingerprint():
        print("installing procly and its test dependencies", flush=True)
        pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "install", "-e", f"{ROOT}[test]"], check=True)
        STAMP.write_text(_fingerprint())


def ensure_locust() -> None:
    """locust (the usability reference for procly loadtest) in a venv of its own: it pins gevent & co."""
    locust_venv = ROOT / ".venv-locust"
    if not (locust_venv / "bin" / "locust").exists():
        print(f"installing locust in {locust_venv}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(locust_venv)
        pip = [str(locust_venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "locust"], check=True)


def run(*argv: str) -> int:
    return subprocess.call(list(argv), cwd=ROOT)


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    task, rest = args[0], args[1:]
    ensure_venv()
    py = str(PYTHON)
    if task == "demo":
        return run(str(BIN / "procly"), "loadtest", "--duration", "5s", *rest)
    if task == "examples":
        return run(str(BIN / "procly"), "demo", *rest)
    if task == "test":
        code = run(py, "-m", "ruff", "check", "src", "tests", "benchmarks", "tasks.py")
        if code:
            return code
        return run(py, "-m", "pytest", "-m", "not slow and not conformance", *rest)
    if task == "test-slow":
        return run(py, "-m", "pytest", "-m", "slow", *rest)
    if task == "conformance":
        return run(py, "-m", "tests.conformance", *rest)
    if task == "bench":
        return run(py, "-m", "benchmarks", *rest)
    if task == "bench-load":
        ensure_locust()
        return run(py, "-m", "benchmarks.loadtest", *rest)
    print(f"unknown task {task!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(sys.argv[1:]))
