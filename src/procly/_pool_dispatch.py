"""The pool's dispatch rules: which pending tasks go to which worker, in which messages.

A pure function of the workers' state, the pending tasks and the measured time per
item: no processes, no clock, no locks (the pool calls it with its lock held, and
applies the plan it returns). The rules:

- Depth: about QUEUED_SECONDS of work in flight per worker, up to PIPELINE tasks, for
  short tasks (hides round trips, batches messages); one for long ones; two until a
  task has been timed (see ``depth``).
- Spread: the least busy worker first, each taking its share of what is pending, so a
  batch is spread over the workers instead of filling the first one.
- Bytes: the tasks queued at a worker stay under PIPELINE_MAX_BYTES on the socket (the
  pool could otherwise block writing tasks while the worker blocks writing a result);
  a task of ``big_from`` bytes or more crosses in a memfd, counts BIG_TASK_BYTES, and
  travels in a message of its own.
- The function goes to a worker once: a task whose function the worker has not seen
  carries it (and its bytes count).
- A worker that has sent maxtasksperchild tasks gets no more; an idle worker that has
  ended (``ended``) gets none (a task sent now would be failed as the one it ran).
- A task with a ``claim`` is claimed as it is chosen; a claim that says no drops it
  (an executor's future cancelled while it waited).
"""

from __future__ import annotations

import collections

from ._connection import MEMFD_THRESHOLD

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, NamedTuple, Protocol, Sequence, Sized

    class TaskState(Protocol):
        """What dispatch reads of a task."""

        @property
        def func_key(self) -> int: ...
        @property
        def func_bytes(self) -> bytes: ...
        @property
        def size(self) -> int: ...  # bytes of its payload and out-of-band buffers
        @property
        def count(self) -> int: ...  # items in it
        @property
        def claim(self) -> Callable[[], bool] | None: ...

    class WorkerState(Protocol):
        """What dispatch reads of a worker."""

        @property
        def inflight(self) -> Sized: ...  # tasks sent and not answered yet
        @property
        def queued(self) -> int: ...  # their bytes on the socket
        @property
        def sent(self) -> int: ...  # tasks sent in its life
        @property
        def funcs(self) -> set[int]: ...  # function keys it has


__all__ = ["BIG_TASK_BYTES", "PIPELINE", "PIPELINE_MAX_BYTES", "QUEUED_SECONDS", "Plan", "depth", "plan"]

# Tasks in flight per worker: the next one is already there when one ends, and for short
# tasks one message carries many of them (each send and each wake-up of a worker costs
# more than a trivial task). Deep only for short tasks: see depth().
PIPELINE = 64
QUEUED_SECONDS = 0.002  # the work to keep queued per worker, from the measured task time
# Tasks queued behind a running one must fit in the socket buffer, or the supervisor
# could block writing them while the worker blocks writing its result: a worker's
# queued tasks stay under this many bytes, and a bigger task waits until the worker is
# idle (and reading). Tasks of MEMFD_THRESHOLD bytes and more cross in a memfd, so only
# their envelope counts.
PIPELINE_MAX_BYTES = 64 * 1024
BIG_TASK_BYTES = PIPELINE_MAX_BYTES // 8


# What to do: take the first *taken* pending tasks; forget *dropped* (their claim said
# no); send each worker in *sends* its bundles, in order, one message each. An entry of
# a bundle is ``(task, first_use, wire)``: *first_use*, the worker has not seen the
# task's function (it travels with it); *wire*, the bytes it counts.
if TYPE_CHECKING:

    class Plan(NamedTuple):
        taken: int
        dropped: list[Any]
        sends: list[tuple[Any, list[list[tuple[Any, bool, int]]]]]

else:
    Plan = collections.namedtuple("Plan", ["taken", "dropped", "sends"])


def depth(item_seconds: float | None, count: int) -> int:
    """Tasks of *count* items to keep in flight per worker: about QUEUED_SECONDS of work,
    up to PIPELINE, for short ones (hides round trips and batches messages); one for long
    ones (a task queued behind a long one would wait while another worker idles). A
    task's time is guessed from the measured time per item (*item_seconds*) and its
    number of items, so a map's long chunks do not queue as deep as the short tasks
    before them. Two until a task has been timed: a long first batch must not sit deep
    in one worker while others run dry (short tasks are timed within µs)."""
    if item_seconds is None:
        return 2
    seconds = item_seconds * count
    if seconds >= 0.005:
        return 1
    return max(2, min(PIPELINE, int(QUEUED_SECONDS / max(seconds, 1e-9))))


def _never(worker: Any) -> bool:
    return False


def _busy(worker: Any) -> int:
    return len(worker.inflight)


def plan(workers: Iterable[WorkerState], pending: Sequence[TaskState], item_seconds: float | None,
         maxtasks: int | None = None, ended: Callable[[Any], bool] = _never,
         big_from: int = MEMFD_THRESHOLD) -> Plan:  # fmt: skip
    """Which of *pending* (in order, from the first) go to which of *workers* (see the
    module for the rules). *ended(worker)* is asked of idle workers only. Reads its
    arguments only (and calls the tasks' claims)."""
    dropped: list[Any] = []
    sends: list[tuple[Any, list[list[tuple[Any, bool, int]]]]] = []
    total = len(pending)
    if not total:
        return Plan(0, dropped, sends)
    most = depth(item_seconds, pending[0].count)
    ordered = sorted(workers, key=_busy)
    taken = 0
    for n, worker in enumerate(ordered):
        if taken >= total:
            break
        inflight = len(worker.inflight)
        if not inflight and ended(worker):
            continue
        share = -(-(total - taken) // (len(ordered) - n))  # ceiling
        limit = min(most, inflight + share)
        if maxtasks is not None:
            # Each task taken counts once in flight and once sent: stop at maxtasks sent.
            limit = min(limit, inflight + maxtasks - worker.sent)
        taken, bundles = _fill(worker, pending, taken, limit, big_from, dropped)
        if bundles:
            sends.append((worker, bundles))
    return Plan(taken, dropped, sends)


def _fill(worker: Any, pending: Sequence[TaskState], taken: int, limit: int, big_from: int,
          dropped: list[Any]) -> tuple[int, list[list[tuple[Any, bool, int]]]]:  # fmt: skip
    """Take tasks for *worker* from ``pending[taken:]`` until it has *limit* in flight or
    its byte budget is spent; a task whose claim fails is added to *dropped*. Returns
    the index of the next task and the bundles for the worker."""
    total = len(pending)
    inflight = len(worker.inflight)
    queued, funcs = worker.queued, worker.funcs
    new_funcs: set[int] = set()
    bundles: list[list[tuple[Any, bool, int]]] = []
    bundle: list[tuple[Any, bool, int]] = []
    while taken < total and inflight < limit:
        task = pending[taken]
        claim = task.claim
        if claim is not None and not claim():
            taken += 1
            dropped.append(task)
            continue
        key = task.func_key
        first_use = key not in funcs and key not in new_funcs
        wire = task.size + (len(task.func_bytes) if first_use else 0)
        big = wire >= big_from
        if big:
            # On the socket only its envelope; it counts as an eighth of the budget,
            # so that at most eight such tasks, each holding a memfd, wait at a worker.
            wire = BIG_TASK_BYTES
        if inflight and queued + wire > PIPELINE_MAX_BYTES:
            break
        if big and bundle:
            # A big task travels alone, in a memfd sized for it: the next task like
            # it is written into the same pages once they are named back.
            bundles.append(bundle)
            bundle = []
        taken += 1
        inflight += 1
        queued += wire
        if first_use:
            new_funcs.add(key)
        bundle.append((task, first_use, wire))
        if big:
            bundles.append(bundle)
            bundle = []
    if bundle:
        bundles.append(bundle)
    return taken, bundles
