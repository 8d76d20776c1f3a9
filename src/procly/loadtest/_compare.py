"""``procly loadtest compare BASELINE.json NEW.json``: the CI gate between two runs.

For the whole run and for every request name found in both reports it prints the
change of p50, p95, p99, requests/s and error rate, and decides whether NEW regressed.

Latency: a percentile regresses when it grew by more than ``--tolerance`` (relative)
*and* the growth is statistically significant. Both reports carry their HDR histograms
(``histogram_hdr``), so the test runs on the full distributions, not on summaries:

* per percentile q, a two-proportion z-test: t = BASELINE's q-th percentile; under the
  null hypothesis (same distribution) the share of NEW's samples above t equals
  BASELINE's share above t. One-sided (NEW slower), significant when p < ``--alpha``.
  It looks at the tail the percentile is about, which a whole-distribution test misses.
* over the whole distribution, the Mann-Whitney U test (ranks with ties, tie-corrected
  normal approximation), reported with its effect size P(NEW > BASELINE) + P(=)/2:
  0.5 is no shift. It is informative; it does not by itself fail the gate.

Throughput regresses when NEW's requests/s fell by more than ``--tolerance``; the error
rate when it rose by more than ``--error-tolerance`` percentage points (default 0.1).
No significance test applies to those two: each report has one figure.

``--gate`` narrows what can fail (e.g. ``p50,p95,errors`` where the tail is noisy).

Exit status: 0 no regression; 1 a regression; 2 a file that cannot be read or is not a
``procly loadtest --json`` report.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2
#: The percentiles the gate compares.
GATED = (50.0, 95.0, 99.0)
#: What can fail the gate (``--gate``): the three percentiles, throughput, error rate.
GATES = frozenset({"p50", "p95", "p99", "rps", "errors"})


class CompareError(ValueError):
    """A report file cannot be read or is not a ``procly loadtest --json`` report."""


@dataclass
class Distribution:
    """A latency histogram as sorted (value_us, count) pairs."""

    values: list[tuple[int, int]]

    @property
    def total(self) -> int:
        return sum(count for _, count in self.values)

    @classmethod
    def decode(cls, encoded: str) -> Distribution:
        """Decode hdrh's base64 ``encode()`` form.

        Raises:
            CompareError: not an HDR histogram.
        """
        from hdrh.histogram import HdrHistogram

        try:
            hist = HdrHistogram.decode(encoded.encode("ascii"))
        except Exception as exc:  # hdrh raises several kinds on corrupt input
            raise CompareError(f"histogram_hdr cannot be decoded ({type(exc).__name__}: {exc})") from None
        from ._stats import recorded_values

        return cls(recorded_values(hist, highest=True))

    def percentile_us(self, percentile: float) -> int:
        """The value at ``percentile``, by the rank rule of HdrHistogram (the report's
        percentiles): the smallest recorded value with the nearest whole number of samples
        to ``percentile`` % of them (at least one) at or below it."""
        total = self.total
        if not total:
            return 0
        wanted = max(1, int(min(percentile, 100.0) * total / 100.0 + 0.5))
        seen = 0
        for value, count in self.values:
            seen += count
            if seen >= wanted:
                return value
        return self.values[-1][0]

    def count_above(self, threshold: int) -> int:
        return sum(count for value, count in self.values if value > threshold)


def _normal_sf(z: float) -> float:
    """P(Z > z) of the standard normal distribution."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def proportion_test(base: Distribution, new: Distribution, percentile: float) -> float:
    """One-sided p-value that NEW has more samples above BASELINE's ``percentile`` than BASELINE has."""
    threshold = base.percentile_us(percentile)
    n1, n2 = base.total, new.total
    if not n1 or not n2:
        return 1.0
    x1, x2 = base.count_above(threshold), new.count_above(threshold)
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return 1.0 if x2 / n2 <= x1 / n1 else 0.0
    return _normal_sf((x2 / n2 - x1 / n1) / math.sqrt(variance))


def mann_whitney(base: Distribution, new: Distribution) -> tuple[float, float]:
    """The Mann-Whitney U test of NEW against BASELINE on binned samples.

    Returns ``(effect, p)``: effect = P(new > base) + P(new == base) / 2 (0.5: no shift),
    p = the two-sided p-value (normal approximation with the tie correction).
    """
    n1, n2 = base.total, new.total
    if not n1 or not n2:
        return 0.5, 1.0
    counts: dict[int, list[int]] = {}
    for value, count in base.values:
        counts.setdefault(value, [0, 0])[0] += count
    for value, count in new.values:
        counts.setdefault(value, [0, 0])[1] += count
    rank_sum_new = 0.0
    ties = 0.0
    below = 0
    for value in sorted(counts):
        c_base, c_new = counts[value]
        tied = c_base + c_new
        mid_rank = below + (tied + 1) / 2.0
        rank_sum_new += c_new * mid_rank
        ties += tied**3 - tied
        below += tied
    u_new = rank_sum_new - n2 * (n2 + 1) / 2.0
    effect = u_new / (n1 * n2)
    n = n1 + n2
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return effect, 1.0
    z = (u_new - n1 * n2 / 2.0) / math.sqrt(variance)
    return effect, min(1.0, 2 * _normal_sf(abs(z)))


@dataclass
class Figures:
    """What the comparison reads of one report (the whole run, or one name)."""

    requests: int
    requests_per_s: float
    error_rate_percent: float
    percentiles_ms: dict[float, float]
    distribution: Distribution | None


@dataclass
class Row:
    """One compared figure."""

    name: str
    metric: str
    base: float
    new: float
    unit: str
    p_value: float | None = None
    regressed: bool = False
    improved: bool = False

    @property
    def change_percent(self) -> float | None:
        if self.base == 0:
            return None if self.new == 0 else math.inf
        return 100.0 * (self.new - self.base) / self.base


@dataclass
class Comparison:
    """The whole comparison: rows, the U tests, the names found in one report only."""

    tolerance: float
    error_tolerance_pp: float
    alpha: float
    rows: list[Row] = field(default_factory=list)
    shifts: dict[str, tuple[float, float]] = field(default_factory=dict)
    only_in_base: list[str] = field(default_factory=list)
    only_in_new: list[str] = field(default_factory=list)
    base_label: str = ""
    new_label: str = ""

    @property
    def regressions(self) -> list[Row]:
        return [row for row in self.rows if row.regressed]

    def to_text(self) -> str:
        lines = [
            f"procly loadtest compare {self.base_label} -> {self.new_label}",
            f"  tolerance {self.tolerance:.1%}, error rate +{self.error_tolerance_pp:g} pp, alpha {self.alpha:g}",
            "",
        ]
        lines.append(f"  {'name':<28} {'metric':<12} {'baseline':>12} {'new':>12} {'change':>9} {'p':>9}  verdict")
        for row in self.rows:
            change = row.change_percent
            shown = "" if change is None else ("+inf" if math.isinf(change) else f"{change:+.1f}%")
            p = "" if row.p_value is None else f"{row.p_value:.2g}"
            verdict = "REGRESSION" if row.regressed else ("better" if row.improved else "ok")
            lines.append(
                f"  {row.name[:28]:<28} {row.metric:<12} {row.base:>12.3f} {row.new:>12.3f} {shown:>9} "
                f"{p:>9}  {verdict}"
            )
        if self.shifts:
            lines += ["", "  Mann-Whitney U (whole latency distribution; effect 0.5 = no shift, > 0.5 = new slower):"]
            for name, (effect, p) in self.shifts.items():
                lines.append(f"    {name[:40]:<40} effect {effect:.3f}  p {p:.2g}")
        for label, names in (("only in the baseline", self.only_in_base), ("only in the new run", self.only_in_new)):
            if names:
                lines.append(f"  {label}: {', '.join(names)}")
        count = len(self.regressions)
        lines += ["", f"  {count} regression(s)" if count else "  no regression"]
        return "\n".join(lines)

    def to_html(self) -> str:
        rows = []
        for row in self.rows:
            change = row.change_percent
            shown = "" if change is None else ("+inf" if math.isinf(change) else f"{change:+.1f}%")
            verdict = "REGRESSION" if row.regressed else ("better" if row.improved else "ok")
            css = "bad" if row.regressed else ("good" if row.improved else "")
            p = "" if row.p_value is None else f"{row.p_value:.2g}"
            rows.append(
                f'<tr class="{css}"><td>{html.escape(row.name)}</td><td>{row.metric}</td>'
                f"<td>{row.base:.3f}</td><td>{row.new:.3f}</td><td>{shown}</td><td>{p}</td>"
                f"<td>{verdict}</td></tr>"
            )
        shifts = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{effect:.3f}</td><td>{p:.2g}</td></tr>"
            for name, (effect, p) in self.shifts.items()
        )
        count = len(self.regressions)
        verdict = f'<p class="bad">{count} regression(s)</p>' if count else '<p class="good">no regression</p>'
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>procly loadtest compare</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:980px}}td,th{{padding:2px 8px;text-align:right}}
td:first-child,th:first-child,td:nth-child(2){{text-align:left}}.bad{{color:#b00020;font-weight:bold}}
.good{{color:#1b7f3b}}table{{border-collapse:collapse}}tr{{border-bottom:1px solid #eee}}</style></head><body>
<h1>procly loadtest compare</h1>
<p>baseline <code>{html.escape(self.base_label)}</code>, new <code>{html.escape(self.new_label)}</code>;
tolerance {self.tolerance:.1%}, error rate +{self.error_tolerance_pp:g} percentage points, alpha {self.alpha:g}.</p>
{verdict}
<table id="rows"><tr><th>name</th><th>metric</th><th>baseline</th><th>new</th><th>change</th><th>p</th>
<th>verdict</th></tr>{"".join(rows)}</table>
<h2>Whole distribution (Mann-Whitney U)</h2>
<p>effect = P(new &gt; baseline) + P(tie)/2: 0.5 is no shift, above 0.5 the new run is slower.</p>
<table><tr><th>name</th><th>effect</th><th>p</th></tr>{shifts}</table>
<p>A latency percentile regresses when it grew by more than the tolerance and a one-sided two-proportion
z-test (share of samples above the baseline's percentile) gives p &lt; alpha.</p>
</body></html>
"""


def load_report(path: str) -> dict[str, Any]:
    """Read a ``procly loadtest --json`` report.

    Raises:
        CompareError: the file cannot be read, is not JSON, or is not such a report.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CompareError(f"{path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not all(key in data for key in ("requests", "requests_per_s", "by_name")):
        raise CompareError(f"{path}: not a procly loadtest --json report (no requests, requests_per_s, by_name)")
    return data


def _figures(data: dict[str, Any], where: str) -> Figures:
    try:
        encoded = data.get("histogram_hdr")
        distribution = Distribution.decode(encoded) if encoded else None
        if distribution is not None:
            percentiles = {p: distribution.percentile_us(p) / 1000.0 for p in GATED}
        else:
            percentiles = {p: float(data[f"latency_p{p:g}_ms"]) for p in GATED}
        rate = data.get("error_rate_percent")
        if rate is None:  # per-name entries: errors over attempts as the report counts them
            errors, requests = int(data["errors"]), int(data["requests"])
            from ._stats import http_error_count

            attempts = requests + errors - http_error_count(data.get("error_kinds", {}))
            rate = 100.0 * errors / attempts if attempts else 0.0
        return Figures(
            requests=int(data["requests"]),
            requests_per_s=float(data["requests_per_s"]),
            error_rate_percent=float(rate),
            percentiles_ms=percentiles,
            distribution=distribution,
        )
    except CompareError as exc:
        raise CompareError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CompareError(f"{where}: malformed report ({type(exc).__name__}: {exc})") from None


def compare(
    base: dict[str, Any],
    new: dict[str, Any],
    *,
    tolerance: float = 0.10,
    error_tolerance_pp: float = 0.1,
    alpha: float = 0.01,
    base_label: str = "baseline",
    new_label: str = "new",
    gate: frozenset[str] = GATES,
) -> Comparison:
    """Compare two reports (``Report.to_dict()`` or the ``--json`` files' contents).

    Only the figures named in ``gate`` (of :data:`GATES`) can be regressions; the others
    are shown all the same.

    Raises:
        CompareError: a report lacks the figures compared, or a histogram is corrupt.
    """
    result = Comparison(
        tolerance=tolerance,
        error_tolerance_pp=error_tolerance_pp,
        alpha=alpha,
        base_label=base_label,
        new_label=new_label,
    )
    pairs = [("total", _figures(base, base_label), _figures(new, new_label))]
    base_names = {entry["name"]: entry for entry in base["by_name"]}
    new_names = {entry["name"]: entry for entry in new["by_name"]}
    for name in base_names:
        if name in new_names:
            pairs.append(
                (
                    name,
                    _figures(base_names[name], f"{base_label} {name}"),
                    _figures(new_names[name], f"{new_label} {name}"),
                )
            )
    result.only_in_base = [n for n in base_names if n not in new_names]
    result.only_in_new = [n for n in new_names if n not in base_names]
    for name, b, n in pairs:
        both = b.distribution is not None and n.distribution is not None
        for p in GATED:
            row = Row(name, f"p{p:g} ms", b.percentiles_ms[p], n.percentiles_ms[p], "ms")
            if both:
                assert b.distribution is not None and n.distribution is not None
                row.p_value = proportion_test(b.distribution, n.distribution, p)
                significant = row.p_value < alpha
            else:
                significant = True  # no histogram: the tolerance alone decides
            row.regressed = f"p{p:g}" in gate and significant and row.new > row.base * (1 + tolerance)
            row.improved = row.new < row.base * (1 - tolerance)
            result.rows.append(row)
        rps = Row(name, "requests/s", b.requests_per_s, n.requests_per_s, "/s")
        rps.regressed = "rps" in gate and rps.new < rps.base * (1 - tolerance)
        rps.improved = rps.new > rps.base * (1 + tolerance)
        errors = Row(name, "errors %", b.error_rate_percent, n.error_rate_percent, "%")
        errors.regressed = "errors" in gate and errors.new - errors.base > error_tolerance_pp
        errors.improved = errors.base - errors.new > error_tolerance_pp
        result.rows += [rps, errors]
        if both:
            assert b.distribution is not None and n.distribution is not None
            result.shifts[name] = mann_whitney(b.distribution, n.distribution)
    return result


def parse_fraction(text: str, option: str) -> float:
    """``10%`` or ``0.1`` as 0.1.

    Raises:
        ValueError: not a non-negative number or percentage.
    """
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"{option} wants a percentage such as 10% (or a fraction such as 0.1), got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{option} must be a non-negative finite number, got {text!r}")
    return value


def main(argv: list[str]) -> int:
    """``procly loadtest compare``'s entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="procly loadtest compare",
        description="Compare two 'procly loadtest --json' reports; exit 1 on a regression beyond the tolerance.",
    )
    parser.add_argument("baseline", help="the reference report (JSON)")
    parser.add_argument("new", help="the report to judge (JSON)")
    parser.add_argument(
        "--tolerance",
        default="10%",
        help="allowed relative growth of p50/p95/p99 and fall of requests/s (default 10%%)",
    )
    parser.add_argument(
        "--error-tolerance", default="0.1", help="allowed rise of the error rate in percentage points (default 0.1)"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.01, help="significance level of the latency tests (default 0.01)"
    )
    parser.add_argument(
        "--gate",
        default="p50,p95,p99,rps,errors",
        help="which figures can fail the comparison, of p50,p95,p99,rps,errors (default all; "
        "e.g. p50,p95,errors on a machine whose tail is noisy)",
    )
    parser.add_argument("--html", metavar="FILE", help="also write the comparison as an HTML page")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON (- for standard output)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_BAD_INPUT if exc.code else EXIT_OK
    try:
        import hdrh  # noqa: F401
    except ImportError as exc:
        print(
            f"procly loadtest compare needs the loadtest extra: pip install 'procly[loadtest]' ({exc})", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    try:
        tolerance = parse_fraction(args.tolerance, "--tolerance")
        error_tolerance = 100.0 * parse_fraction(args.error_tolerance.strip().rstrip("%") + "%", "--error-tolerance")
        gate = frozenset(part.strip().lower() for part in args.gate.split(",") if part.strip())
        if not gate or not gate <= GATES:
            raise ValueError(f"--gate takes some of {','.join(sorted(GATES))}, got {args.gate!r}")
        if not 0 < args.alpha < 1:
            raise ValueError(f"--alpha must be between 0 and 1, got {args.alpha}")
        result = compare(
            load_report(args.baseline),
            load_report(args.new),
            tolerance=tolerance,
            error_tolerance_pp=error_tolerance,
            alpha=args.alpha,
            base_label=args.baseline,
            new_label=args.new,
            gate=gate,
        )
    except (CompareError, ValueError) as exc:
        print(f"procly loadtest compare: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json != "-":
        print(result.to_text())
    if args.html:
        Path(args.html).write_text(result.to_html(), encoding="utf-8")
    if args.json:
        data = {
            "baseline": args.baseline,
            "new": args.new,
            "tolerance_percent": tolerance * 100,
            "error_tolerance_percent": error_tolerance,
            "alpha": args.alpha,
            "regressions": len(result.regressions),
            "rows": [
                {
                    "name": r.name,
                    "metric": r.metric,
                    "baseline": r.base,
                    "new": r.new,
                    "p_value": r.p_value,
                    "regressed": r.regressed,
                    "improved": r.improved,
                }
                for r in result.rows
            ],
            "mann_whitney": {name: {"effect": e, "p_value": p} for name, (e, p) in result.shifts.items()},
        }
        text = json.dumps(data, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text, encoding="utf-8")
    return EXIT_REGRESSION if result.regressions else EXIT_OK
