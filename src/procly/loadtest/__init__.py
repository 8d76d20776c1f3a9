"""``procly loadtest``: concurrency testing from every core.

Worker processes (one per core by default) each run many keep-alive HTTP/1.1
connections on a uvloop event loop (httptools parses), or call a Python function
concurrently; latencies go into HDR histograms merged across processes. Fixed-rate
mode is open loop with the coordinated-omission correction of wrk2.

From Python::

    from procly.loadtest import LoadTestConfig, run_load_test
    report = run_load_test(LoadTestConfig(url="http://127.0.0.1:8080/", duration=5))
    print(report.to_text())

Needs the ``loadtest`` extra (uvloop, httptools, hdrhistogram).
"""

from __future__ import annotations

from ._config import LoadTestConfig as LoadTestConfig
from ._config import parse_count as parse_count
from ._config import parse_duration as parse_duration
from ._report import Report as Report
from ._runner import LoadTestError as LoadTestError
from ._runner import Progress as Progress
from ._runner import run_load_test as run_load_test
from ._target import EmbeddedTarget as EmbeddedTarget
from ._target import serve_target as serve_target
from ._thresholds import Threshold as Threshold
from ._thresholds import check_thresholds as check_thresholds

__all__ = [
    "EmbeddedTarget",
    "LoadTestConfig",
    "LoadTestError",
    "Progress",
    "Report",
    "Threshold",
    "check_thresholds",
    "parse_count",
    "parse_duration",
    "run_load_test",
    "serve_target",
]
