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


class _Libraries:
    """The thread pools of the numeric libraries loaded in this process, and how to limit them.

    Found with threadpoolctl (5 ms or more). A parent finds them before it forks pool
    workers, so that each forked worker only applies the limit. For OpenBLAS on pthreads
    the limit is its ``blas_cpu_number`` variable, written in place: its
    ``openblas_set_num_threads()`` would, in a forked process, first start a new thread
    pool whose threads busy-wait for work (a core each, for a tenth of a second), and a
    worker that never calls BLAS would pay for it anyway.
    """

    def __init__(self, loaded: tuple[str, ...]) -> None:
        import ctypes

        from threadpoolctl import ThreadpoolController

        self.loaded = loaded
        self.openblas_counts: list[Any] = []  # ctypes.c_int views of blas_cpu_number
        self.others: list[Any] = []  # threadpoolctl LibControllers
        for library in ThreadpoolController().lib_controllers:
            count = None
            if library.internal_api == "openblas" and library.threading_layer == "pthreads":
                try:
                    count = ctypes.c_int.in_dll(library.dynlib, "blas_cpu_number")
                except (ValueError, AttributeError):  # not exported by this build
                    count = None
            if count is not None:
                self.openblas_counts.append(count)
            else:
                self.others.append(library)

    def limit(self, threads: int) -> None:
        for count in self.openblas_counts:
            if count.value > threads:
                count.value = threads
        for library in self.others:
            library.set_num_threads(threads)


_libraries: _Libraries | None = None


def _libraries_for(loaded: tuple[str, ...]) -> _Libraries | None:
    global _libraries
    if _libraries is None or _libraries.loaded != loaded:
        try:
            _libraries = _Libraries(loaded)
        except ImportError:  # no threadpoolctl
            return None
    return _libraries


def prepare_to_fork(threads: int) -> None:
    """In a parent about to fork pool workers: find the libraries they will inherit."""
    if threads > 0:
        loaded = _loaded_numeric_modules()
        if loaded:
            _libraries_for(loaded)


def limit_loaded_libraries(threads: int) -> None:
    """Limit the thread pools of libraries already loaded in this process (a forked worker)."""
    if threads <= 0:
        return
    loaded = _loaded_numeric_modules()
    if not loaded:
        return  # nothing loaded that starts a thread pool (and importing threadpoolctl costs ms)
    libraries = _libraries_for(loaded)
    if libraries is not None:
        libraries.limit(threads)
