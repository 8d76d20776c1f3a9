"""Live views of a running load test: OpenMetrics for Prometheus (``--prometheus``) and a
dashboard page (``--web``), both served by the coordinator process from its own threads.

The coordinator calls :meth:`LiveState.update` once a second with its tally; the state
renders the metrics text and the dashboard's JSON there, under a lock, so a request only
copies bytes that are ready. The servers bind loopback unless told otherwise and serve
nothing but these few paths; every asset (HTML, CSS, JS) is in this package.
"""

from __future__ import annotations

import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ._stats import Interval, percentile_ms, recorded_values

if TYPE_CHECKING:
    from ._config import LoadTestConfig
    from ._report import Report
    from ._runner import Tally

#: Upper bounds (seconds) of the exported latency histogram's buckets.
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "procly_loadtest"


def parse_address(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``PORT`` or ``HOST`` as (host, port); the host defaults to 127.0.0.1
    and the port to 0 (any free port).

    Raises:
        ValueError: the port is not a number in 0-65535.
    """
    text = text.strip()
    host, port_text = "127.0.0.1", "0"
    if text.startswith("[") and "]" in text:  # [::1]:9000
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":") or "0"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        host = host or "127.0.0.1"
    elif text.isdigit():
        port_text = text
    elif text:
        host = text
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{option} wants HOST:PORT (e.g. 127.0.0.1:9464, port 0 = any), got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{option}: port {port} out of range (0 to 65535)")
    return host, port


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value))


def _buckets_and_sum(interval: Interval) -> tuple[list[int], float]:
    """Counts at or below each of :data:`BUCKETS_S` (the +Inf bucket is the total), and the sum
    of the latencies in seconds (each sample at its HDR bucket's lowest value)."""
    per_bucket = [0] * (len(BUCKETS_S) + 1)  # the last: above every bound
    bounds_us = [bound * 1e6 for bound in BUCKETS_S]
    total_us = 0
    i = 0
    for value_us, count in recorded_values(interval.histogram):  # in ascending order
        total_us += value_us * count
        while i < len(bounds_us) and value_us > bounds_us[i]:
            i += 1
        per_bucket[i] += count
    cumulative, running = [], 0
    for count in per_bucket[:-1]:
        running += count
        cumulative.append(running)
    return cumulative, total_us / 1e6


def render_metrics(snapshot: dict[str, Any], openmetrics: bool = True) -> str:
    """The metrics of a :meth:`LiveState.metrics_snapshot` in the OpenMetrics (or Prometheus 0.0.4) text format."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        typed = name if openmetrics or kind != "counter" else name + "_total"
        lines.append(f"# HELP {typed} {help_text}")
        lines.append(f"# TYPE {typed} {kind}")
        if openmetrics and kind in ("counter", "histogram", "gauge"):
            unit = "seconds" if name.endswith("_seconds") else None
            if unit:
                lines.append(f"# UNIT {typed} {unit}")

    family(f"{_PREFIX}_requests", "counter", "Completed requests (every status), by request name.")
    for row in snapshot["names"]:
        lines.append(f'{_PREFIX}_requests_total{{name="{_label(row["name"])}"}} {row["requests"]}')
    family(f"{_PREFIX}_errors", "counter", "Failed requests (transport errors, timeouts, HTTP >= 400), by name.")
    for row in snapshot["names"]:
        lines.append(f'{_PREFIX}_errors_total{{name="{_label(row["name"])}"}} {row["errors"]}')
    family(f"{_PREFIX}_request_duration_seconds", "histogram", "Request latency, by request name.")
    for row in snapshot["names"]:
        lines += _duration_histogram(row)
    family(f"{_PREFIX}_checks", "counter", "Checks on responses, by check name and result (pass, fail).")
    for check in snapshot["checks"]:
        lines += _check_counts(check)
    family(f"{_PREFIX}_active_users", "gauge", "Virtual users (or connections) the load runs with now.")
    lines.append(f"{_PREFIX}_active_users {snapshot['users']}")
    family(f"{_PREFIX}_elapsed_seconds", "gauge", "Time since the measured part of the run started.")
    lines.append(f"{_PREFIX}_elapsed_seconds {_number(snapshot['elapsed_s'])}")
    family(f"{_PREFIX}_running", "gauge", "1 while the load runs, 0 after it ended.")
    lines.append(f"{_PREFIX}_running {1 if snapshot['running'] else 0}")
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _duration_histogram(row: dict[str, Any]) -> list[str]:
    """The latency histogram's sample lines of one request name."""
    label = f'name="{_label(row["name"])}"'
    lines = [
        f'{_PREFIX}_request_duration_seconds_bucket{{{label},le="{bound!r}"}} {count}'
        for bound, count in zip(BUCKETS_S, row["buckets"], strict=True)
    ]
    lines.append(f'{_PREFIX}_request_duration_seconds_bucket{{{label},le="+Inf"}} {row["requests_timed"]}')
    lines.append(f"{_PREFIX}_request_duration_seconds_count{{{label}}} {row['requests_timed']}")
    lines.append(f"{_PREFIX}_request_duration_seconds_sum{{{label}}} {_number(row['sum_s'])}")
    return lines


def _check_counts(check: dict[str, Any]) -> list[str]:
    """The passed and failed sample lines of one check."""
    return [
        f'{_PREFIX}_checks_total{{check="{_label(check["name"])}",result="{result}"}} '
        f"{check['passed' if result == 'pass' else 'failed']}"
        for result in ("pass", "fail")
    ]


class LiveState:
    """What the live servers show: updated by the coordinator, read by the servers' threads."""

    def __init__(self, config: LoadTestConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config
        self._series: list[dict[str, Any]] = []
        self._users_seen: dict[int, int] = {}  # second of the run -> users reported then
        self._data: dict[str, Any] = {
            "running": False,
            "started": False,
            "elapsed_s": 0.0,
            "requests": 0,
            "errors": 0,
            "series": [],
            "by_name": [],
            "checks": [],
            "users": 0,
            "thresholds": [],
            "verdict": None,
            "description": "",
        }
        self._metrics_snapshot: dict[str, Any] = {
            "names": [],
            "checks": [],
            "users": 0,
            "elapsed_s": 0.0,
            "running": False,
        }
        self._data_bytes = json.dumps(self._data).encode()
        self._metrics = {
            True: render_metrics(self._metrics_snapshot, True).encode(),
            False: render_metrics(self._metrics_snapshot, False).encode(),
        }

    def set_config(self, config: LoadTestConfig) -> None:
        with self._lock:
            self._config = config
            self._data["description"] = config.describe()

    def _users_at(self, elapsed: float) -> int:
        config = self._config
        if config is None:
            return 0
        stages = config.stages
        if stages is not None:
            return int(round(stages.value_at(max(0.0, elapsed))))
        return int(config.connections)

    def _users_in(self, second: int) -> int:
        """The users seen during ``second`` of the run (the configuration's when none was seen)."""
        seen = self._users_seen.get(second)
        return seen if seen is not None else self._users_at(second + 0.5)

    def update(self, tally: Tally, running: bool = True) -> None:
        """Take the tally's figures (called by the coordinator once a second)."""
        now = time.time()
        elapsed = tally.covered(now) if tally.measure_start else 0.0
        total = tally.total
        if tally.active_users:  # what the workers report running
            users = sum(tally.active_users.values()) if running else 0
        else:  # not reported yet (or by Dask tasks): what the configuration calls for
            users = self._users_at(elapsed) if running else 0
        self._users_seen.setdefault(int(elapsed), users)
        # The per-second series: every finished second (the one in progress only at the end).
        last = max(tally.buckets, default=-1)
        complete = last + 1 if not running else max(0, last)
        series = self._series[: max(0, len(self._series) - 1)]  # the last point may have grown since
        for second in range(len(series), complete):
            bucket = tally.buckets.get(second, Interval())
            hist = bucket.histogram
            series.append(
                {
                    "t_s": second,
                    "requests_per_s": bucket.requests,
                    "errors_per_s": bucket.error_count,
                    "latency_p50_ms": percentile_ms(hist, 50),
                    "latency_p95_ms": percentile_ms(hist, 95),
                    "latency_p99_ms": percentile_ms(hist, 99),
                    "users": self._users_in(second),
                }
            )
        names = []
        metric_names = []
        for name, sub in sorted(total.by_name.items()):
            hist = sub.histogram
            names.append(
                {
                    "name": name,
                    "requests": sub.requests,
                    "errors": sub.error_count,
                    "requests_per_s": sub.requests / elapsed if elapsed > 0 else 0.0,
                    "latency_p50_ms": percentile_ms(hist, 50),
                    "latency_p95_ms": percentile_ms(hist, 95),
                    "latency_p99_ms": percentile_ms(hist, 99),
                }
            )
            buckets, sum_s = _buckets_and_sum(sub)
            metric_names.append(
                {
                    "name": name,
                    "requests": sub.requests,
                    "errors": sub.error_count,
                    "buckets": buckets,
                    "requests_timed": hist.get_total_count(),
                    "sum_s": sum_s,
                }
            )
        checks = [
            {"name": name, "passed": passed, "failed": failed}
            for name, (passed, failed) in sorted(total.checks.items())
        ]
        hist = total.histogram
        with self._lock:
            self._series = series
            self._data.update(
                running=running,
                started=True,
                elapsed_s=round(elapsed, 3),
                requests=total.requests,
                errors=total.error_count,
                users=users,
                requests_per_s=total.requests / elapsed if elapsed > 0 else 0.0,
                latency_p50_ms=percentile_ms(hist, 50),
                latency_p95_ms=percentile_ms(hist, 95),
                latency_p99_ms=percentile_ms(hist, 99),
                series=list(series),
                by_name=names,
                checks=checks,
            )
            self._metrics_snapshot = {
                "names": metric_names,
                "checks": checks,
                "users": users,
                "elapsed_s": elapsed,
                "running": running,
            }
            self._render()

    def finish(self, report: Report, thresholds: list[dict[str, Any]]) -> None:
        """The run ended: show the report's totals and the thresholds' verdicts."""
        with self._lock:
            self._data.update(
                running=False,
                started=True,
                elapsed_s=round(report.elapsed, 3),
                requests=report.requests,
                errors=report.errors,
                users=0,
                requests_per_s=report.throughput,
                latency_p50_ms=report.latency.p50,
                latency_p95_ms=report.latency.p95,
                latency_p99_ms=report.latency.p99,
                series=[
                    {
                        "t_s": p.second,
                        "requests_per_s": p.requests_per_s,
                        "errors_per_s": p.errors_per_s,
                        "latency_p50_ms": p.p50_ms,
                        "latency_p95_ms": p.p95_ms,
                        "latency_p99_ms": p.p99_ms,
                        "users": self._users_in(p.second),
                    }
                    for p in report.timeline
                ],
                by_name=[
                    {
                        "name": s.name,
                        "requests": s.requests,
                        "errors": s.errors,
                        "requests_per_s": s.requests_per_s,
                        "latency_p50_ms": s.latency.p50,
                        "latency_p95_ms": s.latency.p95,
                        "latency_p99_ms": s.latency.p99,
                    }
                    for s in report.by_name
                ],
                checks=[{"name": c.name, "passed": c.passed, "failed": c.failed} for c in report.checks],
                thresholds=thresholds,
                verdict=("none" if not thresholds else "fail" if any(not t["passed"] for t in thresholds) else "pass"),
            )
            self._metrics_snapshot = dict(self._metrics_snapshot, running=False, users=0)
            self._render()

    def _render(self) -> None:
        self._data_bytes = json.dumps(self._data).encode()
        self._metrics = {
            True: render_metrics(self._metrics_snapshot, True).encode(),
            False: render_metrics(self._metrics_snapshot, False).encode(),
        }

    def data_json(self) -> bytes:
        with self._lock:
            return self._data_bytes

    def metrics(self, openmetrics: bool) -> bytes:
        with self._lock:
            return self._metrics[openmetrics]


class _Handler(BaseHTTPRequestHandler):
    server: _LiveServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the http.server's name)
        path = self.path.split("?", 1)[0]
        state = self.server.state
        if path == "/metrics":
            openmetrics = "application/openmetrics-text" in self.headers.get("Accept", "")
            self._send(state.metrics(openmetrics), OPENMETRICS_TYPE if openmetrics else TEXT_TYPE)
        elif path == "/metrics/openmetrics":
            self._send(state.metrics(True), OPENMETRICS_TYPE)
        elif self.server.dashboard and path in ("/", "/index.html"):
            from ._dashboard import PAGE

            self._send(PAGE.encode(), "text/html; charset=utf-8")
        elif self.server.dashboard and path == "/data.json":
            self._send(state.data_json(), "application/json")
        elif path == "/favicon.ico":
            self._send(b"", "image/x-icon", HTTPStatus.NO_CONTENT)
        else:
            self._send(b"not found\n", "text/plain; charset=utf-8", HTTPStatus.NOT_FOUND)

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if status != HTTPStatus.NO_CONTENT:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # no access log on the load test's terminal


class _LiveServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], state: LiveState, dashboard: bool) -> None:
        import socket

        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.state = state
        self.dashboard = dashboard


class LiveServer:
    """One HTTP server thread serving ``state``: the dashboard (``/``, ``/data.json``) and ``/metrics``,
    or ``/metrics`` only.

    Raises:
        OSError: the address cannot be bound (from the constructor).
    """

    def __init__(self, state: LiveState, host: str, port: int, dashboard: bool) -> None:
        self._server = _LiveServer((host, port), state, dashboard)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="procly-loadtest-live", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        address = self._server.server_address
        host, port = str(address[0]), int(address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    @property
    def loopback(self) -> bool:
        """Whether the server listens on a loopback address only."""
        import ipaddress

        host = str(self._server.server_address[0])
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
