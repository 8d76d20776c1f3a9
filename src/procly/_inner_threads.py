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


def limit_loaded_libraries(threads: int) -> None:
    """Limit the thread pools of libraries already loaded in this process (threadpoolctl)."""
    if threads <= 0 or not any(name in sys.modules for name in _NUMERIC_MODULES):
        return  # nothing loaded that starts a thread pool (and importing threadpoolctl costs ms)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads)
