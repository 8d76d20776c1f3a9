"""``--fail-if`` conditions for CI: ``"p99>200ms"``, ``"errors>0.1%"``, ``"p95{name=login}>300ms"``.

A condition names a metric, optionally narrowed to one request name (or one check),
a comparison and a value with its unit:

    latency   min mean max stdev pNN (p50, p95, p99.9, ...)   unit required: us, ms or s
    errors    errors (a count; with % the error rate)          error_rate (unit required: %)
    volume    requests (a count), rps (requests per second)
    checks    checks (passed checks, unit required: %)

``METRIC{name=NAME}`` takes the figures of the requests named ``NAME`` (``checks{name=NAME}``:
of the check ``NAME``); a name that no request (or check) had breaks the condition, so
a typo cannot pass silently. The run "breaks" when any condition is true; ``procly
loadtest`` then exits with 1.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only annotations: _report needs the loadtest extra (hdrh)
    from ._report import NameStats, Report

_CONDITION = re.compile(
    r"^\s*(?P<metric>[A-Za-z_]+|[pP]\d+(?:\.\d+)?)\s*(?:\{\s*name\s*=\s*(?P<name>[^}]*)\})?\s*"
    r"(?P<op><=|>=|==|!=|<|>)\s*(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-zµ%/]+)?\s*$"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_LATENCY_UNITS_MS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "µs": 0.001}
_LATENCY = {"min", "mean", "max", "stdev"}
_KNOWN = "min mean max stdev pNN errors error_rate requests rps checks"


# The units each count-like metric takes, and what to say otherwise.
_UNITS: dict[str, tuple[tuple[str | None, ...], str]] = {
    "errors": ((None, "%"), "errors take a count or a percentage"),
    "error_rate": (("%",), "error_rate takes a percentage (e.g. 'error_rate>0.1%')"),
    "requests": ((None,), "requests takes a plain number"),
    "rps": ((None, "/s"), "rps takes a plain number"),
    "checks": (("%",), "checks take a percentage of passed checks (e.g. 'checks<99.9%')"),
}


def _check_unit(metric: str, unit: str | None, value: float, where: str, written: str) -> None:
    """Raise ValueError (naming *where*) unless *metric* is known and takes *unit*."""
    if metric in _LATENCY or re.fullmatch(r"p\d+(\.\d+)?", metric):
        if metric.startswith("p") and not 0 < float(metric[1:]) <= 100:
            raise ValueError(f"{where}: percentile must be in (0, 100]")
        if unit is None:
            raise ValueError(f"{where}: a latency needs its unit, us, ms or s (e.g. '{metric}>{value:g}ms')")
        if unit not in _LATENCY_UNITS_MS:
            raise ValueError(f"{where}: a latency takes us, ms or s, not {unit}")
        return
    if metric not in _UNITS:
        raise ValueError(f"{where}: unknown metric {written!r} (known: {_KNOWN})")
    units, message = _UNITS[metric]
    if unit not in units:
        raise ValueError(f"{where}: {message}")


@dataclass(frozen=True)
class Threshold:
    """One parsed ``--fail-if`` condition."""

    text: str
    metric: str
    op: str
    value: float
    unit: str | None
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """Parse a condition.

        Raises:
            ValueError: the condition's syntax, metric, name or unit is wrong (the message says which).
        """
        where = f"--fail-if {text!r}"
        match = _CONDITION.match(text)
        if not match:
            raise ValueError(
                f"cannot read {where}: write it as METRIC[{{name=NAME}}] OP VALUE UNIT, "
                "e.g. 'p99>200ms', 'p95{name=login}>300ms', 'errors>0.1%', 'checks<99.9%'"
            )
        metric, op, value = match["metric"].lower(), match["op"], float(match["value"])
        unit = match["unit"].lower() if match["unit"] else None
        if unit == "µs":
            unit = "us"
        name = match["name"]
        if name is not None:
            name = name.strip()
            if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
                name = name[1:-1]  # quoted as a whole: a name of its own may hold quotes
            if not name:
                raise ValueError(f"{where}: {{name=...}} names nothing")
        if metric == "throughput":
            metric = "rps"
        _check_unit(metric, unit, value, where, match["metric"])
        return cls(text=text, metric=metric, op=op, value=value, unit=unit, name=name)

    def measure(self, report: Report) -> tuple[float, str] | str:
        """The report's value for this metric in the condition's terms and how to print it;
        or, when the name matched nothing, why it cannot be measured."""
        metric, unit = self.metric, self.unit
        label = metric if self.name is None else f"{metric}{{name={self.name}}}"
        if metric == "checks":
            return self._measure_checks(report, label)
        stats = None
        if self.name is not None:
            stats = report.name_stats(self.name)
            if stats is None:
                names = ", ".join(s.name for s in report.by_name)
                return f"no request is named {self.name!r} (names: {names})"
        if metric in _LATENCY or metric.startswith("p"):
            if metric in _LATENCY:
                ms = getattr(report.latency if stats is None else stats.latency, metric)
            else:
                ms = (
                    report.percentile_ms(float(metric[1:])) if stats is None else stats.percentile_ms(float(metric[1:]))
                )
            return ms / _LATENCY_UNITS_MS[unit or "ms"], f"{label} = {ms:.3f} ms"
        errors = report.errors if stats is None else stats.errors
        if metric == "error_rate" or (metric == "errors" and unit == "%"):
            rate = report.error_rate if stats is None else _error_rate(stats)
            where = "" if self.name is None else f" of {self.name}"
            return rate * 100, f"error rate{where} = {rate:.3%}"
        if metric == "errors":
            return float(errors), f"{label} = {errors}"
        if metric == "requests":
            count = report.requests if stats is None else stats.requests
            return float(count), f"{label} = {count}"
        rps = report.throughput if stats is None else stats.requests_per_s
        return rps, f"{label} = {rps:.1f} requests/s"

    def _measure_checks(self, report: Report, label: str) -> tuple[float, str] | str:
        """measure() for the checks passed (in per cent)."""
        if self.name is None:
            if not report.checks:
                return "the run made no check: the condition cannot hold or fail"
            percent = report.checks_passed_percent
        else:
            found = [c for c in report.checks if c.name == self.name]
            if not found:
                return f"no check is named {self.name!r} (checks: {', '.join(c.name for c in report.checks)})"
            percent = found[0].passed_percent
        return percent, f"{label} = {percent:.3f}% passed"

    def measured_number(self, value: float) -> tuple[str, float]:
        """*value* (as :meth:`measure` gives it, in the condition's unit) under a key that
        names its unit: ``measured_ms``, ``measured_percent``, ``measured_per_s``,
        ``measured_errors`` or ``measured_requests``."""
        metric, unit = self.metric, self.unit
        if metric in _LATENCY or metric.startswith("p"):
            return "measured_ms", round(value * _LATENCY_UNITS_MS[unit or "ms"], 4)
        if metric in ("checks", "error_rate") or unit == "%":
            return "measured_percent", round(value, 4)
        if metric == "rps":
            return "measured_per_s", round(value, 3)
        return f"measured_{metric}", value  # errors or requests: a count

    def broken_by(self, report: Report) -> str | None:
        """A message if ``report`` makes this condition true (or it names nothing), else None."""
        measured = self.measure(report)
        if isinstance(measured, str):
            return f"threshold broken: {self.text} ({measured})"
        value, shown = measured
        if _OPS[self.op](value, self.value):
            return f"threshold broken: {self.text} ({shown})"
        return None


def _error_rate(stats: NameStats) -> float:
    """The error rate of one request name: failed attempts per attempt (an HTTP error
    status is a response, counted in ``requests`` too)."""
    from ._stats import http_error_count  # not at import: _stats brings hdrh, which `procly` alone need not load

    attempts = stats.requests + stats.errors - http_error_count(stats.error_kinds)
    return stats.errors / attempts if attempts else 0.0


def threshold_verdicts(thresholds: list[Threshold], report: Report) -> list[dict[str, object]]:
    """Every threshold with its verdict: ``{"condition", "passed", "measured"}`` (what was measured,
    or why nothing could be)."""
    verdicts: list[dict[str, object]] = []
    for threshold in thresholds:
        measured = threshold.measure(report)
        if isinstance(measured, str):
            verdicts.append({"condition": threshold.text, "passed": False, "measured": measured})
        else:
            value, shown = measured
            key, number = threshold.measured_number(value)
            verdicts.append(
                {
                    "condition": threshold.text,
                    "passed": not _OPS[threshold.op](value, threshold.value),
                    "measured": shown,
                    key: number,
                }
            )
    return verdicts


def check_thresholds(thresholds: list[Threshold], report: Report) -> list[str]:
    """The messages of every broken threshold (empty: all passed)."""
    return [message for t in thresholds if (message := t.broken_by(report)) is not None]
