"""Make ``import multiprocessing`` (and its submodules) resolve to procly.

Installed at import of the runner module, which spawned children and the fork server
re-import as their main module, so every process of a run sees the same alias.
Submodules procly does not have yet become empty placeholders, so the suite imports
and the tests that need them fail (and are counted) instead of aborting the run.
"""

from __future__ import annotations

import importlib
import sys
import types

SUBMODULES = [
    "connection",
    "context",
    "dummy",
    "dummy.connection",
    "forkserver",
    "heap",
    "managers",
    "pool",
    "process",
    "queues",
    "reduction",
    "resource_sharer",
    "resource_tracker",
    "shared_memory",
    "sharedctypes",
    "spawn",
    "synchronize",
    "util",
]

# multiprocessing.__all__ (3.10-3.13), without importing the real package.
TOP_LEVEL = [
    "Array",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pipe",
    "Pool",
    "Process",
    "ProcessError",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "TimeoutError",
    "Value",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
]


def install() -> list[str]:
    """Alias procly as multiprocessing; return the submodules that are placeholders."""
    if (
        sys.modules.get("multiprocessing", None) is not None
        and getattr(sys.modules["multiprocessing"], "__name__", "") == "procly"
    ):
        return []
    if "multiprocessing" in sys.modules:
        raise RuntimeError("the real multiprocessing was imported before the alias")
    import procly

    sys.modules["multiprocessing"] = procly
    placeholders = []
    for name in SUBMODULES:
        try:
            module = importlib.import_module(f"procly.{name}")
        except ImportError:
            module = _placeholder(f"multiprocessing.{name}")
            placeholders.append(name)
        sys.modules[f"multiprocessing.{name}"] = module
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules[f"multiprocessing.{parent_name}"] if parent_name else procly
        if not hasattr(parent, child):
            setattr(parent, child, module)
    top = _placeholder("multiprocessing")
    for name in TOP_LEVEL:
        try:
            getattr(procly, name)
        except AttributeError:
            setattr(procly, name, getattr(top, name))
            placeholders.append(name)
    return placeholders


class _StubMeta(type):
    """Class-level use of a missing class (``MyManager.register(...)``) is a no-op."""

    def __getattr__(cls, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def _placeholder(module_name: str) -> types.ModuleType:
    """A module whose every attribute is a class that cannot be used: tests fail, imports work."""
    module = types.ModuleType(module_name)

    def __getattr__(attr: str) -> type:  # noqa: N807 - module __getattr__
        if attr.startswith("__"):
            raise AttributeError(attr)

        def refuse(*args: object, **kwargs: object) -> None:
            raise NotImplementedError(f"{module_name}.{attr} is not implemented in procly yet")

        stub = _StubMeta(attr, (), {"__init__": refuse})
        setattr(module, attr, stub)
        return stub

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    module.__placeholder__ = True  # type: ignore[attr-defined]
    return module
