"""procly loadtest compare: the CI gate between two --json reports (synthetic histograms, one real run)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

hdrh = pytest.importorskip("hdrh.histogram")

from procly.loadtest._compare import Distribution, compare, main, mann_whitney, proportion_test  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def histogram(samples_us):
    hist = hdrh.HdrHistogram(1, 60_000_000, 3)
    for value in samples_us:
        hist.record_value(max(1, int(value)))
    return hist


def report(samples_us, rps=1000.0, errors=0, names=("GET /",)):
    hist = histogram(samples_us)
    encoded = hist.encode().decode("ascii")
    requests = len(samples_us)
    entry = {
        "requests": requests,
        "errors": errors,
        "requests_per_s": rps,
        "latency_p50_ms": hist.get_value_at_percentile(50) / 1000,
        "latency_p95_ms": hist.get_value_at_percentile(95) / 1000,
        "latency_p99_ms": hist.get_value_at_percentile(99) / 1000,
        "histogram_hdr": encoded,
        "error_kinds": {},
    }
    data = dict(entry, error_rate_percent=100.0 * errors / (requests + errors) if requests + errors else 0.0)
    data["by_name"] = [dict(entry, name=name) for name in names]
    return data


def lognormal(n, median_us=1000.0, sigma=0.5, seed=1):
    rng = random.Random(seed)
    return [median_us * math.exp(rng.gauss(0, sigma)) for _ in range(n)]


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_same_distribution_passes_and_a_slower_one_fails(tmp_path, capsys):
    base = write(tmp_path, "base.json", report(lognormal(20_000, seed=1)))
    same = write(tmp_path, "same.json", report(lognormal(20_000, seed=2)))
    slower = write(tmp_path, "slower.json", report(lognormal(20_000, median_us=1300, seed=3)))
    assert main([base, same, "--tolerance", "10%"]) == 0
    assert "no regression" in capsys.readouterr().out
    assert main([base, slower, "--tolerance", "10%"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "p50 ms" in out
    # 30% slower passes a 50% tolerance.
    assert main([base, slower, "--tolerance", "50%"]) == 0


def test_a_tail_regression_is_found_where_the_median_did_not_move(tmp_path, capsys):
    rng = random.Random(5)
    body = lognormal(20_000, seed=4)
    tail = [v * 3 if rng.random() < 0.03 else v for v in body]  # 3 % of the requests three times slower
    base = write(tmp_path, "base.json", report(lognormal(20_000, seed=6)))
    new = write(tmp_path, "new.json", report(tail))
    assert main([base, new, "--json", "-"]) == 1
    data = json.loads(capsys.readouterr().out)
    verdicts = {row["metric"]: row["regressed"] for row in data["rows"] if row["name"] == "total"}
    assert verdicts["p99 ms"] and not verdicts["p50 ms"]


def test_too_few_samples_are_not_significant(tmp_path):
    # 20 requests: p99 is one sample, its growth is not evidence.
    result = compare(report(lognormal(20, seed=7)), report(lognormal(20, seed=8)), tolerance=0.0)
    latency = [row for row in result.rows if row.metric.startswith("p")]
    assert latency and all(row.p_value is not None and not row.regressed for row in latency)


def test_throughput_and_error_rate_regressions(tmp_path, capsys):
    samples = lognormal(5_000, seed=9)
    base = write(tmp_path, "base.json", report(samples, rps=1000))
    slow = write(tmp_path, "slow.json", report(samples, rps=850))
    failing = write(tmp_path, "failing.json", report(samples, rps=1000, errors=50))
    assert main([base, slow]) == 1 and "requests/s" in capsys.readouterr().out
    assert main([base, slow, "--tolerance", "20%"]) == 0
    assert main([base, failing]) == 1 and "errors %" in capsys.readouterr().out
    assert main([base, failing, "--error-tolerance", "2"]) == 0


def test_gate_narrows_what_fails(tmp_path, capsys):
    base = write(tmp_path, "base.json", report(lognormal(20_000, seed=1), rps=1000))
    slower = write(tmp_path, "slower.json", report(lognormal(20_000, median_us=1500, seed=3), rps=1000))
    assert main([base, slower, "--gate", "rps,errors"]) == 0
    assert "REGRESSION" not in capsys.readouterr().out
    assert main([base, slower, "--gate", "p95"]) == 1
    assert main([base, slower, "--gate", "p42"]) == 2 and "--gate" in capsys.readouterr().err


def test_names_are_compared_one_by_one(tmp_path, capsys):
    base = write(tmp_path, "base.json", report(lognormal(5_000), names=("login", "home")))
    new = write(tmp_path, "new.json", report(lognormal(5_000), names=("login", "search")))
    assert main([base, new]) == 0
    out = capsys.readouterr().out
    assert "only in the baseline: home" in out and "only in the new run: search" in out
    assert " login " in out


def test_bad_input_exits_2(tmp_path, capsys):
    good = write(tmp_path, "good.json", report(lognormal(100)))
    not_json = tmp_path / "broken.json"
    not_json.write_text("{nope")
    other = write(tmp_path, "other.json", {"hello": 1})
    corrupt = report(lognormal(100))
    corrupt["histogram_hdr"] = "bm90IGFuIGhkciBoaXN0b2dyYW0="
    corrupt_path = write(tmp_path, "corrupt.json", corrupt)
    for bad in (str(tmp_path / "missing.json"), str(not_json), other, corrupt_path):
        assert main([good, bad]) == 2, bad
        assert "procly loadtest compare:" in capsys.readouterr().err
    assert main([good, good, "--tolerance", "ten"]) == 2
    assert main([good]) == 2


def test_html_page(tmp_path):
    base = write(tmp_path, "base.json", report(lognormal(5_000, seed=1)))
    new = write(tmp_path, "new.json", report(lognormal(5_000, median_us=2000, seed=2)))
    page = tmp_path / "compare.html"
    assert main([base, new, "--html", str(page)]) == 1
    text = page.read_text()
    assert "REGRESSION" in text and "Mann-Whitney" in text and "<script" not in text


def test_mann_whitney_matches_the_pairwise_definition():
    rng = random.Random(11)
    a = [rng.choice([100, 200, 300, 400]) for _ in range(60)]
    b = [rng.choice([200, 300, 400, 500]) for _ in range(50)]
    greater = sum(1 for x in b for y in a if x > y) + 0.5 * sum(1 for x in b for y in a if x == y)
    effect, p = mann_whitney(
        Distribution.decode(histogram(a).encode().decode()), Distribution.decode(histogram(b).encode().decode())
    )
    assert effect == pytest.approx(greater / (len(a) * len(b)), abs=1e-9)
    assert p < 0.01
    same, p_same = mann_whitney(
        Distribution.decode(histogram(a).encode().decode()), Distribution.decode(histogram(a).encode().decode())
    )
    assert same == pytest.approx(0.5) and p_same == pytest.approx(1.0)


def test_proportion_test_is_one_sided():
    fast = Distribution.decode(histogram(lognormal(5_000, seed=1)).encode().decode())
    slow = Distribution.decode(histogram(lognormal(5_000, median_us=1500, seed=2)).encode().decode())
    assert proportion_test(fast, slow, 95) < 1e-6
    assert proportion_test(slow, fast, 95) > 0.5


def test_real_reports_carry_histograms_per_name_and_compare_to_themselves(tmp_path):
    path = tmp_path / "run.json"
    run = subprocess.run(
        [sys.executable, "-m", "procly.cli", "loadtest", "-d", "1", "-p", "1", "-c", "4", "-q", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(path.read_text())
    assert data["histogram_hdr"] and data["by_name"][0]["histogram_hdr"]
    out = subprocess.run(
        [sys.executable, "-m", "procly.cli", "loadtest", "compare", str(path), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no regression" in out.stdout and "GET /" in out.stdout


@pytest.mark.parametrize("samples", [range(1000, 12000, 1000), range(100, 2100, 100), [5000] * 3 + [9000]])
def test_percentiles_match_the_reports_own(samples):
    # compare reads the baseline's percentiles from its histogram: they must be the ones the
    # report printed (HdrHistogram's rank rule), or a gate moves with the rounding.
    hist = histogram(samples)
    distribution = Distribution.decode(hist.encode().decode("ascii"))
    for percentile in (1, 10, 50, 90, 95, 99, 99.9, 100):
        assert distribution.percentile_us(percentile) == hist.get_value_at_percentile(percentile), percentile
