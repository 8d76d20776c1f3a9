"""``procly loadtest --dask ADDRESS``: the load workers run as tasks on a Dask cluster.

Each share of the load (connections, request budget, rate) becomes one impure Dask task
that runs the same worker code as a local process, in a thread of a Dask worker, and
returns every tick it would have sent; the coordinator merges them exactly as in the
local case. All tasks start at one wall-clock time a little in the future, so their
intervals line up. Ctrl-C sets a Dask ``Event`` that every task checks at each tick.

There is no live progress line (ticks come back with the task). A task whose worker
dies is rerun by Dask for the time that remains; one that fails is reported lost.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from ._config import LoadTestConfig
from ._report import Report
from ._runner import LoadTestError, Tally
from ._worker import STOP_GRACE, TICK, run_share

#: How far ahead the common start is set: the tasks must reach their workers first.
START_DELAY = 1.0


def _load_task(config: LoadTestConfig, index: int, wall_start: float, stop_event: str) -> list[tuple[Any, ...]]:
    from distributed import Event

    event = Event(stop_event)
    return run_share(config, index, wall_start, should_stop=event.is_set)


def run_on_dask(config: LoadTestConfig, address: str, processes_given: bool = True) -> Report:
    """Run the load test from the workers of the Dask cluster at ``address``.

    ``processes_given`` false: one task per worker thread of the cluster.

    Raises:
        LoadTestError: the cluster has no workers, or a task could not start the load.
        OSError / TimeoutError: the scheduler cannot be reached.
    """
    from distributed import Client, Event

    with Client(address, set_as_default=False) as client:
        threads = sum(client.nthreads().values())
        if not threads:
            raise LoadTestError(f"the Dask cluster at {address} has no workers")
        if not processes_given:
            config = dataclasses.replace(config, processes=threads)
        stop = Event(f"procly-loadtest-stop-{uuid.uuid4().hex}", client=client)
        wall_start = time.time() + START_DELAY
        tally = Tally(config)
        tally.measure_start = wall_start + config.warmup
        futures = [
            client.submit(
                _load_task,
                config,
                index,
                wall_start,
                stop.name,
                pure=False,
                key=f"procly-loadtest-{index}-{uuid.uuid4().hex}",
            )
            for index in range(config.worker_count)
        ]
        interrupted = False
        try:
            _wait_all(futures, None)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            _wait_all(futures, time.monotonic() + TICK + STOP_GRACE + 5)
        lost: list[str] = []
        for index, future in enumerate(futures):
            if future.status != "finished":
                reason = future.exception() if future.status == "error" else future.status
                lost.append(f"load task {index} on the Dask cluster did not finish: {reason}")
                continue
            for message in future.result():
                if message[0] == "failed":
                    raise LoadTestError(f"load task {index} could not start the load: {message[1]}")
                if message[0] in ("tick", "done"):
                    tally.add(message[0], message[1], message[2])
        client.cancel([f for f in futures if not f.done()])
        stop.set()  # nothing listens any more; an Event left set costs nothing
    return tally.report(lost, interrupted)


def _wait_all(futures: list[Any], deadline: float | None) -> None:
    """Wait until every future is done (or the deadline passes); their outcomes are read later."""
    for future in futures:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            future.result(timeout=timeout)
        except KeyboardInterrupt:
            raise
        except Exception:  # noqa: BLE001 - failures are reported from the future's status
            pass
