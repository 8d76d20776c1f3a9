"""A latency histogram for one request name, with HDR's buckets kept in a dict.

An :class:`hdrh.histogram.HdrHistogram` with procly's bounds (1 µs to one hour, 3
significant digits) is an array of 23,000 counters, 184 KB whether one bucket is used or
all of them. A flow may give its requests a thousand names; with one such histogram per
name (and one more per name at every tick) a worker grew to 800 MiB and its coordinator
to 1.6 GiB. A name's latencies fall into tens to hundreds of buckets: a dict of the used
ones gives the same counts, percentiles, minimum and maximum as the array (the bucket of
a value is found with the same arithmetic), in memory proportional to what was recorded.
"""

from __future__ import annotations

import sys
from typing import Any

from hdrh.histogram import HdrHistogram


class SparseHistogram:
    """Counts per HDR bucket index of ``layout`` (an empty HdrHistogram, never written).

    Answers what the reports ask of an HdrHistogram (``get_total_count``,
    ``get_value_at_percentile``, ``get_min_value``, ``get_max_value``, ``encode``) with the
    same results an HdrHistogram of the same layout holding the same values would give.
    """

    __slots__ = ("layout", "counts", "total_count", "min_value", "max_value", "_sorted")

    def __init__(self, layout: HdrHistogram) -> None:
        self.layout = layout
        self.counts: dict[int, int] = {}
        self.total_count = 0
        self.min_value = sys.maxsize  # as HdrHistogram keeps them: raw values, not buckets
        self.max_value = 0
        self._sorted: list[tuple[int, int]] | None = None  # nonzero()'s answer until a change

    def get_total_count(self) -> int:
        return self.total_count

    def get_max_value(self) -> int:
        """The highest value equivalent to the largest recorded one (0 when empty)."""
        if self.max_value == 0:
            return 0
        return int(self.layout.get_highest_equivalent_value(self.max_value))

    def get_min_value(self) -> int:
        """The lowest value equivalent to the smallest recorded one (0 when empty)."""
        if self.counts.get(0, 0) > 0 or self.total_count == 0:
            return 0
        if self.min_value == sys.maxsize:
            return sys.maxsize
        return int(self.layout.get_lowest_equivalent_value(self.min_value))

    def get_value_at_percentile(self, percentile: float) -> int:
        """The value at *percentile* (0-100), as HdrHistogram computes it."""
        wanted = max(int(min(percentile, 100.0) * self.total_count / 100 + 0.5), 1)
        seen = 0
        layout = self.layout
        for index, count in self.nonzero():
            seen += count
            if seen >= wanted:
                value = layout.get_value_from_index(index)
                if percentile:
                    return int(layout.get_highest_equivalent_value(value))
                return int(layout.get_lowest_equivalent_value(value))
        return 0

    def nonzero(self) -> list[tuple[int, int]]:
        """``(index, count)`` of every used bucket, in ascending order."""
        if self._sorted is None:
            self._sorted = sorted(self.counts.items())
        return self._sorted

    def add_counts(self, pairs: Any, total: int, low: int, high: int) -> None:
        """Add ``(index, count)`` *pairs* holding *total* values from *low* to *high* (raw)."""
        counts = self.counts
        for index, count in pairs:
            counts[index] = counts.get(index, 0) + count
        self._sorted = None
        self.total_count += total
        if total:
            self.min_value = min(self.min_value, low)
            self.max_value = max(self.max_value, high)

    def clear(self) -> None:
        self.counts.clear()
        self._sorted = None
        self.total_count = 0
        self.min_value = sys.maxsize
        self.max_value = 0

    def to_hdr(self) -> HdrHistogram:
        """The same counts in a new HdrHistogram of this layout."""
        layout = self.layout
        hist = HdrHistogram(layout.lowest_trackable_value, layout.highest_trackable_value, layout.significant_figures)
        merge_histogram(hist, self)
        return hist

    def encode(self) -> bytes:
        """HdrHistogram's compressed encoding of these counts (for reports and ``compare``)."""
        return bytes(self.to_hdr().encode())

    def to_wire(self) -> tuple[list[int], list[int]]:
        """A compact picklable form: the used indexes and their counts."""
        pairs = self.nonzero()
        return [index for index, _ in pairs], [count for _, count in pairs]

    @classmethod
    def from_wire(cls, layout: HdrHistogram, data: Any) -> SparseHistogram:
        """Rebuild from :meth:`to_wire`'s form. The minimum and maximum are those of the
        lowest and highest bucket (what HdrHistogram reports for them in any case).

        Raises:
            ValueError: *data* is not that form (not two lists of as many ints, an index out
                of the layout, a count below 1).
        """
        try:
            indexes, counts = data
            pairs = list(zip(indexes, counts, strict=True))
        except (TypeError, ValueError):
            raise ValueError("sparse histogram: two lists of as many indexes and counts expected") from None
        limit = layout.counts_len
        for index, count in pairs:
            if type(index) is not int or type(count) is not int:
                raise ValueError("sparse histogram: indexes and counts must be ints")
            if not 0 <= index < limit or count < 1:
                raise ValueError("sparse histogram: an index out of range or a count below 1")
        hist = cls(layout)
        if pairs:
            low = layout.get_value_from_index(min(indexes))
            high = layout.get_value_from_index(max(indexes))
            hist.add_counts(pairs, sum(counts), low, high)
        return hist


def layout_of(hist: Any) -> HdrHistogram:
    """The HdrHistogram whose index and value arithmetic *hist* follows (itself, if one)."""
    return hist.layout if isinstance(hist, SparseHistogram) else hist


def used_buckets(hist: Any) -> list[tuple[int, int]]:
    """``(index, count)`` of every non-empty bucket of *hist* (either kind), in order."""
    if isinstance(hist, SparseHistogram):
        return hist.nonzero()
    return [(index, count) for index, count in enumerate(hist.counts[: hist.counts_len]) if count]


def merge_histogram(target: Any, source: Any) -> None:
    """Add the counts of *source* into *target*; each is an HdrHistogram or a SparseHistogram
    of the same layout."""
    if not source.get_total_count():
        return
    if isinstance(source, SparseHistogram):
        if isinstance(target, SparseHistogram):
            target.add_counts(source.counts.items(), source.total_count, source.min_value, source.max_value)
            return
        counts = target.counts
        for index, count in source.counts.items():
            counts[index] += count
        # As HdrHistogram.add() keeps them: equivalent values, not the raw ones.
        target.total_count += source.total_count
        target.max_value = max(target.max_value, source.get_max_value())
        target.min_value = min(target.get_min_value(), source.get_min_value())
        return
    if isinstance(target, SparseHistogram):
        pairs = used_buckets(source)
        target.add_counts(pairs, source.get_total_count(), source.get_min_value(), source.get_max_value())
        return
    target.add(source)
