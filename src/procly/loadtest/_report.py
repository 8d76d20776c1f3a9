"""The load test's report: the numbers, and their text, JSON and CSV forms."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from ._config import LoadTestConfig
from ._stats import Interval, percentile_ms

#: The percentiles of the report's latency table.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class Latency:
    """Latency figures in milliseconds."""

    min: float = 0.0
    mean: float = 0.0
    stdev: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    p99_9: float = 0.0
    max: float = 0.0

    @classmethod
    def from_histogram(cls, hist: HdrHistogram) -> Latency:
        if not hist.get_total_count():
            return cls()
        return cls(
            min=hist.get_min_value() / 1000.0,
            mean=hist.get_mean_value() / 1000.0,
            stdev=hist.get_stddev() / 1000.0,
            p50=percentile_ms(hist, 50.0),
            p90=percentile_ms(hist, 90.0),
            p99=percentile_ms(hist, 99.0),
            p99_9=percentile_ms(hist, 99.9),
            max=hist.get_max_value() / 1000.0,
        )


@dataclass
class TimelinePoint:
    """One second of the run."""

    second: int
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_interval(cls, second: int, interval: Interval) -> TimelinePoint:
        hist = interval.histogram
        return cls(
            second=second,
            requests=interval.requests,
            errors=interval.error_count,
            p50_ms=percentile_ms(hist, 50.0),
            p90_ms=percentile_ms(hist, 90.0),
            p99_ms=percentile_ms(hist, 99.0),
            max_ms=hist.get_max_value() / 1000.0 if hist.get_total_count() else 0.0,
        )


@dataclass
class Report:
    """What a load test measured.

    ``requests`` counts completed requests (every status); ``errors`` counts failures of
    every kind (transport errors, timeouts, malformed responses, HTTP status >= 400,
    exceptions of a called function) and ``error_rate`` is errors / attempts.
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

    @classmethod
    def build(cls, config: LoadTestConfig, total: Interval, elapsed: float, timeline: list[TimelinePoint],
              workers_lost: list[str], interrupted: bool) -> Report:
        # A response with status >= 400 is both a request and an error; a transport error only an error.
        http_errors = sum(count for kind, count in total.errors.items() if kind.startswith("http "))
        errors = total.error_count
        attempts = total.requests + errors - http_errors
        return cls(
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
        )

    def percentile_ms(self, percentile: float) -> float:
        """Any percentile (0-100) of the whole run's latency, in milliseconds."""
        if self.histogram is None:
            raise ValueError("this report carries no histogram")
        return percentile_ms(self.histogram, percentile)

    # JSON

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("histogram")
        data["status_codes"] = {str(k): v for k, v in self.status_codes.items()}
        if self.histogram is not None and self.histogram.get_total_count():
            data["histogram_hdr"] = self.histogram.encode().decode("ascii")
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # CSV: one row per second, then a total row

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["second", "requests", "errors", "requests_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms"])
        for point in self.timeline:
            writer.writerow([point.second, point.requests, point.errors, point.requests,
                             f"{point.p50_ms:.3f}", f"{point.p90_ms:.3f}", f"{point.p99_ms:.3f}",
                             f"{point.max_ms:.3f}"])
        lat = self.latency
        writer.writerow(["total", self.requests, self.errors, f"{self.throughput:.1f}", f"{lat.p50:.3f}",
                         f"{lat.p90:.3f}", f"{lat.p99:.3f}", f"{lat.max:.3f}"])
        return out.getvalue()

    # text

    def to_text(self) -> str:
        lat = self.latency
        lines = [f"procly loadtest {self.description}", ""]
        if self.interrupted:
            lines += ["  (interrupted: the figures cover what ran until Ctrl-C)", ""]
        lines.append(f"  requests     {self.requests:>12,}   in {self.elapsed:.2f} s")
        lines.append(f"  throughput   {self.throughput:>12,.1f}   requests/s")
        lines.append(f"  errors       {self.errors:>12,}   ({self.error_rate:.2%} of {self.attempts:,} attempts)")
        if self.bytes_received:
            lines.append(f"  received     {_human_bytes(self.bytes_received):>12}   "
                         f"({_human_bytes(self.bytes_received / self.elapsed)}/s)")
        lines.append("")
        names = ["min", "p50", "p90", "p99", "p99.9", "max", "mean", "stdev"]
        values = [lat.min, lat.p50, lat.p90, lat.p99, lat.p99_9, lat.max, lat.mean, lat.stdev]
        lines.append("  latency ms " + "".join(f"{name:>9}" for name in names))
        lines.append("             " + "".join(f"{_fmt_ms(value):>9}" for value in values))
        if self.status_codes and set(self.status_codes) != {0}:
            lines += ["", "  status codes"]
            lines += [f"    {code:<6} {count:>12,}" for code, count in self.status_codes.items()]
        if self.error_kinds:
            lines += ["", "  errors by kind"]
            lines += [f"    {kind:<24} {count:>12,}" for kind, count in self.error_kinds.items()]
        if self.workers_lost:
            lines += ["", "  workers lost (their last half second is missing)"]
            lines += [f"    {message}" for message in self.workers_lost]
        if self.target_served is not None:
            lines += ["", f"  the embedded target served {self.target_served:,} requests"]
        return "\n".join(lines)


def _fmt_ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover
