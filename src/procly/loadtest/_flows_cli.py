"""The command line's options for flows, stages and test data, and the run's verdict."""

from __future__ import annotations

import argparse
from typing import Any

from ._config import parse_duration
from ._report import Report
from ._scenario import Scenario
from ._stages import Stages
from ._stats import http_error_count

_loaded: dict[tuple[Any, ...], Scenario] = {}


def flow_options(args: argparse.Namespace, headers: list[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """``connections``, ``rate``, ``rate_stages``, ``stages`` and ``scenario`` for :class:`LoadTestConfig`.

    Raises:
        ValueError: the options contradict each other, or a stage, the scenario or its
            data is malformed (the message says what and where).
    """
    users = args.users if args.users is not None else args.connections
    rate, rate_stages = _rate(args.rate)
    stages = Stages.parse(args.stages, whole=True) if args.stages is not None else None
    if stages is not None and args.users is not None:
        raise ValueError(
            f"--stages sets the number of users at each moment: -u {args.users} would be ignored "
            "(the stages' largest value is the peak)"
        )
    if stages is not None and args.rate is not None:
        raise ValueError(
            "--stages ramps virtual users (closed loop); to ramp a rate (open loop) give -R the "
            "stages itself, e.g. -R 30s:1000,1m:1000,10s:0"
        )
    if (stages is not None or rate_stages is not None) and args.warmup and parse_duration(args.warmup) > 0:
        raise ValueError("--warmup does not combine with stages: the first stage is the warm-up")
    if args.data is not None and args.scenario is None:
        raise ValueError("--data gives rows to the users of a scenario: add -f FILE.py")
    scenario = None
    if args.scenario is not None:
        scenario = _scenario(args, headers, body)
    elif stages is not None and args.call is not None:
        raise ValueError("--stages ramps HTTP users: it does not apply to --call")
    return {"connections": users, "rate": rate, "rate_stages": rate_stages, "stages": stages, "scenario": scenario}


def _rate(text: str | None) -> tuple[float | None, Stages | None]:
    """-R: a fixed rate, or stages that ramp it (the other one None).

    Raises:
        ValueError: neither a positive number nor stages.
    """
    if text is None:
        return None, None
    if ":" in text:
        return None, Stages.parse(text, "-R")
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"-R wants requests/s (e.g. 1000) or stages (e.g. 30s:1000,1m:1000), got {text!r}") from None
    if not rate > 0:
        raise ValueError(f"-R: the rate must be positive, got {text!r}")
    return rate, None


def _scenario(args: argparse.Namespace, headers: list[tuple[str, str]], body: bytes) -> Scenario:
    """The scenario of -f (loaded once per file, data and seed).

    Raises:
        ValueError: an option that does not apply to a scenario is given too, or the
            scenario or its data is malformed.
    """
    if args.call is not None:
        raise ValueError("give a scenario (-f) or --call, not both")
    if args.rate is not None:
        raise ValueError(
            "flows run closed loop (each user waits for its answers and its think time): "
            "-R is for the single-URL load; ramp users with --stages"
        )
    if args.method.upper() != "GET" or headers or body:
        raise ValueError("-m, -H and --body are for the single-URL load: a scenario sets them per request")
    key = (args.scenario, args.data, args.data_order, args.seed)
    scenario = _loaded.get(key)
    if scenario is None:
        scenario = _loaded[key] = Scenario.load(
            args.scenario, args.data, random_rows=args.data_order == "random", seed=args.seed
        )
    return scenario


def nothing_succeeded(report: Report) -> str | None:
    """Why the run is a failure although no threshold broke (no request succeeded), or None."""
    if report.interrupted:
        return None
    # A response is a success unless it is counted as an HTTP error (a 4xx a request
    # expected is a success; a 200 it did not expect is not).
    if report.requests > http_error_count(report.error_kinds):
        return None
    if report.attempts == 0:
        if report.exceptions:
            kinds = ", ".join(f"{kind} {count:,}" for kind, count in report.exceptions.items())
            return f"no request was made: every flow raised before its first request ({kinds})"
        if report.iterations:
            return f"no request was made: the flows ran {report.iterations:,} iterations without sending one"
        return "no request was made"
    kinds = ", ".join(f"{kind}: {count:,}" for kind, count in list(report.error_kinds.items())[:4])
    return f"no request succeeded: {report.errors:,} of {report.attempts:,} failed ({kinds})"
