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
        initargs: tuple = (),
        *,
        client: Any = None,
        address: str | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        cluster_options: dict[str, Any] | None = None,
    ) -> None:
        self._adopt(Pool(max_workers, initializer, initargs, client=client, address=address,
                         task_timeout=task_timeout, retries=retries, cluster_options=cluster_options))

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` the executor submits through."""
        return self._pool.client
