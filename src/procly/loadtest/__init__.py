"""``procly loadtest``: concurrency testing from every core.

Worker processes (one per core by default) each run many keep-alive HTTP/1.1
connections on a uvloop event loop (httptools parses), or call a Python function
concurrently; latencies go into HDR histograms merged across processes. Fixed-rate
mode is open loop with the coordinated-omission correction of wrk2.

From Python::

    from procly.loadtest import LoadTestConfig, run_load_test
    report = run_load_test(LoadTestConfig(url="http://127.0.0.1:8080/", duration=5))
    print(report.to_text())

User flows (scenarios written in Python, run by virtual users)::

    from procly.loadtest import User, flow

    @flow(weight=3)
    async def browse(user: User) -> None:
        r = await user.get("/item/123", name="/item/[id]")
        user.check(r, status=200)
        await user.think(0.5, 1.5)

    # procly loadtest -f scenario.py -u 100 -d 1m http://127.0.0.1:8080/

Needs the ``loadtest`` extra (uvloop, httptools, hdrhistogram).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._config import LoadTestConfig as LoadTestConfig
from ._config import parse_count as parse_count
from ._config import parse_duration as parse_duration
from ._thresholds import Threshold as Threshold
from ._thresholds import check_thresholds as check_thresholds

if TYPE_CHECKING:
    from ._flows import RequestFailed as RequestFailed
    from ._flows import Response as Response
    from ._flows import User as User
    from ._report import Report as Report
    from ._runner import LoadTestError as LoadTestError
    from ._runner import Progress as Progress
    from ._runner import run_load_test as run_load_test
    from ._scenario import Scenario as Scenario
    from ._scenario import ScenarioError as ScenarioError
    from ._scenario import flow as flow
    from ._scenario import on_start as on_start
    from ._stages import Stages as Stages
    from ._target import EmbeddedTarget as EmbeddedTarget
    from ._target import serve_target as serve_target

# These need the ``loadtest`` extra, so they are imported on first use: a plain
# ``pip install procly`` can still import procly.loadtest (and run the ``procly`` command).
_LAZY = {
    "Report": "_report",
    "LoadTestError": "_runner",
    "Progress": "_runner",
    "run_load_test": "_runner",
    "EmbeddedTarget": "_target",
    "serve_target": "_target",
    "RequestFailed": "_flows",
    "Response": "_flows",
    "User": "_flows",
    "Scenario": "_scenario",
    "ScenarioError": "_scenario",
    "flow": "_scenario",
    "on_start": "_scenario",
    "Stages": "_stages",
}
EXTRA_HINT = "procly's load tester needs the loadtest extra: pip install 'procly[loadtest]'"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    except ModuleNotFoundError as exc:
        if exc.name in ("hdrh", "httptools", "uvloop"):
            raise ModuleNotFoundError(f"{EXTRA_HINT} (missing: {exc.name})", name=exc.name) from exc
        raise
    globals()[name] = value
    return value


__all__ = [
    "EmbeddedTarget",
    "LoadTestConfig",
    "LoadTestError",
    "Progress",
    "Report",
    "RequestFailed",
    "Response",
    "Scenario",
    "ScenarioError",
    "Stages",
    "Threshold",
    "User",
    "check_thresholds",
    "flow",
    "on_start",
    "parse_count",
    "parse_duration",
    "run_load_test",
    "serve_target",
]
