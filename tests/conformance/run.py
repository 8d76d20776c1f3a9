"""Run CPython's multiprocessing tests for one start method; print a JSON summary.

python -m tests.conformance.run METHOD [--stdlib] [--area NAME ...] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import unittest

if "--stdlib" not in sys.argv:
    # At import: spawned children and the fork server import this module as their main
    # module (and procly's children install the alias too), so every process of the run
    # sees the same alias. Only multiprocessing: concurrent.futures stays the stdlib's.
    import procly

    procly.install(futures=False)


def area_name(class_name: str) -> str:
    """``WithProcessesTestLock`` -> ``TestLock``; ``WithManagerTestLock`` -> ``Manager.TestLock``."""
    if class_name.startswith("WithProcesses"):
        return class_name[len("WithProcesses") :]
    if class_name.startswith("WithManager"):
        return "Manager." + class_name[len("WithManager") :]
    return class_name


class TestTimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimedOut("test exceeded its time limit")


class Result(unittest.TestResult):
    """Counts outcomes per area and arms a per-test timer."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.areas: dict[str, dict[str, int]] = {}
        self.failed: list[str] = []

    def _area(self, test) -> dict[str, int]:
        return self.areas.setdefault(area_name(type(test).__name__), {"passed": 0, "failed": 0, "skipped": 0})

    def startTest(self, test):  # noqa: N802 - unittest API
        super().startTest(test)
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def stopTest(self, test):  # noqa: N802
        signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)

    def addSuccess(self, test):  # noqa: N802
        self._area(test)["passed"] += 1

    def addFailure(self, test, err):  # noqa: N802
        self._area(test)["failed"] += 1
        self.failed.append(f"{test.id()}: {err[0].__name__}: {str(err[1])[:1500]}")

    addError = addFailure  # noqa: N815 - unittest API

    def addSkip(self, test, reason):  # noqa: N802
        self._area(test)["skipped"] += 1

    def addExpectedFailure(self, test, err):  # noqa: N802
        self._area(test)["passed"] += 1

    def addUnexpectedSuccess(self, test):  # noqa: N802
        self._area(test)["passed"] += 1

    def addSubTest(self, test, subtest, err):  # noqa: N802
        if err is not None:
            self.addFailure(subtest, err)


def install_classes(method: str) -> tuple[dict, object, object]:
    """Build the suite's test classes in this module's namespace.

    Runs at import, in the parent (as __main__) and again in spawned children and the
    fork server (as __mp_main__), so that test methods pickled by reference resolve.
    """
    from test import _test_multiprocessing as suite_module

    namespace: dict = {"__name__": __name__}
    suite_module.install_tests_in_module_dict(namespace, method, only_type="processes")
    processes = {k: v for k, v in namespace.items() if isinstance(v, type)}
    managed: dict = {"__name__": __name__}
    suite_module.install_tests_in_module_dict(managed, method, only_type="manager")
    processes.update({k: v for k, v in managed.items() if isinstance(v, type)})
    namespace2: dict = {"__name__": __name__}
    suite_module.install_tests_in_module_dict(namespace2, method, exclude_types=True)
    classes = {**processes, **{k: v for k, v in namespace2.items() if isinstance(v, type)}}
    globals().update(classes)
    return classes, namespace["setUpModule"], namespace["tearDownModule"]


_method = next((a for a in sys.argv[1:] if a in ("fork", "spawn", "forkserver")), None)
if _method is not None:
    CLASSES, SETUP, TEARDOWN = install_classes(_method)


def build_suite(method: str, areas: list[str]) -> unittest.TestSuite:
    classes, setup, teardown = CLASSES, SETUP, TEARDOWN
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for name, cls in sorted(classes.items()):
        area = area_name(name)
        if areas and area not in areas:
            continue
        suite.addTests(loader.loadTestsFromTestCase(cls))
    return suite, setup, teardown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method")
    parser.add_argument("--stdlib", action="store_true")
    parser.add_argument("--area", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    suite, setup, teardown = build_suite(args.method, args.area)
    result = Result(args.timeout)
    started = time.monotonic()
    try:
        setup()
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        result.failed.append(f"setUpModule: {type(exc).__name__}: {exc}")
    else:
        suite.run(result)
        try:
            teardown()
        except Exception as exc:  # noqa: BLE001
            result.failed.append(f"tearDownModule: {type(exc).__name__}: {exc}")
    summary = {
        "method": args.method,
        "implementation": "stdlib" if args.stdlib else "procly",
        "seconds": round(time.monotonic() - started, 1),
        "areas": result.areas,
        "failures": result.failed,
    }
    sys.stdout.flush()
    print("@@SUMMARY@@" + json.dumps(summary))


if __name__ == "__main__":
    main()
