"""procly loadtest --prometheus and --web: the live views, scraped and rendered while a run lasts.

Every server binds 127.0.0.1; every load run lasts 3 s at most; the dashboard is checked in a
real headless Chromium (Debian's package, installed here when missing and possible).
"""

from __future__ import annotations

import html
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("hdrh")

from procly.loadtest._live import LiveState, parse_address, render_metrics  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SCENARIO = """\
from procly.loadtest import flow


@flow
async def browse(user):
    r = await user.get("/", name="home")
    user.check(r, "home ok", status=200)
    r = await user.get("/status/404", name="missing")
    user.check(r, "found", status=200)
    await user.think(0.005)
"""


class LiveRun:
    """``procly loadtest`` in a child process, its standard error read line by line."""

    def __init__(self, tmp_path, *options: str) -> None:
        scenario = tmp_path / "scenario.py"
        scenario.write_text(SCENARIO)
        self.json_path = tmp_path / "report.json"
        self.html_path = tmp_path / "report.html"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "procly.cli",
                "loadtest",
                "-f",
                str(scenario),
                "-p",
                "1",
                *(() if "--stages" in options else ("-u", "4")),  # stages set the users themselves
                "-q",
                "--json",
                str(self.json_path),
                "--html",
                str(self.html_path),
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._out: list[str] = []
        self._out_reader = threading.Thread(target=lambda: self._out.extend(self.proc.stdout), daemon=True)
        self._out_reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def url(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            match = re.search(pattern + r" (http://\S+)", line)
            if match:
                return match.group(1)
        raise AssertionError(f"no {pattern!r} line; stderr: {''.join(self.stderr)}")

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        self._out_reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code

    def end_linger(self) -> None:
        """Once the reports are written and the dashboard lingers, end it with Ctrl-C."""
        wait_for(
            lambda: any("stays up" in line for line in self.stderr) or self.proc.poll() is not None,
            60,
            "the dashboard's linger",
        )
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish(10)


def get(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns a true value (and return it), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)  # polling a remote condition, not synchronising threads of ours


def samples(families) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


# --- addresses and the text format ------------------------------------------------------------


def test_addresses_default_to_loopback_and_any_port():
    assert parse_address("", "--web") == ("127.0.0.1", 0)
    assert parse_address(":9464", "--prometheus") == ("127.0.0.1", 9464)
    assert parse_address("9464", "--prometheus") == ("127.0.0.1", 9464)
    assert parse_address("0.0.0.0:80", "--web") == ("0.0.0.0", 80)
    assert parse_address("[::1]:0", "--web") == ("::1", 0)
    for bad in ("host:port", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="--web"):
            parse_address(bad, "--web")


def test_metrics_text_parses_in_both_formats_with_awkward_names():
    parser = pytest.importorskip("prometheus_client.parser")
    openmetrics = pytest.importorskip("prometheus_client.openmetrics.parser")
    snapshot = {
        "names": [
            {
                "name": 'GET /a "quoted"\\ \nname',
                "requests": 3,
                "errors": 1,
                "buckets": [0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3],
                "requests_timed": 3,
                "sum_s": 0.02,
            }
        ],
        "checks": [{"name": "ok", "passed": 2, "failed": 1}],
        "users": 7,
        "elapsed_s": 1.5,
        "running": True,
    }
    for families in (
        list(openmetrics.text_string_to_metric_families(render_metrics(snapshot, True))),
        list(parser.text_string_to_metric_families(render_metrics(snapshot, False))),
    ):
        values = samples(families)
        name = (("name", 'GET /a "quoted"\\ \nname'),)
        assert values[("procly_loadtest_requests_total", name)] == 3
        assert values[("procly_loadtest_errors_total", name)] == 1
        assert values[("procly_loadtest_request_duration_seconds_count", name)] == 3
        assert values[("procly_loadtest_request_duration_seconds_bucket", (("le", "+Inf"), *name))] == 3
        assert values[("procly_loadtest_checks_total", (("check", "ok"), ("result", "fail")))] == 1
        assert values[("procly_loadtest_active_users", ())] == 7


# --- --prometheus, scraped during a run ----------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_prometheus_endpoint_is_scraped_during_the_run(tmp_path, method):
    openmetrics = pytest.importorskip("prometheus_client.openmetrics.parser")
    parser = pytest.importorskip("prometheus_client.parser")
    run = LiveRun(tmp_path, "-d", "3", "--prometheus", "127.0.0.1:0", "--start-method", method)
    try:
        base = run.url("OpenMetrics at")
        assert base.startswith("http://127.0.0.1:") and base.endswith("/metrics")

        def scrape():
            content_type, text = get(base, accept="application/openmetrics-text; version=1.0.0")
            assert content_type.startswith("application/openmetrics-text")
            assert text.endswith("# EOF\n")
            return samples(openmetrics.text_string_to_metric_families(text))

        home = (("name", "home"),)
        first = wait_for(
            lambda: (s := scrape()).get(("procly_loadtest_requests_total", home)) and s, 30, "requests in the metrics"
        )
        second = wait_for(
            lambda: (
                (s := scrape())[("procly_loadtest_requests_total", home)]
                > first[("procly_loadtest_requests_total", home)]
                and s
            ),
            30,
            "the counters to grow",
        )
        _, plain = get(base)  # Prometheus' own text format when OpenMetrics is not asked for
        plain_values = samples(parser.text_string_to_metric_families(plain))
        assert plain_values[("procly_loadtest_requests_total", home)] >= first[("procly_loadtest_requests_total", home)]
        assert run.finish() == 0, "".join(run.stderr)
    finally:
        run.stop()
    for name in ("home", "missing"):
        label = (("name", name),)
        buckets = sorted(
            (float(dict(k[1])["le"]), v)
            for k, v in second.items()
            if k[0] == "procly_loadtest_request_duration_seconds_bucket" and dict(k[1])["name"] == name
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert buckets[-1] == (float("inf"), second[("procly_loadtest_request_duration_seconds_count", label)])
        assert second[("procly_loadtest_request_duration_seconds_sum", label)] > 0
    assert second[("procly_loadtest_errors_total", (("name", "missing"),))] > 0  # 404s are errors
    assert second[("procly_loadtest_errors_total", (("name", "home"),))] == 0
    assert second[("procly_loadtest_checks_total", (("check", "home ok"), ("result", "pass")))] > 0
    assert second[("procly_loadtest_checks_total", (("check", "found"), ("result", "fail")))] > 0
    assert second[("procly_loadtest_active_users", ())] == 4
    assert second[("procly_loadtest_running", ())] == 1
    report = json.loads(run.json_path.read_text())
    final = {entry["name"]: entry["requests"] for entry in report["by_name"]}
    assert final["home"] >= second[("procly_loadtest_requests_total", (("name", "home"),))]
    host, port = base[len("http://") :].split("/")[0].split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass  # the exporter is gone with the run


def test_final_report_has_axes_thresholds_configuration_and_machine(tmp_path):
    run = LiveRun(
        tmp_path, "-d", "1", "--fail-if", "p99>10s", "--fail-if", "checks<99%", "--fail-if", "p95{name=home}>10s"
    )
    try:
        assert run.finish() == 1, "".join(run.stderr)
    finally:
        run.stop()
    report = json.loads(run.json_path.read_text())
    verdicts = report["thresholds"]
    assert verdicts == [
        {"condition": "p99>10s", "passed": True, "measured": verdicts[0]["measured"],
         "measured_ms": report["latency_p99_ms"]},
        {"condition": "checks<99%", "passed": False, "measured": verdicts[1]["measured"],
         "measured_percent": report["checks_passed_percent"]},
        {"condition": "p95{name=home}>10s", "passed": True, "measured": verdicts[2]["measured"],
         "measured_ms": verdicts[2]["measured_ms"]},
    ]  # fmt: skip
    assert verdicts[1]["measured"].startswith("checks = ") and 0 < verdicts[2]["measured_ms"] < 10_000
    config, machine = report["configuration"], report["machine"]
    assert config["mode"] == "flows" and config["users"] == 4 and config["processes"] == 1
    assert config["data_order"] == "round-robin" and "connections" not in config
    assert config["duration_s"] == 1.0 and "browse" in config["scenario"]
    assert machine["cpus"] >= 1 and machine["python"].split()[1] == ".".join(map(str, sys.version_info[:3]))
    assert all(entry["histogram_hdr"] for entry in report["by_name"])
    page = run.html_path.read_text()
    svgs = dict(re.findall(r'<svg[^>]*id="([^"]+)".*?>(.*?)</svg>', page, flags=re.S))
    assert set(svgs) == {"throughput", "latency-over-time", "spectrum"}
    assert "requests/s" in svgs["throughput"] and "latency (ms)" not in svgs["throughput"]
    assert "latency (ms)" in svgs["latency-over-time"]
    assert ">home<" in svgs["spectrum"] and ">missing<" in svgs["spectrum"]  # a curve per name
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td class=\"(pass|fail)\">", page)
    assert [(html.unescape(c), v) for c, _, v in rows] == [
        ("p99>10s", "pass"),
        ("checks<99%", "fail"),
        ("p95{name=home}>10s", "pass"),
    ]
    assert "1 of 3 broke" in page and machine["host"] in page and "<script" not in page


def test_active_users_are_what_the_workers_run(tmp_path):
    run = LiveRun(tmp_path, "--stages", "1s:6,1.5s:6", "-p", "2", "--web", "--web-linger", "60")
    seen: list[int] = []
    try:
        url = run.url("live dashboard at")

        def ended():
            data = json.loads(get(url + "data.json")[1])
            if data["running"]:
                seen.append(data["users"])
            return data["started"] and not data["running"]

        wait_for(ended, 60, "the end of the run", interval=0.2)
        final = json.loads(get(url + "data.json")[1])
        run.end_linger()
        assert run.finish() == 0, "".join(run.stderr)
    finally:
        run.stop()
    assert seen and max(seen) == 6 and all(0 <= users <= 6 for users in seen)
    assert final["users"] == 0 and max(point["users"] for point in final["series"]) == 6


def test_web_followed_by_a_url_tests_that_url():
    from procly.loadtest import EmbeddedTarget

    with EmbeddedTarget() as target:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "procly.cli",
                "loadtest",
                "-q",
                "-p",
                "1",
                "-c",
                "2",
                "-n",
                "50",
                "--web-linger",
                "0",
                "--web",
                target.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr
    assert "live dashboard at http://127.0.0.1:" in out.stderr and "built-in target" not in out.stderr
    assert target.url in out.stdout


def test_bad_live_options_exit_2():
    for option in (["--web=127.0.0.1:99999"], ["--prometheus", "x:y"], ["--web-linger", "soon", "--web"]):
        out = subprocess.run(
            [sys.executable, "-m", "procly.cli", "loadtest", "-n", "10", *option],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, (option, out.stderr)
        assert "procly loadtest:" in out.stderr


def test_live_state_follows_a_tally_and_the_final_report():
    from procly.loadtest import LoadTestConfig
    from procly.loadtest._runner import Tally
    from procly.loadtest._stats import Interval, new_histogram

    config = LoadTestConfig(url="http://127.0.0.1:1/", processes=1, connections=3, duration=2.0)
    state = LiveState(config)
    tally = Tally(config)
    tally.measure_start = time.time() - 2.5
    for second in range(2):
        hist = new_histogram()
        for value in (100, 200, 300, 4000):
            hist.record_value(value)
        interval = Interval(requests=4, statuses={200: 4}, histogram=hist)
        interval.by_name["GET /"] = interval.copy_counts()
        tally.add("tick", tally.measure_start + second + 0.6, interval.to_wire())
    state.update(tally)
    data = json.loads(state.data_json())
    assert data["running"] and data["requests"] == 8 and data["users"] == 3
    assert [p["t_s"] for p in data["series"]] == [0]  # the second in progress is not shown yet
    assert data["series"][0]["requests_per_s"] == 4 and data["series"][0]["latency_p99_ms"] == pytest.approx(4, 0.01)
    assert b'procly_loadtest_requests_total{name="GET /"} 8' in state.metrics(True)


# --- --web, in a real browser ---------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (apt-get as root is needed)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            check=True,
            capture_output=True,
            timeout=600,
            env=env,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"chromium is not installed and apt-get could not install it: {exc}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed no chromium binary")
    return found


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    binary = _chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")

    def browse(url: str, *extra: str) -> str:
        out = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=2500",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    browse("about:blank", "--dump-dom")  # the first start (profile, caches) is the slow one
    return browse


def dom_value(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*data-value="([^"]*)"', dom)
    assert match, f"no #{element_id} in the page"
    return match.group(1)


def table_rows(dom: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', dom, flags=re.S)
    assert body, f"no table #{table_id}"
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)]


def _page_during_run(tmp_path, chromium):
    """Start a 3 s run with --web and load its page while it runs: (run, url, the page) or None
    (and the run ended) when the page came too late."""
    run = LiveRun(tmp_path, "-d", "3", "--web", "--web-linger", "60", "--fail-if", "p99>10s", "--fail-if", "checks<99%")
    try:
        url = run.url("live dashboard at")
        assert url.startswith("http://127.0.0.1:")
        wait_for(
            lambda: (d := json.loads(get(url + "data.json")[1]))["running"] and d["requests"] > 0 or None,
            30,
            "the run to start",
        )
        during = chromium(url, "--dump-dom")
    except BaseException:
        run.stop()
        raise
    if dom_value(during, "state") == "running":
        return run, url, during
    run.end_linger()
    run.stop()
    return None


@pytest.mark.timeout(900)
def test_dashboard_in_headless_chromium(tmp_path, chromium):
    # A machine too busy to load the page within the 3 s run gets one more try.
    started = _page_during_run(tmp_path, chromium) or _page_during_run(tmp_path, chromium)
    if started is None:
        pytest.fail("the page never loaded while the 3 s run lasted, twice")
    run, url, during = started
    data_url = url + "data.json"
    try:
        seen = int(dom_value(during, "requests"))
        assert seen > 0 and int(dom_value(during, "users")) == 4
        names = {row[0] for row in table_rows(during, "names")}
        assert names == {"home", "missing"}
        # The numbers move: the page shows more requests a moment later.
        wait_for(lambda: json.loads(get(data_url)[1])["requests"] > seen or None, 30, "more requests")
        later = chromium(url, "--dump-dom")
        assert int(dom_value(later, "requests")) > seen
        # The run ends; the page stays up (--web-linger) with the final figures and the verdicts.
        wait_for(lambda: not json.loads(get(data_url)[1])["running"] or None, 30, "the end of the run")
        wait_for(lambda: any("stays up" in line for line in run.stderr), 30, "the reports to be written")
        report = json.loads(run.json_path.read_text())
        final = chromium(url, "--dump-dom")
        shot = tmp_path / "dashboard.png"
        chromium(url, f"--screenshot={shot}", "--window-size=1400,1600")
    finally:
        try:
            run.end_linger()
            code = run.finish()
        finally:
            run.stop()
    assert code == 1  # checks<99% broke: the "found" check fails on every 404
    assert dom_value(final, "state") == "finished"
    assert int(dom_value(final, "requests")) == report["requests"]
    assert int(dom_value(final, "errors")) == report["errors"]
    assert float(dom_value(final, "p99")) == pytest.approx(report["latency_p99_ms"], rel=1e-3)
    by_name = {row[0]: int(row[1].replace(",", "")) for row in table_rows(final, "names")}
    assert by_name == {entry["name"]: entry["requests"] for entry in report["by_name"]}
    checks = {
        row[0]: (int(row[1].replace(",", "")), int(row[2].replace(",", ""))) for row in table_rows(final, "checks")
    }
    assert checks == {c["name"]: (c["passed"], c["failed"]) for c in report["checks"]}
    assert dom_value(final, "verdict") == "fail"
    verdicts = {row[0].replace("&lt;", "<").replace("&gt;", ">"): row[2] for row in table_rows(final, "thresholds")}
    assert verdicts == {"p99>10s": "pass", "checks<99%": "FAIL"}
    assert [t["passed"] for t in report["thresholds"]] == [True, False]
    assert "<polyline" in final and "cdn" not in final.lower() and 'src="http' not in final
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
