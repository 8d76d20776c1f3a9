"""Conformance: CPython's own multiprocessing test-suite, run against procly.

``python3 tasks.py conformance [--method M] [--area A] [--stdlib]`` runs
``test._test_multiprocessing`` (installed with the interpreter; nothing of it is
copied here) once per start method, in a fresh interpreter each, with
``multiprocessing`` aliased to procly, a per-test timeout, and prints pass/fail per
area. ``--stdlib`` runs the same selection against the real standard library, for the
rate to compare with.

``python3 tasks.py conformance --futures [--stdlib] [--python PYTHON]`` runs the
interpreter's own ``test_concurrent_futures`` (process-pool classes) against
``procly.futures.ProcessPoolExecutor`` instead (``tests.conformance.futures``).
"""
