"""A request name's sparse histogram answers as an HdrHistogram holding the same values."""

from __future__ import annotations

import pickle
import random
import tracemalloc

import pytest

from procly.loadtest._flows import FlowRecorder
from procly.loadtest._sparse_histogram import SparseHistogram, merge_histogram
from procly.loadtest._stats import (
    HIGHEST_US,
    Interval,
    mean_and_stdev_us,
    new_histogram,
    new_sparse_histogram,
    record_batch,
    recorded_values,
)

pytestmark = pytest.mark.timeout(60)

PERCENTILES = (0.0, 1.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0)


def _values(seed: int, count: int = 5000) -> list[int]:
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(7, 1.5)) + 1 for _ in range(count)]
    return values + [1, 2, 1023, 1024, 2049, HIGHEST_US, HIGHEST_US * 5, 0]  # edges, and two clamped


def _same_answers(sparse: SparseHistogram, hdr) -> None:
    assert sparse.get_total_count() == hdr.get_total_count()
    assert sparse.get_min_value() == hdr.get_min_value()
    assert sparse.get_max_value() == hdr.get_max_value()
    for percentile in PERCENTILES:
        assert sparse.get_value_at_percentile(percentile) == hdr.get_value_at_percentile(percentile), percentile
    assert recorded_values(sparse) == recorded_values(hdr)
    assert recorded_values(sparse, highest=True) == recorded_values(hdr, highest=True)
    assert mean_and_stdev_us(sparse) == mean_and_stdev_us(hdr)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sparse_histogram_answers_as_hdr_does(seed):
    values = _values(seed)
    sparse, hdr = new_sparse_histogram(), new_histogram()
    # In batches, as a worker folds them.
    for start in range(0, len(values), 700):
        record_batch(sparse, values[start : start + 700])
        record_batch(hdr, values[start : start + 700])
    _same_answers(sparse, hdr)
    assert len(sparse.counts) <= len(set(values))  # the buckets in use, not the layout's 23,000
    # Its export is HDR's own encoding, of the same counts.
    decoded = type(hdr).decode(sparse.encode())
    _same_answers(sparse, decoded)


def test_merges_in_every_direction_keep_the_counts():
    first, second = _values(4, 2000), _values(5, 3000)
    expected = new_histogram()
    record_batch(expected, first + second)

    sparse_a, sparse_b, hdr_b = new_sparse_histogram(), new_sparse_histogram(), new_histogram()
    record_batch(sparse_a, first)
    record_batch(sparse_b, second)
    record_batch(hdr_b, second)

    into_sparse = new_sparse_histogram()
    merge_histogram(into_sparse, sparse_a)
    merge_histogram(into_sparse, hdr_b)  # an HdrHistogram into a sparse one
    _same_answers(into_sparse, expected)

    into_hdr = new_histogram()
    merge_histogram(into_hdr, sparse_a)  # a sparse one into an HdrHistogram
    merge_histogram(into_hdr, sparse_b)
    _same_answers(into_sparse, into_hdr)

    merge_histogram(into_hdr, new_sparse_histogram())  # an empty one changes nothing
    _same_answers(into_sparse, into_hdr)


def test_empty_sparse_histogram():
    empty = new_sparse_histogram()
    assert empty.get_total_count() == 0
    assert empty.get_min_value() == 0 and empty.get_max_value() == 0
    assert empty.get_value_at_percentile(99.0) == 0
    assert recorded_values(empty) == [] and mean_and_stdev_us(empty) == (0.0, 0.0)


def test_wire_form_round_trip_and_bad_input():
    hist = new_sparse_histogram()
    record_batch(hist, _values(6))
    wire = pickle.loads(pickle.dumps(hist.to_wire()))
    _same_answers(SparseHistogram.from_wire(hist.layout, wire), hist.to_hdr())
    indexes, counts = wire
    with pytest.raises(ValueError, match="out of range"):
        SparseHistogram.from_wire(hist.layout, ([10**9], [1]))
    with pytest.raises(ValueError, match="count below 1"):
        SparseHistogram.from_wire(hist.layout, (indexes[:1], [-1]))
    with pytest.raises(ValueError, match="must be ints"):
        SparseHistogram.from_wire(hist.layout, (indexes[:1], [1.5]))
    for malformed in ((indexes, counts[:-1]), (indexes, counts, 3), None, "ab"):
        with pytest.raises(ValueError, match="sparse histogram: "):
            SparseHistogram.from_wire(hist.layout, malformed)
    # Through the interval's own decoding, as the coordinator reads a tick.
    with pytest.raises(ValueError, match="sparse histogram"):
        Interval.from_wire({**Interval().to_wire(), "histogram": ([1], [0])})


def test_an_interval_by_name_travels_and_merges_sparse():
    recorder = FlowRecorder()
    for i, value in enumerate(_values(7, 3000)):
        recorder.named(f"/n/{i % 3}").latencies.append(value)
    recorder.named("/idle")  # a name with nothing this tick
    merged = Interval()
    merged.add(Interval.from_wire(pickle.loads(pickle.dumps(recorder.take_wire()))))
    by_name = merged.by_name
    assert all(isinstance(sub.histogram, SparseHistogram) for sub in by_name.values())
    assert by_name["/idle"].requests == 0
    assert sum(sub.requests for sub in by_name.values()) == merged.requests == 3008
    # The total, an HdrHistogram, holds what the names hold.
    names = new_sparse_histogram()
    for sub in by_name.values():
        merge_histogram(names, sub.histogram)
    _same_answers(names, merged.histogram)


def test_a_thousand_names_cost_little_memory():
    # An HdrHistogram per name (184 KB each, one more per name at every tick) took a worker
    # with a thousand names to 800 MiB and its coordinator to 1.6 GiB.
    rng = random.Random(8)
    tracemalloc.start()
    try:
        recorder = FlowRecorder()
        merged = Interval()
        for _tick in range(3):
            for _ in range(20_000):
                recorder.named(f"/item/{rng.randrange(1000)}").latencies.append(int(rng.expovariate(1 / 2000)) + 1)
            recorder.fold()
            merged.add(Interval.from_wire(recorder.take_wire()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(merged.by_name) == 1000 and merged.requests == 60_000
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MiB traced for a thousand names"
