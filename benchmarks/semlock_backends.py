"""Lock speed of procly's two SemLock backends against the standard library.

    python -m benchmarks.semlock_backends [--rounds 5] [--quick]

Each library runs in a fresh interpreter of its own (``PROCLY_PURE_PYTHON=1`` selects
procly's ctypes fallback there), round after round in alternation so that drift on a
busy machine hits all alike; the median of the rounds is printed. Two figures per
library: an uncontended acquire+release, and acquire+release while a second process
(fork) hammers the same lock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = {"stdlib": "multiprocessing", "procly C extension": "c-extension", "procly ctypes fallback": "ctypes"}


def _measure(which: str, n_uncontended: int, n_contended: int) -> dict[str, float]:
    from benchmarks.suite import bench_lock, bench_lock_contended

    if which == "multiprocessing":
        import multiprocessing as lib
    else:
        import procly as lib

        assert lib.info()["semlock"] == which, lib.info()
    return {"uncontended": bench_lock(lib, n_uncontended), "contended": bench_lock_contended(lib, n_contended)}


def machine_line() -> str:
    """CPU model, cores and Python, for the README's figures."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()} ({platform.machine()})"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.semlock_backends")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one library, print JSON
    args = parser.parse_args()
    n_unc, n_con = (40_000, 4_000) if args.quick else (200_000, 20_000)
    if args.one:
        print(json.dumps(_measure(args.one, n_unc, n_con)))
        return 0
    results: dict[str, dict[str, list[float]]] = {name: {"uncontended": [], "contended": []} for name in LIBRARIES}
    for _ in range(args.rounds):
        for name, which in LIBRARIES.items():
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
            env.pop("PROCLY_PURE_PYTHON", None)
            if which == "ctypes":
                env["PROCLY_PURE_PYTHON"] = "1"
            argv = [sys.executable, "-m", "benchmarks.semlock_backends", "--one", which]
            if args.quick:
                argv.append("--quick")
            out = subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout
            for key, value in json.loads(out.splitlines()[-1]).items():
                results[name][key].append(value)
    print(machine_line())
    print(f"{'lock acquire+release':<26}{'uncontended':>14}{'2 processes':>14}")
    for name, figures in results.items():
        unc, con = (statistics.median(figures[k]) * 1e9 for k in ("uncontended", "contended"))
        print(f"{name:<26}{unc:>11.0f} ns{con:>11.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
