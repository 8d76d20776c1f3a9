"""The load test's report: the numbers, and their text, JSON and CSV forms.

In JSON every number carries its unit in its key: ``duration_s``, ``requests_per_s``,
``latency_p95_ms``, ``send_lag_p99_ms``, ``error_rate_percent``; plain counts
(``requests``, ``errors``, ``passed``) have no suffix.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from ._config import LoadTestConfig
from ._sparse_histogram import SparseHistogram
from ._stats import Interval, http_error_count, mean_and_stdev_us, percentile_ms

#: The percentiles of the report's latency table.
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
#: Above this send lag (p99, ms) the client itself could not keep to the schedule.
SEND_LAG_WARNING_MS = 1.0
#: Rate mode: above this share of requests sent late (no free connection when due), a warning
#: says why: the workers busy (CLIENT_BUSY of their time or more) or the target too slow.
LATE_WARNING_SHARE = 0.01
CLIENT_BUSY = 0.9


@dataclass
class Latency:
    """Latency figures in milliseconds."""

    min: float = 0.0
    mean: float = 0.0
    stdev: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    p99_9: float = 0.0
    max: float = 0.0

    @classmethod
    def from_histogram(cls, hist: HdrHistogram | SparseHistogram | None) -> Latency:
        if hist is None or not hist.get_total_count():
            return cls()
        mean, stdev = mean_and_stdev_us(hist)
        return cls(
            min=hist.get_min_value() / 1000.0,
            mean=mean / 1000.0,
            stdev=stdev / 1000.0,
            p50=percentile_ms(hist, 50.0),
            p90=percentile_ms(hist, 90.0),
            p95=percentile_ms(hist, 95.0),
            p99=percentile_ms(hist, 99.0),
            p99_9=percentile_ms(hist, 99.9),
            max=hist.get_max_value() / 1000.0,
        )

    def to_dict(self, prefix: str = "latency_") -> dict[str, float]:
        """``{"latency_p95_ms": ...}``: every figure with its unit in its key."""
        return {f"{prefix}{name}_ms": round(value, 4) for name, value in self.__dict__.items()}


@dataclass
class NameStats:
    """The figures of the requests sharing one name (``/item/[id]``).

    ``histogram`` holds their latencies in microseconds: an ``HdrHistogram``, or, where a
    flow's requests had several names, a ``SparseHistogram`` of the same buckets, which
    answers ``get_total_count``, ``get_value_at_percentile``, ``get_min_value``,
    ``get_max_value`` and ``encode`` alike and gives an ``HdrHistogram`` with ``to_hdr()``.
    """

    name: str
    requests: int
    errors: int
    requests_per_s: float
    latency: Latency
    status_codes: dict[int, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    histogram: HdrHistogram | SparseHistogram | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, name: str, interval: Interval, elapsed: float) -> NameStats:
        return cls(
            name=name,
            requests=interval.requests,
            errors=interval.error_count,
            requests_per_s=interval.requests / elapsed,
            latency=Latency.from_histogram(interval.histogram),
            status_codes=dict(sorted(interval.statuses.items())),
            error_kinds=dict(sorted(interval.errors.items(), key=lambda item: -item[1])),
            histogram=interval.histogram,
        )

    def percentile_ms(self, percentile: float) -> float:
        return percentile_ms(self.histogram, percentile) if self.histogram is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": round(self.requests_per_s, 3),
            **self.latency.to_dict(),
            "status_codes": {str(k): v for k, v in self.status_codes.items()},
            "error_kinds": self.error_kinds,
        }
        if self.histogram is not None and self.histogram.get_total_count():
            data["histogram_hdr"] = self.histogram.encode().decode("ascii")  # for procly loadtest compare
        return data


@dataclass
class CheckStats:
    """How often one named check on responses passed and failed."""

    name: str
    passed: int
    failed: int

    @property
    def passed_percent(self) -> float:
        total = self.passed + self.failed
        return 100.0 * self.passed / total if total else 100.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "failed": self.failed,
            "passed_percent": round(self.passed_percent, 4),
        }


@dataclass
class TimelinePoint:
    """One second of the run."""

    second: int
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    #: The part of the second the run covered: less than 1 for a last second cut short.
    seconds: float = 1.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors_per_s(self) -> float:
        return self.errors / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_interval(cls, second: int, interval: Interval, seconds: float = 1.0) -> TimelinePoint:
        hist = interval.histogram
        return cls(
            second=second,
            requests=interval.requests,
            errors=interval.error_count,
            p50_ms=percentile_ms(hist, 50.0),
            p90_ms=percentile_ms(hist, 90.0),
            p95_ms=percentile_ms(hist, 95.0),
            p99_ms=percentile_ms(hist, 99.0),
            max_ms=hist.get_max_value() / 1000.0 if hist.get_total_count() else 0.0,
            seconds=seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_s": self.second,
            "covered_s": self.seconds,
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": self.requests_per_s,
            "latency_p50_ms": self.p50_ms,
            "latency_p90_ms": self.p90_ms,
            "latency_p95_ms": self.p95_ms,
            "latency_p99_ms": self.p99_ms,
            "latency_max_ms": self.max_ms,
        }


@dataclass
class Report:
    """What a load test measured.

    ``requests`` counts completed requests (every status); ``errors`` counts failures of
    every kind (transport errors, timeouts, malformed responses, HTTP status >= 400,
    exceptions of a called function) and ``error_rate`` is errors / attempts. A failed
    check is not an error: checks are counted apart (``checks``), as are exceptions
    raised by flows (``exceptions``, by class).
    """

    target: str
    description: str
    elapsed: float
    requests: int
    errors: int
    attempts: int
    throughput: float
    error_rate: float
    latency: Latency
    status_codes: dict[int, int]
    error_kinds: dict[str, int]
    bytes_received: int
    timeline: list[TimelinePoint] = field(default_factory=list)
    workers_lost: list[str] = field(default_factory=list)
    interrupted: bool = False
    target_served: int | None = None
    histogram: HdrHistogram | None = field(default=None, repr=False, compare=False)
    by_name: list[NameStats] = field(default_factory=list)
    checks: list[CheckStats] = field(default_factory=list)
    exceptions: dict[str, int] = field(default_factory=dict)
    #: The first exception of each class in ``exceptions``, with the scenario's file and line.
    exception_samples: dict[str, str] = field(default_factory=dict)
    iterations: int = 0
    #: Rate mode: how long after its due time a request waiting on a free connection was written (ms).
    send_lag: Latency | None = None
    #: Rate mode: requests sent late because every connection was busy when they were due.
    late_sends: int = 0
    rate_target: float | None = None
    warnings: list[str] = field(default_factory=list)
    #: The largest peak resident memory of one worker process (MiB; 0 when unknown).
    worker_peak_rss_mib: float = 0.0
    #: CPU time (user + system) of all the worker processes while they ran the load.
    worker_cpu_s: float = 0.0
    #: Of that CPU time, what rate mode's pacer spent watching the clock for due times (it
    #: wakes a little early and watches the last microseconds, for a send lag of a few µs).
    worker_watch_s: float = 0.0
    #: That CPU time, less the watching, over the workers' time running the load (warm-up
    #: included): near 1, the client itself is the limit.
    worker_busy: float = 0.0
    #: The ``--fail-if`` conditions with their verdicts (``condition``, ``passed``, ``measured``).
    thresholds: list[dict[str, Any]] = field(default_factory=list)
    #: How the run was set up (target, processes, connections or users, duration, rate, stages...).
    configuration: dict[str, Any] = field(default_factory=dict)
    #: The machine that coordinated the run (host, OS, Python, CPUs, memory, procly's version).
    machine: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        config: LoadTestConfig,
        total: Interval,
        elapsed: float,
        timeline: list[TimelinePoint],
        workers_lost: list[str],
        interrupted: bool,
    ) -> Report:
        # A response with status >= 400 is both a request and an error; a transport error only an error.
        http_errors = http_error_count(total.errors)
        errors = total.error_count
        attempts = total.requests + errors - http_errors
        report = cls(
            target=config.url if config.url is not None else f"call {config.call}",
            description=config.describe(),
            elapsed=elapsed,
            requests=total.requests,
            errors=errors,
            attempts=attempts,
            throughput=total.requests / elapsed,
            error_rate=errors / attempts if attempts else 0.0,
            latency=Latency.from_histogram(total.histogram),
            status_codes=dict(sorted(total.statuses.items())),
            error_kinds=dict(sorted(total.errors.items(), key=lambda item: -item[1])),
            bytes_received=total.bytes_received,
            timeline=timeline,
            workers_lost=workers_lost,
            interrupted=interrupted,
            histogram=total.histogram,
            by_name=[NameStats.build(name, sub, elapsed) for name, sub in sorted(total.by_name.items())],
            checks=[CheckStats(name, passed, failed) for name, (passed, failed) in sorted(total.checks.items())],
            exceptions=dict(sorted(total.exceptions.items(), key=lambda item: -item[1])),
            exception_samples=dict(total.exception_samples),
            iterations=total.iterations,
            send_lag=Latency.from_histogram(total.send_lag) if total.send_lag is not None else None,
            late_sends=total.late,
            # Ramped: the stages' mean rate (the requests due over the duration), which the
            # throughput must reach as a fixed rate's.
            rate_target=config.rate if config.rate_stages is None else config.rate_stages.mean,
            worker_peak_rss_mib=total.peak_rss_kib / 1024,
            worker_cpu_s=total.cpu_s,
            worker_watch_s=total.watch_s,
            # Busy: CPU time but what the pacer spent watching the clock for a due time (the
            # loop was free then; counting it would blame the client for a slow target).
            worker_busy=min(
                1.0, max(0.0, total.cpu_s - total.watch_s) / (config.worker_count * max(elapsed + config.warmup, 1e-3))
            ),
            configuration=configuration_of(config),
            machine=machine_info(),
        )
        report.warnings = report._warnings()
        return report

    @property
    def late_share(self) -> float:
        """Rate mode: the share of the attempts that were late sends."""
        return self.late_sends / max(1, self.attempts)

    def _warnings(self) -> list[str]:
        warnings = []
        if self.send_lag is not None and self.send_lag.p99 > SEND_LAG_WARNING_MS:
            warnings.append(
                f"the client fell behind its schedule: requests went out up to {self.send_lag.p99:.2f} "
                f"ms (p99) after their due time; use more processes (-p) or a lower rate"
            )
        late_share = self.late_share
        if late_share > LATE_WARNING_SHARE:  # late sends are counted in rate mode only
            if self.worker_busy >= CLIENT_BUSY:
                warnings.append(
                    f"the client fell behind its schedule: {late_share:.1%} of the requests went out late "
                    f"and the workers were busy {self.worker_busy:.0%} of the time; use more processes (-p) "
                    "or a lower rate"
                )
            else:
                warnings.append(
                    f"{late_share:.1%} of the requests were due while every connection was busy (the target "
                    "answered slower than the rate needs): raise -c, or the target is the limit"
                )
        if self.rate_target and not self.interrupted and self.throughput < self.rate_target * 0.99:
            why = f"; {self.late_sends:,} requests waited for a free connection (raise -c)" if self.late_sends else ""
            warnings.append(
                f"the rate of {self.rate_target:g} requests/s was not held: {self.throughput:,.1f} requests/s{why}"
            )
        return warnings

    def percentile_ms(self, percentile: float) -> float:
        """Any percentile (0-100) of the whole run's latency, in milliseconds."""
        if self.histogram is None:
            raise ValueError("this report carries no histogram")
        return percentile_ms(self.histogram, percentile)

    def name_stats(self, name: str) -> NameStats | None:
        """The figures of the requests named ``name``, or None if none had that name."""
        for stats in self.by_name:
            if stats.name == name:
                return stats
        return None

    @property
    def checks_passed_percent(self) -> float:
        """Passed checks in percent of all checks (100 with no check)."""
        passed = sum(c.passed for c in self.checks)
        total = passed + sum(c.failed for c in self.checks)
        return 100.0 * passed / total if total else 100.0

    # JSON

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data; every number's unit is in its key."""
        data: dict[str, Any] = {
            "target": self.target,
            "description": self.description,
            "duration_s": round(self.elapsed, 4),
            "requests": self.requests,
            "errors": self.errors,
            "attempts": self.attempts,
            "requests_per_s": round(self.throughput, 3),
            "error_rate_percent": round(self.error_rate * 100, 4),
            **self.latency.to_dict(),
            "bytes_received": self.bytes_received,
            "status_codes": {str(k): v for k, v in self.status_codes.items()},
            "error_kinds": self.error_kinds,
            "by_name": [stats.to_dict() for stats in self.by_name],
            "checks": [check.to_dict() for check in self.checks],
            "checks_passed_percent": round(self.checks_passed_percent, 4),
            "exceptions": self.exceptions,
            "exception_samples": self.exception_samples,
            "iterations": self.iterations,
            "rate_target_requests_per_s": self.rate_target,
            "late_sends": self.late_sends,
            "worker_peak_rss_mib": round(self.worker_peak_rss_mib, 1),
            "worker_cpu_s": round(self.worker_cpu_s, 3),
            "worker_watch_s": round(self.worker_watch_s, 3),
            "worker_busy_percent": round(self.worker_busy * 100, 1),
            "timeline": [point.to_dict() for point in self.timeline],
            "workers_lost": self.workers_lost,
            "interrupted": self.interrupted,
            "target_served": self.target_served,
            "warnings": self.warnings,
            "thresholds": self.thresholds,
            "configuration": self.configuration,
            "machine": self.machine,
        }
        if self.send_lag is not None:
            lag = self.send_lag
            data.update(
                send_lag_p50_ms=round(lag.p50, 4), send_lag_p99_ms=round(lag.p99, 4), send_lag_max_ms=round(lag.max, 4)
            )
        if self.histogram is not None and self.histogram.get_total_count():
            data["histogram_hdr"] = self.histogram.encode().decode("ascii")
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # CSV: one row per second, one per request name, one per check, then the total

    CSV_COLUMNS = (
        "row",
        "second",
        "name",
        "requests",
        "errors",
        "requests_per_s",
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "checks_passed",
        "checks_failed",
        "send_lag_p50_ms",
        "send_lag_p99_ms",
    )

    def to_csv(self) -> str:
        """``row`` says what a line is: ``second`` (the timeline), ``name``, ``check`` or ``total``.

        The send lag (rate mode: how late requests went out against their schedule) is on
        the total row; empty in closed loop."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.CSV_COLUMNS)
        for point in self.timeline:
            writer.writerow(
                [
                    "second",
                    point.second,
                    "",
                    point.requests,
                    point.errors,
                    f"{point.requests_per_s:.1f}",
                    f"{point.p50_ms:.3f}",
                    f"{point.p90_ms:.3f}",
                    f"{point.p95_ms:.3f}",
                    f"{point.p99_ms:.3f}",
                    f"{point.max_ms:.3f}",
                    "",
                    "",
                    "",
                    "",
                ]
            )
        for stats in self.by_name:
            lat = stats.latency
            writer.writerow(
                [
                    "name",
                    "",
                    stats.name,
                    stats.requests,
                    stats.errors,
                    f"{stats.requests_per_s:.1f}",
                    f"{lat.p50:.3f}",
                    f"{lat.p90:.3f}",
                    f"{lat.p95:.3f}",
                    f"{lat.p99:.3f}",
                    f"{lat.max:.3f}",
                    "",
                    "",
                    "",
                    "",
                ]
            )
        for check in self.checks:
            writer.writerow(["check", "", check.name, *[""] * 8, check.passed, check.failed, "", ""])
        lat, lag = self.latency, self.send_lag
        writer.writerow(
            [
                "total",
                "",
                "",
                self.requests,
                self.errors,
                f"{self.throughput:.1f}",
                f"{lat.p50:.3f}",
                f"{lat.p90:.3f}",
                f"{lat.p95:.3f}",
                f"{lat.p99:.3f}",
                f"{lat.max:.3f}",
                sum(c.passed for c in self.checks),
                sum(c.failed for c in self.checks),
                "" if lag is None else f"{lag.p50:.4f}",
                "" if lag is None else f"{lag.p99:.4f}",
            ]
        )
        return out.getvalue()

    # text

    def to_text(self) -> str:
        lines = [f"procly loadtest {self.description}", ""]
        if self.interrupted:
            lines += ["  (interrupted: the figures cover what ran until Ctrl-C)", ""]
        lines += self._text_totals()
        lines.append("")
        lines += self._text_latency()
        lines += self._text_by_name()
        lines += self._text_checks()
        lines += self._text_counts()
        return "\n".join(lines)

    def _text_totals(self) -> list[str]:
        lines = [
            f"  requests     {self.requests:>12,}   in {self.elapsed:.2f} s",
            f"  throughput   {self.throughput:>12,.1f}   requests/s",
            f"  errors       {self.errors:>12,}   ({self.error_rate:.2%} of {self.attempts:,} attempts)",
        ]
        if self.iterations:
            lines.append(f"  iterations   {self.iterations:>12,}   (flows run to their end or to an exception)")
        if self.bytes_received:
            lines.append(
                f"  received     {_human_bytes(self.bytes_received):>12}   "
                f"({_human_bytes(self.bytes_received / self.elapsed)}/s)"
            )
        if self.send_lag is not None:
            lag = self.send_lag
            lines.append(
                f"  send lag     p50 {_fmt_us(lag.p50)}  p99 {_fmt_us(lag.p99)}  max {_fmt_us(lag.max)}   "
                "(how late requests went out after their due time, a connection free)"
            )
        if self.worker_peak_rss_mib:
            lines.append(
                f"  memory       {self.worker_peak_rss_mib:>8,.1f} MiB   (peak resident size of the largest "
                "worker process)"
            )
        if self.worker_cpu_s and self.requests:
            watching = ""
            if self.worker_watch_s:
                watching = f"; {self.worker_watch_s:.2f} s of it watching the clock for due times"
            lines.append(
                f"  cpu          {self.worker_cpu_s:>10,.2f} s   in the workers "
                f"({self.worker_cpu_s / self.requests * 1e6:.1f} µs per request, busy {self.worker_busy:.0%}{watching})"
            )
        if self.late_sends:
            lines.append(
                f"  late sends   {self.late_sends:>12,}   ({self.late_share:.2%}: due while every connection was busy)"
            )
        return lines

    def _text_latency(self) -> list[str]:
        lat = self.latency
        names = ["min", "p50", "p90", "p95", "p99", "p99.9", "max", "mean", "stdev"]
        values = [lat.min, lat.p50, lat.p90, lat.p95, lat.p99, lat.p99_9, lat.max, lat.mean, lat.stdev]
        shown = [_fmt_ms(value) if self.requests else "-" for value in values]  # no answer: no latency
        return [
            "  latency ms " + "".join(f"{name:>9}" for name in names),
            "             " + "".join(f"{text:>9}" for text in shown),
        ]

    def _text_by_name(self) -> list[str]:
        if not self.by_name:
            return []
        width = max(24, *(len(s.name) + 2 for s in self.by_name))
        head = ["requests", "rps", "errors", "p50", "p90", "p95", "p99", "max"]
        lines = ["", f"  {'by name (latency ms)':<{width}}" + "".join(f"{h:>10}" for h in head)]
        rows = [(s.name, s.requests, s.requests_per_s, s.errors, s.latency) for s in self.by_name]
        rows.append(("total", self.requests, self.throughput, self.errors, self.latency))
        for name, count, rps, errors, latency in rows:
            lines.append(
                f"    {name:<{width - 2}}{count:>10,}{rps:>10,.1f}{errors:>10,}"
                + "".join(
                    f"{_fmt_ms(v) if count else '-':>10}"
                    for v in (latency.p50, latency.p90, latency.p95, latency.p99, latency.max)
                )
            )
        return lines

    def _text_checks(self) -> list[str]:
        if not self.checks:
            return []
        width = max(24, *(len(c.name) + 2 for c in self.checks))
        lines = ["", f"  {'checks':<{width}}{'passed':>10}{'failed':>10}{'passed %':>10}"]
        for check in self.checks:
            lines.append(
                f"    {check.name:<{width - 2}}{check.passed:>10,}{check.failed:>10,}{check.passed_percent:>10.2f}"
            )
        lines.append(
            f"    {'total':<{width - 2}}{sum(c.passed for c in self.checks):>10,}"
            f"{sum(c.failed for c in self.checks):>10,}{self.checks_passed_percent:>10.2f}"
        )
        return lines

    def _text_counts(self) -> list[str]:
        lines: list[str] = []
        sections: list[tuple[str, Any]] = [
            ("status codes", self.status_codes if set(self.status_codes) != {0} else {}),
            ("errors by kind", self.error_kinds),
        ]
        for title, counts in sections:
            if counts:
                width = 6 if title == "status codes" else 24
                lines += ["", f"  {title}"] + [f"    {key!s:<{width}} {count:>12,}" for key, count in counts.items()]
        if self.exceptions:
            lines += ["", "  flows that raised (the user went on with its next iteration; the first of each kind)"]
            for kind, count in self.exceptions.items():
                sample = self.exception_samples.get(kind, "")
                lines.append(f"    {kind:<24} {count:>12,}   {sample}".rstrip())
        if self.workers_lost:
            lines += ["", "  workers lost (their last half second is missing)"]
            lines += [f"    {message}" for message in self.workers_lost]
        if self.target_served is not None:
            lines += ["", f"  the embedded target served {self.target_served:,} requests"]
        if self.warnings:
            lines += [""] + [f"  warning: {warning}" for warning in self.warnings]
        return lines


def _fmt_ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _fmt_us(value_ms: float) -> str:
    if value_ms >= 1:
        return f"{value_ms:.2f} ms"
    return f"{value_ms * 1000:.0f} µs"


def configuration_of(config: LoadTestConfig) -> dict[str, Any]:
    """The run's settings as JSON-ready data (numbers with their unit in their key)."""
    data: dict[str, Any] = {
        "target": config.url if config.url is not None else f"call {config.call}",
        "mode": "flows"
        if config.scenario is not None
        else ("rate" if config.rate or config.rate_stages else "closed loop"),
        "processes": config.worker_count,
        "connections": config.connections,
        "duration_s": config.effective_duration,
        "requests": config.requests,
        "rate_requests_per_s": config.rate,
        "method": config.method if config.scenario is None else None,
        "timeout_s": config.timeout,
        "warmup_s": config.warmup,
        "start_method": config.start_method or "default",
    }
    for key, stages in (("stages", config.stages), ("rate_stages", config.rate_stages)):
        if stages is not None:
            data[key] = stages.describe()
    scenario = config.scenario
    if scenario is not None:
        data["users"] = data.pop("connections")  # a flow's connections are its virtual users
        if scenario.is_single_url:  # --stages without -f: users that each send the URL's request
            data["mode"] = "ramped users"
            data["method"] = config.method
            return data
        data["scenario"] = scenario.describe()
        data["data_rows"] = len(scenario.rows)
        data["data_order"] = "random" if scenario.random_rows else "round-robin"
        data["seed"] = scenario.seed
    return data


def machine_info() -> dict[str, Any]:
    """Where the run was coordinated: host, OS, Python, CPUs, memory, procly's version."""
    import os
    import platform

    from .. import __version__
    from ._config import usable_cpus

    info: dict[str, Any] = {
        "host": platform.node(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpus": os.cpu_count() or 0,
        "usable_cpus": usable_cpus(),
        "procly": __version__,
    }
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu_model"] = line.partition(":")[2].strip()
                    break
        with open("/proc/meminfo", encoding="ascii", errors="replace") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    info["memory_mib"] = round(int(line.split()[1]) / 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    return info


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover
