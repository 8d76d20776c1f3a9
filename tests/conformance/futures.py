"""Run CPython's own ``test_concurrent_futures`` (its process-pool classes) for one start
method against ``procly.futures.ProcessPoolExecutor``; print a JSON summary.

    python -m tests.conformance.futures METHOD [--stdlib] [--area NAME ...] [--timeout S]

The interpreter's own copy of the suite is used (a package from Python 3.12 on, one module
before; some builds ship without it: the run then says so). Nothing of it is copied here.

With procly (the default), before the suite is imported:

* ``multiprocessing`` (and its submodules) resolves to procly (``procly.install()``), as for
  the multiprocessing suite, in this process and in every child it starts;
* ``concurrent.futures.ProcessPoolExecutor`` is procly's executor, and the two names of
  ``concurrent.futures.process`` the tests compare with are procly's: ``BrokenProcessPool``
  (procly's, a ``BrokenExecutor`` too) and ``_RemoteTraceback`` (the ``__cause__`` that
  carries a worker's traceback);
* the tests that start a fresh interpreter (``assert_python_ok``) get the same aliases
  installed first in it.

``--stdlib`` runs the same selection against the standard library, for the reference count.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
import unittest

METHODS = ("fork", "spawn", "forkserver")
MIXINS = {"fork": "ProcessPoolForkMixin", "spawn": "ProcessPoolSpawnMixin", "forkserver": "ProcessPoolForkserverMixin"}
# The submodules of the package (3.12+) with process-pool classes; before 3.12 they are
# all in one module.
SUBMODULES = ["test_process_pool", "test_shutdown", "test_deadlock", "test_init", "test_wait", "test_as_completed"]

# Tests that read or patch CPython's private attributes or internals (the executor's
# _call_queue / _broken, _ThreadWakeup, threading._start_joinable_thread), or that need
# the standard library's design (one broken worker breaks the executor; a call that does
# not pickle fails later, in a feeder thread): counted apart.
PRIVATE = {
    "test_killed_child": "a worker's death breaks the stdlib executor; procly replaces the worker and goes on",
    "test_saturation": "submits sem.acquire, which does not pickle: procly fails the future in submit(), "
    "so no worker is needed (the stdlib starts one, then fails it in its feeder thread)",
    "test_processes_terminate": "as test_saturation (submits a Semaphore, which does not pickle)",
    "test_max_tasks_per_child_defaults_to_spawn_context": "_mp_context",
    "test_python_finalization_error": "patches threading._start_joinable_thread",
    "test_del_shutdown": "_call_queue",
    "test_shutdown_no_wait": "_call_queue",
    "test_shutdown_deadlock_pickle": "_executor_manager_thread",
    "test_gh105829_should_not_deadlock_if_wakeup_pipe_full": "patches _ExecutorManagerThread and _ThreadWakeup",
    "test_force_shutdown_workers": "_processes",
    "test_terminate_workers": "_force_shutdown",
    "test_kill_workers": "_force_shutdown",
}

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def install() -> None:
    """Alias multiprocessing and the executor to procly's (see the module docstring)."""
    import procly

    procly.install()
    import concurrent.futures
    import concurrent.futures.process as cf_process  # imports "multiprocessing": procly now

    from procly import _pool_worker
    from procly.futures import BrokenProcessPool, ProcessPoolExecutor

    concurrent.futures.ProcessPoolExecutor = ProcessPoolExecutor
    cf_process.ProcessPoolExecutor = ProcessPoolExecutor
    cf_process.BrokenProcessPool = BrokenProcessPool
    cf_process._RemoteTraceback = _pool_worker.RemoteTraceback


STDLIB = "--stdlib" in sys.argv
if not STDLIB:
    # At import: spawned children and the fork server import this module as their main
    # module, so every process of the run has the same aliases.
    install()


def _prelude() -> str:
    """Code that installs the aliases in a fresh interpreter (``python -I -c ...``)."""
    import procly

    src = os.path.dirname(os.path.dirname(os.path.abspath(procly.__file__)))
    path = [src, _ROOT] + [p for p in sys.path if p and p not in (src, _ROOT)]
    return (
        f"import sys; sys.path[:0] = {path!r}; "
        "import tests.conformance.futures as _futures_harness; _futures_harness.install()\n"
    )


def _wrap_script_helper(module: object) -> None:
    """The module's ``assert_python_ok``/``assert_python_failure`` run ``-c`` code with the aliases."""
    for name in ("assert_python_ok", "assert_python_failure"):
        original = getattr(module, name, None)
        if original is None:
            continue

        def wrapped(*args, __original=original, **kwargs):
            args = list(args)
            for i, arg in enumerate(args[:-1]):
                if arg == "-c":
                    args[i + 1] = _prelude() + args[i + 1]
                    break
            # Not isolated (-I), and with this environment: a child it spawns must find
            # procly on PYTHONPATH before it reads the parent's sys.path.
            kwargs.setdefault("__isolated", False)
            kwargs.setdefault("PROCLY_FUTURES_CONFORMANCE", "1")
            return __original(*args, **kwargs)

        setattr(module, name, wrapped)


def suite_modules() -> list:
    """The suite's modules with process-pool classes (ImportError: not shipped here)."""
    package = importlib.import_module("test.test_concurrent_futures")
    if not hasattr(package, "__path__"):  # Python < 3.12: one module
        return [package]
    return [importlib.import_module(f"test.test_concurrent_futures.{name}") for name in SUBMODULES]


def classes_for(method: str) -> dict[str, type]:
    modules = suite_modules()
    if hasattr(modules[0], MIXINS[method]):
        mixin = getattr(modules[0], MIXINS[method])
    else:
        mixin = getattr(importlib.import_module("test.test_concurrent_futures.util"), MIXINS[method])
    found: dict[str, type] = {}
    for module in modules:
        if not STDLIB:
            _wrap_script_helper(module)
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, unittest.TestCase) and issubclass(value, mixin):
                found[name] = value
    return found


def area_name(class_name: str, method: str) -> str:
    """``ProcessPoolForkserverProcessPoolShutdownTest`` -> ``ProcessPoolShutdownTest``."""
    prefix = "ProcessPool" + {"fork": "Fork", "spawn": "Spawn", "forkserver": "Forkserver"}[method]
    return class_name[len(prefix) :] if class_name.startswith(prefix) else class_name


class TestTimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimedOut("test exceeded its time limit")


class Result(unittest.TestResult):
    """Counts outcomes per class and arms a per-test timer."""

    def __init__(self, timeout: float, method: str) -> None:
        super().__init__()
        self.timeout = timeout
        self.method = method
        self.areas: dict[str, dict[str, int]] = {}
        self.failed: list[str] = []
        self.private_failed: list[str] = []

    def _area(self, test) -> dict[str, int]:
        return self.areas.setdefault(
            area_name(type(test).__name__, self.method), {"passed": 0, "failed": 0, "skipped": 0, "private": 0}
        )

    durations = False

    def startTest(self, test):  # noqa: N802 - unittest API
        super().startTest(test)
        self._started = time.monotonic()
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def stopTest(self, test):  # noqa: N802
        signal.setitimer(signal.ITIMER_REAL, 0)
        if self.durations:
            print(f"{time.monotonic() - self._started:7.2f}s {test.id()}", file=sys.stderr, flush=True)
        super().stopTest(test)

    def addSuccess(self, test):  # noqa: N802
        self._area(test)["passed"] += 1

    def addFailure(self, test, err):  # noqa: N802
        if isinstance(test, unittest.TestCase):
            area = self._area(test)
            area["failed"] += 1
            method = getattr(test, "_testMethodName", "")
            if method in PRIVATE:
                area["private"] += 1
                self.private_failed.append(f"{test.id()}: {PRIVATE[method]}")
                return
        self.failed.append(f"{test.id()}: {err[0].__name__}: {str(err[1])[:1500]}")

    addError = addFailure  # noqa: N815 - unittest API

    def addSkip(self, test, reason):  # noqa: N802
        if isinstance(test, unittest.TestCase):
            self._area(test)["skipped"] += 1

    def addExpectedFailure(self, test, err):  # noqa: N802
        self._area(test)["passed"] += 1

    def addUnexpectedSuccess(self, test):  # noqa: N802
        self._area(test)["passed"] += 1

    def addSubTest(self, test, subtest, err):  # noqa: N802
        if err is not None:
            self.addFailure(test, err)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("--stdlib", action="store_true")
    parser.add_argument("--area", action="append", default=[], help="class without its ProcessPool<Method> prefix")
    parser.add_argument("--test", action="append", default=[], help="only test methods of these names")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--durations", action="store_true", help="print each test's duration (stderr)")
    args = parser.parse_args()
    from test import support

    support.verbose = 0  # the suite prints each test's duration otherwise
    started = time.monotonic()
    result = Result(args.timeout, args.method)
    result.durations = args.durations
    try:
        classes = classes_for(args.method)
    except ImportError as exc:
        classes = {}
        result.failed.append(f"test_concurrent_futures is not shipped with this interpreter ({exc})")
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for name, cls in sorted(classes.items()):
        if args.area and area_name(name, args.method) not in args.area:
            continue
        for test in loader.loadTestsFromTestCase(cls):
            if not args.test or test._testMethodName in args.test:
                suite.addTest(test)
    suite.run(result)
    summary = {
        "method": args.method,
        "implementation": "stdlib" if args.stdlib else "procly",
        "python": sys.version.split()[0],
        "seconds": round(time.monotonic() - started, 1),
        "areas": result.areas,
        "failures": result.failed,
        "private_failures": result.private_failed,
    }
    sys.stdout.flush()
    print("@@SUMMARY@@" + json.dumps(summary))


if __name__ == "__main__":
    main()
