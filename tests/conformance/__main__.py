"""Drive tests.conformance.run (or, with --futures, tests.conformance.futures) per start
method and print a table per area."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# The areas of issue #2 (processes and connections) first; later layers add theirs.
DEFAULT_AREAS = [
    "TestProcess",
    "TestSubclassingProcess",
    "TestConnection",
    "TestListener",
    "TestListenerClient",
    "TestPoll",
    "TestPicklingConnections",
    "TestWait",
    "TestInvalidFamily",
    "TestTimeouts",
    "TestStartMethod",
    "OtherTest",
    "TestCloseFds",
    "TestStdinBadfiledescriptor",
    "TestNoForkBomb",
    "TestInvalidHandle",
    "TestFlags",
    "TestIgnoreEINTR",
    "TestLock",
    "TestSemaphore",
    "TestCondition",
    "TestEvent",
    "TestBarrier",
    "TestFinalize",
    "TestLogging",
    "TestImportStar",
    "TestValue",
    "TestArray",
    "TestSharedCTypes",
    "TestHeap",
    "TestQueue",
    "TestSimpleQueue",
    "TestPool",
    "TestPoolWorkerErrors",
    "TestPoolWorkerLifetime",
    "TestInitializers",
    "TestPoolNotLeakOnFailure",
    "TestSharedMemory",
    "TestSyncManagerTypes",
    "Manager.TestBarrier",
    "Manager.TestCondition",
    "Manager.TestContainers",
    "Manager.TestEvent",
    "Manager.TestLock",
    "Manager.TestManagerRestart",
    "Manager.TestMyManager",
    "Manager.TestPool",
    "Manager.TestQueue",
    "Manager.TestRemoteManager",
    "Manager.TestSemaphore",
]


def run(method: str, stdlib: bool, areas: list[str], timeout: float, module: str = "tests.conformance.run",
        python: str = sys.executable) -> dict:  # fmt: skip
    argv = [python, "-m", module, method, "--timeout", str(timeout)]
    argv += [a for area in areas for a in ("--area", area)]
    if stdlib:
        argv.append("--stdlib")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=os.getcwd())
    except subprocess.TimeoutExpired:
        return {"areas": {}, "failures": ["the whole run timed out"], "seconds": 1800}
    for line in proc.stdout.splitlines():
        if line.startswith("@@SUMMARY@@"):
            return json.loads(line[len("@@SUMMARY@@") :])
    tail = (proc.stdout + proc.stderr)[-2000:]
    return {"areas": {}, "failures": [f"run crashed (exit {proc.returncode}): {tail}"], "seconds": 0}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 tasks.py conformance")
    parser.add_argument("--method", action="append", choices=["fork", "spawn", "forkserver"])
    parser.add_argument("--area", action="append", help="test class without its 'WithProcesses' prefix")
    parser.add_argument("--stdlib", action="store_true", help="also run the standard library, to compare")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-test limit in seconds")
    parser.add_argument("--verbose", "-v", action="store_true", help="list every failure")
    parser.add_argument(
        "--futures",
        action="store_true",
        help="run test_concurrent_futures (process-pool classes) against procly.futures instead",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the runs (its own test package is used; default: this one)",
    )
    args = parser.parse_args()
    methods = args.method or ["fork", "spawn", "forkserver"]
    if args.futures:
        module = "tests.conformance.futures"
        areas = args.area or []
    else:
        module = "tests.conformance.run"
        areas = args.area or DEFAULT_AREAS
    rows: dict[str, dict[str, str]] = {}
    totals: dict[str, list[int]] = {}
    for method in methods:
        for stdlib in [False, True] if args.stdlib else [False]:
            label = f"{'stdlib' if stdlib else 'procly'}/{method}"
            summary = run(method, stdlib, areas, args.timeout, module, args.python)
            total = totals.setdefault(label, [0, 0])
            skipped = private = 0
            for area, counts in summary["areas"].items():
                ran = counts["passed"] + counts["failed"]
                rows.setdefault(area, {})[label] = f"{counts['passed']}/{ran}"
                total[0] += counts["passed"]
                total[1] += ran
                skipped += counts.get("skipped", 0)
                private += counts.get("private", 0)
            extra = f", {skipped} skipped" if args.futures else ""
            if args.futures and not stdlib:
                extra += f"; {private} of the failures read CPython's private attributes"
            print(f"{label}: {total[0]}/{total[1]} passed{extra} in {summary['seconds']}s", flush=True)
            for failure in summary["failures"] if args.verbose or not stdlib else []:
                print(f"    {failure}")
            for failure in summary.get("private_failures", []) if args.verbose and not stdlib else []:
                print(f"    (private) {failure}")
    labels = list(totals)
    width = max(len(a) for a in rows) if rows else 10
    print("\n" + "area".ljust(width) + "".join(label.rjust(20) for label in labels))
    for area in sorted(rows):
        print(area.ljust(width) + "".join(rows[area].get(label, "-").rjust(20) for label in labels))
    print("total".ljust(width) + "".join(f"{t[0]}/{t[1]}".rjust(20) for t in totals.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
