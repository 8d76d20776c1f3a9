"""A ``concurrent.futures.Executor`` on a Dask cluster, with procly's error semantics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._executor import ProcessPoolExecutor
from ._pool import Pool


class Executor(ProcessPoolExecutor):
    """``submit``/``map``/``shutdown`` on a Dask cluster (see :class:`procly.dask.Pool` for the cluster rules).

    Futures are ``concurrent.futures.Future``: usable with ``as_completed``, ``wait`` and
    ``loop.run_in_executor``. A lost worker fails its future with WorkerLostError once
    Dask gives up; ``task_timeout`` fails it with TaskTimeoutError and restarts the worker.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        client: Any = None,
        address: str | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        cluster_options: dict[str, Any] | None = None,
    ) -> None:
        self._adopt(
            Pool(
                max_workers,
                initializer,
                initargs,
                client=client,
                address=address,
                task_timeout=task_timeout,
                retries=retries,
                cluster_options=cluster_options,
            )
        )

    def _schedule(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                  claim: Callable[[], bool], settle: Callable[[bool, Any], None],
                  ready: Callable[[], bool]) -> None:  # fmt: skip
        # The cluster does not say when a call starts: it counts as running once
        # submitted, so that cancel() never claims to stop a call that will run.
        claim()
        self._pool.apply_async(fn, args, kwargs, callback=lambda value: settle(True, value),
                               error_callback=lambda exc: settle(False, exc))  # fmt: skip
        return None

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` the executor submits through."""
        return self._pool.client
