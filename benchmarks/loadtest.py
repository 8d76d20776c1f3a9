"""procly loadtest against wrk and locust, on one loopback nginx, in one run.

    python3 tasks.py bench-load            (or: python -m benchmarks.loadtest [--seconds 10])

Needs Debian's nginx and wrk (``apt-get install nginx wrk``); locust is looked up as
``.venv-locust/bin/locust`` (tasks.py creates it) or on PATH. A tool that is missing is
skipped, with a line saying so. nginx runs with one worker process on 127.0.0.1; every
tool uses 64 connections (locust: 64 users) from one process. Client and server share
the machine, so the load average is checked first and printed.

Plain mode is measured in alternating rounds (``--rounds``, 3 by default: wrk then
procly, procly then wrk, ...), each with the client's CPU time per request (user +
system time of the tool's processes over the requests it made); the ratio printed is
the median of the rounds' ratios, beside each round's. On a shared or virtual machine
whose speed drifts, a single pair of runs says more about the drift than the tools.

A second nginx run with its access log on checks that procly's request count equals
the number of requests nginx logged.

Two user-flow cases follow (``--flows``, on by default; ``--only-flows`` runs them alone):

- a three-step flow (GET, POST with a JSON body, GET with a name), 64 users, think time
  0, one process: procly ``-f`` against locust's FastHttpUser doing the same steps;
- a thousand request names (64 users, one process): requests/s and the peak resident
  memory of the worker and of the coordinator;
- 10,000 virtual users with a think time of 1 s from one process against procly's
  built-in target: the rate they hold (10,000 users / (1 s + latency)) and the worker
  process's peak resident memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.queues import machine

ROOT = Path(__file__).resolve().parent.parent

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }}
}}
"""

LOCUSTFILE = """
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

class Hammer(FastHttpUser):
    wait_time = constant(0)

    @task
    def root(self):
        self.client.get("/")
"""


FLOW_SCENARIO = """
from procly.loadtest import flow


@flow
async def three_steps(user):
    await user.get("/")
    await user.post("/api/cart", json={"item": 42, "quantity": 2})
    await user.get(f"/item/{user.rng.randint(1, 1000)}", name="/item/[id]")
"""

FLOW_LOCUSTFILE = """
import random

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser


class ThreeSteps(FastHttpUser):
    wait_time = constant(0)

    @task
    def three_steps(self):
        self.client.get("/")
        self.client.post("/api/cart", json={"item": 42, "quantity": 2})
        self.client.get(f"/item/{random.randint(1, 1000)}", name="/item/[id]")
"""

MANY_NAMES_SCENARIO = """
from procly.loadtest import flow


@flow
async def browse(user):
    await user.get(f"/item/{user.rng.randrange(1000)}", name=f"/item/{user.rng.randrange(1000)}")
"""

THINKING_SCENARIO = """
from procly.loadtest import flow


@flow
async def visit(user):
    await user.get("/")
    await user.think(1.0)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nginx:
    """nginx on 127.0.0.1 with one worker, for as long as the ``with`` block runs."""

    def __init__(self, workdir: Path, access_log: bool) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "access.log"
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=workdir, port=self.port, access_log=self.log if access_log else "off"))
        self.conf = conf
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        self.process = subprocess.Popen(
            ["nginx", "-c", str(self.conf), "-p", str(self.workdir)], stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the worker processes have used so far: where it nears the
        run's length, the server (one worker, one core) and not the client set the pace."""
        assert self.process is not None
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:  # fields[1] is the parent's pid
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")


def server_busy(nginx: Nginx, run: Callable[[], dict[str, float] | None], seconds: int) -> dict[str, float] | None:
    """``run()``'s result with ``server_cpu_percent``: the server's CPU time over the run's length."""
    before = nginx.cpu_seconds()
    result = run()
    if result is not None:
        result["server_cpu_percent"] = (nginx.cpu_seconds() - before) / seconds * 100
    return result


def children_cpu_seconds() -> float:
    """User + system time of the children this process has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, seconds: int) -> dict[str, float] | None:
    if not shutil.which("wrk"):
        print("  wrk: not installed (apt-get install wrk), skipped")
        return None
    before = children_cpu_seconds()
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", url], capture_output=True, text=True, check=True
    ).stdout
    cpu = children_cpu_seconds() - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return {
        "rps": rps,
        "p50_ms": float(p50.group(1)) * scale,
        "cpu_us_per_request": cpu / requests * 1e6 if requests else float("nan"),
    }


def run_procly(url: str, seconds: int, processes: int = 1, extra: tuple[str, ...] = ()) -> dict[str, float]:
    before = children_cpu_seconds()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "procly.cli",
            "loadtest",
            "-q",
            "-p",
            str(processes),
            "-c",
            "64",
            "-d",
            f"{seconds}s",
            "--json",
            "-",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = children_cpu_seconds() - before
    report = json.loads(out)
    result = {"rps": report["requests_per_s"], "p50_ms": report["latency_p50_ms"], "requests": report["requests"]}
    if report["requests"]:
        result["cpu_us_per_request"] = cpu / report["requests"] * 1e6  # coordinator and workers
    if "send_lag_p99_ms" in report:  # rate mode: how long after their due time requests went out
        result.update(send_lag_p50_ms=report["send_lag_p50_ms"], send_lag_p99_ms=report["send_lag_p99_ms"])
    return result


def locust_binary() -> str | None:
    local = ROOT / ".venv-locust" / "bin" / "locust"
    if local.exists():
        return str(local)
    return shutil.which("locust")


def run_locust(url: str, seconds: int, workdir: Path, source: str = LOCUSTFILE) -> dict[str, float] | None:
    binary = locust_binary()
    if binary is None:
        print("  locust: not installed (python3 tasks.py bench-load installs it in .venv-locust), skipped")
        return None
    locustfile = workdir / "locustfile.py"
    locustfile.write_text(source)
    prefix = workdir / "locust"
    before = children_cpu_seconds()
    subprocess.run(
        [
            binary,
            "-f",
            str(locustfile),
            "--headless",
            "-u",
            "64",
            "-r",
            "64",
            "-t",
            f"{seconds}s",
            "--host",
            url.rstrip("/"),
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "ERROR",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 60,
    )
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows["Aggregated"]
    cpu = children_cpu_seconds() - before
    count = int(total["Request Count"])
    return {
        "rps": float(total["Requests/s"]),
        "p50_ms": float(total["50%"]),
        "cpu_us_per_request": cpu / count * 1e6 if count else float("nan"),
    }


def run_procly_flow(url: str, seconds: int, workdir: Path) -> dict[str, float]:
    scenario = workdir / "three_steps.py"
    scenario.write_text(FLOW_SCENARIO)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "procly.cli",
            "loadtest",
            "-q",
            "-p",
            "1",
            "-u",
            "64",
            "-f",
            str(scenario),
            "-d",
            f"{seconds}s",
            "--json",
            "-",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(out)
    return {
        "rps": report["requests_per_s"],
        "p50_ms": report["latency_p50_ms"],
        "requests": report["requests"],
        "errors": report["errors"],
        "cpu_us_per_request": report["worker_cpu_s"] / max(report["requests"], 1) * 1e6,
    }


def run_many_names(url: str, seconds: int, workdir: Path) -> dict[str, float]:
    """A thousand request names (the most kept apart): requests/s, and the peak resident
    memory of the worker and of the coordinator."""
    scenario = workdir / "many_names.py"
    scenario.write_text(MANY_NAMES_SCENARIO)
    argv = ["procly", "loadtest", "-q", "-p", "1", "-u", "64", "-f", str(scenario), "-d", f"{seconds}s"]
    wrapper = (
        "import resource, runpy, sys\n"
        f"sys.argv = {argv + ['--json', '-', url]!r}\n"
        "try:\n"
        "    runpy.run_module('procly.cli', run_name='__main__')\n"
        "finally:\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"procly loadtest failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    return {
        "rps": report["requests_per_s"],
        "names": len(report["by_name"]),
        "worker_rss_mib": report["worker_peak_rss_mib"],
        "coordinator_rss_mib": int(done.stderr.strip().splitlines()[-1]) / 1024,
    }


def run_ten_thousand_users(seconds: int, workdir: Path) -> dict[str, float]:
    scenario = workdir / "thinking.py"
    scenario.write_text(THINKING_SCENARIO)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "procly.cli",
            "loadtest",
            "-q",
            "-p",
            "1",
            "-u",
            "10000",
            "-f",
            str(scenario),
            "-d",
            f"{seconds}s",
            "--warmup",
            "3s",
            "--json",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(out)
    expected = 10_000 / (1.0 + report["latency_mean_ms"] / 1000)
    return {
        "rps": report["requests_per_s"],
        "expected_rps": expected,
        "p50_ms": report["latency_p50_ms"],
        "p99_ms": report["latency_p99_ms"],
        "errors": report["errors"],
        "rss_mib": report["worker_peak_rss_mib"],
    }


def flow_cases(seconds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="procly-bench-flows-") as tmp:
        workdir = Path(tmp)
        with Nginx(workdir, access_log=False) as nginx:
            print(
                f"three-step flow (GET, POST JSON, GET named), 64 users, think 0, one process, {seconds} s, "
                f"nginx on {nginx.url}"
            )
            mine = server_busy(nginx, lambda: run_procly_flow(nginx.url, seconds, workdir), seconds)
            assert mine is not None
            time.sleep(1)
            theirs = server_busy(nginx, lambda: run_locust(nginx.url, seconds, workdir, FLOW_LOCUSTFILE), seconds)
        # On a shared machine the CPU each request costs the client is the steadier figure; a
        # server near 100% of its one core is what held the requests/s.
        print(
            f"{'tool':<28}{'requests/s':>12}{'p50 ms':>9}{'procly / tool':>15}"
            f"{'client CPU/request':>20}{'nginx CPU':>11}"
        )
        print(
            f"{'procly loadtest -f':<28}{mine['rps']:>12,.0f}{mine['p50_ms']:>9.2f}{1.0:>14.2f}x"
            f"{mine['cpu_us_per_request']:>17.1f} µs{mine['server_cpu_percent']:>10.0f}%"
        )
        if theirs is not None:
            ratio = mine["rps"] / theirs["rps"] if theirs["rps"] else float("inf")
            cpu_ratio = theirs["cpu_us_per_request"] / mine["cpu_us_per_request"]
            print(
                f"{'locust FastHttpUser':<28}{theirs['rps']:>12,.0f}{theirs['p50_ms']:>9.2f}{ratio:>14.2f}x"
                f"{theirs['cpu_us_per_request']:>17.1f} µs{theirs['server_cpu_percent']:>10.0f}%"
            )
            print(f"client CPU per request: procly {cpu_ratio:.1f}x less than locust")
        with Nginx(workdir, access_log=False) as nginx:
            many = run_many_names(nginx.url, seconds, workdir)
        print(
            f"a thousand request names, 64 users, one process: {many['rps']:,.0f} requests/s over "
            f"{many['names']:,.0f} names, peak RSS worker {many['worker_rss_mib']:.1f} MiB, "
            f"coordinator {many['coordinator_rss_mib']:.1f} MiB"
        )
        print()
        print(f"10,000 virtual users, think time 1 s, one process, built-in target, {seconds} s after 3 s warm-up")
        big = run_ten_thousand_users(seconds, workdir)
        print(
            f"  {big['rps']:,.0f} requests/s (10,000 users / (1 s + mean latency) = {big['expected_rps']:,.0f}), "
            f"p50 {big['p50_ms']:.2f} ms, p99 {big['p99_ms']:.2f} ms, errors {big['errors']:,.0f}, "
            f"worker peak RSS {big['rss_mib']:.1f} MiB"
        )


Round = dict[str, dict[str, float] | None]


def plain_rounds(nginx: Nginx, seconds: int, count: int) -> list[Round]:
    """wrk and procly's plain mode, in *count* rounds of one run each, the order swapped
    every round (a machine that speeds up or slows down favours neither)."""
    tools: dict[str, Callable[[], dict[str, float] | None]] = {
        "wrk": lambda: run_wrk(nginx.url, seconds),
        "procly loadtest": lambda: run_procly(nginx.url, seconds),
    }
    rounds: list[Round] = []
    for index in range(max(1, count)):
        order = list(tools) if index % 2 == 0 else list(reversed(tools))
        measured: Round = {}
        for name in order:
            measured[name] = server_busy(nginx, tools[name], seconds)
            time.sleep(1)
        rounds.append(measured)
    return rounds


def _ratio(measured: Round) -> float | None:
    mine, theirs = measured.get("procly loadtest"), measured.get("wrk")
    if mine is None or theirs is None or not theirs["rps"]:
        return None
    return mine["rps"] / theirs["rps"]


def median_round(rounds: list[Round]) -> Round:
    """The round whose procly / wrk ratio is the median (the first, without wrk)."""
    ranked = sorted((r for r in rounds if _ratio(r) is not None), key=lambda r: _ratio(r) or 0.0)
    chosen = ranked[len(ranked) // 2] if ranked else rounds[0]
    return {"wrk": chosen.get("wrk"), "procly loadtest": chosen["procly loadtest"]}


def print_rounds(rounds: list[Round]) -> None:
    print()
    print("plain mode, round by round (client CPU: user + system time of the tool's processes a request)")
    for index, measured in enumerate(rounds, 1):
        parts = []
        for name in ("wrk", "procly loadtest"):
            result = measured.get(name)
            if result is not None:
                parts.append(
                    f"{name.split()[0]} {result['rps']:,.0f}/s {result.get('cpu_us_per_request', float('nan')):.1f} µs "
                    f"(nginx {result['server_cpu_percent']:.0f}%)"
                )
        ratio = _ratio(measured)
        suffix = f": procly / wrk {ratio:.2f}x" if ratio is not None else ""
        print(f"  round {index}: " + ", ".join(parts) + suffix)
    ratios = sorted(r for r in map(_ratio, rounds) if r is not None)
    if ratios:
        median = _ratio(median_round(rounds))
        print(f"  procly / wrk: median {median:.2f}x of {', '.join(f'{r:.2f}x' for r in ratios)}")


def load_average() -> float:
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of wrk and procly (default 3)")
    parser.add_argument("--no-flows", action="store_true", help="skip the user-flow cases")
    parser.add_argument("--only-flows", action="store_true", help="run the user-flow cases alone")
    args = parser.parse_args(argv)
    if not shutil.which("nginx"):
        print("nginx is not installed (apt-get install nginx): nothing to measure against", file=sys.stderr)
        return 2
    quiet_deadline = time.monotonic() + 60
    while load_average() > 0.5 and time.monotonic() < quiet_deadline:
        time.sleep(2)
    print(f"machine: {machine()}")
    print(
        f"load average before the runs: {load_average():.2f} (client and server share "
        f"{len(os.sched_getaffinity(0))} cores)"
    )
    if args.only_flows:
        flow_cases(args.seconds)
        return 0
    results: dict[str, dict[str, float] | None] = {}
    with tempfile.TemporaryDirectory(prefix="procly-bench-") as tmp:
        workdir = Path(tmp)
        with Nginx(workdir, access_log=False) as nginx:
            print(f"nginx (1 worker) on {nginx.url}; each tool: 64 connections from one process, {args.seconds} s")
            rounds = plain_rounds(nginx, args.seconds, args.rounds)
            results.update(median_round(rounds))
            time.sleep(1)
            results["locust FastHttpUser"] = server_busy(
                nginx, lambda: run_locust(nginx.url, args.seconds, workdir), args.seconds
            )
            time.sleep(1)
            results["procly loadtest -R 20000"] = run_procly(nginx.url, args.seconds, extra=("-R", "20000"))
        with Nginx(workdir, access_log=True) as nginx:
            counted = run_procly(nginx.url, 3, processes=2, extra=("-n", "20000"))
        time.sleep(0.5)
        logged = sum(1 for _ in nginx.log.open()) if nginx.log.exists() else 0

    print()
    print(f"{'tool':<28}{'requests/s':>12}{'p50 ms':>9}{'procly / tool':>15}{'nginx CPU':>11}")
    mine = results["procly loadtest"]
    assert mine is not None
    for name, result in results.items():
        if result is None:
            continue
        ratio = mine["rps"] / result["rps"] if result["rps"] else float("inf")
        busy = f"{result['server_cpu_percent']:>10.0f}%" if "server_cpu_percent" in result else ""
        print(f"{name:<28}{result['rps']:>12,.0f}{result['p50_ms']:>9.2f}{ratio:>14.2f}x{busy}")
    print_rounds(rounds)
    rated = results["procly loadtest -R 20000"]
    if rated is not None and "send_lag_p99_ms" in rated:
        print(
            f"send lag at -R 20000 (after the due time): p50 {rated['send_lag_p50_ms'] * 1000:.0f} µs, "
            f"p99 {rated['send_lag_p99_ms'] * 1000:.0f} µs"
        )
    print()
    print(
        f"access-log check: procly counted {counted['requests']:,} requests with -n 20000 -p 2, "
        f"nginx logged {logged:,}: {'match' if counted['requests'] == logged else 'MISMATCH'}"
    )
    if not args.no_flows:
        print()
        flow_cases(args.seconds)
    return 0 if counted["requests"] == logged else 1


if __name__ == "__main__":
    sys.exit(main())
