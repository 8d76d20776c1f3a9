"""procly loadtest: end-to-end runs on loopback, error accounting, rate mode, reports, thresholds.

All traffic goes to 127.0.0.1 and every run is bounded (a few seconds at most).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from procly.loadtest import EmbeddedTarget, LoadTestConfig, LoadTestError, Stages, Threshold, _stats, run_load_test
from procly.loadtest._config import HttpTarget, parse_count, parse_duration, split_evenly
from procly.loadtest._report import Report

from .conftest import session_processes, wait_until
from .loadtest_targets import CALLS_DIR_ENV

pytestmark = pytest.mark.timeout(60)


def procly_cli(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "procly.cli", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def target():
    with EmbeddedTarget() as running:
        yield running


# --- parsing -----------------------------------------------------------------------------


def test_durations_counts_and_splits():
    assert parse_duration("10") == 10.0 and parse_duration("250ms") == 0.25 and parse_duration("2m") == 120.0
    assert parse_count("10k") == 10_000 and parse_count("3") == 3
    for bad in ("", "ten", "-1s", "5 parsecs"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_count("0")
    assert split_evenly(10, 3) == [4, 3, 3] and sum(split_evenly(7, 7)) == 7


def test_url_and_config_validation():
    target = HttpTarget.from_url("http://127.0.0.1:8080/a?b=1")
    assert (target.host, target.port, target.path) == ("127.0.0.1", 8080, "/a?b=1")
    request = target.request_bytes("POST", [("X-Test", "1")], b"body")
    assert request.startswith(b"POST /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert b"Content-Length: 4\r\n" in request and request.endswith(b"\r\n\r\nbody")
    assert HttpTarget.from_url("https://127.0.0.1/").tls and HttpTarget.from_url("https://127.0.0.1/").port == 443
    with pytest.raises(ValueError, match="not an http URL"):
        LoadTestConfig(url="ftp://127.0.0.1/")
    with pytest.raises(ValueError, match="exactly one target"):
        LoadTestConfig()
    with pytest.raises(ValueError, match="connections"):
        LoadTestConfig(url="http://127.0.0.1/", connections=0)
    # Never more processes than there is work for.
    assert LoadTestConfig(url="http://127.0.0.1/", processes=8, connections=3).worker_count == 3
    assert LoadTestConfig(url="http://127.0.0.1/", processes=8, requests=2).worker_count == 2


# --- histograms --------------------------------------------------------------------------


def test_histograms_merged_across_workers_equal_one_histogram_of_everything():
    rng = random.Random(7)
    values = [int(rng.lognormvariate(7, 1.2)) + 1 for _ in range(30_000)]
    recorders = [_stats.Recorder() for _ in range(3)]
    for i, value in enumerate(values):
        recorders[i % 3].success(value / 1e6, 200)
    recorders[1].error("timeout")
    merged = _stats.Interval()
    for recorder in recorders:
        # Through the wire form, as between processes.
        merged.add(_stats.Interval.from_wire(recorder.take().to_wire()))
    reference = _stats.histogram_from(values)
    assert merged.requests == len(values) == merged.histogram.get_total_count()
    assert merged.statuses == {200: len(values)} and merged.errors == {"timeout": 1}
    for percentile in (1, 50, 90, 99, 99.9, 100):
        assert merged.histogram.get_value_at_percentile(percentile) == reference.get_value_at_percentile(percentile)
    exact = sorted(values)
    for percentile in (50, 99):
        true_value = exact[int(len(exact) * percentile / 100) - 1]
        assert abs(merged.histogram.get_value_at_percentile(percentile) - true_value) <= true_value * 0.002
    assert recorders[0].take().requests == 0  # take() starts afresh


@pytest.mark.parametrize("seed", [1, 2])
def test_mean_and_stdev_match_hdrh(seed):
    # The report's mean and deviation come from the non-empty buckets, not hdrh's iterator:
    # the same figures, for any spread of values (and 0 for an empty histogram).
    rng = random.Random(seed)
    hist = _stats.histogram_from([int(rng.lognormvariate(5 + seed, 1.5)) + 1 for _ in range(20_000)])
    mean, stdev = _stats.mean_and_stdev_us(hist)
    assert mean == pytest.approx(hist.get_mean_value(), rel=1e-12)
    assert stdev == pytest.approx(hist.get_stddev(), rel=1e-9)
    assert _stats.mean_and_stdev_us(_stats.new_histogram()) == (0.0, 0.0)


def test_folding_while_recording_changes_no_count():
    # A worker folds every FOLD_PERIOD while requests keep being recorded: whatever the
    # folds cut, take() must hand over every value once, and then start afresh.
    rng = random.Random(11)
    values = [rng.randint(1, 50_000) for _ in range(5000)]
    folded = _stats.Recorder()
    for i, value in enumerate(values):
        folded.success(value / 1e6, 200)
        folded.send_lags.append(value % 97 + 1)
        if i % 37 == 0:
            folded.fold()
    interval = folded.take()
    reference = _stats.histogram_from(values)
    assert interval.requests == len(values) == interval.histogram.get_total_count()
    assert interval.send_lag is not None and interval.send_lag.get_total_count() == len(values)
    for percentile in (1, 50, 99, 100):
        assert interval.histogram.get_value_at_percentile(percentile) == reference.get_value_at_percentile(percentile)
    again = folded.take()
    assert again.requests == 0 and again.send_lag is None


def test_ticks_reuse_histograms_without_carrying_counts_over():
    # take_wire() hands each tick's histograms back for reuse: every tick must decode to
    # exactly what was recorded since the one before, and a discard (the warm-up's) must
    # leave nothing behind.
    from procly.loadtest._flows import FlowRecorder

    rng = random.Random(5)
    single, flows = _stats.Recorder("GET /"), FlowRecorder()
    single.success(0.5, 200)
    single.send_lags.append(9)
    single.fold()
    single.discard()
    for tick in range(4):
        values = [rng.randint(1, 80_000) for _ in range(300 + tick * 100)]
        for value in values:
            single.success(value / 1e6, 200)
            single.send_lags.append(value % 50 + 1)
            flows.named("a" if value % 3 else "b").success(value / 1e6, 200)
        single.fold()
        reference = _stats.histogram_from(values)
        intervals = [_stats.Interval.from_wire(single.take_wire()), _stats.Interval.from_wire(flows.take_wire())]
        for interval in intervals:
            assert interval.requests == len(values) == interval.histogram.get_total_count()
            assert interval.histogram.get_max_value() == reference.get_max_value()
            assert interval.histogram.get_min_value() == reference.get_min_value()
            assert interval.histogram.get_value_at_percentile(50) == reference.get_value_at_percentile(50)
            assert sum(sub.requests for sub in interval.by_name.values()) == len(values)
        lag = intervals[0].send_lag
        assert lag is not None and lag.get_total_count() == len(values)
        assert lag.get_max_value() == max(value % 50 + 1 for value in values)
    assert single.take_wire()["histogram"] == b""  # nothing since the last tick
    # An interval with nothing recorded carries the shared empty histogram: merging into
    # it gives the interval its own, and the shared one stays empty.
    idle = single.take()
    assert idle.histogram is _stats.EMPTY_HISTOGRAM
    busy = _stats.Recorder("GET /")
    busy.success(0.002, 200)
    idle.add(busy.take())
    assert idle.requests == 1 and idle.histogram.get_total_count() == 1
    assert _stats.EMPTY_HISTOGRAM.get_total_count() == 0
    # Many names: each name's histogram is not kept for reuse (184 KB resident each).
    many = FlowRecorder()
    for i in range(40):
        many.named(f"/n/{i}").success(0.001, 200)
    wire = many.take_wire()
    assert sum(_stats.Interval.from_wire(sub).requests for sub in wire["by_name"].values()) == 40
    assert all(not recorder._spares for recorder in many.names.values())


def test_record_batch_counts_as_record_value_does():
    # record_batch does hdrh's bucket arithmetic inline: the counts, total, min and max must be
    # those of one record_value per value, out-of-range values clamped to the bounds.
    rng = random.Random(11)
    values = [int(rng.lognormvariate(7, 3)) for _ in range(20_000)]
    values += [0, -4, 1, 2, 2047, 2048, 2049, 4095, 4096, _stats.HIGHEST_US, _stats.HIGHEST_US + 5, 10**12]
    reference = _stats.new_histogram()
    for value in values:
        reference.record_value(min(max(value, _stats.LOWEST_US), _stats.HIGHEST_US))
    batched = _stats.new_histogram()
    _stats.record_batch(batched, values[:7_000])
    _stats.record_batch(batched, values[7_000:])  # a second batch adds to the first
    _stats.record_batch(batched, [])
    assert list(batched.counts) == list(reference.counts)
    assert (batched.get_total_count(), batched.get_min_value(), batched.get_max_value()) == (
        reference.get_total_count(),
        reference.get_min_value(),
        reference.get_max_value(),
    )
    assert batched.get_value_at_percentile(99.9) == reference.get_value_at_percentile(99.9)


# --- HTTP runs against the embedded target ------------------------------------------------


def test_request_budget_is_exact_and_matches_what_the_server_served(ctx):
    with EmbeddedTarget(start_method=ctx.get_start_method()) as target:
        config = LoadTestConfig(
            url=target.url, processes=2, connections=8, requests=600, start_method=ctx.get_start_method()
        )
        report = run_load_test(config)
    assert report.requests == 600 and report.errors == 0 and report.status_codes == {200: 600}
    assert target.served == 600
    assert report.latency.min > 0 and report.latency.p50 <= report.latency.p99 <= report.latency.max
    assert not report.workers_lost and not report.interrupted


def test_duration_run_reports_a_timeline(target):
    report = run_load_test(LoadTestConfig(url=target.url, processes=2, connections=4, duration=1.6))
    assert report.requests > 100 and report.errors == 0
    assert report.elapsed >= 1.5  # the run lasted what was asked (how much longer is load, not behaviour)
    assert sum(point.requests for point in report.timeline) == report.requests
    assert len(report.timeline) in (1, 2)


def test_rate_mode_holds_the_requested_rate(target):
    report = run_load_test(LoadTestConfig(url=target.url, processes=2, connections=8, duration=2.0, rate=300))
    assert report.errors == 0
    assert abs(report.requests - 600) <= 600 * 0.01, report.requests
    assert abs(report.throughput - 300) <= 300 * 0.01, report.throughput
    # How late requests went out after their due time is measured and reported.
    assert report.send_lag is not None and 0 <= report.send_lag.p50 <= report.send_lag.p99 <= report.send_lag.max


@pytest.mark.parametrize("rate", [7.0, "0.5s:10,1s:30,0.5s:0"])
@pytest.mark.parametrize("lanes", [2, 3, 16])
def test_lanes_of_a_schedule_interleave_into_the_whole(rate, lanes):
    # Several processes at one rate: together they send exactly the one schedule's requests
    # (not each its own schedule at rate/n, sending together and rounding up).
    from procly.loadtest._schedule import Schedule

    profile = Stages.parse(rate, "-R") if isinstance(rate, str) else rate

    def due_times(lane: int, count: int) -> list[float]:
        schedule = Schedule(100.0, 102.0, None, profile, lane=lane, lanes=count)
        times = []
        while (due := schedule.next_start(0.0)) is not None:
            times.append(due)
        return times

    whole = due_times(0, 1)
    lanes_due = [due_times(lane, lanes) for lane in range(lanes)]
    assert sorted(t for times in lanes_due for t in times) == whole and len(whole) > 10
    for lane, times in enumerate(lanes_due):
        assert times == whole[lane::lanes]
    with pytest.raises(ValueError, match="lane"):
        Schedule(0.0, 1.0, None, 1.0, lane=2, lanes=2)


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lanes_share_one_budget_after_the_warmup(lanes):
    # -R 10 --warmup 0.1 -n 5: the measured requests are the schedule's five after the
    # warm-up, 0.1 to 0.5 s, whichever lanes send them (split per lane, lane 0 got 3 and
    # skipped 0.5 for 0.6).
    from procly.loadtest._schedule import Schedule

    measured = []
    for lane in range(lanes):
        schedule = Schedule(0.0, None, 5, 10.0, measure_from=0.1, lane=lane, lanes=lanes)
        while (due := schedule.next_start(0.0)) is not None:
            if due >= 0.1:
                measured.append(round(due, 6))
        assert schedule.exhausted
    assert sorted(measured) == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_rate_mode_with_several_processes_sends_the_rate_exactly(target):
    # 5 requests/s for 1 s from 2 processes: 5 requests, not 3 + 3.
    report = run_load_test(LoadTestConfig(url=target.url, processes=2, connections=2, duration=1.0, rate=5))
    assert report.requests == 5 and report.errors == 0


def test_rate_mode_never_sends_early(target):
    # Every answer takes at least 20 ms: measured from its due time, no request can take
    # less, unless it went out before it was due (the event loop's timers fire up to a
    # millisecond early).
    report = run_load_test(
        LoadTestConfig(url=target.url + "delay/20", processes=1, connections=16, duration=1.5, rate=200)
    )
    assert report.errors == 0 and report.requests == 300
    assert report.latency.min >= 20.0, report.latency
    assert report.name_stats("GET /delay/20").latency.min >= 20.0


def test_precise_timer_poll_runs_only_what_is_due():
    # A busy loop polls the pacer between its callbacks: due calls run then, in order,
    # later ones stay for the timer.
    import asyncio

    from procly.loadtest import _clock

    ran = []

    async def main():
        timer = _clock.PreciseTimer()
        now = time.monotonic()
        for k in (3, 1, 2):
            timer.call_at(now - k * 0.001, ran.append, -k)
        timer.call_at(now + 3600, ran.append, "later")
        timer.poll(time.monotonic())
        assert ran == [-3, -2, -1]
        timer.poll(time.monotonic())
        assert ran == [-3, -2, -1] and len(timer.heap) == 1
        timer.close()

    asyncio.run(main())


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("timerfd", [True, False], ids=["timerfd", "loop-timer"])
def test_precise_timer_never_fires_early(monkeypatch, timerfd, sparse):
    # Sparse calls (2 ms apart) take the path where the timerfd fires early and the pacer
    # watches the clock for the rest: they must not run before their time either.
    import asyncio

    from procly.loadtest import _clock

    if not timerfd:
        monkeypatch.setattr(_clock, "_timerfd", lambda: None)
    rng = random.Random(3)
    early = []
    fired = []

    async def main():
        timer = _clock.PreciseTimer()
        assert timer.uses_timerfd == timerfd
        done = asyncio.get_running_loop().create_future()
        start = time.monotonic()
        if sparse:
            dues = [start + 0.002 * k + rng.uniform(0, 0.0005) for k in range(1, 301)]
        else:
            dues = sorted(start + rng.uniform(0, 0.2) for _ in range(300))
        rng.shuffle(dues)

        def call(due):
            now = time.monotonic()
            fired.append(due)
            if now < due:
                early.append(due - now)
            if len(fired) == len(dues):
                done.set_result(None)

        for due in dues:
            timer.call_at(due, call, due)
        await asyncio.wait_for(done, 10)
        timer.close()

    asyncio.run(main())
    assert len(fired) == 300 and not early


def test_precise_timer_wakes_earlier_after_late_wake_ups():
    # How early the timerfd fires follows how late recent wake-ups came (a VM's host may
    # take a millisecond to wake an idle virtual CPU), within bounds, and is forgotten.
    import asyncio

    from procly.loadtest import _clock

    def expected(late):
        return min(_clock._EARLY_MAX, max(_clock._EARLY_MIN, late * _clock._EARLY_FACTOR + _clock._EARLY_MARGIN))

    async def check(timer):
        now = time.monotonic()
        assert timer._early(now) == _clock._EARLY_MIN  # nothing seen yet
        timer.armed_at, timer.fire_at = now - 0.002, now - 0.0008
        timer.note_wake_up(now)  # set 1.2 ms ahead, seen 0.8 ms after its time
        assert timer.wake_late == pytest.approx(0.0008)
        assert timer._early(now) == pytest.approx(expected(0.0008))
        later = now + 2 * _clock._LATE_HALF_LIFE  # two half-lives later: a quarter
        assert timer._early(later) == pytest.approx(expected(0.0002))
        timer.armed_at, timer.fire_at = now - 0.1, now - 0.05
        timer.note_wake_up(now)
        assert timer._early(now) == _clock._EARLY_MAX
        # A timerfd set for a time already past (an overdue call) involved no wake-up.
        timer.wake_late = 0.0
        timer.armed_at, timer.fire_at = now, now - 0.005
        timer.note_wake_up(now)
        assert timer.wake_late == 0.0
        # Never earlier than the gap since the previous call, and never late.
        gap = 0.0003
        timer.wake_late, timer._late_since = 0.01, time.monotonic()
        timer.last_due = time.monotonic()
        due = timer.last_due + gap
        fired = asyncio.get_running_loop().create_future()
        timer.call_at(due, lambda: fired.set_result(time.monotonic()))
        assert timer.early <= gap + 1e-9
        assert await asyncio.wait_for(fired, 5) >= due

    async def main():
        timer = _clock.PreciseTimer()
        if not timer.uses_timerfd:
            timer.close()
            pytest.skip("no timerfd on this system")
        try:
            await check(timer)
        finally:
            timer.close()

    asyncio.run(main())


def test_precise_timer_watch_lets_the_loop_run():
    # While the pacer watches the clock for a due time, the loop's other callbacks (the
    # answers being read) still run: the watch goes through the loop's turns.
    import asyncio

    from procly.loadtest import _clock

    async def main():
        loop = asyncio.get_running_loop()
        timer = _clock.PreciseTimer()
        seen_while_watching = []
        try:
            for _ in range(3):  # a stall longer than the watch on every try would hide it
                timer.wake_late, timer._late_since = 0.001, time.monotonic()  # it wakes 2 ms ahead
                fired = loop.create_future()
                timer.call_at(time.monotonic() + 0.02, fired.set_result, None)

                def other(fired=fired):
                    if timer._watch_handle is not None:
                        seen_while_watching.append(True)
                    if not fired.done():
                        loop.call_soon(other)

                other()
                await asyncio.wait_for(fired, 5)
                if seen_while_watching:
                    break
        finally:
            timer.close()
        return seen_while_watching

    assert asyncio.run(main()), "no other callback ran while the pacer watched the clock"


def test_precise_timer_keeps_one_watch_going():
    # A _run the timerfd starts while the pacer already watches through the loop's turns
    # joins that watch rather than starting a second one (each would spin on its own).
    import asyncio

    from procly.loadtest import _clock

    async def main():
        timer = _clock.PreciseTimer()
        try:
            now = time.monotonic()
            timer._watch_through_loop(now + 1.0, now)
            first = timer._watch_handle
            timer._watch_through_loop(now + 1.0, time.monotonic())
            assert first is not None and timer._watch_handle is first
        finally:
            timer.close()
        assert first.cancelled() and timer._watch_handle is None

    asyncio.run(main())


def test_live_rate_of_the_first_second_is_the_real_rate():
    from procly.loadtest._runner import Tally

    tally = Tally(LoadTestConfig(url="http://127.0.0.1/", processes=2))
    start = time.time() - 1.0
    tally.measure_start = start
    for worker in range(2):
        for tick in (0.5, 1.0):  # each worker: 250 requests per half second = 1000/s in all
            interval = _stats.Interval(requests=250)
            tally.add("tick", start + tick + worker * 0.001, interval.to_wire())
    progress = tally.progress()
    assert progress.requests == 1000 and 990 <= progress.rate <= 1000
    assert tally.progress().rate == 0.0  # nothing new since


def test_report_timeline_ends_with_the_run():
    # A 1.5 s run: its last second is half of one (its rate over that half), and the empty
    # ticks that came while the worker ended (users thinking, connections closing) add no
    # seconds after it.
    from procly.loadtest._runner import Tally

    tally = Tally(LoadTestConfig(url="http://127.0.0.1/", processes=1, duration=1.5))
    tally.measure_start = start = 1000.0
    for tick, requests in ((0.5, 100), (1.0, 100), (1.5, 100), (2.0, 0), (2.5, 0), (3.0, 0)):
        tally.add("tick", start + tick, _stats.Interval(requests=requests).to_wire())
    tally.add("done", start + 1.5, _stats.Interval().to_wire())  # the last answer's time
    report = tally.report([], False)
    assert report.elapsed == 1.5 and report.throughput == 200.0
    assert [(p.second, p.requests, p.seconds, p.requests_per_s) for p in report.timeline] == [
        (0, 200, 1.0, 200.0),
        (1, 100, 0.5, 200.0),
    ]


def test_report_time_runs_to_the_last_outcome_and_in_rate_mode_to_the_last_send():
    # Answers for a second, then timeouts until 2.6 s; the worker reports at 3.4 s (closing
    # its connections). The run took 2.6 s, the errors after the last answer included, and
    # the final interval belongs to the second of its last outcome, not of the report.
    from procly.loadtest._runner import Tally

    def run(config, last_send=None):
        tally = Tally(config)
        tally.measure_start = start = 1000.0
        for tick, requests, errors in ((0.5, 100, 0), (1.0, 100, 0), (1.5, 0, 5), (2.0, 0, 5), (2.5, 0, 5)):
            interval = _stats.Interval(requests=requests, errors={"timeout": errors} if errors else {})
            tally.add("tick", start + tick, interval.to_wire())
        final = _stats.Interval(errors={"timeout": 3}).to_wire()
        final["last_outcome_wall"] = start + 2.6
        final["last_send_wall"] = None if last_send is None else start + last_send
        tally.add("done", start + 3.4, final)
        return tally.report([], False)

    report = run(LoadTestConfig(url="http://127.0.0.1/", processes=1, duration=2.0))
    assert report.elapsed == pytest.approx(2.6) and report.errors == 18
    assert [(p.second, p.requests, p.errors) for p in report.timeline] == [(0, 200, 0), (1, 0, 10), (2, 0, 8)]
    assert [p.seconds for p in report.timeline] == pytest.approx([1.0, 1.0, 0.6])
    # Rate mode: over the time the requests took to send (their answers' latency is not the
    # rate's), the duration unless the target held the sends back beyond it.
    rate = LoadTestConfig(url="http://127.0.0.1/", processes=1, duration=2.0, rate=100)
    assert run(rate, last_send=1.99).elapsed == 2.0
    assert run(rate, last_send=2.3).elapsed == pytest.approx(2.3)


def test_rate_mode_with_slow_answers_holds_its_rate_without_a_warning(target):
    # 150 ms answers, all sent on time: the rate held is the rate asked (the last answers
    # coming 150 ms after the end do not make it 95.4 requests/s "not held").
    config = LoadTestConfig(url=target.url + "delay/150", processes=1, connections=50, duration=1.0, rate=100)
    report = run_load_test(config)
    assert report.requests == 100 and report.errors == 0 and report.late_sends == 0
    # (A send a few ms late on a loaded machine may end the sends just after the duration.)
    assert report.throughput == pytest.approx(100.0, rel=0.005)
    assert not [w for w in report.warnings if "not held" in w], report.warnings


def test_live_line_of_each_second_counts_that_whole_second(target):
    # The line for second k is shown once the workers' ticks for it are in (ticks fall on
    # the measured start + k * 0.5 s): "1.0 s" counts the first second's ~1000 requests,
    # not the first half second's 500.
    out = procly_cli("loadtest", "-R", "1000", "-d", "2.4", "-p", "2", "--warmup", "0.3", target.url)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split() for line in out.stderr.splitlines() if line.strip()[:1].isdigit()}
    assert set(lines) == {"1.0", "2.0"}, out.stderr
    first, second = int(lines["1.0"][2].replace(",", "")), int(lines["2.0"][2].replace(",", ""))
    assert 800 <= first <= 1100 and 1800 <= second <= 2100, out.stderr


def test_rate_mode_corrects_for_coordinated_omission(target):
    # One connection, 200 ms answers, 20 requests due per second: requests queue up behind
    # each other. Measured from when each was due, latency grows far past 200 ms; a naive
    # tool would report 200 ms for every request.
    report = run_load_test(
        LoadTestConfig(url=target.url + "delay/200", processes=1, connections=1, duration=1.5, rate=20)
    )
    assert report.requests >= 5
    assert report.latency.min >= 195
    assert report.latency.max > 600


def test_warmup_is_not_measured(target):
    report = run_load_test(LoadTestConfig(url=target.url, processes=1, connections=2, requests=50, warmup=0.5))
    assert report.requests == 50


def test_method_headers_and_body_reach_the_server(target):
    report = run_load_test(
        LoadTestConfig(
            url=target.url,
            processes=1,
            connections=1,
            requests=5,
            method="POST",
            headers=(("X-Load", "yes"),),
            body=b"x" * 1000,
        )
    )
    assert report.requests == 5 and report.status_codes == {200: 5}


# --- errors are counted, never fatal -----------------------------------------------------


def test_connection_refused_is_counted(ctx):
    config = LoadTestConfig(
        url=f"http://127.0.0.1:{free_port()}/",
        processes=1,
        connections=2,
        duration=0.8,
        start_method=ctx.get_start_method(),
    )
    report = run_load_test(config)
    assert report.requests == 0 and report.errors > 0
    assert set(report.error_kinds) == {"connect refused"} and report.error_rate == 1.0


@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_refused_connections_in_rate_mode_fail_one_request_each_at_its_due_time(warmup):
    # Each attempt waits for its request's due time: one error per request due over the
    # whole run, not a burst of attempts that uses the schedule up at once; the warm-up's
    # failures are not measured.
    url = f"http://127.0.0.1:{free_port()}/"
    config = LoadTestConfig(url=url, processes=1, connections=4, rate=50, duration=1, warmup=warmup)
    report = run_load_test(config)
    assert report.requests == 0 and report.errors == 50 and set(report.error_kinds) == {"connect refused"}


def test_connections_are_opened_ahead_of_the_start_and_send_nothing():
    # A worker opens its connections before the run starts (in rate mode, the first requests
    # due must not wait for them): opened, nothing written; a run stopped before its start
    # closes them.
    import asyncio

    from procly.loadtest._http import HttpLoad
    from procly.loadtest._schedule import Schedule

    listener = socket.create_server(("127.0.0.1", 0))
    target = HttpTarget.from_url(f"http://127.0.0.1:{listener.getsockname()[1]}/")
    accepted = []

    async def main():
        start = time.monotonic() + 60
        schedule = Schedule(start, None, 10, 100.0)
        load = HttpLoad(target, target.request_bytes("GET", [], b""), 4, schedule, _stats.Recorder(), 5.0)
        await load.prepare(time.monotonic() + 10)
        assert all(slot.protocol is not None for slot in load.slots) and not load.started
        accepted.extend(listener.accept()[0] for _ in range(4))  # in the backlog already
        for conn in accepted:
            with pytest.raises(BlockingIOError):
                conn.recv(1, socket.MSG_DONTWAIT)  # nothing was written
        load.close_prepared()
        for _ in range(3):
            await asyncio.sleep(0)  # let the transports' closing callbacks run

    try:
        asyncio.run(main())
        for conn in accepted:
            conn.settimeout(10)
            assert conn.recv(1) == b""  # closed by the client
    finally:
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_load_run_without_opening_ahead_connects_at_its_start(target):
    import asyncio

    from procly.loadtest._http import HttpLoad
    from procly.loadtest._schedule import Schedule

    http = HttpTarget.from_url(target.url)

    async def main():
        recorder = _stats.Recorder("GET /")
        schedule = Schedule(time.monotonic(), None, 50, None)
        load = HttpLoad(http, http.request_bytes("GET", [], b""), 4, schedule, recorder, 5.0)
        await asyncio.wait_for(load.run(), 60)
        return recorder.take()

    assert asyncio.run(main()).requests == 50


def test_connections_lost_before_the_start_are_made_once_again(target):
    # Connections opened ahead and closed before the start (a server may drop idle ones):
    # each slot connects once more at the start, and the budget is served exactly, with no
    # request sent twice.
    import asyncio

    from procly.loadtest._http import HttpLoad
    from procly.loadtest._schedule import Schedule

    http = HttpTarget.from_url(target.url)

    def served():
        with urllib.request.urlopen(target.url + "stats", timeout=10) as answer:
            return int(answer.read())

    async def main():
        recorder = _stats.Recorder("GET /")
        schedule = Schedule(time.monotonic(), None, 400, None)  # measured from the start
        load = HttpLoad(http, http.request_bytes("GET", [], b""), 8, schedule, recorder, 5.0)
        await load.prepare(time.monotonic() + 30)  # returns once every connection is made
        for slot in load.slots:
            slot.protocol.transport.abort()
        for _ in range(3):
            await asyncio.sleep(0)  # the losses are seen
        assert all(slot.protocol is None for slot in load.slots)
        await asyncio.wait_for(load.run(), 60)
        return recorder.take()

    before = served()
    interval = asyncio.run(main())
    assert interval.requests == 400 and interval.errors == {}
    assert served() - before - 1 == 400  # the /stats request counts itself


@pytest.mark.parametrize("warmup", [0.0, 0.3])
def test_refused_connections_in_closed_loop_use_the_budget_one_request_each(warmup):
    # Each failed attempt stands for one request of the budget: exactly the budget's errors,
    # none of them from the warm-up (shorter than a tick: no discard drops its failures).
    url = f"http://127.0.0.1:{free_port()}/"
    config = LoadTestConfig(url=url, processes=1, connections=8, requests=12, warmup=warmup)
    report = run_load_test(config)
    assert report.requests == 0 and report.errors == 12 and report.error_kinds == {"connect refused": 12}


def test_failures_of_warmup_requests_are_not_measured(target):
    # Every answer is malformed: the budget of 20 measured requests gives 20 errors exactly,
    # however many warm-up requests failed before (a short warm-up has no tick to drop them).
    config = LoadTestConfig(url=target.url + "garbage", processes=1, connections=2, requests=20, warmup=0.3)
    report = run_load_test(config)
    assert report.errors == 20 and report.error_kinds == {"malformed response": 20}


def test_rate_mode_with_a_budget_is_measured_over_its_time(target):
    # -n 50 at 100/s within -d 3: the run ends after ~0.5 s, and its rate is over that time.
    config = LoadTestConfig(url=target.url, processes=1, connections=2, rate=100, requests=50, duration=3.0)
    report = run_load_test(config)
    assert report.requests == 50 and report.elapsed < 3.0 and report.throughput > 50 / 3.0
    assert not [w for w in report.warnings if "not held" in w], report.warnings


def test_first_requests_due_while_connecting_are_not_late_sends(target):
    # Late sends are requests that waited for a busy connection; the first ones, due while
    # the connections were being made, are not (they made a short fast run warn).
    # 64 connections at 200/s: each is free for 320 ms between its requests, none waits.
    config = LoadTestConfig(url=target.url, processes=1, connections=64, rate=200, duration=0.6)
    report = run_load_test(config)
    assert report.errors == 0 and report.late_sends == 0
    assert not [w for w in report.warnings if "late" in w], report.warnings


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("garbage", "malformed response"),
        ("close", "closed by server"),
        ("status/503", "http 503"),
    ],
)
def test_faulty_answers_are_counted_by_kind(target, path, kind):
    report = run_load_test(LoadTestConfig(url=target.url + path, processes=1, connections=2, requests=20))
    assert set(report.error_kinds) == {kind}
    assert report.errors == 20
    if kind == "http 503":
        assert report.requests == 20 and report.status_codes == {503: 20}
    else:
        assert report.requests == 0


def test_throughput_is_over_the_time_the_requests_took(target):
    # 10 connections, 600 ms answers, 1 s: each sends twice (at 0 and at 0.6 s, inside the
    # second, with 0.4 s to spare on a slow machine; the third would be at 1.2 s), the last
    # answers come at 1.2 s or later. 20 requests in that time, not in the 1 s asked.
    report = run_load_test(LoadTestConfig(url=target.url + "delay/600", processes=1, connections=10, duration=1.0))
    assert report.requests == 20 and report.errors == 0
    assert report.elapsed >= 1.2 and report.throughput == pytest.approx(report.requests / report.elapsed)
    assert sum(point.requests for point in report.timeline) == 20


@pytest.mark.parametrize("rate", [None, 2.0])
def test_requests_out_at_the_end_get_their_whole_timeout(target, rate):
    # Answers take 3.5 s, the run 1 s, the timeout 5 s: the requests sent get their answers,
    # and count (they were dropped 2 s after the end, and the run said none was made).
    config = LoadTestConfig(url=target.url + "delay/3500", processes=1, connections=2, duration=1.0, rate=rate,
                            timeout=5.0)  # fmt: skip
    report = run_load_test(config)
    assert report.requests == 2 and report.errors == 0, report.error_kinds
    assert report.latency.min >= 3500
    # Closed loop: over the time to the last answer; rate mode: over the time to send them
    # (the duration: both were sent on time).
    assert report.elapsed >= 3.5 if rate is None else report.elapsed == 1.0


def test_rate_mode_counts_what_its_time_did_not_let_it_send_or_hear(target):
    # One connection, 300 ms answers, 10 due in 1 s, a 1 s timeout: the backlog goes out
    # late until 1 s after the end (3 s of answers need more); the request still out then
    # and those never sent are errors, so every request due is accounted for.
    config = LoadTestConfig(url=target.url + "delay/300", processes=1, connections=1, duration=1.0, rate=10,
                            timeout=1.0)  # fmt: skip
    report = run_load_test(config)
    assert report.requests + report.errors == 10 and report.errors >= 1
    assert set(report.error_kinds) <= {"unanswered at the end", "not sent by the end"}, report.error_kinds


def test_slow_answers_time_out(target):
    report = run_load_test(
        LoadTestConfig(url=target.url + "delay/3000", processes=1, connections=2, duration=1.0, timeout=0.3)
    )
    assert report.error_kinds.get("timeout", 0) >= 2 and report.requests == 0


def test_target_killed_mid_run_is_counted_and_the_run_finishes():
    with subprocess.Popen(
        [sys.executable, "-m", "procly.cli", "serve-target", "--port", "0"], stdout=subprocess.PIPE, text=True
    ) as server:
        try:
            url = re.search(r"http://\S+", server.stdout.readline()).group(0)
            loadtest = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "procly.cli",
                    "loadtest",
                    "-q",
                    "-p",
                    "2",
                    "-c",
                    "8",
                    "-d",
                    "2.5",
                    "--json",
                    "-",
                    "--prometheus",
                    "127.0.0.1:0",
                    url,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for_requests(loadtest.stderr)
            server.kill()
            out, _ = loadtest.communicate(timeout=30)
        finally:
            server.kill()
    assert loadtest.returncode == 0
    report = json.loads(out)
    assert report["requests"] > 0
    kinds = set(report["error_kinds"])
    # A connection in the dead target's accept queue is reset rather than refused.
    assert "connect refused" in kinds and kinds <= {"connect refused", "connect reset", "reset", "closed by server"}


# --- Python callables --------------------------------------------------------------------


def test_call_sync_and_async_functions(ctx):
    for name in ("quick", "quick_async"):
        config = LoadTestConfig(
            call=f"tests.loadtest_targets:{name}",
            processes=2,
            connections=3,
            requests=300,
            start_method=ctx.get_start_method(),
        )
        report = run_load_test(config)
        assert report.requests == 300 and report.errors == 0, name


def test_call_exceptions_are_counted_by_type():
    report = run_load_test(
        LoadTestConfig(call="tests.loadtest_targets:fails_every_third", processes=1, connections=1, requests=30)
    )
    assert report.error_kinds == {"KeyError": 10} and report.requests == 20


@pytest.mark.parametrize("name", ["always_fails", "always_fails_async"])
def test_call_failures_in_the_warmup_are_not_measured(name):
    # The warm-up is shorter than a tick (nothing discards what it counted): only the
    # budget's calls, all of them measured, may be counted as errors.
    config = LoadTestConfig(call=f"tests.loadtest_targets:{name}", processes=1, connections=1, requests=12, warmup=0.3)
    report = run_load_test(config)
    assert report.error_kinds == {"ValueError": 12} and report.requests == 0


def test_call_concurrency_multiplies_throughput():
    # 4 callers sleeping 50 ms each: about 80 calls a second, not 20.
    report = run_load_test(
        LoadTestConfig(call="tests.loadtest_targets:sleeps_50ms", processes=1, connections=4, duration=1.0)
    )
    assert report.requests >= 60


def test_call_that_cannot_import_fails_clearly():
    with pytest.raises(LoadTestError, match="ModuleNotFoundError"):
        run_load_test(LoadTestConfig(call="no_such_module_here:f", processes=1, connections=1, requests=1))
    out = procly_cli("loadtest", "--call", "no_such_module_here:f", "-n", "1")
    assert out.returncode == 2 and "no_such_module_here" in out.stderr


def test_a_worker_that_dies_is_reported_and_the_rest_go_on(tmp_path):
    env = {**os.environ, CALLS_DIR_ENV: str(tmp_path)}
    out = procly_cli(
        "loadtest",
        "-q",
        "--call",
        "tests.loadtest_targets:first_worker_dies",
        "-p",
        "2",
        "-c",
        "2",
        "-d",
        "1",
        "--json",
        "-",
        env=env,
    )
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert len(report["workers_lost"]) == 1 and "exit code 7" in report["workers_lost"][0]
    assert report["requests"] > 50  # the other worker kept calling
    assert "exit code 7" in out.stderr


# --- the command line: reports, thresholds, Ctrl-C ---------------------------------------


def test_cli_default_run_writes_every_report(tmp_path):
    files = {kind: tmp_path / f"report.{kind}" for kind in ("json", "csv", "html")}
    out = procly_cli(
        "loadtest",
        "-d",
        "1.2",
        "-p",
        "2",
        "-c",
        "8",
        "--json",
        str(files["json"]),
        "--csv",
        str(files["csv"]),
        "--html",
        str(files["html"]),
    )
    assert out.returncode == 0, out.stderr
    assert "built-in target" in out.stderr and "latency ms" in out.stdout and "p99.9" in out.stdout
    report = json.loads(files["json"].read_text())
    assert report["requests"] > 0 and report["errors"] == 0
    # Requests in flight when the run ends may be served but not counted: at most one per connection.
    assert 0 <= report["target_served"] - report["requests"] <= 8
    assert f"{report['requests']:,}" in out.stdout
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert rows[-1]["row"] == "total" and int(rows[-1]["requests"]) == report["requests"]
    assert sum(int(row["requests"]) for row in rows if row["row"] == "second") == report["requests"]
    named = [row for row in rows if row["row"] == "name"]
    assert [row["name"] for row in named] == ["GET /"] and int(named[0]["requests"]) == report["requests"]
    assert float(rows[-1]["latency_p95_ms"]) <= float(rows[-1]["latency_p99_ms"])
    assert rows[-1]["send_lag_p99_ms"] == ""  # closed loop: no schedule to be late against
    page = files["html"].read_text()
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert [re.search(r'id="([^"]+)"', svg).group(1) for svg in svgs] == ["throughput", "latency-over-time", "spectrum"]
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert "<rect" in svgs[0] and "<polyline" in svgs[1] and "<polyline" in svgs[2]
    assert "No --fail-if condition was given" in page and 'id="configuration"' in page and 'id="machine"' in page


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_end_without_noise_on_stderr(target, method):
    # A worker process closes its loop with nothing left pending: no "Task was destroyed",
    # no exception ignored at exit, whatever the start method.
    out = procly_cli("loadtest", "-q", "-p", "2", "-c", "4", "-d", "0.5", "--start-method", method, target.url)
    assert out.returncode == 0, out.stderr
    for noise in ("Task was destroyed", "Exception ignored", "Traceback", "Event loop is closed"):
        assert noise not in out.stderr, out.stderr


def test_thresholds_set_the_exit_status(target):
    broken = procly_cli(
        "loadtest",
        "-q",
        "-n",
        "200",
        "-c",
        "4",
        "-p",
        "1",
        "--fail-if",
        "p50>0.001ms",
        "--fail-if",
        "errors>0",
        "--fail-if",
        "p95{name=GET /}>0.001ms",
        "--fail-if",
        "p95{name=GET /other}>30s",
        target.url,
    )
    assert broken.returncode == 1
    assert "threshold broken: p50>0.001ms" in broken.stderr and "errors>0" not in broken.stderr
    assert "threshold broken: p95{name=GET /}>0.001ms" in broken.stderr
    assert "no request is named 'GET /other'" in broken.stderr
    passed = procly_cli(
        "loadtest",
        "-q",
        "-n",
        "200",
        "-c",
        "4",
        "-p",
        "1",
        "--fail-if",
        "errors>0.1%",
        "--fail-if",
        "p99>30s",
        target.url,
    )
    assert passed.returncode == 0, passed.stderr
    errors = procly_cli(
        "loadtest", "-q", "-n", "20", "-c", "2", "-p", "1", "--fail-if", "errors>=50%", target.url + "status/500"
    )
    assert errors.returncode == 1 and "error rate = 100.000%" in errors.stderr
    bad = procly_cli("loadtest", "--fail-if", "latency>>3", target.url)
    assert bad.returncode == 2 and "fail-if" in bad.stderr
    unitless = procly_cli("loadtest", "--fail-if", "p99>2", target.url)
    assert unitless.returncode == 2 and "'p99>2'" in unitless.stderr and "unit" in unitless.stderr


def test_threshold_parsing():
    assert Threshold.parse("p99.9 >= 1.5s").value == 1.5
    named = Threshold.parse("p95{name=Login Page}>300ms")
    assert (named.metric, named.name, named.value, named.unit) == ("p95", "Login Page", 300, "ms")
    assert Threshold.parse("errors{name=/cart}>0").name == "/cart"
    assert Threshold.parse("checks<99.9%").metric == "checks"
    assert Threshold.parse("checks{name='status is 200'}<100%").name == "status is 200"
    # A generated check name holds quotes of its own: kept, quoted as a whole or not.
    assert Threshold.parse("checks{name=body contains 'item'}<100%").name == "body contains 'item'"
    assert Threshold.parse("""checks{name="body contains 'item'"}<100%""").name == "body contains 'item'"
    for bad, message in [
        ("p0>1ms", "percentile"),
        ("p99>5%", "latency"),
        ("rps<5ms", "plain number"),
        ("speed>1", "unknown metric"),
        ("errors>5ms", "count or a percentage"),
        ("p99>2", "needs its unit"),
        ("max>2", "needs its unit"),
        ("checks<99", "percentage"),
        ("error_rate>0.1", "percentage"),
        ("p95{name=}>3ms", "names nothing"),
        ("p95{nom=x}>3ms", "cannot read"),
    ]:
        with pytest.raises(ValueError, match=message):
            Threshold.parse(bad)


def test_thresholds_per_name_and_on_checks():
    from procly.loadtest._report import CheckStats

    hist = _stats.histogram_from([1000] * 90 + [400_000] * 10)  # p95 = 400 ms
    login = _stats.Interval(requests=100, statuses={200: 100}, histogram=hist)
    cart = _stats.Interval(
        requests=10, statuses={200: 9, 500: 1}, errors={"http 500": 1}, histogram=_stats.histogram_from([2000] * 10)
    )
    total = _stats.Interval()
    for name, sub in (("login", login), ("/cart", cart)):
        total.add(sub)
        total.by_name[name] = sub
    total.checks = {"status is 200": [999, 1], "has token": [100, 0]}
    report = Report.build(LoadTestConfig(url="http://127.0.0.1/", duration=1), total, 1.0, [], [], False)
    assert [c.name for c in report.checks] == ["has token", "status is 200"]
    assert isinstance(report.checks[0], CheckStats) and report.checks_passed_percent == pytest.approx(1099 / 11)

    def broken(text):
        return Threshold.parse(text).broken_by(report)

    assert broken("p95{name=login}>300ms") and not broken("p95{name=/cart}>300ms")
    assert broken("errors{name=/cart}>0") and not broken("errors{name=login}>0")
    assert "error rate of /cart = 10.000%" in broken("errors{name=/cart}>=10%")
    assert broken("checks<99.95%") and not broken("checks<99.9%")
    assert broken("checks{name=status is 200}<100%") and not broken("checks{name=has token}<100%")
    assert "no request is named 'logni'" in broken("p95{name=logni}>300ms")
    assert "no check is named" in broken("checks{name=nope}<1%")
    assert not broken("rps{name=login}<100") and broken("rps{name=login}<100.5")
    # A condition on checks in a run that made none names nothing: broken, not passed.
    unchecked = Report.build(LoadTestConfig(url="http://127.0.0.1/", duration=1), login, 1.0, [], [], False)
    assert "made no check" in Threshold.parse("checks<99.9%").broken_by(unchecked)


@pytest.mark.parametrize(
    ("late", "cpu_s", "says"),
    [
        (0, 1.95, None),  # every request on time: nothing to say, however busy the client
        (500, 1.95, "the client fell behind its schedule: 5.0%"),  # late and busy: the client
        (500, 0.40, "5.0% of the requests were due while every connection was busy"),  # late, idle
        # Busy only watching the clock for due times: the loop was free, so the target is the limit.
        (500, (1.95, 1.2), "5.0% of the requests were due while every connection was busy"),
    ],
)
def test_rate_mode_says_why_requests_went_out_late(late, cpu_s, says):
    # Late sends (no free connection when due) are counted apart from the send lag; beyond
    # 1% of the requests a warning says whether the client (busy workers) or the target is
    # the limit.
    cpu_s, watch_s = cpu_s if isinstance(cpu_s, tuple) else (cpu_s, 0.0)
    config = LoadTestConfig(url="http://127.0.0.1/", processes=1, rate=5000, duration=2, warmup=0)
    total = _stats.Interval(requests=10_000, statuses={200: 10_000}, late=late, cpu_s=cpu_s, watch_s=watch_s)
    total.histogram = _stats.histogram_from([100] * 10_000)
    report = Report.build(config, total, 2.0, [], [], False)
    late_warnings = [w for w in report.warnings if "late" in w or "busy" in w]
    if says is None:
        assert late_warnings == []
    else:
        assert len(late_warnings) == 1 and late_warnings[0].startswith(says), report.warnings
    assert report.to_dict()["worker_busy_percent"] == round((cpu_s - watch_s) / 2.0 * 100, 1)
    assert report.to_dict()["worker_watch_s"] == watch_s and report.to_dict()["worker_cpu_s"] == cpu_s
    assert ("watching the clock" in report.to_text()) == bool(watch_s)
    # Busy per worker that ran: one connection makes one worker, whatever -p says.
    one_worker = LoadTestConfig(url="http://127.0.0.1/", processes=8, connections=1, rate=5000, duration=2, warmup=0)
    assert Report.build(one_worker, total, 2.0, [], [], False).worker_busy == pytest.approx((cpu_s - watch_s) / 2.0)


def test_bad_options_exit_2():
    for args in (["-d", "forever"], ["-c", "0"], ["ftp://127.0.0.1/"], ["-H", "no colon"]):
        out = procly_cli("loadtest", *args)
        assert out.returncode == 2 and out.stderr.startswith("procly loadtest:"), (args, out.stderr)


def test_report_files_that_cannot_be_written(tmp_path, target):
    # Found before the run (exit 2, nothing run) where the path says it: a missing folder, a folder.
    for option, path, says in (
        ("--json", tmp_path / "no" / "such" / "r.json", "does not exist"),
        ("--html", tmp_path, "that is a folder"),
    ):
        out = procly_cli("loadtest", "-q", "-n", "5", option, str(path), target.url)
        assert out.returncode == 2 and out.stderr.startswith(f"procly loadtest: {option} {path}: "), out.stderr
        assert says in out.stderr and "Traceback" not in out.stderr
    # Failing only when written (a full disk): said, the other files still written, exit 1.
    csv_path = tmp_path / "r.csv"
    out = procly_cli("loadtest", "-q", "-n", "5", "--json", "/dev/full", "--csv", str(csv_path), target.url)
    assert out.returncode == 1 and "cannot write --json /dev/full" in out.stderr and "Traceback" not in out.stderr
    assert csv_path.read_text().startswith("row,")


def test_a_writable_report_file_in_a_folder_one_cannot_write_to_is_accepted(tmp_path, monkeypatch):
    # /dev/null, /dev/stdout: the file exists and can be written, its folder cannot (for
    # anyone but root); only a file still to be made needs a writable folder.
    import argparse

    from procly.loadtest import _cli

    existing = tmp_path / "report.json"
    existing.write_text("")
    real_access = os.access

    def access(path, mode):
        return False if str(path) == str(tmp_path) else real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    _cli._check_report_paths(argparse.Namespace(json=str(existing), csv=None, html="-"))
    with pytest.raises(ValueError, match="cannot be written"):
        _cli._check_report_paths(argparse.Namespace(json=None, csv=str(tmp_path / "new.csv"), html=None))


def test_unresolvable_host_fails_at_once_with_exit_2():
    """Resolved once at the start: no run of its whole duration against a name that does not resolve."""
    out = procly_cli("loadtest", "-q", "-d", "30", "http://nonexistent.invalid/")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("procly loadtest: cannot resolve host 'nonexistent.invalid'"), out.stderr
    assert "Traceback" not in out.stderr
    with pytest.raises(LoadTestError, match="cannot resolve host 'nonexistent.invalid'"):
        run_load_test(LoadTestConfig(url="http://nonexistent.invalid/", processes=1, connections=1, requests=1))


def test_connections_go_to_the_resolved_address_only(target):
    """The workers connect to the address resolved at the start, never to the name: here
    a name that does not resolve at all, given with the target's address."""
    port = HttpTarget.from_url(target.url).port
    config = LoadTestConfig(
        url=f"http://nonexistent.invalid:{port}/", processes=2, connections=4, requests=40, address="127.0.0.1"
    )
    assert config.resolved() is config
    report = run_load_test(config)
    assert report.requests == 40 and report.errors == 0
    assert LoadTestConfig(url=target.url, processes=1).resolved().address == "127.0.0.1"


def test_serve_target_rejects_bad_ports_and_hosts_in_one_line():
    out = procly_cli("serve-target", "--port", "99999")
    assert out.returncode == 2 and "port 99999 out of range (0 to 65535)" in out.stderr, out.stderr
    out = procly_cli("serve-target", "--host", "nonexistent.invalid", "--port", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("procly serve-target: --host: cannot resolve host 'nonexistent.invalid'")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = procly_cli("serve-target", "--port", str(port))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"procly serve-target: cannot listen on 127.0.0.1 port {port}: the address is in use"


@pytest.mark.parametrize("whole_group", [False, True], ids=["coordinator", "terminal"])
def test_ctrl_c_stops_within_a_second_and_still_reports(whole_group):
    proc = subprocess.Popen(
        [sys.executable, "-m", "procly.cli", "loadtest", "-q", "-d", "60", "-p", "2", "-c", "8", "--json", "-"]
        + ["--prometheus", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_requests(proc.stderr)
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            proc.send_signal(signal.SIGINT)
        # Bounded: workers stop within a second; the rest is the target's shutdown.
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] and report["requests"] > 0 and not report["workers_lost"]
    assert wait_for_nothing_left(proc.pid)


def wait_for_requests(stderr) -> None:
    """Read a ``--prometheus`` run's standard error up to its metrics' address, then scrape
    them until a request has completed (the run publishes its counts once a second)."""
    url = None
    while url is None:
        line = stderr.readline()
        assert line, "the load test ended before it served its metrics"
        found = re.search(r"OpenMetrics at (\S+)", line)
        url = found.group(1) if found else None

    def completed() -> bool:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        counts = re.findall(r"^procly_loadtest_requests_total\{[^}]*\} (\d+)$", text, re.MULTILINE)
        return sum(int(count) for count in counts) > 0

    assert wait_until(completed, timeout=30, interval=0.05), "no request completed"


def wait_for_nothing_left(session: int) -> bool:
    deadline = time.monotonic() + 5
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not session_processes(session)


def test_report_from_python_is_complete(target):
    report = run_load_test(LoadTestConfig(url=target.url + "bytes/100", processes=1, connections=2, requests=40))
    assert isinstance(report, Report) and report.bytes_received >= 40 * 100
    data = report.to_dict()
    json.dumps(data)
    assert data["latency_p99_9_ms"] >= data["latency_p95_ms"] >= data["latency_p50_ms"] and "histogram_hdr" in data
    assert "latency ms" in report.to_text() and "p95" in report.to_text()


def test_every_json_number_carries_its_unit(target):
    report = run_load_test(LoadTestConfig(url=target.url, processes=1, connections=2, duration=1.0, rate=100))
    counts = {
        "requests",
        "errors",
        "attempts",
        "bytes_received",
        "late_sends",
        "iterations",
        "passed",
        "failed",
        "target_served",
        "processes",
        "connections",
        "users",
        "measured_errors",
        "measured_requests",
        "data_rows",
        "seed",
        "cpus",
        "usable_cpus",
    }
    units = ("_ms", "_s", "_per_s", "_percent", "_mib")

    def walk(data, where):
        if isinstance(data, dict):
            for key, value in data.items():
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and not where.endswith("kinds")
                    and where not in ("status_codes", "exceptions")
                ):
                    assert key in counts or key.endswith(units), f"{where}.{key} has no unit"
                walk(value, key)
        elif isinstance(data, list):
            for item in data:
                walk(item, where)

    data = report.to_dict()
    walk(data, "")
    assert data["latency_p95_ms"] > 0 and data["requests_per_s"] > 0 and data["duration_s"] > 0
    assert data["worker_peak_rss_mib"] > 1  # the worker process's peak resident size
    assert data["worker_cpu_s"] > 0
    assert 0 <= data["worker_watch_s"] <= data["worker_cpu_s"]  # the pacer's watching is part of the CPU time
    assert data["send_lag_p50_ms"] >= 0 and data["send_lag_p99_ms"] >= data["send_lag_p50_ms"]
    total = list(csv.DictReader(io.StringIO(report.to_csv())))[-1]
    assert total["row"] == "total"
    assert float(total["send_lag_p99_ms"]) == pytest.approx(data["send_lag_p99_ms"], abs=1e-3)
    assert data["timeline"][0]["latency_p95_ms"] >= 0 and data["by_name"][0]["latency_p95_ms"] > 0


def test_head_requests_end_with_their_headers(target):
    report = run_load_test(
        LoadTestConfig(url=target.url + "bytes/100", processes=1, connections=2, requests=30, method="HEAD", timeout=2)
    )
    assert report.requests == 30 and report.errors == 0
    with urllib.request.urlopen(target.url + "stats", timeout=10) as answer:
        before = int(answer.read())
    report = run_load_test(LoadTestConfig(url=target.url, processes=1, connections=2, requests=40, method="HEAD"))
    with urllib.request.urlopen(target.url + "stats", timeout=10) as answer:
        served = int(answer.read()) - before - 1  # the second /stats counts itself
    assert report.requests == 40 == served and report.errors == 0


def test_a_body_sent_after_a_head_answer_is_not_a_second_answer():
    # A server may send a body with its HEAD answer anyway: the answer is complete with its
    # headers, and the body that follows in the same read is not counted again.
    from procly.loadtest import _http

    class Slot:
        def __init__(self):
            self.answers = []

        def completed(self, protocol, status, keep_alive):
            self.answers.append((status, keep_alive))

    slot = Slot()
    protocol = _http._HeadProtocol(slot)
    protocol.parser.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert slot.answers == [(200, True)]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key)


def test_https_with_and_without_verification(certificate):
    with EmbeddedTarget(tls=certificate) as tls_target:
        assert tls_target.url.startswith("https://")
        # A self-signed certificate fails verification: counted, not fatal.
        refused = run_load_test(LoadTestConfig(url=tls_target.url, processes=1, connections=1, requests=3))
        assert refused.requests == 0 and set(refused.error_kinds) == {"tls certificate"}
        report = run_load_test(
            LoadTestConfig(url=tls_target.url, processes=1, connections=4, requests=200, insecure=True)
        )
    assert report.requests == 200 and report.errors == 0 and tls_target.served == 200


@pytest.mark.parametrize(("exc", "kind"), [
    (ConnectionRefusedError(111, "refused"), "connect refused"),
    (ConnectionResetError(104, "reset"), "connect reset"),
    (TimeoutError(), "connect timeout"),
    (socket.gaierror(-2, "unknown"), "name resolution"),
    (OSError(113, "no route"), "connect EHOSTUNREACH"),
    (RuntimeError("odd"), "connect RuntimeError"),
])  # fmt: skip
def test_connect_errors_get_short_names(exc, kind):
    from procly.loadtest._http import connect_error_kind

    assert connect_error_kind(exc) == kind


def test_a_tick_lets_a_send_due_in_the_next_milliseconds_go_first():
    # A tick encodes the histograms (a millisecond or more, holding the loop): a request due
    # just after the tick's time goes out first, not late behind it.
    import asyncio

    from procly.loadtest._clock import PreciseTimer
    from procly.loadtest._worker import _Worker

    order: list[str] = []

    class Recorder:
        def take_wire(self):
            order.append("tick")
            return {}

        def discard(self):
            order.append("warm-up tick")

    class Load:
        users = None

    async def main() -> None:
        worker = _Worker(LoadTestConfig(url="http://127.0.0.1/", processes=1, rate=10), 0, lambda message: None)
        worker.load = Load()
        worker.load.pacer = pacer = PreciseTimer()
        now = time.monotonic()
        warmup_end = now - 0.5 + 0.002  # the next tick is 2 ms away ...
        pacer.call_at(now + 0.004, order.append, "send")  # ... the send due 2 ms after it
        ticker = asyncio.get_running_loop().create_task(worker._tick(Recorder(), warmup_end))
        while "tick" not in order:
            await asyncio.sleep(0.001)
        ticker.cancel()
        pacer.close()

    asyncio.run(main())
    assert order[:2] == ["send", "tick"], order
