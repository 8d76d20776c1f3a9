"""The load test's settings, how they are split among worker processes, and unit parsing."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|µs|ms|s|m|h)?\s*$")
_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"10"``, ``"10s"``, ``"250ms"``, ``"2m"``, ``"1h"``.

    Raises:
        ValueError: ``text`` is not a non-negative duration.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 10s, 250ms, 2m)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_count(text: str) -> int:
    """A positive count, accepting ``k``/``m`` suffixes: ``"10k"`` is 10000.

    Raises:
        ValueError: ``text`` is not a positive count.
    """
    match = re.match(r"^\s*(\d+(?:\.\d*)?)\s*([kKmM]?)\s*$", text)
    if not match:
        raise ValueError(f"not a count: {text!r} (examples: 1000, 10k, 1m)")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()]
    if value < 1 or value != int(value):
        raise ValueError(f"not a positive whole count: {text!r}")
    return int(value)


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers that differ by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_host(host: str, port: int) -> str:
    """The first address *host* resolves to for a TCP connection to *port*.

    Raises:
        ValueError: it does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ValueError(f"cannot resolve host {host!r}: {reason}") from None
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise ValueError(f"cannot resolve host {host!r}: no address")
    return str(infos[0][4][0])


@dataclass(frozen=True)
class HttpTarget:
    """Where HTTP load goes, parsed once in the coordinator."""

    host: str
    port: int
    path: str
    host_header: str
    tls: bool = False
    address: str | None = None  # the host resolved once, by the coordinator: connections go there only

    @property
    def connect_host(self) -> str:
        """Where connections go: the resolved address (the host name only if none was resolved)."""
        return self.address or self.host

    @classmethod
    def from_url(cls, url: str, address: str | None = None) -> HttpTarget:
        """Parse an ``http://`` or ``https://`` URL (*address*: its host, resolved already).

        Raises:
            ValueError: not an http(s) URL, no host, or a port outside 0-65535.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http URL: {url!r} (example: http://127.0.0.1:8080/)")
        tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise ValueError(f"bad port in {url!r} (ports are 0 to 65535)") from None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host_header = parts.netloc.rpartition("@")[2]
        return cls(host=parts.hostname, port=port, path=path, host_header=host_header, tls=tls, address=address)

    def request_bytes(self, method: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        """The request that every connection sends, built once."""
        lines = [f"{method} {self.path} HTTP/1.1", f"Host: {self.host_header}"]
        names = {name.lower() for name, _ in headers}
        lines += [f"{name}: {value}" for name, value in headers]
        if "user-agent" not in names:
            lines.append("User-Agent: procly-loadtest")
        if body or method in ("POST", "PUT", "PATCH"):
            if "content-length" not in names:
                lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class LoadTestConfig:
    """Everything a load test needs; picklable, so workers of every start method get it.

    Exactly one of ``url`` and ``call`` is set. ``connections``, ``requests`` and ``rate``
    are totals over all processes. With neither ``duration`` nor ``requests``, the run
    lasts 10 seconds.
    """

    url: str | None = None
    call: str | None = None
    processes: int = field(default_factory=usable_cpus)
    connections: int = 64
    duration: float | None = None
    requests: int | None = None
    rate: float | None = None
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    timeout: float = 10.0
    warmup: float = 0.0
    start_method: str | None = None
    insecure: bool = False  # https: do not verify the server's certificate
    address: str | None = None  # the URL's host, resolved once at the start (see resolved())
    #: A ``Stages`` ramp of virtual users (closed loop; ``connections`` is then its peak).
    stages: Any = None
    #: A ``Stages`` ramp of the rate in requests/s (open loop), instead of a constant ``rate``.
    rate_stages: Any = None
    #: A ``Scenario`` (user flows from a Python file): ``url`` is then the base URL of their requests.
    scenario: Any = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.call is None):
            raise ValueError("give exactly one target: a URL or a callable (module:function)")
        self._check_numbers()
        if self.url is not None:
            HttpTarget.from_url(self.url)
        if (self.stages is not None or self.scenario is not None) and self.url is None:
            raise ValueError("stages of users and scenarios need a URL (they are HTTP users)")
        self._ramp_users()

    def _ramp_users(self) -> None:
        """Stages set the users: as many connections as their peak, and without a scenario
        each user sends the single-URL load's request (as ``--stages`` without ``-f`` does).

        That request's scenario is made here from the URL, method, headers and body, and
        made anew each time (``dataclasses.replace`` of another URL or without stages must
        not keep the old one)."""
        set_field = object.__setattr__  # frozen: settled here
        if self.scenario is not None and getattr(self.scenario, "is_single_url", False):
            set_field(self, "scenario", None)  # made below from this config's request, if still wanted
        if self.stages is None:
            return
        peak = getattr(self.stages, "peak", None)
        if not isinstance(peak, (int, float)):
            raise TypeError(f"stages must be a Stages (Stages.parse('30s:100,1m:100')), got {self.stages!r}")
        set_field(self, "connections", max(1, math.ceil(peak)))
        if self.scenario is None:
            from ._scenario import Scenario

            assert self.url is not None
            set_field(self, "scenario", Scenario.single_request(self.url, self.method, list(self.headers), self.body))

    def _check_numbers(self) -> None:
        """Raises ValueError for a count, duration, rate or timeout out of its range."""
        if self.processes < 1:
            raise ValueError(f"processes must be at least 1, got {self.processes}")
        if self.connections < 1:
            raise ValueError(f"connections must be at least 1, got {self.connections}")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"duration must be positive, got {self.duration}")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.warmup < 0:
            raise ValueError(f"warm-up must not be negative, got {self.warmup}")

    def resolved(self) -> LoadTestConfig:
        """This config with the URL's host resolved, once, to the address every worker connects to.

        Raises:
            ValueError: the host name does not resolve (the message says which and why).
        """
        if self.url is None or self.address is not None:
            return self
        target = HttpTarget.from_url(self.url)
        return dataclasses.replace(self, address=resolve_host(target.host, target.port))

    @property
    def effective_duration(self) -> float | None:
        """How long the measured part lasts: None means "until the request budget is spent"."""
        ramp = self.rate_stages if self.rate_stages is not None else self.stages
        if ramp is not None and self.duration is None:
            return ramp.duration
        if self.duration is None and self.requests is None:
            return 10.0
        return self.duration

    @property
    def worker_count(self) -> int:
        """No more processes than connections or requests: an idle process would skew nothing but cost a core."""
        count = min(self.processes, self.connections)
        if self.requests is not None:
            count = min(count, self.requests)
        return max(count, 1)

    def share(self, index: int) -> WorkerShare:
        """What worker ``index`` (of :attr:`worker_count`) does."""
        n = self.worker_count
        return WorkerShare(
            index=index,
            connections=split_evenly(self.connections, n)[index],
            # Open loop: every worker counts the one schedule's requests (see Schedule).
            requests=(
                self.requests
                if self.requests is None or self.rate is not None or self.rate_stages is not None
                else split_evenly(self.requests, n)[index]
            ),
            rate=self.rate_stages if self.rate_stages is not None else self.rate,
            lanes=n,
        )

    def describe(self) -> str:
        target = self.url if self.url is not None else f"call {self.call}"
        if self.scenario is not None and not getattr(self.scenario, "is_single_url", False):
            target = f"{self.scenario.describe()} on {self.url}"
        what = "user" if self.scenario is not None else "connection"
        parts = [
            f"{self.worker_count} process{'es' if self.worker_count > 1 else ''}",
            f"{self.connections} {what}{'s' if self.connections > 1 else ''}",
        ]
        duration = self.effective_duration
        if duration is not None:
            parts.append(f"{duration:g} s")
        if self.requests is not None:
            parts.append(f"{self.requests} requests")
        if self.rate is not None:
            parts.append(f"{self.rate:g} req/s")
        if self.rate_stages is not None:
            parts.append(f"rate stages {self.rate_stages.describe()} req/s")
        if self.stages is not None:
            parts.append(f"stages {self.stages.describe()} users")
        if self.warmup:
            parts.append(f"{self.warmup:g} s warm-up")
        return f"{target}  ({', '.join(parts)})"


@dataclass(frozen=True)
class WorkerShare:
    """One worker's part of the load: its connections, request budget and rate."""

    index: int
    connections: int
    requests: int | None  # this worker's budget (closed loop), or the whole run's (open loop)
    rate: Any  # the whole run's requests/s, a Stages ramp of them, or None ...
    lanes: int = 1  # ... of which this worker sends every lanes-th request, from the index-th
