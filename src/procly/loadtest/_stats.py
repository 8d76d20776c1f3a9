"""What a load-test worker records, and how the coordinator merges it.

The hot path only appends an integer (microseconds) to a list and bumps a status
counter; latencies go into an HDR histogram in batches (one count per distinct value,
the bucket found inline rather than by ``record_value``) every :data:`FOLD_PERIOD`
seconds (:data:`PACED_FOLD_PERIOD` in rate mode). Recording each value straight into the
histogram costs about 0.9 µs, the batch 0.1-0.4 µs a value (less where values repeat);
folding often keeps each batch short, so a paced request never waits long behind one
(10,000 values at once would hold the loop for ~2 ms).
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from ._sparse_histogram import SparseHistogram, layout_of, merge_histogram, used_buckets

#: Latencies are kept in microseconds, from 1 µs to one hour, with 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
#: How often a worker folds what it recorded into its histograms (see the module doc). In
#: closed loop, larger batches cost less a value (more of them repeat): folding every 1 ms
#: rather than 5 ms cost the plain load 2-6% of its requests/s.
FOLD_PERIOD = 0.005
#: In rate mode a paced send due meanwhile waits behind a fold: 20 values at 20,000
#: requests/s hold it ~10 µs (100 values every 5 ms held it ~50 µs, one send in a hundred:
#: the send lag's p99).
PACED_FOLD_PERIOD = 0.001
#: Distinct request names and check names kept apart, in a worker and in the merged
#: results; beyond, they go under OTHER_NAMES and OTHER_CHECKS (a URL with an id in it and
#: no ``name=``, or a check whose generated name holds the value it compared, would
#: otherwise make one row per id and grow without bound).
MAX_NAMES = 1000
OTHER_NAMES = "(other names: too many distinct names, give requests a name=)"
MAX_CHECKS = 1000
OTHER_CHECKS = "(other checks: too many distinct names, give check() a name=)"


def check_tally(checks: dict[str, list[int]], name: str) -> list[int]:
    """The ``[passed, failed]`` tally of check *name* in *checks*, made if new (under
    OTHER_CHECKS once MAX_CHECKS names are there)."""
    tally = checks.get(name)
    if tally is None:
        tally = checks.setdefault(OTHER_CHECKS if len(checks) >= MAX_CHECKS else name, [0, 0])
    return tally


def new_histogram() -> HdrHistogram:
    """An empty latency histogram (microseconds) with procly's bounds and precision."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


#: What an interval without latencies carries: shared, never written (an interval a recorder
#: hands over is only read, merged into another, or encoded). It is also the bucket layout
#: every SparseHistogram computes its indexes and values with: nothing may record into it.
EMPTY_HISTOGRAM = new_histogram()


def new_sparse_histogram() -> SparseHistogram:
    """An empty latency histogram for one request name (see :mod:`._sparse_histogram`)."""
    return SparseHistogram(EMPTY_HISTOGRAM)


#: An empty name's histogram, shared as EMPTY_HISTOGRAM is.
EMPTY_SPARSE = new_sparse_histogram()


def clear_histogram(hist: HdrHistogram | SparseHistogram) -> None:
    """Empty *hist* in place, as :func:`new_histogram` makes it.

    A worker's tick hands its histograms over and needs empty ones: a new one costs ~130 µs
    (184 KB of fresh pages, while the old one is still alive), hdrh's ``reset()`` ~0.9 ms (a
    Python loop over its counts); clearing the counts in one ``memset`` ~10 µs.
    """
    if isinstance(hist, SparseHistogram):
        hist.clear()
        return
    counts = hist.counts
    ctypes.memset(ctypes.addressof(counts), 0, ctypes.sizeof(counts))
    hist.total_count = 0
    hist.min_value = sys.maxsize
    hist.max_value = 0
    hist.start_time_stamp_msec = 0
    hist.end_time_stamp_msec = 0


def histogram_from(values_us: list[int]) -> HdrHistogram:
    """A histogram holding ``values_us``; values beyond the bounds are clamped."""
    hist = new_histogram()
    record_batch(hist, values_us)
    return hist


def record_batch(hist: HdrHistogram | SparseHistogram, values_us: list[int]) -> None:
    """Add ``values_us`` (whole microseconds) to ``hist``; values beyond the bounds are clamped.

    The same counts as one ``record_value`` per distinct value, a few times cheaper: the
    bucket arithmetic of ``record_value`` (five Python calls a value) is done inline here.
    """
    counted = Counter(values_us)
    if not counted:
        return
    low, high = min(counted), max(counted)
    if low < LOWEST_US or high > HIGHEST_US:
        clamped: Counter[int] = Counter()
        for value, count in counted.items():
            clamped[min(max(value, LOWEST_US), HIGHEST_US)] += count
        counted, low, high = clamped, max(low, LOWEST_US), min(high, HIGHEST_US)
    layout = layout_of(hist)
    try:
        mask = layout.sub_bucket_mask
        unit = layout.unit_magnitude
        half_magnitude = layout.sub_bucket_half_count_magnitude
        half = layout.sub_bucket_half_count
        counts = layout.counts
        counts_len = layout.counts_len
    except AttributeError:  # pragma: no cover - another hdrhistogram: its own path
        for value, count in counted.items():
            hist.record_value(value, count)
        return
    shift = unit + half_magnitude + 1
    pairs = []
    for value, count in counted.items():
        # hdrh's _counts_index_for(value), inline (value >= 1).
        bucket = (value | mask).bit_length() - shift
        pairs.append((((bucket + 1) << half_magnitude) + (value >> (bucket + unit)) - half, count))
    if isinstance(hist, SparseHistogram):
        hist.add_counts(pairs, sum(counted.values()), low, high)
        return
    for index, count in pairs:
        if 0 <= index < counts_len:
            counts[index] += count
    hist.total_count += sum(counted.values())
    hist.min_value = min(hist.min_value, low)
    hist.max_value = max(hist.max_value, high)


# When this process last counted an error (monotonic; 0: never): a run's measured time
# runs to its last outcome, answer or error (see _worker).
_last_error_at = [0.0]


def last_error_at() -> float:
    return _last_error_at[0]


class Recorder:
    """One worker's tallies since its last flush: latencies, status codes, errors.

    ``send_lags`` (rate mode) holds, in microseconds, how long after its due time each
    request that waited for its time on a free connection was actually written; ``late``
    counts requests that were sent late because no connection was free when they were due.
    Everything is recorded under one request ``name``.
    """

    __slots__ = (
        "latencies",
        "statuses",
        "ok",
        "errors",
        "bytes_received",
        "measure_from",
        "send_lags",
        "late",
        "name",
        "histogram",
        "lag_histogram",
        "_spares",
    )

    def __init__(self, name: str = "") -> None:
        # Requests due before this (monotonic) time belong to the warm-up: not recorded.
        self.measure_from = float("-inf")
        self.latencies: list[int] = []
        self.histogram = self._new_histogram()  # the latencies folded so far
        self.lag_histogram: HdrHistogram | SparseHistogram | None = None  # the send lags folded so far
        self.statuses: Counter[int] = Counter()
        self.ok = 0  # status 200, counted apart: the common case stays one integer add
        self.errors: Counter[str] = Counter()
        self.bytes_received = 0
        self.send_lags: list[int] = []
        self.late = 0
        self.name = name
        self._spares: list[HdrHistogram | SparseHistogram] = []  # emptied histograms of earlier ticks, for reuse

    def success(self, latency_s: float, status: int = 0) -> None:
        self.latencies.append(int(latency_s * 1e6))
        self.statuses[status] += 1

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
        _last_error_at[0] = time.monotonic()

    def take(self) -> Interval:
        """Everything recorded since the last call, as an :class:`Interval`; then start afresh."""
        interval = self._take_own()
        interval.by_name = {self.name: interval.copy_counts()}
        return interval

    def take_wire(self) -> dict[str, Any]:
        """``take().to_wire()``, as a worker's tick sends it, its histograms then reused.

        Everything here goes under one name, whose tallies are the total's: the wire form
        says so rather than carrying a copy.
        """
        interval = self._take_own()
        wire = interval.to_wire()
        wire["by_name"] = {self.name: None}
        self.recycle(interval)
        return wire

    def recycle(self, interval: Interval) -> None:
        """Keep the histograms of *interval*, taken from this recorder and done with, for reuse."""
        for hist in (interval.histogram, interval.send_lag):
            if hist is not None and hist is not self._EMPTY and len(self._spares) < 2:
                clear_histogram(hist)
                self._spares.append(hist)

    @staticmethod
    def _new_histogram() -> HdrHistogram | SparseHistogram:
        return new_histogram()

    #: What an interval taken with nothing recorded carries (shared, never written).
    _EMPTY: HdrHistogram | SparseHistogram = EMPTY_HISTOGRAM

    def _empty_histogram(self) -> HdrHistogram | SparseHistogram:
        return self._spares.pop() if self._spares else self._new_histogram()

    def fold(self) -> None:
        """Move the latencies and send lags recorded since the last fold into the histograms."""
        self._fold()

    def _fold(self) -> None:
        if self.latencies:
            latencies, self.latencies = self.latencies, []
            record_batch(self.histogram, latencies)
        if self.send_lags:
            lags, self.send_lags = self.send_lags, []
            if self.lag_histogram is None:
                self.lag_histogram = self._empty_histogram()
            record_batch(self.lag_histogram, lags)

    def _take_own(self) -> Interval:
        self._fold()
        histogram = self.histogram
        if histogram.get_total_count():
            self.histogram = self._empty_histogram()
        else:
            histogram = self._EMPTY  # nothing recorded: this recorder keeps its own
        lags, self.lag_histogram = self.lag_histogram, None
        if self.ok:
            self.statuses[200] += self.ok
            self.ok = 0
        interval = Interval(
            requests=histogram.get_total_count(),
            statuses=dict(self.statuses),
            errors=dict(self.errors),
            histogram=histogram,
            bytes_received=self.bytes_received,
            send_lag=lags,
            late=self.late,
        )
        self.statuses.clear()
        self.errors.clear()
        self.bytes_received = 0
        self.late = 0
        return interval

    def discard(self) -> None:
        self.latencies = []
        self.send_lags = []
        clear_histogram(self.histogram)
        if self.lag_histogram is not None:
            clear_histogram(self.lag_histogram)
        self.late = 0
        self.ok = 0
        self.statuses.clear()
        self.errors.clear()
        self.bytes_received = 0


class NameRecorder(Recorder):
    """The tallies of one request name of a flow: its latencies in a SparseHistogram (a
    flow may have a thousand names; see :mod:`._sparse_histogram`)."""

    __slots__ = ()

    @staticmethod
    def _new_histogram() -> HdrHistogram | SparseHistogram:
        return new_sparse_histogram()

    _EMPTY = EMPTY_SPARSE


class LockedRecorder(Recorder):
    """A recorder shared by the threads that drive a synchronous callable."""

    __slots__ = ("_lock",)

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._lock = threading.Lock()

    def success(self, latency_s: float, status: int = 0) -> None:
        with self._lock:
            super().success(latency_s, status)

    def error(self, kind: str) -> None:
        with self._lock:
            super().error(kind)

    def fold(self) -> None:
        with self._lock:
            super().fold()

    def take(self) -> Interval:
        with self._lock:
            return super().take()

    def take_wire(self) -> dict[str, Any]:
        with self._lock:
            return super().take_wire()

    def discard(self) -> None:
        with self._lock:
            super().discard()


@dataclass
class Interval:
    """Tallies of one worker over one flush interval (or merged over many).

    ``by_name`` holds the same tallies per request name (their sum is this interval);
    ``checks`` maps a check's name to ``[passed, failed]``; ``exceptions`` counts flows
    that raised, by exception class; ``iterations`` counts flow iterations that ended.
    """

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    histogram: HdrHistogram | SparseHistogram = field(default_factory=new_histogram)
    bytes_received: int = 0
    send_lag: HdrHistogram | SparseHistogram | None = None
    late: int = 0
    by_name: dict[str, Interval] = field(default_factory=dict)
    checks: dict[str, list[int]] = field(default_factory=dict)
    exceptions: dict[str, int] = field(default_factory=dict)
    #: The first exception of each class, with where the flow raised it (``exceptions``' keys).
    exception_samples: dict[str, str] = field(default_factory=dict)
    iterations: int = 0
    peak_rss_kib: int = 0  # the largest peak resident size of the workers merged here
    cpu_s: float = 0.0  # CPU time (user + system) the workers merged here spent while measuring
    watch_s: float = 0.0  # ... of which watching the clock for a due time (rate mode's pacer)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def copy_counts(self) -> Interval:
        """Requests, statuses, errors and latencies only (no names, checks or send lags), copied."""
        histogram = new_sparse_histogram() if isinstance(self.histogram, SparseHistogram) else new_histogram()
        merge_histogram(histogram, self.histogram)
        return Interval(
            requests=self.requests,
            statuses=dict(self.statuses),
            errors=dict(self.errors),
            histogram=histogram,
            bytes_received=self.bytes_received,
        )

    def add(self, other: Interval) -> None:
        """Merge ``other`` into this interval."""
        self.requests += other.requests
        self.bytes_received += other.bytes_received
        self.late += other.late
        self.iterations += other.iterations
        self.peak_rss_kib = max(self.peak_rss_kib, other.peak_rss_kib)
        self.cpu_s += other.cpu_s
        self.watch_s += other.watch_s
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count
        self._add_flow_tallies(other)
        self._add_histograms(other)
        by_name = self.by_name
        for name, sub in other.by_name.items():
            mine = by_name.get(name)
            if mine is None and len(by_name) >= MAX_NAMES:
                mine = by_name.get(OTHER_NAMES)
                name = OTHER_NAMES
            if mine is None:
                by_name[name] = sub.copy_counts()
            else:
                mine.add(sub)

    def _add_histograms(self, other: Interval) -> None:
        if other.histogram.get_total_count():
            if self.histogram is EMPTY_HISTOGRAM:  # shared, never written: this interval gets its own
                self.histogram = new_histogram()
            elif self.histogram is EMPTY_SPARSE:
                self.histogram = new_sparse_histogram()
            merge_histogram(self.histogram, other.histogram)
        if other.send_lag is not None and other.send_lag.get_total_count():
            if self.send_lag is None:
                self.send_lag = new_histogram()
            merge_histogram(self.send_lag, other.send_lag)

    def _add_flow_tallies(self, other: Interval) -> None:
        """Merge what only flows record: exceptions (and their first samples), checks."""
        for kind, count in other.exceptions.items():
            self.exceptions[kind] = self.exceptions.get(kind, 0) + count
        for kind, sample in other.exception_samples.items():
            self.exception_samples.setdefault(kind, sample)
        for name, (passed, failed) in other.checks.items():
            tally = check_tally(self.checks, name)
            tally[0] += passed
            tally[1] += failed

    def to_wire(self) -> dict[str, Any]:
        """A small picklable form: histograms travel in HDR's compressed encoding."""
        return {
            "requests": self.requests,
            "statuses": self.statuses,
            "errors": self.errors,
            "histogram": _histogram_to_wire(self.histogram),
            "bytes_received": self.bytes_received,
            "send_lag": _histogram_to_wire(self.send_lag),
            "late": self.late,
            "by_name": self._names_to_wire(),
            "checks": self.checks,
            "exceptions": self.exceptions,
            "exception_samples": self.exception_samples,
            "iterations": self.iterations,
            "peak_rss_kib": self.peak_rss_kib,
            "cpu_s": self.cpu_s,
            "watch_s": self.watch_s,
        }

    def _names_to_wire(self) -> dict[str, Any]:
        if len(self.by_name) == 1:
            ((name, sub),) = self.by_name.items()
            if sub.requests == self.requests and sub.errors == self.errors and sub.statuses == self.statuses:
                return {name: None}  # one name: its tallies are the total's (one histogram less to encode)
        return {name: sub.to_wire() for name, sub in self.by_name.items()}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Interval:
        histogram = _histogram_from_wire(data["histogram"])
        interval = cls(
            requests=data["requests"],
            statuses=dict(data["statuses"]),
            errors=dict(data["errors"]),
            histogram=histogram if histogram is not None else new_histogram(),
            bytes_received=data["bytes_received"],
            send_lag=_histogram_from_wire(data.get("send_lag", b"")),
            late=data.get("late", 0),
            by_name={name: cls.from_wire(sub) for name, sub in data.get("by_name", {}).items() if sub is not None},
            checks={name: list(tally) for name, tally in data.get("checks", {}).items()},
            exceptions=dict(data.get("exceptions", {})),
            exception_samples=dict(data.get("exception_samples", {})),
            iterations=data.get("iterations", 0),
            peak_rss_kib=data.get("peak_rss_kib", 0),
            cpu_s=data.get("cpu_s", 0.0),
            watch_s=data.get("watch_s", 0.0),
        )
        for name, sub in data.get("by_name", {}).items():
            if sub is None:
                interval.by_name[name] = interval.copy_counts()
        return interval


def _histogram_to_wire(hist: HdrHistogram | SparseHistogram | None) -> Any:
    """HDR's compressed encoding (bytes), a sparse histogram's own form (a tuple), or b"" for none."""
    if isinstance(hist, SparseHistogram):
        return hist.to_wire()  # empty too: the receiver keeps a sparse one for the name
    if hist is None or not hist.get_total_count():
        return b""
    return hist.encode()


def _histogram_from_wire(data: Any) -> HdrHistogram | SparseHistogram | None:
    """The histogram :func:`_histogram_to_wire` encoded: an empty sparse one is one with no
    bucket; None for b"" (nothing recorded)."""
    if isinstance(data, (tuple, list)):
        return SparseHistogram.from_wire(EMPTY_HISTOGRAM, data)
    return HdrHistogram.decode(data) if data else None


def http_error_count(error_kinds: dict[str, int]) -> int:
    """The errors among *error_kinds* that are HTTP statuses (``http 503``): each is also a
    response, counted among the requests, where a transport error is not."""
    return sum(count for kind, count in error_kinds.items() if kind.startswith("http "))


def percentile_ms(hist: HdrHistogram | SparseHistogram, percentile: float) -> float:
    """The latency at ``percentile`` (0-100) in milliseconds; 0.0 for an empty histogram."""
    if not hist.get_total_count():
        return 0.0
    return hist.get_value_at_percentile(percentile) / 1000.0


def recorded_values(hist: HdrHistogram | SparseHistogram, highest: bool = False) -> list[tuple[int, int]]:
    """``(value, count)`` of every non-empty bucket, in order: the bucket's lowest value, or
    its highest equivalent one (what percentiles report) with ``highest``.

    Reads the counts array directly: twenty times faster than hdrh's recorded iterator.
    """
    if not hist.get_total_count():
        return []
    layout = layout_of(hist)
    pairs = [(layout.get_value_from_index(index), count) for index, count in used_buckets(hist)]
    if highest:
        pairs = [(layout.get_highest_equivalent_value(value), count) for value, count in pairs]
    return pairs


def mean_and_stdev_us(hist: HdrHistogram | SparseHistogram) -> tuple[float, float]:
    """The mean and standard deviation of ``hist``, as hdrh computes them (each bucket at its
    median equivalent value), from the non-empty buckets only: hdrh's own methods walk its
    recorded iterator, 100 ms for a run's histogram."""
    pairs = recorded_values(hist)
    total = sum(count for _, count in pairs)
    if not total:
        return 0.0, 0.0
    layout = layout_of(hist)
    middles = [(layout._hdr_median_equiv_value(value), count) for value, count in pairs]
    mean = sum(value * count for value, count in middles) / total
    variance = sum((value - mean) ** 2 * count for value, count in middles) / total
    return mean, math.sqrt(variance)
