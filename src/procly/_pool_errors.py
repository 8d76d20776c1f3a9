"""The pool errors that are also ``concurrent.futures.BrokenExecutor`` (see procly._errors
for the whole tree): apart, so that importing procly does not import concurrent.futures."""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

from ._errors import ProcessError

__all__ = ["BrokenProcessPool", "WorkerLostError"]


class BrokenProcessPool(ProcessError, BrokenExecutor):
    """A task could not run to its end in the pool: its worker died, the executor's
    initializer failed, or the task did not unpickle in the worker.

    Also ``concurrent.futures.BrokenExecutor`` (the base of the standard library's
    ``concurrent.futures.process.BrokenProcessPool``), so ``except BrokenExecutor``
    written for the standard library's executor catches it.
    """


class WorkerLostError(BrokenProcessPool):
    """A pool worker died (signal, ``os._exit``, crash) while it was running the task.

    The message names the worker, its pid, how it ended and the task; ``exitcode`` is
    the worker's exit code (negative: the signal number).
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message, exitcode)
        self.exitcode = exitcode

    def __str__(self) -> str:
        return str(self.args[0])


# Its public name (tracebacks and pickles say where users import it from). Only a module
# that is always imported where it is pickled will do: cloudpickle copies by value a
# class whose module is not imported (procly.futures sets BrokenProcessPool's when it is).
WorkerLostError.__module__ = "procly"
