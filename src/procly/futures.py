"""``concurrent.futures`` for procly: :class:`ProcessPoolExecutor` on the Pool engine.

:class:`BrokenProcessPool` is procly's counterpart of
``concurrent.futures.process.BrokenProcessPool``: both subclass
``concurrent.futures.BrokenExecutor``, which is what to catch in code that runs on either
executor (procly does not import ``concurrent.futures.process``, so
``except concurrent.futures.process.BrokenProcessPool`` does not catch procly's).
"""

from ._errors import BrokenProcessPool as BrokenProcessPool
from ._executor import ProcessPoolExecutor as ProcessPoolExecutor

__all__ = ["BrokenProcessPool", "ProcessPoolExecutor"]

ProcessPoolExecutor.__module__ = __name__
BrokenProcessPool.__module__ = __name__
