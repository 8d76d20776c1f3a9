"""``--html report.html``: one self-contained page (inline SVG, no scripts, no network).

Three plots, each on its own axes: throughput (requests and errors per second), latency
over time (p50/p90/p95/p99 per second) and the latency distribution as a percentile
spectrum of the HDR histograms, total and per request name (x: 0% ... 99.999% on a log
scale of 1/(1-p)), the way HdrHistogram's plotter shows tails. Then the thresholds with
their verdicts, the per-name and check tables, and the run's configuration and machine.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from ._report import Report, TimelinePoint

_WIDTH, _HEIGHT, _PAD = 760, 280, 48
_COLORS = {"p50": "#1f77b4", "p90": "#ff7f0e", "p95": "#9467bd", "p99": "#d62728", "rps": "#9aa0a6"}
_SPECTRUM = (0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999)


def _scale(values: Sequence[float], size: float, *, lo: float = 0.0) -> tuple[float, float]:
    hi = max(values, default=1.0)
    if hi <= lo:
        hi = lo + 1.0
    return lo, (size - 2 * _PAD) / (hi - lo)


def _polyline(xs: Sequence[float], ys: Sequence[float], color: str) -> str:
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>'


def _axes(title: str, x_label: str, y_label: str, y_max: float, x_ticks: list[tuple[float, str]]) -> list[str]:
    left, bottom, top, right = _PAD, _HEIGHT - _PAD, _PAD / 2, _WIDTH - _PAD / 2
    parts = [
        f'<text x="{_WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>',
        f'<text x="{_WIDTH / 2}" y="{_HEIGHT - 8}" text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="12" y="{_HEIGHT / 2}" transform="rotate(-90 12 {_HEIGHT / 2})" text-anchor="middle">'
        f"{html.escape(y_label)}</text>",
    ]
    for i in range(5):
        value = y_max * i / 4
        y = bottom - (bottom - _PAD) * i / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_tick(value)}</text>')
    for x, label in x_ticks:
        parts.append(
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11">{html.escape(label)}</text>'
        )
    return parts


def _tick(value: float) -> str:
    """An axis label: 1,432 rather than 1.43e+03; 0.125 stays 0.125."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _legend(names: list[str]) -> str:
    items = []
    for i, name in enumerate(names):
        x = _PAD + 10 + i * 110
        items.append(
            f'<rect x="{x}" y="30" width="12" height="12" fill="{_COLORS[name]}"/>'
            f'<text x="{x + 16}" y="41" font-size="12">{name}</text>'
        )
    return "".join(items)


def _svg_open(element_id: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{element_id}" width="{_WIDTH}" height="{_HEIGHT}" '
        'font-family="sans-serif">'
    )


def _partial(point: TimelinePoint) -> str:
    """A bar's note when its second was cut short (its height is the rate over what it covered)."""
    return "" if point.seconds >= 1.0 else f" in {point.seconds:.2f} s"


def throughput_svg(report: Report) -> str:
    """Requests and errors per second of the run, on a requests/s axis of their own."""
    points = report.timeline
    if not points:
        return "<p>No complete second was recorded.</p>"
    seconds = [p.second for p in points]
    rps_max = max(round(max(p.requests_per_s for p in points)), 1)
    _, x_factor = _scale([s + 1 for s in seconds], _WIDTH)
    bottom = _HEIGHT - _PAD
    y_factor = (bottom - _PAD) / rps_max

    def x_of(second: float) -> float:
        return _PAD + (second + 0.5) * x_factor

    parts = [_svg_open("throughput")]
    ticks = [(x_of(s), str(s)) for s in seconds[:: max(1, len(seconds) // 10)]]
    parts += _axes(f"Throughput (peak {rps_max:,} requests/s)", "second of the run", "requests/s", rps_max, ticks)
    bar_width = max(x_factor * 0.6, 1.0)
    for p in points:
        height = p.requests_per_s * y_factor
        parts.append(
            f'<rect x="{x_of(p.second) - bar_width / 2:.1f}" y="{bottom - height:.1f}" '
            f'width="{bar_width:.1f}" height="{height:.1f}" fill="{_COLORS["p50"]}" opacity="0.55">'
            f"<title>second {p.second}: {p.requests:,} requests, {p.errors:,} errors{_partial(p)}</title></rect>"
        )
    parts.append(
        _polyline([x_of(s) for s in seconds], [bottom - p.errors_per_s * y_factor for p in points], _COLORS["p99"])
    )
    parts.append(
        f'<rect x="{_PAD + 10}" y="30" width="12" height="12" fill="{_COLORS["p50"]}" opacity="0.55"/>'
        f'<text x="{_PAD + 26}" y="41" font-size="12">requests/s</text>'
        f'<rect x="{_PAD + 120}" y="30" width="12" height="12" fill="{_COLORS["p99"]}"/>'
        f'<text x="{_PAD + 136}" y="41" font-size="12">errors/s</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def timeline_svg(report: Report) -> str:
    """Latency percentiles per second of the run, on a milliseconds axis."""
    points = report.timeline
    if not points:
        return "<p>No complete second was recorded.</p>"
    seconds = [p.second for p in points]
    latency_max = max(max(p.p99_ms for p in points), 1e-3)
    _, x_factor = _scale([s + 1 for s in seconds], _WIDTH)
    _, y_factor = _scale([latency_max], _HEIGHT)
    bottom = _HEIGHT - _PAD

    def x_of(second: float) -> float:
        return _PAD + (second + 0.5) * x_factor

    parts = [_svg_open("latency-over-time")]
    ticks = [(x_of(s), str(s)) for s in seconds[:: max(1, len(seconds) // 10)]]
    parts += _axes("Latency over time", "second of the run", "latency (ms)", latency_max, ticks)
    for name, attr in (("p50", "p50_ms"), ("p90", "p90_ms"), ("p95", "p95_ms"), ("p99", "p99_ms")):
        ys = [bottom - getattr(p, attr) * y_factor for p in points]
        parts.append(_polyline([x_of(s) for s in seconds], ys, _COLORS[name]))
    parts.append(_legend(["p50", "p90", "p95", "p99"]))
    parts.append("</svg>")
    return "".join(parts)


_NAME_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def distribution_svg(report: Report) -> str:
    """The latency percentile spectrum (HDR) of the whole run and of each request name."""
    if report.histogram is None or not report.histogram.get_total_count():
        return "<p>No latency was recorded.</p>"
    curves: list[tuple[str, str, list[tuple[float, float]]]] = []
    total = [(p, report.percentile_ms(p)) for p in _SPECTRUM] + [(100.0, report.latency.max)]
    curves.append(("total", _COLORS["p99"], total))
    if len(report.by_name) > 1:
        for i, stats in enumerate(report.by_name[: len(_NAME_COLORS)]):
            if stats.histogram is not None and stats.histogram.get_total_count():
                spectrum = [(p, stats.percentile_ms(p)) for p in _SPECTRUM] + [(100.0, stats.latency.max)]
                curves.append((stats.name, _NAME_COLORS[i], spectrum))

    def x_position(percentile: float) -> float:
        # Nines on a log scale: 0% -> 0, 90% -> 1, 99% -> 2 ... 99.999% -> 5.
        return -math.log10(max(1.0 - percentile / 100.0, 1e-5))

    x_max = 5.0
    y_max = max(v for _, _, spectrum in curves for _, v in spectrum) or 1e-3
    x_factor = (_WIDTH - 2 * _PAD) / x_max
    y_factor = (_HEIGHT - 2 * _PAD) / y_max
    bottom = _HEIGHT - _PAD
    ticks = [(_PAD + i * x_factor, label) for i, label in enumerate(["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"])]
    parts = [_svg_open("spectrum")]
    parts += _axes("Latency by percentile (HDR histogram)", "percentile", "latency (ms)", y_max, ticks)
    for index, (name, color, spectrum) in enumerate(curves):
        xs = [_PAD + x_position(p) * x_factor for p, _ in spectrum]
        ys = [bottom - v * y_factor for _, v in spectrum]
        parts.append(_polyline(xs, ys, color))
        label = html.escape(name)
        for (p, v), x, y in zip(spectrum, xs, ys, strict=True):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"><title>{label} p{p:g}: '
                f"{v:.3f} ms</title></circle>"
            )
        parts.append(
            f'<rect x="{_PAD + 10}" y="{30 + 15 * index}" width="12" height="10" fill="{color}"/>'
            f'<text x="{_PAD + 26}" y="{39 + 15 * index}" font-size="11">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def names_table(report: Report) -> str:
    """One row per request name, and the total."""
    head = ("name", "requests", "requests/s", "errors", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms")
    rows = [(s.name, s.requests, s.requests_per_s, s.errors, s.latency) for s in report.by_name]
    rows.append(("total", report.requests, report.throughput, report.errors, report.latency))
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for name, count, rps, errors, lat in rows:
        cells = [html.escape(name), f"{count:,}", f"{rps:,.1f}", f"{errors:,}"]
        cells += [f"{v:.3f}" for v in (lat.p50, lat.p90, lat.p95, lat.p99, lat.max)]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def checks_table(report: Report) -> str:
    """One row per check, and the total."""
    if not report.checks:
        return "<p>No check was made.</p>"
    out = ["<table><tr><th>check</th><th>passed</th><th>failed</th><th>passed %</th></tr>"]
    for check in report.checks:
        out.append(
            f"<tr><td>{html.escape(check.name)}</td><td>{check.passed:,}</td><td>{check.failed:,}</td>"
            f"<td>{check.passed_percent:.2f}</td></tr>"
        )
    out.append(
        f"<tr><td>total</td><td>{sum(c.passed for c in report.checks):,}</td>"
        f"<td>{sum(c.failed for c in report.checks):,}</td><td>{report.checks_passed_percent:.2f}</td></tr>"
    )
    out.append("</table>")
    return "".join(out)


def thresholds_table(report: Report) -> str:
    """Every ``--fail-if`` condition with what was measured and its verdict."""
    if not report.thresholds:
        return "<p>No --fail-if condition was given.</p>"
    broken = sum(1 for t in report.thresholds if not t["passed"])
    verdict = (
        f'<p class="fail">{broken} of {len(report.thresholds)} broke</p>'
        if broken
        else f'<p class="pass">all {len(report.thresholds)} passed</p>'
    )
    out = [verdict, '<table id="thresholds"><tr><th>condition</th><th>measured</th><th>verdict</th></tr>']
    for t in report.thresholds:
        css, word = ("pass", "pass") if t["passed"] else ("fail", "FAIL")
        out.append(
            f"<tr><td>{html.escape(str(t['condition']))}</td><td>{html.escape(str(t['measured']))}</td>"
            f'<td class="{css}">{word}</td></tr>'
        )
    out.append("</table>")
    return "".join(out)


def _key_values(data: dict[str, object], element_id: str) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in data.items()
        if v is not None
    )
    return f'<table id="{element_id}" class="kv">{rows}</table>'


def to_html(report: Report) -> str:
    """The whole report as a standalone HTML page (no script, no external asset)."""
    summary = html.escape(report.to_text())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>procly loadtest: {html.escape(report.target)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:820px}}pre{{background:#f6f8fa;padding:1em}}
td,th{{padding:2px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
table.kv th{{text-align:left;font-weight:normal;color:#555}}table.kv td{{text-align:left}}
.pass{{color:#1b7f3b;font-weight:bold}}.fail{{color:#b00020;font-weight:bold}}</style>
</head><body>
<h1>procly loadtest</h1>
<pre>{summary}</pre>
<h2>Thresholds</h2>
{thresholds_table(report)}
<h2>Requests by name</h2>
{names_table(report)}
<h2>Checks</h2>
{checks_table(report)}
<h2>Throughput</h2>
{throughput_svg(report)}
<h2>Latency over time</h2>
{timeline_svg(report)}
<h2>Latency distribution</h2>
{distribution_svg(report)}
<h2>Configuration</h2>
{_key_values(report.configuration, "configuration")}
<h2>Machine</h2>
{_key_values(report.machine, "machine")}
</body></html>
"""
