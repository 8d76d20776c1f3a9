"""The ``procly loadtest`` and ``procly serve-target`` commands.

Exit status of ``procly loadtest``: 0 when the run completed and no ``--fail-if``
condition is true; 1 when a condition is true or a worker process was lost; 2 for
bad options or a load that could not start; 130 after Ctrl-C (the report is still
printed and written).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

EXIT_OK, EXIT_BROKEN, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_commands(commands: Any) -> None:
    """Add ``loadtest`` and ``serve-target`` to the ``procly`` command's sub-parsers."""
    p = commands.add_parser(
        "loadtest",
        help="load-test an HTTP service or a Python callable from every core",
        description="HTTP/1.1 keep-alive load (or calls of a Python function) from several processes, "
        "with latency percentiles merged across them. With no URL and no --call, a built-in "
        "target server is started on 127.0.0.1 and tested. "
        "'procly loadtest compare BASELINE.json NEW.json' compares two --json reports (the CI gate; "
        "see 'procly loadtest compare --help').",
    )
    p.add_argument("url", nargs="?", help="http:// URL to test (default: the built-in target)")
    p.add_argument("--call", metavar="MODULE:FUNCTION", help="call this function (sync or async) instead of HTTP")
    p.add_argument(
        "-c",
        "--connections",
        type=int,
        default=64,
        help="concurrent connections (or callers) in all, split among processes (default 64)",
    )
    p.add_argument("-p", "--processes", type=int, default=None, help="worker processes (default: one per core)")
    p.add_argument("-d", "--duration", help="how long to run, e.g. 10s, 2m (default 10s unless -n)")
    p.add_argument("-n", "--requests", help="stop after this many requests in all, e.g. 10000 or 10k")
    p.add_argument(
        "-R",
        "--rate",
        help="rate in requests/s in all (open loop, latency corrected for coordinated "
        "omission): a number, or stages that ramp it, e.g. 30s:1000,1m:1000,10s:0",
    )
    p.add_argument("-m", "--method", default="GET", help="HTTP method (default GET)")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra header")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", help="request body (text)")
    body.add_argument("--body-file", type=Path, help="request body read from a file")
    p.add_argument("--timeout", default="10s", help="per-request timeout (default 10s)")
    p.add_argument("--warmup", default="0", help="run this long before measuring, e.g. 2s")
    p.add_argument("-k", "--insecure", action="store_true", help="https: do not verify the server's certificate")
    p.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], help="how workers start")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (- for standard output)")
    p.add_argument("--csv", metavar="FILE", help="write the per-second timeline and totals as CSV")
    p.add_argument("--html", metavar="FILE", help="write an HTML report with latency plots")
    p.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="CONDITION",
        help="exit 1 if true, e.g. 'p99>200ms', 'errors>0.1%%', 'rps<1000', "
        "'p95{name=login}>300ms', 'checks<99.9%%' (repeatable; latencies need their unit)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    live = p.add_argument_group("watching the run live")
    live.add_argument(
        "--web",
        nargs="?",
        const="127.0.0.1:0",
        metavar="HOST:PORT",
        help="serve a live dashboard (default 127.0.0.1 and a free port, printed at start); "
        "write --web=HOST:PORT when a URL follows",
    )
    live.add_argument(
        "--web-linger",
        default="10s",
        metavar="DURATION",
        help="keep the dashboard up this long after the run so its verdicts can be read "
        "(default 10s; Ctrl-C ends it sooner)",
    )
    live.add_argument(
        "--prometheus",
        metavar="HOST:PORT",
        help="expose OpenMetrics at http://HOST:PORT/metrics while the run lasts "
        "(HOST defaults to 127.0.0.1, port 0 picks a free one, printed at start)",
    )
    flows = p.add_argument_group("user flows (a scenario written in Python; see the README)")
    flows.add_argument(
        "-f",
        "--scenario",
        metavar="FILE.py",
        help="run the @flow functions of this file as virtual users; URL is their base URL",
    )
    flows.add_argument(
        "-u",
        "--users",
        type=int,
        metavar="N",
        help="virtual users in all (default: -c); with no scenario, the same as -c",
    )
    flows.add_argument(
        "--stages",
        metavar="STAGES",
        help="ramp the users linearly, closed loop: DURATION:USERS,... e.g. 30s:100,2m:100,20s:0",
    )
    flows.add_argument(
        "--data",
        metavar="FILE.csv",
        help="test data: each user gets rows of this CSV file (header line = field names) as user.row",
    )
    flows.add_argument(
        "--data-order",
        choices=["round-robin", "random"],
        default="round-robin",
        help="which row a user gets (default round-robin; random draws with --seed)",
    )
    flows.add_argument(
        "--seed",
        type=int,
        help="seed of the users' random generators (think times, flow "
        "choice, random rows): the same seed, the same choices",
    )
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the load workers as tasks on this Dask scheduler "
        "(tcp://host:8786); -p defaults to its worker threads",
    )

    s = commands.add_parser("serve-target", help="run the built-in HTTP target server (for load tests)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    s.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    s.add_argument("--tls-key", help="the certificate's private key (PEM)")


def _port(text: str) -> int:
    """A TCP port number from the command line (0 to 65535)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} out of range (0 to 65535)")
    return port


def serve_target_command(args: argparse.Namespace) -> int:
    from ._config import resolve_host
    from ._target import serve_target

    if (args.tls_cert is None) != (args.tls_key is None):
        print("procly serve-target: give both --tls-cert and --tls-key", file=sys.stderr)
        return EXIT_USAGE
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    try:
        resolve_host(args.host, args.port)
        serve_target(args.host, args.port, announce=True, tls=tls)
    except ValueError as exc:
        print(f"procly serve-target: --host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "the address is in use"
        print(f"procly serve-target: cannot listen on {args.host} port {args.port}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _config_from(args: argparse.Namespace, url: str | None) -> Any:
    from ._config import LoadTestConfig, parse_count, parse_duration, usable_cpus

    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header wants 'NAME: VALUE', got {header!r}")
        headers.append((name.strip(), value.strip()))
    body = b""
    if args.body is not None:
        body = args.body.encode()
    elif args.body_file is not None:
        body = args.body_file.read_bytes()
    from ._flows_cli import flow_options

    extra = flow_options(args, headers, body)
    return LoadTestConfig(
        url=url,
        call=args.call,
        processes=args.processes if args.processes is not None else usable_cpus(),
        duration=parse_duration(args.duration) if args.duration else None,
        requests=parse_count(args.requests) if args.requests else None,
        method=args.method.upper(),
        headers=tuple(headers),
        body=body,
        timeout=parse_duration(args.timeout),
        warmup=parse_duration(args.warmup),
        start_method=args.start_method,
        insecure=args.insecure,
        **extra,
    )


class _ProgressLine:
    """The live line on standard error: rewritten in place on a terminal, a line a second otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown = False

    def __call__(self, progress: Any) -> None:
        if progress.warming_up:
            text = "  warming up ..."
        else:
            text = (
                f"  {progress.elapsed:6.1f} s  {progress.requests:>10,} requests  {progress.rate:>9,.0f}/s  "
                f"errors {progress.errors:,}  p50 {progress.p50_ms:.2f} ms  p95 {progress.p95_ms:.2f} ms  "
                f"p99 {progress.p99_ms:.2f} ms"
            )
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        if not text.endswith("\n"):
            sys.stdout.write("\n")
    else:
        Path(path).write_text(text, encoding="utf-8")


def loadtest_command(args: argparse.Namespace) -> int:
    from ._live import LiveState

    if args.web is not None and "://" in args.web and args.url is None:
        args.url, args.web = args.web, "127.0.0.1:0"  # "--web URL": the URL is the target
    try:
        thresholds, web, prometheus, linger, embedded, config = _checked_options(args)
    except (ValueError, ImportError, OSError) as exc:
        print(f"procly loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE

    live = LiveState() if web is not None or prometheus is not None else None
    try:
        servers = _start_live_servers(live, web, prometheus)
    except OSError as exc:
        print(f"procly loadtest: cannot serve the live views: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run_and_report(args, config, embedded, thresholds, live, linger if web is not None else 0.0)
    finally:
        for server in servers:
            server.close()


def _checked_options(args: argparse.Namespace) -> tuple[list[Any], Any, Any, float, bool, Any]:
    """The options checked and parsed: the thresholds, the --web and --prometheus
    addresses (or None), the dashboard's linger, whether the target is the embedded one,
    and the config.

    Raises:
        ValueError: an option is malformed, or a URL and --call are both given.
        ImportError: --call names a callable that cannot be imported.
        OSError: the target's host name does not resolve.
    """
    from ._config import parse_duration
    from ._live import parse_address
    from ._thresholds import Threshold

    thresholds = [Threshold.parse(text) for text in args.fail_if]
    _check_report_paths(args)
    web = parse_address(args.web, "--web") if args.web is not None else None
    prometheus = parse_address(args.prometheus, "--prometheus") if args.prometheus is not None else None
    linger = parse_duration(args.web_linger)
    if args.url is not None and args.call is not None:
        raise ValueError("give a URL or --call, not both")
    embedded = args.url is None and args.call is None
    # The embedded target's URL is known once it runs: check the other options now.
    config = _config_from(args, "http://127.0.0.1/" if embedded else args.url)
    if not embedded and config.url is not None:
        # Resolved once, here: every worker connects to this address and nothing else.
        config = config.resolved()
    if config.call is not None:
        from ._calls import resolve_callable

        resolve_callable(config.call)  # fail here, once, rather than in every worker
    return thresholds, web, prometheus, linger, embedded, config


def _start_live_servers(live: Any, web: Any, prometheus: Any) -> list[Any]:
    """Start the live dashboard (*web*) and the OpenMetrics endpoint (*prometheus*), each
    if its address is given; the servers started.

    Raises:
        OSError: a server cannot listen (those started are closed).
    """
    from ._live import LiveServer

    servers: list[Any] = []
    try:
        for address, dashboard, what in (
            (web, True, "live dashboard at {}"),
            (prometheus, False, "OpenMetrics at {}metrics"),
        ):
            if address is not None and live is not None:
                server = LiveServer(live, address[0], address[1], dashboard=dashboard)
                servers.append(server)
                print(f"procly loadtest: {what.format(server.url)}", file=sys.stderr, flush=True)
                if not server.loopback:
                    print(
                        f"procly loadtest: warning: {server.url} is reachable from the network, without authentication",
                        file=sys.stderr,
                        flush=True,
                    )
    except OSError:
        for server in servers:
            server.close()
        raise
    return servers


def _run_and_report(
    args: argparse.Namespace, config: Any, embedded: bool, thresholds: list[Any], live: Any, linger: float
) -> int:
    from ._runner import LoadTestError
    from ._target import EmbeddedTarget
    from ._thresholds import threshold_verdicts

    progress = None if args.quiet else _ProgressLine(sys.stderr)
    target = EmbeddedTarget(start_method=args.start_method) if embedded else None
    try:
        report = _run(args, config, target, live, progress)
    except (LoadTestError, OSError) as exc:
        if progress is not None:
            progress.finish()
        print(f"procly loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nprocly loadtest: interrupted before the load started", file=sys.stderr)
        return EXIT_INTERRUPTED
    if progress is not None:
        progress.finish()

    report.thresholds = threshold_verdicts(thresholds, report)
    if live is not None:
        live.finish(report, report.thresholds)
    unwritten = _write_reports(args, report)
    broken, failed_run = _print_problems(thresholds, report)
    if linger > 0 and not report.interrupted:
        _linger(linger)
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_BROKEN if broken or report.workers_lost or failed_run or unwritten else EXIT_OK


def _run(args: argparse.Namespace, config: Any, target: Any, live: Any, progress: Any) -> Any:
    """Run the load (against the embedded *target* while it serves, if there is one),
    here or on the Dask cluster; the report.

    Raises:
        LoadTestError / OSError: the load could not run.
    """
    from ._runner import run_load_test

    with target if target is not None else contextlib.nullcontext():
        if target is not None:
            config = _config_from(args, target.url)
            print(f"procly loadtest: no URL given, testing the built-in target at {target.url}", file=sys.stderr)
        if live is not None:
            live.set_config(config)
        if args.dask:
            report = _run_on_dask(args, config)
        else:
            report = run_load_test(config, progress, live.update if live is not None else None)
    if target is not None:
        report.target_served = target.served
    return report


def _run_on_dask(args: argparse.Namespace, config: Any) -> Any:
    """Run the load on the Dask cluster at ``--dask``; the report.

    Raises:
        LoadTestError: Dask distributed is not installed, or the run failed.
    """
    from ._runner import LoadTestError

    try:
        from ._dask import run_on_dask
    except ImportError as exc:
        raise LoadTestError(f"--dask needs Dask distributed: pip install 'procly[dask]' ({exc})") from None

    print(f"procly loadtest: running the load on the Dask cluster at {args.dask}", file=sys.stderr)
    return run_on_dask(config, args.dask, processes_given=args.processes is not None)


def _report_files(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(option, path)`` of the report files asked for (not ``-``, standard output)."""
    return [(option, path) for option, path in (("--json", args.json), ("--csv", args.csv), ("--html", args.html))
            if path and path != "-"]  # fmt: skip


def _check_report_paths(args: argparse.Namespace) -> None:
    """Fail before the run, not after it, where a report file cannot be written.

    Raises:
        ValueError: a report's folder does not exist or cannot be written to, or the path
            is a folder.
    """
    for option, path in _report_files(args):
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise ValueError(f"{option} {path}: that is a folder; give a file name")
        if os.path.exists(path):
            writable = os.access(path, os.W_OK)  # /dev/null, /dev/stdout: only the file counts
        elif not os.path.isdir(folder):
            raise ValueError(f"{option} {path}: the folder {folder} does not exist")
        else:
            writable = os.access(folder, os.W_OK | os.X_OK)
        if not writable:
            raise ValueError(f"{option} {path}: cannot be written (permission denied)")


def _write_reports(args: argparse.Namespace, report: Any) -> bool:
    """Print the text report (unless the JSON goes to stdout) and write the files asked for;
    one that cannot be written (the disk filled up during the run, say) is reported and the
    others are still written. True if one could not be."""
    from ._html import to_html

    if args.json != "-":
        print(report.to_text())
    unwritten = False
    for option, path, render in (
        ("--json", args.json, report.to_json),
        ("--csv", args.csv, report.to_csv),
        ("--html", args.html, lambda: to_html(report)),
    ):
        if not path:
            continue
        try:
            _write(path, render())
        except OSError as exc:
            print(f"procly loadtest: cannot write {option} {path}: {exc.strerror or exc}", file=sys.stderr)
            unwritten = True
    if args.json == "-":  # the text report (which has them) was not printed
        for warning in report.warnings:
            print(f"procly loadtest: warning: {warning}", file=sys.stderr)
    return unwritten


def _print_problems(thresholds: list[Any], report: Any) -> tuple[list[str], str | None]:
    """Print the thresholds broken, a run where nothing succeeded, and the workers lost;
    the thresholds' messages and the failed run's."""
    from ._flows_cli import nothing_succeeded
    from ._thresholds import check_thresholds

    broken = check_thresholds(thresholds, report)
    for message in broken:
        print(f"procly loadtest: {message}", file=sys.stderr)
    failed_run = nothing_succeeded(report)
    if failed_run:
        print(f"procly loadtest: {failed_run}", file=sys.stderr)
    for message in report.workers_lost:
        print(f"procly loadtest: {message}", file=sys.stderr)
    return broken, failed_run


def _linger(linger: float) -> None:
    """Keep the dashboard up *linger* seconds more (Ctrl-C ends the wait)."""
    print(f"procly loadtest: the dashboard stays up {linger:g} s more (Ctrl-C ends it)", file=sys.stderr, flush=True)
    try:
        threading.Event().wait(linger)
    except KeyboardInterrupt:
        pass
