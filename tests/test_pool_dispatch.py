"""The pool's dispatch rules (procly._pool_dispatch.plan), without processes or a clock."""

from __future__ import annotations

import collections
from typing import Any, Callable

import pytest

from procly._pool_dispatch import BIG_TASK_BYTES, PIPELINE, PIPELINE_MAX_BYTES, depth, plan

BIG = 1000  # big_from in these tests: tasks of this many bytes and more cross in a memfd


class Task:
    def __init__(self, name: str, size: int = 10, func_key: int = 0, func_bytes: bytes = b"f" * 5, count: int = 1,
                 claim: Callable[[], bool] | None = None) -> None:  # fmt: skip
        self.name = name
        self.size = size
        self.func_key = func_key
        self.func_bytes = func_bytes
        self.count = count
        self.claim = claim

    def __repr__(self) -> str:
        return self.name


class Worker:
    def __init__(self, name: str, inflight: int = 0, queued: int = 0, sent: int = 0, funcs: set[int] | None = None,
                 ended: bool = False) -> None:  # fmt: skip
        self.name = name
        self.inflight = collections.deque(range(inflight))
        self.queued = queued
        self.sent = sent
        self.funcs = {0} if funcs is None else funcs
        self.ended = ended

    def __repr__(self) -> str:
        return self.name


def tasks(n: int, **kwargs: Any) -> list[Task]:
    return [Task(f"t{i}", **kwargs) for i in range(n)]


def names(result: Any) -> dict[str, list[list[str]]]:
    """worker name -> its bundles, as task names."""
    return {
        worker.name: [[task.name for task, _, _ in bundle] for bundle in bundles] for worker, bundles in result.sends
    }


def ended(worker: Worker) -> bool:
    return worker.ended


def test_nothing_pending_plans_nothing():
    result = plan([Worker("a")], [], 1e-6)
    assert (result.taken, result.dropped, result.sends) == (0, [], [])


def test_untimed_tasks_go_two_deep_spread_over_the_workers():
    result = plan([Worker("a"), Worker("b")], tasks(10), None)
    assert result.taken == 4
    assert names(result) == {"a": [["t0", "t1"]], "b": [["t2", "t3"]]}


def test_short_tasks_queue_deep_up_to_the_pipeline():
    result = plan([Worker("a")], tasks(200), 1e-9)
    assert result.taken == PIPELINE
    assert names(result) == {"a": [[f"t{i}" for i in range(PIPELINE)]]}


def test_each_worker_takes_its_share_of_a_small_batch():
    result = plan([Worker("a"), Worker("b"), Worker("c")], tasks(4), 1e-9)
    assert names(result) == {"a": [["t0", "t1"]], "b": [["t2"]], "c": [["t3"]]}


def test_long_tasks_go_one_per_worker_and_the_least_busy_first():
    busy, idle = Worker("busy", inflight=1), Worker("idle")
    result = plan([busy, idle], tasks(5), 0.01)
    assert names(result) == {"idle": [["t0"]]}  # busy already holds its one


@pytest.mark.parametrize(
    ("item_seconds", "count", "expected"),
    [(None, 1, 2), (0.01, 1, 1), (0.001, 5, 1), (1e-9, 1, PIPELINE), (0.0005, 1, 4), (0.001, 1, 2), (0.0001, 2, 10)],
)
def test_depth_follows_the_measured_time_of_the_task(item_seconds, count, expected):
    assert depth(item_seconds, count) == expected


def test_depth_is_guessed_from_the_first_pending_task():
    result = plan([Worker("a")], [Task("long", count=1000), *tasks(5)], 1e-5)  # 10 ms: one at a time
    assert names(result) == {"a": [["long"]]}


def test_the_function_travels_with_the_first_task_a_worker_gets():
    worker = Worker("a", funcs=set())
    result = plan([worker], tasks(3, size=10, func_bytes=b"f" * 100), 1e-9)
    (entries,) = result.sends[0][1]
    assert [(first_use, wire) for _, first_use, wire in entries] == [(True, 110), (False, 10), (False, 10)]
    assert worker.funcs == set()  # the plan only reads its arguments


def test_queued_bytes_stay_under_the_budget():
    size = PIPELINE_MAX_BYTES // 4
    result = plan([Worker("a")], tasks(10, size=size), 1e-9, big_from=10 * PIPELINE_MAX_BYTES)
    assert result.taken == 4
    worker_full = Worker("full", inflight=1, queued=PIPELINE_MAX_BYTES - 5)
    assert plan([worker_full], tasks(3), 1e-9).taken == 0


def test_an_idle_worker_takes_a_task_over_the_budget():
    result = plan([Worker("a")], tasks(2, size=2 * PIPELINE_MAX_BYTES), 1e-9, big_from=10 * PIPELINE_MAX_BYTES)
    assert names(result) == {"a": [["t0"]]}


def test_a_big_task_travels_alone_and_counts_an_eighth_of_the_budget():
    pending = [Task("s0"), Task("big0", size=BIG), Task("s1"), Task("big1", size=5 * BIG)]
    result = plan([Worker("a")], pending, 1e-9, big_from=BIG)
    assert names(result) == {"a": [["s0"], ["big0"], ["s1"], ["big1"]]}
    wires = [wire for bundle in result.sends[0][1] for _, _, wire in bundle]
    assert wires == [10, BIG_TASK_BYTES, 10, BIG_TASK_BYTES]


def test_at_most_eight_big_tasks_wait_at_a_worker():
    result = plan([Worker("a")], tasks(20, size=BIG), 1e-9, big_from=BIG)
    assert result.taken == PIPELINE_MAX_BYTES // BIG_TASK_BYTES == 8


def test_maxtasksperchild_caps_what_a_worker_is_sent():
    result = plan([Worker("a", sent=3), Worker("b", sent=5)], tasks(10), 1e-9, maxtasks=5)
    assert names(result) == {"a": [["t0", "t1"]]}


def test_an_idle_worker_that_ended_gets_nothing():
    dead, alive = Worker("dead", ended=True), Worker("alive")
    asked = []

    def spy(worker: Worker) -> bool:
        asked.append(worker.name)
        return worker.ended

    result = plan([Worker("busy", inflight=1), dead, alive], tasks(6), 1e-9, ended=spy)
    assert set(names(result)) == {"alive", "busy"}
    assert "busy" not in asked  # only idle workers are asked


def test_a_task_whose_claim_says_no_is_dropped_and_one_claimed_once():
    claims: list[str] = []

    def claim(name: str, answer: bool) -> Callable[[], bool]:
        def run() -> bool:
            claims.append(name)
            return answer

        return run

    pending = [Task("keep", claim=claim("keep", True)), Task("drop", claim=claim("drop", False)), Task("plain")]
    result = plan([Worker("a")], pending, 1e-9)
    assert result.taken == 3
    assert [t.name for t in result.dropped] == ["drop"]
    assert names(result) == {"a": [["keep", "plain"]]}
    assert claims == ["keep", "drop"]


def test_tasks_are_taken_in_order_from_the_front():
    pending = tasks(7)
    result = plan([Worker("a"), Worker("b", inflight=2)], pending, 1e-9)
    sent = [task for _, bundles in result.sends for bundle in bundles for task, _, _ in bundle]
    assert sent == pending[: result.taken]
