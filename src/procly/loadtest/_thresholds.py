"""``--fail-if`` conditions for CI: ``"p99>200ms"``, ``"errors>0.1%"``, ``"rps<1000"``.

A condition names a metric, a comparison and a value with an optional unit:

    latency   min mean max stdev pNN (p50, p99, p99.9, ...)   units us, ms (default), s
    errors    errors (a count; with % the error rate)          error_rate (%, or a fraction)
    volume    requests, rps (throughput, requests per second)

The run "breaks" when any condition is true; ``procly loadtest`` then exits with 1.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only annotations: _report needs the loadtest extra (hdrh)
    from ._report import Report

_CONDITION = re.compile(
    r"^\s*(?P<metric>[a-z_]+|p\d+(?:\.\d+)?)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>us|µs|ms|s|%)?\s*$"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_LATENCY_UNITS_MS = {None: 1.0, "ms": 1.0, "s": 1000.0, "us": 0.001, "µs": 0.001}
_LATENCY = {"min", "mean", "max", "stdev"}


@dataclass(frozen=True)
class Threshold:
    """One parsed ``--fail-if`` condition."""

    text: str
    metric: str
    op: str
    value: float
    unit: str | None

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """Parse a condition.

        Raises:
            ValueError: the condition's syntax, metric or unit is wrong (the message says which).
        """
        match = _CONDITION.match(text.lower())
        if not match:
            raise ValueError(f"cannot read --fail-if {text!r}: write it as METRIC OP VALUE[UNIT], e.g. 'p99>200ms'")
        metric, op, value, unit = match["metric"], match["op"], float(match["value"]), match["unit"]
        if metric == "throughput":
            metric = "rps"
        is_latency = metric in _LATENCY or metric.startswith("p")
        if is_latency:
            if metric.startswith("p") and not 0 < float(metric[1:]) <= 100:
                raise ValueError(f"--fail-if {text!r}: percentile must be in (0, 100]")
            if unit == "%":
                raise ValueError(f"--fail-if {text!r}: a latency takes us, ms or s, not %")
        elif metric in ("errors", "error_rate"):
            if unit not in (None, "%"):
                raise ValueError(f"--fail-if {text!r}: errors take a count or a percentage")
        elif metric in ("requests", "rps"):
            if unit is not None:
                raise ValueError(f"--fail-if {text!r}: {metric} takes a plain number")
        else:
            raise ValueError(f"--fail-if {text!r}: unknown metric {metric!r} "
                             "(known: min mean max stdev pNN errors error_rate requests rps)")
        return cls(text=text, metric=metric, op=op, value=value, unit=unit)

    def measure(self, report: Report) -> tuple[float, str]:
        """The report's value for this metric, in the condition's terms, and how to print it."""
        metric = self.metric
        if metric in _LATENCY or metric.startswith("p"):
            ms = getattr(report.latency, metric) if metric in _LATENCY else report.percentile_ms(float(metric[1:]))
            scale = _LATENCY_UNITS_MS[self.unit]
            return ms / scale, f"{metric} = {ms:.3f} ms"
        if metric == "error_rate" or (metric == "errors" and self.unit == "%"):
            rate = report.error_rate
            if self.unit == "%":
                return rate * 100, f"error rate = {rate:.3%}"
            return rate, f"error rate = {rate:.5f}"
        if metric == "errors":
            return float(report.errors), f"errors = {report.errors}"
        if metric == "requests":
            return float(report.requests), f"requests = {report.requests}"
        return report.throughput, f"throughput = {report.throughput:.1f} requests/s"

    def broken_by(self, report: Report) -> str | None:
        """A message if ``report`` makes this condition true, else None."""
        value, shown = self.measure(report)
        if _OPS[self.op](value, self.value):
            return f"threshold broken: {self.text} ({shown})"
        return None


def check_thresholds(thresholds: list[Threshold], report: Report) -> list[str]:
    """The messages of every broken threshold (empty: all passed)."""
    return [message for t in thresholds if (message := t.broken_by(report)) is not None]
