"""procly loadtest user flows, stages, per-name results and bad input, end to end on loopback.

Every run goes to the built-in target on 127.0.0.1 and lasts 1-3 s; nothing asserts a duration.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest

from procly.loadtest import EmbeddedTarget, LoadTestConfig, Scenario, ScenarioError, Stages, run_load_test
from procly.loadtest._writes import WriteBatch

pytestmark = pytest.mark.timeout(90)

SHOP = """
    import json
    import os

    from procly.loadtest import User, flow, on_start


    @on_start
    async def log_in(user: User) -> None:
        user.headers["X-User"] = str(user.id)
        r = await user.get(f"/cookie/session/u{user.id}", name="login")
        user.check(r, "logged in", status=200, header={"set-cookie": "session="})
        user.state["visits"] = 0


    @flow(weight=3)
    async def browse(user: User) -> None:
        user.state["visits"] += 1
        r = await user.get(f"/bytes/{user.rng.randint(1, 50)}", name="/bytes/[n]")
        user.check(r, status=200, contains="x")
        await user.think(0.001, 0.002)
        r = await user.post("/echo", json={"visits": user.state["visits"], "row": user.row}, name="echo")
        echoed = r.json()
        user.check(r, "session kept", json={"headers.cookie": f"session=u{user.id}"})
        user.check(r, "default header sent", json={"headers.x-user": str(user.id)})
        user.check(r, "row sent", json={"body": json.dumps({"visits": user.state["visits"], "row": user.row},
                                                          separators=(",", ":"))})
        user.check(r, "always fails", status=201)
        assert echoed["method"] == "POST"


    @flow(weight=1)
    async def broken(user: User) -> None:
        r = await user.get("/status/404", name="missing")
        user.check(r, status=404)
        raise KeyError("the flow fails after its request")
"""


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def procly_cli(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "procly.cli", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_scenario(target, path: str, **options):
    """Run the scenario file at *path* against *target* (processes, users, budget in *options*)."""
    return run_load_test(LoadTestConfig(url=target.url, scenario=Scenario.load(path), **options))


def run_source(tmp_path, target, source: str, **options):
    """Write *source* (indented as in a test) as a scenario file and run it against *target*."""
    return run_scenario(target, write(tmp_path, "scenario.py", source), **options)


@pytest.fixture(scope="module")
def target():
    with EmbeddedTarget() as running:
        yield running


@pytest.fixture
def users_csv(tmp_path):
    path = tmp_path / "users.csv"
    path.write_text("name,password\nann,a1\nbob,b2\ncyd,c3\n")
    return str(path)


# --- flows end to end ----------------------------------------------------------------------


def test_flows_sessions_checks_and_names(ctx, tmp_path, users_csv):
    scenario = Scenario.load(write(tmp_path, "shop.py", SHOP), users_csv, seed=5)
    assert scenario.flow_names == ("browse", "broken") and len(scenario.rows) == 3
    with EmbeddedTarget(start_method=ctx.get_start_method()) as target:
        report = run_load_test(
            LoadTestConfig(
                url=target.url,
                scenario=scenario,
                processes=2,
                connections=4,
                duration=1.2,
                start_method=ctx.get_start_method(),
            )
        )
    names = {stats.name: stats for stats in report.by_name}
    assert set(names) == {"login", "/bytes/[n]", "echo", "missing"}
    assert names["login"].requests == 4 and names["login"].errors == 0
    assert names["echo"].requests > 4 and names["echo"].status_codes == {200: names["echo"].requests}
    # A 404 is an HTTP error of its name; the exception after it is counted apart, and the user goes on.
    assert names["missing"].errors == names["missing"].requests > 0
    assert report.errors == names["missing"].errors
    assert report.exceptions == {"KeyError": names["missing"].requests}
    # The first of each kind says what and where: the scenario's line, the flow's name.
    line = next(n for n, text in enumerate(textwrap.dedent(SHOP).splitlines(), 1) if "raise KeyError" in text)
    sample = f"KeyError: 'the flow fails after its request' (shop.py:{line} in broken)"
    assert report.exception_samples == {"KeyError": sample}
    assert report.iterations > 4
    checks = {check.name: check for check in report.checks}
    for name in (
        "logged in",
        "session kept",
        "default header sent",
        "row sent",
        "status is 200",
        "body contains 'x'",
        "status is 404",
    ):
        assert checks[name].failed == 0 and checks[name].passed > 0, name
    # A failed check is counted, is not an error, and does not stop the user.
    assert checks["always fails"].passed == 0 and checks["always fails"].failed == names["echo"].requests
    assert sum(s.requests for s in report.by_name) == report.requests
    assert all(s.latency.p50 <= s.latency.p95 <= s.latency.p99 <= s.latency.max for s in report.by_name)


def test_a_think_that_outlasts_the_run_ends_the_user(tmp_path, target):
    # The sleep may wake a little before the deadline: the user must not start another
    # iteration (and request) in that last instant. One request per user, exactly.
    report = run_source(
        tmp_path,
        target,
        """
        from procly.loadtest import flow

        @flow
        async def once(user):
            await user.get("/delay/1", name="d")
            await user.think(5)
    """,
        processes=1,
        connections=300,
        duration=0.4,
    )
    assert report.requests == 300 and report.errors == 0 and report.iterations == 0


def test_think_time_is_not_latency_and_rows_go_round_robin(tmp_path, target, users_csv):
    path = write(
        tmp_path,
        "think.py",
        """
        from procly.loadtest import flow

        @flow
        async def slow_reader(user):
            r = await user.get("/echo?who=" + user.row["name"] + "&next=" + user.next_row()["name"], name="page")
            user.check(r, "row of the user", contains=user.row["name"])
            await user.think(1.0)
    """,
    )
    report = run_load_test(
        LoadTestConfig(
            url=target.url, scenario=Scenario.load(path, users_csv), processes=1, connections=3, duration=1.5
        )
    )
    page = report.name_stats("page")
    assert page.requests >= 3 and page.errors == 0
    # Each user waited a whole second between its requests: counted, every latency would be over 1000 ms.
    assert report.latency.min < 1000
    assert {c.name: (c.failed) for c in report.checks} == {"row of the user": 0}


def test_cli_scenario_writes_names_and_checks_everywhere(tmp_path, users_csv):
    files = {kind: tmp_path / f"report.{kind}" for kind in ("json", "csv", "html")}
    out = procly_cli(
        "loadtest",
        "-f",
        write(tmp_path, "shop.py", SHOP),
        "--data",
        users_csv,
        "--data-order",
        "random",
        "--seed",
        "3",
        "-u",
        "4",
        "-p",
        "2",
        "-d",
        "1.2",
        "--json",
        str(files["json"]),
        "--csv",
        str(files["csv"]),
        "--html",
        str(files["html"]),
        "--fail-if",
        "checks<50%",
        "--fail-if",
        "p95{name=echo}>30s",
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\s+echo\s+[\d,]+", out.stdout, flags=re.M) and "always fails" in out.stdout
    assert "KeyError" in out.stdout and "flows that raised" in out.stdout
    report = json.loads(files["json"].read_text())
    assert {row["name"] for row in report["by_name"]} == {"login", "/bytes/[n]", "echo", "missing"}
    assert all("latency_p95_ms" in row and "requests_per_s" in row for row in report["by_name"])
    assert {row["name"] for row in report["checks"]} >= {"always fails", "session kept"}
    assert 0 < report["checks_passed_percent"] < 100
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert {row["name"] for row in rows if row["row"] == "name"} == {"login", "/bytes/[n]", "echo", "missing"}
    assert {row["name"] for row in rows if row["row"] == "check"} >= {"always fails"}
    assert rows[-1]["row"] == "total" and int(rows[-1]["requests"]) == report["requests"]
    page = files["html"].read_text()
    assert "Requests by name" in page and "always fails" in page and "/bytes/[n]" in page
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        ET.fromstring(svg)
    # Thresholds on names and checks.
    broken = procly_cli(
        "loadtest",
        "-q",
        "-f",
        write(tmp_path, "shop.py", SHOP),
        "-u",
        "2",
        "-p",
        "1",
        "-d",
        "1",
        "--fail-if",
        "checks<99.9%",
        "--fail-if",
        "errors{name=missing}>0",
        "--fail-if",
        "errors{name=echo}>0",
        "--fail-if",
        "checks{name=always fails}<1%",
    )
    assert broken.returncode == 1
    assert "threshold broken: checks<99.9%" in broken.stderr
    assert "threshold broken: errors{name=missing}>0" in broken.stderr
    assert "errors{name=echo}>0" not in broken.stderr
    assert "threshold broken: checks{name=always fails}<1%" in broken.stderr


def two_steps(tmp_path, first: str, second: str) -> str:
    """A scenario file whose one flow GETs *first* (named "first"), then *second* ("second")."""
    source = f"""
        from procly.loadtest import flow

        @flow
        async def two_steps(user):
            await user.get({first!r}, name="first")
            await user.get({second!r}, name="second")
    """
    return write(tmp_path, "two.py", source)


def test_flows_connect_to_the_resolved_address_only(tmp_path, target):
    # A host name that does not resolve at all, given with the target's address: the users
    # connect to the address the coordinator resolved, never to the name.
    port = int(target.url.rsplit(":", 1)[1].strip("/"))
    path = two_steps(tmp_path, "/", "/bytes/3")
    config = LoadTestConfig(url=f"http://nonexistent.invalid:{port}/", scenario=Scenario.load(path), processes=1,
                            connections=2, requests=20, address="127.0.0.1")  # fmt: skip
    report = run_load_test(config)
    assert report.requests == 20 and report.errors == 0, report.error_kinds


def test_a_flows_request_out_at_the_end_gets_its_whole_timeout(tmp_path, target):
    # Answers take 3.5 s, the run 1 s, the timeout 5 s: each user's request gets its answer
    # and counts (the users were ended 2 s after the end, and the run said none was made).
    path = two_steps(tmp_path, "/delay/3500", "/")
    report = run_scenario(target, path, processes=1, connections=2, duration=1.0, timeout=5.0)
    assert report.requests == 2 and report.errors == 0, report.error_kinds
    assert report.name_stats("first").latency.min >= 3500


def test_a_think_time_after_the_last_answer_does_not_stretch_the_throughput(tmp_path, target):
    # 2 users, a request then 1 s of think time, 1.5 s: requests at 0 and 1 s, then the users
    # think until 2 s. The run's time is its 1.5 s, not the 2 s the last think time took.
    path = write(
        tmp_path,
        "think.py",
        """
        from procly.loadtest import flow

        @flow
        async def think(user):
            await user.get("/")
            await user.think(1.0)
        """,
    )
    report = run_scenario(target, path, processes=1, connections=2, duration=1.5)
    assert report.requests == 4 and report.errors == 0
    assert report.elapsed == 1.5 and report.throughput == pytest.approx(4 / 1.5)
    # The ticks while the users think past the end add no empty seconds to the timeline (the
    # second answers fall in second 0 or 1, by a hair's timing against the tick at 1 s).
    assert 1 <= len(report.timeline) <= 2 and report.timeline[-1].requests > 0


def test_a_request_out_at_the_end_of_the_stages_gets_its_whole_timeout(tmp_path, target):
    # The stages end at 1 s; the users' requests take 3.5 s, the timeout is 5 s: they are
    # answered and counted (the ramp's end gave them 2 s, then dropped them uncounted).
    path = two_steps(tmp_path, "/delay/3500", "/")
    report = run_scenario(target, path, processes=1, stages=Stages.parse("1s:2", whole=True), timeout=5.0)
    assert report.requests >= 1 and report.errors == 0, report.error_kinds
    assert report.name_stats("first").latency.min >= 3500


def test_request_budget_in_flow_mode_is_exact(tmp_path, target):
    path = two_steps(tmp_path, "/", "/bytes/3")
    report = run_scenario(target, path, processes=2, connections=3, requests=301)
    assert report.requests == 301 and report.errors == 0


def test_a_user_sends_one_request_at_a_time(tmp_path, target):
    # Two requests of one user at once would share its connection (the first one's answer
    # taken for the second's, the first waiting for ever): the second is refused instead,
    # counted as the flow's exception, and the run ends. (A first request still in flight when
    # the budget runs out ends with its user, as an error or unrecorded: the flow did not wait.)
    report = run_source(
        tmp_path,
        target,
        """
        import asyncio
        from procly.loadtest import flow

        @flow
        async def together(user):
            await asyncio.gather(user.get("/", name="first"), user.get("/", name="second"))
    """,
        processes=1,
        connections=2,
        requests=20,
    )
    assert report.errors <= 2 and report.requests >= 10 and report.name_stats("first").requests == report.requests
    assert set(report.exceptions) == {"RuntimeError"} and report.exceptions["RuntimeError"] >= report.requests


def test_a_cancelled_request_leaves_its_answer_off_the_next_request(tmp_path, target):
    # A flow gives up on a slow request (wait_for): its answer, still to come on the
    # connection, must not become the answer of the user's next request.
    report = run_source(
        tmp_path,
        target,
        """
        import asyncio
        from procly.loadtest import flow

        @flow
        async def give_up(user):
            try:
                await asyncio.wait_for(user.get("/delay/300", name="slow"), 0.02)
            except asyncio.TimeoutError:
                pass
            r = await user.get("/bytes/3", name="next")
            user.check(r, "next gets its own answer", predicate=lambda r: r.body == b"xxx")
    """,
        processes=1,
        connections=2,
        requests=12,
    )
    checks = {c.name: (c.passed, c.failed) for c in report.checks}
    assert checks == {"next gets its own answer": (report.name_stats("next").requests, 0)}
    assert report.name_stats("next").requests >= 5 and not report.exceptions


def test_expected_statuses_decide_what_is_an_http_error(tmp_path, target):
    # expect= says which statuses a request should get (as k6's expectedStatuses): an
    # expected 404 is no error, an unexpected 200 is one; a status that is not one is refused.
    report = run_source(
        tmp_path,
        target,
        """
        from procly.loadtest import flow

        @flow
        async def f(user):
            r = await user.get("/status/404", name="gone", expect=404)
            user.check(r, "ok: expected 404", predicate=lambda r: r.ok)
            r = await user.get("/", name="home", expect=(201, 204))
            user.check(r, "ok: unexpected 200", predicate=lambda r: not r.ok)
            r = await user.get("/status/503", name="down")
            user.check(r, "ok: 503", predicate=lambda r: not r.ok)
            await user.get("/", name="bad", expect="200")
    """,
        processes=1,
        connections=1,
        requests=30,
    )
    gone, home, down = report.name_stats("gone"), report.name_stats("home"), report.name_stats("down")
    assert gone.requests == home.requests == down.requests == 10 and report.name_stats("bad") is None
    assert gone.errors == 0 and gone.status_codes == {404: 10}
    assert home.error_kinds == {"http 200 unexpected": 10} and down.error_kinds == {"http 503": 10}
    assert report.exceptions == {"ValueError": 10} and "100 to 599" in report.exception_samples["ValueError"]
    # Response.ok gives the same verdict as the error count.
    assert {c.name: (c.passed, c.failed) for c in report.checks} == {
        "ok: expected 404": (10, 0),
        "ok: unexpected 200": (10, 0),
        "ok: 503": (10, 0),
    }
    # Every answer an expected 404: the run succeeded (exit 0), though no status was under 400.
    only_gone = write(
        tmp_path,
        "gone.py",
        "from procly.loadtest import flow\n\n@flow\nasync def f(user):\n"
        "    await user.get('/status/404', expect=404)\n",
    )
    out = procly_cli("loadtest", "-q", "-f", only_gone, "-u", "1", "-p", "1", "-n", "20", target.url)
    assert out.returncode == 0, out.stderr
    from procly.loadtest import _flows

    with pytest.raises(ValueError, match="names no status"):
        _flows._expected_statuses([])


def test_an_exception_whose_message_fails_is_still_described():
    from procly.loadtest import _flows

    class Odd(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message for you")

    try:
        raise Odd
    except Odd as exc:
        text = _flows.describe_exception(exc, __file__)
    assert text.startswith("Odd: (its message could not be made) (test_loadtest_flows.py:")


def test_flow_warmup_is_not_measured(tmp_path, target):
    # A request issued in the warm-up and answered after its end stays out of the figures:
    # the budget counts measured requests only, and exactly those are recorded.
    path = two_steps(tmp_path, "/delay/2", "/")
    report = run_scenario(target, path, processes=1, connections=4, requests=120, warmup=0.3)
    assert report.requests == 120 and report.errors == 0
    assert report.name_stats("first").requests + report.name_stats("second").requests == 120


# --- stages ------------------------------------------------------------------------------------


def test_stages_parse_and_interpolate():
    stages = Stages.parse("1s:100, 2m:100,500ms:0")
    assert stages.steps == ((1.0, 100.0), (120.0, 100.0), (0.5, 0.0)) and stages.duration == 121.5
    assert stages.value_at(0.5) == 50 and stages.value_at(60) == 100 and stages.value_at(121.25) == 50
    assert stages.value_at(500) == 0
    # As a rate: request k is due when the integral of the rate reaches k.
    assert stages.time_of_count(0) == 0 and stages.time_of_count(50) == pytest.approx(1.0)
    assert stages.time_of_count(150) == pytest.approx(2.0)
    assert stages.time_of_count(100 * 0.5 + 100 * 120 + 25) is None
    # A 0 s stage jumps (as in k6): 10 at once, held for 1 s; the rate's integral jumps with it.
    jump = Stages.parse("0s:10,1s:10")
    assert jump.value_at(0) == 10 and jump.value_at(0.5) == 10 and jump.time_of_count(5) == pytest.approx(0.5)
    for bad, message in [
        ("", "no stage"),
        ("1s:10,abc", "stage 2 .'abc'. is not DURATION:TARGET"),
        ("1s:10,xs:5", "stage 2 .*no valid duration"),
        ("0s:5", "last 0 s in all"),
        ("1s:0,2s:0", "every stage's target is 0"),
        ("1s:-3", "stage 1 .* negative target"),
    ]:
        with pytest.raises(ValueError, match=message):
            Stages.parse(bad)
    with pytest.raises(ValueError, match="stage 2 .* 1.5 users: a whole number"):
        Stages.parse("1s:2,1s:1.5", whole=True)
    assert Stages.parse("1s:1.5", "-R").peak == 1.5  # a rate may be fractional


def test_rate_stages_ramp_the_open_loop_rate(target):
    # 0 -> 200 req/s over 1 s, then 200 req/s for 1 s: 100 + 200 requests are due.
    report = run_load_test(
        LoadTestConfig(url=target.url, processes=2, connections=8, rate_stages=Stages.parse("1s:200,1s:200"))
    )
    assert report.errors == 0 and abs(report.requests - 300) <= 2, report.requests
    assert report.latency.min > 0


def test_a_rate_ramp_down_is_measured_over_its_whole_duration(target):
    # Ramping to 0, the last request is due (and answered) before the end: the throughput
    # is still the requests over the stages' 2 s, not over the time to the last answer.
    report = run_load_test(
        LoadTestConfig(url=target.url, processes=1, connections=8, rate_stages=Stages.parse("1s:200,1s:0"))
    )
    assert report.errors == 0 and report.elapsed == 2.0 and report.throughput == report.requests / 2.0


def test_user_stages_ramp_users_up_and_down(tmp_path, target):
    started = tmp_path / "started"
    started.mkdir()
    path = write(
        tmp_path,
        "ramp.py",
        f"""
        import os
        from procly.loadtest import flow, on_start

        @on_start
        async def arrive(user):
            open(os.path.join({str(started)!r}, str(user.id)), "w").close()

        @flow
        async def visit(user):
            await user.get("/")
            await user.think(0.01)
    """,
    )
    report = run_load_test(
        LoadTestConfig(
            url=target.url,
            scenario=Scenario.load(path),
            processes=2,
            connections=6,
            stages=Stages.parse("0.4s:6,0.6s:6,0.4s:0"),
        )
    )
    assert report.requests > 0 and report.errors == 0
    # Six users in all, numbered across both processes, none started twice.
    assert sorted(int(name) for name in os.listdir(started)) == list(range(6))


def test_cli_stages_for_the_single_url_load():
    out = procly_cli("loadtest", "-q", "--stages", "0.5s:4,0.5s:4", "-p", "2", "--json", "-")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert "stages 0.5s:4,0.5s:4 users" in report["description"] and "4 users" in report["description"]
    assert report["requests"] > 0 and [row["name"] for row in report["by_name"]] == ["GET /"]
    config = report["configuration"]
    assert (config["mode"], config["method"], config["users"]) == ("ramped users", "GET", 4)
    assert "scenario" not in config


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "message"), [
    ("from procly.loadtest import flow\n\n@flow\nasync def f(user)\n    pass\n", r"bad\.py:4: syntax error"),
    ("import no_such_module_anywhere\n", r"bad\.py:1: the scenario raised ModuleNotFoundError"),
    ("x = 1\n", r"bad\.py defines no flow"),
    ("from procly.loadtest import flow\n\n@flow\ndef f(user):\n    pass\n", r"must be an async function"),
    ("from procly.loadtest import flow\n\n@flow(weight=0)\nasync def f(user):\n    pass\n", r"positive whole"),
    # A flow that cannot take the user: at start, not one TypeError per iteration all run long.
    ("from procly.loadtest import flow\n\n@flow\nasync def f():\n    pass\n",
     r"bad\.py:3: .*@flow 'f' must take the user"),
    ("from procly.loadtest import flow, on_start\n\n@on_start\nasync def s(user, x):\n    pass\n\n"
     "@flow\nasync def f(user):\n    pass\n", r"@on_start 's' must take the user"),
])  # fmt: skip
def test_broken_scenarios_fail_at_start_with_exit_2(tmp_path, source, message):
    path = write(tmp_path, "bad.py", source)
    with pytest.raises(ScenarioError, match=message):
        Scenario.load(path)
    out = procly_cli("loadtest", "-f", path, "-d", "1")
    assert out.returncode == 2 and re.search(message, out.stderr), out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("", "the file is empty"),
    ("name,name\na,b\n", "line 1: column names repeated: name"),
    ("name,password\nann,a1\nbob\n", "line 3: 1 fields, the header has 2"),
    ("name,\nann,a1\n", "line 1: column 2 has no name"),
    ("name,password\n", "no data row"),
])  # fmt: skip
def test_malformed_data_says_what_and_where(tmp_path, content, message):
    data = tmp_path / "data.csv"
    data.write_text(content)
    scenario = write(
        tmp_path, "ok.py", "from procly.loadtest import flow\n\n@flow\nasync def f(user):\n    await user.get('/')\n"
    )
    out = procly_cli("loadtest", "-f", scenario, "--data", str(data), "-d", "1")
    assert out.returncode == 2 and message in out.stderr and "data.csv" in out.stderr, out.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--stages", "1s:10,2x:5"], "stage 2 ('2x:5') has no valid duration"),
    (["--stages", "1s:10,5"], "stage 2 ('5') is not DURATION:TARGET"),
    (["-R", "1s:10;2s:5"], "-R: stage 1"),
    (["-R", "fast"], "-R wants requests/s"),
    (["--stages", "1s:5", "-R", "100"], "give -R the stages itself"),
    (["--stages", "1s:5", "-u", "50"], "-u 50 would be ignored"),
    (["--data", "x.csv"], "--data gives rows to the users of a scenario"),
    (["--stages", "1s:5", "--warmup", "1s"], "the first stage is the warm-up"),
    (["--fail-if", "p99>2"], "a latency needs its unit"),
    (["--fail-if", "checks<99.9"], "checks take a percentage"),
    (["-f", "/no/such/scenario.py"], "cannot read the scenario file"),
])  # fmt: skip
def test_bad_options_say_what_is_wrong(args, message):
    out = procly_cli("loadtest", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert out.stderr.startswith("procly loadtest:")


def test_a_run_where_nothing_succeeded_exits_1(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/"
    out = procly_cli("loadtest", "-q", "-p", "1", "-c", "2", "-d", "0.6", url)
    assert out.returncode == 1 and "no request succeeded" in out.stderr and "connect refused" in out.stderr
    lines = out.stdout.splitlines()
    latency_row = lines[next(i for i, line in enumerate(lines) if "latency ms" in line) + 1]
    assert set(latency_row.split()) == {"-"}, out.stdout  # no answer, no latency (not 0.00)
    path = write(
        tmp_path,
        "refused.py",
        "from procly.loadtest import flow\n\n@flow\nasync def f(user):\n"
        "    r = await user.get('/', name='home')\n    user.check(r, status=200)\n"
        "    await user.think(0.05)\n",
    )
    out = procly_cli("loadtest", "-q", "-f", path, "-u", "2", "-p", "1", "-d", "0.6", "--json", "-", url)
    assert out.returncode == 1 and "no request succeeded" in out.stderr
    report = json.loads(out.stdout)
    assert report["by_name"][0]["name"] == "home" and report["by_name"][0]["error_kinds"] == {
        "connect refused": report["errors"]
    }
    assert report["checks"] == [
        {"name": "status is 200", "passed": 0, "failed": report["errors"], "passed_percent": 0.0}
    ]


def test_flows_that_send_no_request_fail_the_run(tmp_path, target):
    # A load test that sent nothing tested nothing: exit 1 and say so.
    path = write(tmp_path, "idle.py", "from procly.loadtest import flow\n\n@flow\nasync def f(user):\n    pass\n")
    out = procly_cli("loadtest", "-q", "-f", path, "-u", "2", "-p", "1", "-d", "0.3", target.url)
    assert out.returncode == 1 and "no request was made: the flows ran" in out.stderr, out.stderr


def test_flows_that_raise_before_any_request(tmp_path, target):
    path = write(
        tmp_path,
        "raises.py",
        "from procly.loadtest import flow\n\n@flow\nasync def f(user):\n"
        "    await user.think(0.01)\n    raise ValueError('no')\n",
    )
    out = procly_cli("loadtest", "-q", "-f", path, "-u", "2", "-p", "1", "-d", "0.5", target.url)
    assert out.returncode == 1 and "every flow raised before its first request (ValueError" in out.stderr


def test_checks_need_a_condition_and_responses_parse(tmp_path, target):
    report = run_source(
        tmp_path,
        target,
        """
        from procly.loadtest import flow

        @flow
        async def api(user):
            r = await user.get("/echo", params={"q": "a b"}, headers={"X-Test": "1"}, name="echo")
            assert r.ok and r.json()["path"] == "/echo?q=a+b" and r.json()["headers"]["x-test"] == "1"
            assert r.headers["content-type"] == "application/json" and r.elapsed_ms > 0
            user.check(r, "predicate", predicate=lambda response: response.json()["method"] == "GET")
            user.check(r, json={"headers.host": ...})
            user.check(r, json={"no.such.field": ...})
            head = await user.head("/bytes/100", name="head")
            assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "100"
            user.check(r)  # no condition: TypeError, counted as the flow's exception
    """,
        processes=1,
        connections=1,
        requests=40,
    )
    checks = {c.name: (c.passed, c.failed) for c in report.checks}
    assert checks == {"predicate": (20, 0), "json headers.host": (20, 0), "json no.such.field": (0, 20)}
    assert report.exceptions == {"TypeError": 20} and report.errors == 0
    assert report.name_stats("head").requests == 20 and report.requests == 40


# --- flows under --dask ------------------------------------------------------------------------


@pytest.mark.allow_leaks  # Dask's in-process cluster keeps its loop's pipes and sockets, as in test_dask.py
def test_flows_run_as_dask_tasks(tmp_path, target):
    distributed = pytest.importorskip("distributed")
    from procly.loadtest._dask import run_on_dask

    path = write(
        tmp_path,
        "dask_flow.py",
        """
        from procly.loadtest import flow

        @flow
        async def visit(user):
            r = await user.get("/bytes/10", name="page")
            user.check(r, status=200)
    """,
    )
    config = LoadTestConfig(url=target.url, scenario=Scenario.load(path), processes=2, connections=4, requests=200)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        report = run_on_dask(config, cluster.scheduler_address)
    assert report.requests == 200 and report.errors == 0 and not report.workers_lost
    assert [(c.name, c.passed, c.failed) for c in report.checks] == [("status is 200", 200, 0)]
    assert report.name_stats("page").requests == 200


def test_stages_from_python_ramp_the_single_url_load(target):
    report = run_load_test(
        LoadTestConfig(url=target.url + "bytes/5", processes=1, stages=Stages.parse("0.3s:3,0.5s:3"))
    )
    assert report.requests > 0 and report.errors == 0
    assert [s.name for s in report.by_name] == ["GET /bytes/5"]
    assert report.configuration["mode"] == "ramped users" and report.configuration["users"] == 3
    # The users' request is made from the config each time: replace() of the URL or the
    # method changes it, replace() without stages leaves no ramp behind.
    import dataclasses

    config = LoadTestConfig(url=target.url + "a", method="POST", stages=Stages.parse("1s:4"))
    other = dataclasses.replace(config, url=target.url + "b", method="GET")
    assert other.scenario.label == target.url + "b" and "'GET'" in other.scenario.source
    assert "'POST'" not in other.scenario.source and other.connections == 4
    assert dataclasses.replace(config, stages=None).scenario is None
    with pytest.raises(TypeError, match="Stages.parse"):
        LoadTestConfig(url=target.url, stages="1s:4")
    # A scenario of the user's own, labelled, is never taken for the generated one.
    mine = Scenario(path="<mine>", source="", flow_names=("f",), label="checkout flow")
    assert LoadTestConfig(url=target.url, scenario=mine).scenario is mine
    assert LoadTestConfig(url=target.url, scenario=mine, stages=Stages.parse("1s:2")).scenario is mine
    with pytest.raises(ValueError, match="need a URL"):
        LoadTestConfig(call="tests.loadtest_targets:quick", stages=Stages.parse("1s:3"))


def test_too_many_names_are_grouped():
    from procly.loadtest._flows import MAX_NAMES, OTHER_NAMES, FlowRecorder
    from procly.loadtest._stats import MAX_CHECKS, OTHER_CHECKS, Interval

    recorder = FlowRecorder()
    for i in range(MAX_NAMES + 5):
        recorder.named(f"/item/{i}").latencies.append(1000)
        recorder.check(f"json id == {i}", True)
    interval = recorder.take()
    assert len(interval.by_name) == MAX_NAMES + 1 and interval.by_name[OTHER_NAMES].requests == 5
    assert interval.requests == MAX_NAMES + 5
    assert len(interval.checks) == MAX_CHECKS + 1 and interval.checks[OTHER_CHECKS] == [5, 0]
    # The merged results stay bounded too: each interval's new check names and each
    # worker's names past the limit go under the "other" rows.
    merged = Interval()
    merged.add(interval)
    later = FlowRecorder()
    later.named("/item/new").latencies.append(1000)
    later.check("json id == new", False)
    merged.add(later.take())
    assert len(merged.by_name) == MAX_NAMES + 1 and merged.by_name[OTHER_NAMES].requests == 6
    assert len(merged.checks) == MAX_CHECKS + 1 and merged.checks[OTHER_CHECKS] == [5, 1]
    assert merged.requests == MAX_NAMES + 6


def test_a_thousand_names_travel_in_big_ticks(tmp_path, target):
    # Every request and check under a name of its own: a worker's tick grows past the
    # socket's buffer (a thousand names), and must still reach the coordinator whole.
    from procly.loadtest._stats import OTHER_CHECKS, OTHER_NAMES

    report = run_source(
        tmp_path,
        target,
        """
        from procly.loadtest import flow

        @flow
        async def f(user):
            i = user.state.setdefault("i", 0)
            user.state["i"] = i + 1
            r = await user.get("/", name=f"/page/{user.id}/{i}")
            user.check(r, f"page {user.id}/{i} answered", status=200)
    """,
        processes=2,
        connections=8,
        duration=2.0,
    )
    assert not report.workers_lost and report.errors == 0 and report.requests > 2000
    assert report.name_stats(OTHER_NAMES).requests > 0
    assert sum(stats.requests for stats in report.by_name) == report.requests
    assert {c.name for c in report.checks} >= {OTHER_CHECKS}


# uvloop keeps a closed loop's wake-up pipe while a task it gave up on is alive (with or
# without the bounded wait): that pipe is the user's stubborn task's, not the worker's.
@pytest.mark.allow_leaks
def test_a_flow_task_that_ignores_cancellation_does_not_hold_the_worker(tmp_path, target):
    # A flow may start a task of its own that swallows its cancellation: the worker still
    # ends (it waits a bounded time for what it cancelled), here on the Dask path's runner.
    from procly.loadtest._worker import run_share

    path = write(
        tmp_path,
        "stubborn.py",
        """
        import asyncio

        from procly.loadtest import flow

        async def stubborn():
            while True:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    pass

        @flow
        async def f(user):
            if "task" not in user.state:
                user.state["task"] = asyncio.ensure_future(stubborn())
            await user.get("/")
    """,
    )
    config = LoadTestConfig(url=target.url, scenario=Scenario.load(path), processes=1, connections=2, requests=20)
    messages = run_share(config, 0, time.time())
    assert messages[-1][0] == "done" and messages[-1][2]["requests"] == 20


def test_flow_requests_time_out_and_the_user_goes_on(tmp_path, target):
    report = run_source(
        tmp_path,
        target,
        """
        from procly.loadtest import flow

        @flow
        async def slow(user):
            r = await user.get("/delay/3000", name="slow")
            user.check(r, "timed out", predicate=lambda response: response.error == "timeout")
            r = await user.get("/", name="fast")
            user.check(r, status=200)
    """,
        processes=1,
        connections=2,
        duration=1.2,
        timeout=0.3,
    )
    slow, fast = report.name_stats("slow"), report.name_stats("fast")
    assert slow.requests == 0 and slow.error_kinds == {"timeout": slow.errors} and slow.errors >= 2
    assert fast.requests >= 2 and fast.errors == 0  # on a new connection after the timeout
    assert {c.name: c.failed for c in report.checks} == {"timed out": 0, "status is 200": 0}


def test_requests_built_from_caches_equal_the_general_build():
    # The common requests (no session headers or cookies) come from per-path caches; their
    # bytes and names must be those the general build makes, call after call.
    import asyncio

    from procly.loadtest import _flows
    from procly.loadtest._schedule import Schedule

    cases = [
        ("GET", "/", {}),
        ("GET", "/item/7", {"name": "/item/[id]"}),
        ("HEAD", "/bytes/100", {}),
        ("DELETE", "/cart/1", {}),
        ("POST", "/login", {}),
        ("POST", "/api/cart", {"json": {"item": 42, "quantity": 2, "note": "é"}}),
        ("POST", "/api/cart", {"json": {"item": 43}, "name": "cart"}),
        ("PUT", "/text", {"data": "plain text"}),
        ("PATCH", "/form", {"data": {"a": "1", "b": "x y"}}),
        ("GET", "/empty", {"data": b""}),
        ("POST", "/empty", {"data": b""}),
        ("POST", "/json-text", {"json": "just a string"}),
    ]

    async def build() -> None:
        scenario = Scenario.single_request("http://127.0.0.1:9/", "GET", [], b"")
        now = asyncio.get_running_loop().time()
        load = _flows.FlowLoad(
            scenario, "http://127.0.0.1:9/", 1, Schedule(now, None, None, None), _flows.FlowRecorder(), 1.0,
            False, None, 0, 1,
        )  # fmt: skip
        user = _flows.User(load, 0)
        for method, path, options in cases * 2:  # the second round comes from the caches
            name = options.get("name")
            payload, got_name = load.encode(user, method, path, name, None, None, options.get("json"),
                                            options.get("data"))  # fmt: skip
            body, extra = _flows._encode_body(options.get("json"), options.get("data"))
            target, want_name = _flows._target(load.path_for(path), method, name, None)
            user.headers["X-Force-General"] = "1"  # the general build, then without the header
            general = load.request_bytes(method, target, user, None, extra, body)
            del user.headers["X-Force-General"]
            want = general.replace(b"X-Force-General: 1\r\n", b"")
            assert (payload, got_name) == (want, want_name), (method, path, options)
        with pytest.raises(TypeError):
            load.encode(user, "POST", "/x", None, None, None, {"not json": object()}, None)
        # A failed encoding leaves the encoder usable (its circular-reference markers are reset).
        assert load.encode(user, "POST", "/x", None, None, None, [1, 2], None)[0].endswith(b"\r\n\r\n[1,2]")

    asyncio.run(build())


class _Transport:
    """Records what is written and when (the batch's clock), and can be closed."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


def _flow_connection(loop, transport: _Transport):
    """A flow's connection over *transport*, as if connected."""
    from procly.loadtest import _flows

    connection = _flows._Connection(_flows.FlowRecorder(), loop)
    connection.transport = transport
    return connection


def _plain_slot(load, transport: _Transport, state: int):
    """A plain load's slot in *state*, its connection over *transport*."""
    from procly.loadtest import _http

    slot = _http._Slot(load)
    slot.protocol = _http._Protocol(slot)
    slot.protocol.transport = transport  # type: ignore[assignment]
    slot.state = state
    slot.due = 0.0  # queued by a completion, as the closed loop does: due then
    return slot


def _bare_http_load(batch: WriteBatch):
    """A running plain load with just what its slots need to write: loop, request, batch, recorder."""
    from procly.loadtest import _http

    load = _http.HttpLoad.__new__(_http.HttpLoad)
    load.loop, load.request, load.writes = batch.loop, b"GET / HTTP/1.1\r\n\r\n", batch
    load.recorder = _http.Recorder()
    load.started = True
    return load


@pytest.mark.parametrize("pieces", [1, 3, 40])
def test_answer_headers_and_cookies_cut_from_the_bytes_received(pieces):
    # Headers are cut from the bytes received (no parser callback per header): whatever the
    # chunks, the flow sees every header, and each Set-Cookie (any case) reaches the session.
    import asyncio

    from procly.loadtest import _flows

    answer = (
        b"HTTP/1.1 200 OK\r\nServer: t\r\nSET-COOKIE: a=1; Path=/\r\nContent-Type:  text/plain \r\n"
        b"set-cookie: b=2\r\nX-Empty:\r\nContent-Length: 5\r\n\r\nhello"
    )

    async def feed() -> tuple[int, bytes, bytes, list[bytes] | None]:
        loop = asyncio.get_running_loop()
        connection = _flow_connection(loop, _Transport())
        waiter = connection.send(b"GET / HTTP/1.1\r\n\r\n", False, WriteBatch(loop))
        size = -(-len(answer) // pieces)
        for start in range(0, len(answer), size):
            connection.data_received(answer[start : start + size])
        status, head, body, keep_alive, _ = await waiter
        assert keep_alive
        return status, head, body, connection.cookies

    status, head, body, cookies = asyncio.run(feed())
    assert (status, body, cookies) == (200, b"hello", [b"a=1; Path=/", b"b=2"])
    response = _flows.Response(status, head, body, None, 1.0, "x")
    assert response.headers == {
        "server": "t",
        "set-cookie": "b=2",
        "content-type": "text/plain",
        "x-empty": "",
        "content-length": "5",
    }


def test_requests_queued_in_one_pass_are_written_together_after_it():
    # Each request is queued, not written: the batch writes them all, in order, once the
    # callbacks queued before them have run; a request queued later goes in a new batch.
    import asyncio

    async def run() -> None:
        loop = asyncio.get_running_loop()
        batch = WriteBatch(loop)
        transports = [_Transport() for _ in range(3)]
        connections = [_flow_connection(loop, transport) for transport in transports]
        seen_before_flush: list[int] = []
        waiters = [c.send(b"R%d" % i, False, batch) for i, c in enumerate(connections)]
        loop.call_soon(lambda: seen_before_flush.append(sum(len(t.written) for t in transports)))
        assert all(t.written == [] for t in transports) and all(c.sent == 0.0 for c in connections)
        await asyncio.sleep(0)
        assert [t.written for t in transports] == [[b"R0"], [b"R1"], [b"R2"]]
        assert seen_before_flush == [3]  # the flush was queued by the first send, before that callback
        # Every request counts its latency from one write time, taken when the batch went out.
        assert len({c.sent for c in connections}) == 1 and connections[0].sent > 0
        # Cancelled, or its connection closed, while queued: not written.
        for waiter in waiters:
            waiter.cancel()
        first = connections[0].send(b"again", False, batch)
        first.cancel()
        connections[1].send(b"closed", False, batch)
        transports[1].closing = True
        third = connections[2].send(b"third", False, batch)
        await asyncio.sleep(0)
        assert [t.written for t in transports] == [[b"R0"], [b"R1"], [b"R2", b"third"]]
        assert not third.done()

    asyncio.run(run())


def test_a_request_that_cannot_be_written_fails_and_the_rest_go_out():
    import asyncio

    from procly.loadtest import _flows, _http

    class Broken(_Transport):
        aborted = False

        def write(self, data: bytes) -> None:
            raise RuntimeError("transport broke")

        def abort(self) -> None:
            self.aborted = True

    async def run() -> None:
        loop = asyncio.get_running_loop()
        batch = WriteBatch(loop)
        broken, fine = _flow_connection(loop, Broken()), _flow_connection(loop, _Transport())
        failing = broken.send(b"one", False, batch)
        waiting = fine.send(b"two", False, batch)
        # A plain load's slot in the same batch: its failure is counted, its connection
        # dropped (the run is over, so it finishes rather than reconnect).
        load = _bare_http_load(batch)
        load.schedule = _http.Schedule(0.0, None, None, None)
        load.schedule.stop()
        load._running, load._finished = 1, loop.create_future()
        slot = _plain_slot(load, Broken(), _http._BUSY)
        batch.add(slot)
        await asyncio.sleep(0)
        with pytest.raises(_flows.RequestFailed, match="write RuntimeError"):
            failing.result()
        assert broken.transport.aborted and fine.transport.written == [b"two"] and not waiting.done()
        assert load.recorder.errors == {"write RuntimeError": 1} and slot.protocol is None
        assert slot.state == _http._DONE and load._finished.done()

    asyncio.run(run())


def test_plain_load_writes_only_for_a_slot_still_waiting_on_its_connection():
    import asyncio

    from procly.loadtest import _http

    async def run() -> None:
        load = _bare_http_load(WriteBatch(asyncio.get_running_loop()))
        slots = []
        for state in (_http._BUSY, _http._BUSY, _http._DONE):
            slot = _plain_slot(load, _Transport(), state)
            slots.append(slot)
            load.writes.add(slot)
        slots[1].protocol.transport.closing = True  # type: ignore[union-attr]
        await asyncio.sleep(0)
        written = [slot.protocol.transport.written for slot in slots]  # type: ignore[union-attr]
        assert written == [[load.request], [], []]
        assert slots[0].due == slots[0].sent > 0  # latency counts from the write
        # Counted as warm-up when queued, it stays warm-up when written after the warm-up's end.
        load.recorder.measure_from = slots[0].sent
        warm = _plain_slot(load, _Transport(), _http._BUSY)
        warm.due = load.recorder.measure_from - 1.0
        load.writes.add(warm)
        await asyncio.sleep(0)
        assert warm.sent >= load.recorder.measure_from > warm.due

    asyncio.run(run())


def test_closed_loop_latency_is_at_least_the_answer_time(tmp_path, target):
    # Requests are queued and written at the end of the loop's pass: counted from the
    # write, no latency can come out below what the target takes to answer.
    path = two_steps(tmp_path, "/delay/3", "/")
    report = run_scenario(target, path, processes=1, connections=8, requests=400)
    slow = report.name_stats("first")
    assert slow.requests >= 150 and slow.errors == 0
    assert slow.latency.min >= 3.0
    plain = run_load_test(LoadTestConfig(url=target.url + "delay/3", processes=1, connections=8, requests=200))
    assert plain.requests == 200 and plain.errors == 0 and plain.latency.min >= 3.0


def test_a_flow_requests_latency_ends_when_its_answer_is_complete():
    # The user resumes later in the loop's pass, after the other answers that came with
    # its own: that wait is the client's, and must not be counted as the request's latency.
    import asyncio

    from procly.loadtest import _flows

    async def answer_time() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        connection = _flows._Connection(_flows.FlowRecorder(), loop)
        waiter = connection.send(b"GET / HTTP/1.1\r\n\r\n", False, WriteBatch(loop))
        before = time.monotonic()
        connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        after = time.monotonic()
        await asyncio.sleep(0)  # the loop runs others first
        *_, complete = await waiter
        return before, complete, after

    before, complete, after = asyncio.run(answer_time())
    assert before <= complete <= after
