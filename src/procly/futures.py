"""``concurrent.futures`` for procly: :class:`ProcessPoolExecutor` on the Pool engine."""

from ._executor import ProcessPoolExecutor as ProcessPoolExecutor

__all__ = ["ProcessPoolExecutor"]

ProcessPoolExecutor.__module__ = __name__
