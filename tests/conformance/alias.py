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
    "connection", "context", "dummy", "dummy.connection", "forkserver", "heap", "managers",
    "pool", "process", "queues", "reduction", "resource_sharer", "resource_tracker",
    "shared_memory", "sharedctypes", "spawn", "synchronize", "util",
]


def install() -> list[str]:
    """Alias procly as multiprocessing; return the submodules that are placeholders."""
    if sys.modules.get("multiprocessing", None) is not None and getattr(
        sys.modules["multiprocessing"], "__name__", ""
    ) == "procly":
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
            module = types.ModuleType(f"multiprocessing.{name}")
            module.__placeholder__ = True  # type: ignore[attr-defined]
            placeholders.append(name)
        sys.modules[f"multiprocessing.{name}"] = module
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules[f"multiprocessing.{parent_name}"] if parent_name else procly
        if not hasattr(parent, child):
            setattr(parent, child, module)
    return placeholders
