"""How many threads the numeric libraries inside a pool worker may use.

N workers on N cores, each running a BLAS or OpenMP library that starts one thread per
core, make N x N threads fight for N cores: a matrix product in every worker then runs
slower than in one. A pool therefore gives each worker ``cores // workers`` threads
(``Pool(inner_threads=...)``), through the environment variables these libraries read
when they load, and through threadpoolctl (when installed) for libraries a worker
already loaded: a forked worker inherits its parent's numpy.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any

#: The variables OpenMP, OpenBLAS, MKL, Accelerate, numexpr and BLIS read at load time.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS",
)  # fmt: skip


# Modules that load a BLAS or OpenMP runtime: only when one of them is loaded already (a
# forked worker inherits its parent's) is there a thread pool to limit.
_NUMERIC_MODULES = ("numpy", "scipy", "torch", "numexpr", "sklearn", "jax")


def resolve(inner_threads: int | None, processes: int, cpus: int) -> int:
    """Threads per worker: *inner_threads* if given (0: no limit), else an equal share of the CPUs.

    Raises:
        ValueError: *inner_threads* is negative or not an int.
    """
    if inner_threads is None:
        return max(1, cpus // processes)
    if not isinstance(inner_threads, int) or isinstance(inner_threads, bool) or inner_threads < 0:
        raise ValueError(f"inner_threads must be a non-negative int or None, not {inner_threads!r}")
    return inner_threads


def environment(threads: int) -> dict[str, str]:
    """The variables to set in a worker's environment (those the user has not set)."""
    if threads <= 0:
        return {}
    return {name: str(threads) for name in THREAD_VARIABLES if name not in os.environ}


def _loaded_numeric_modules() -> tuple[str, ...]:
    return tuple(name for name in _NUMERIC_MODULES if name in sys.modules)


# threadpoolctl's view of this process's libraries, and the numeric modules loaded when it
# was made. Made in the parent before it forks workers, so that each forked worker only
# applies the limit (a fraction of a millisecond) instead of importing threadpoolctl and
# scanning every loaded library itself (5 ms or more a worker).
_controller: tuple[tuple[str, ...], Any] | None = None


def _controller_for(loaded: tuple[str, ...]) -> Any:
    global _controller
    if _controller is None or _controller[0] != loaded:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        _controller = (loaded, ThreadpoolController())
    return _controller[1]


def prepare_to_fork(threads: int) -> None:
    """In a parent about to fork pool workers: find the libraries they will inherit."""
    if threads > 0:
        loaded = _loaded_numeric_modules()
        if loaded:
            _controller_for(loaded)


def limit_loaded_libraries(threads: int) -> None:
    """Limit the thread pools of libraries already loaded in this process (threadpoolctl)."""
    if threads <= 0:
        return
    loaded = _loaded_numeric_modules()
    if not loaded:
        return  # nothing loaded that starts a thread pool (and importing threadpoolctl costs ms)
    controller = _controller_for(loaded)
    if controller is not None:
        controller.limit(limits=threads)
