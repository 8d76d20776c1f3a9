"""procly's modules import in one direction: a module imports only from its own layer
or the layers below it (docs/architecture.md draws them). Parsed, not imported."""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parent.parent / "src" / "procly"

# Bottom first. A module not listed is in the top layer (the public facade).
LAYERS: list[tuple[str, set[str]]] = [
    (
        "leaves",
        {
            "_errors",
            "_wait",
            "_fds",
            "_methods",
            "_typing",
            "_compat",
            "_finalize",
            "_handoff",
            "_spin",
            "_memfd_reuse",
            "_inner_threads",
            "_progress",
            "_semlock_ctypes",
            "_semlock_backend",
            "_info",
            "_pool_errors",
            "_frames",
        },
    ),
    ("serialization", {"_pickler", "_serialization"}),
    ("transport", {"_connection", "_listener", "_fd_sharer"}),
    (
        "processes",
        {
            "_state",
            "_process",
            "_start",
            "_start.base",
            "_start.child",
            "_start.fork",
            "_start.spawn",
            "_start.forkserver",
            "_start.prepare",
            "_install",
            "util",
        },
    ),
    ("shared memory and locks", {"_heap", "synchronize", "shared_memory"}),
    (
        "engines",
        {
            "_pool",
            "_pool_api",
            "_pool_messages",
            "_pool_dispatch",
            "_pool_supervisor",
            "_pool_results",
            "_pool_worker",
            "_thread_pool",
            "_executor",
            "_manager_wire",
            "_manager_server",
            "_manager_proxies",
            "_manager_base",
            "_sync_proxies",
            "_shared_memory_manager",
            "queues",
        },
    ),
]
RANK = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}
TOP = len(LAYERS)

# Upward imports that stay, each made inside a function (at run time, never at import),
# and why.
ALLOWED_UPWARD = {
    # A pickled descriptor is lent by this process's FdSharer, kept in its ProcessState.
    ("_fd_sharer", "_state"),
    # BrokenProcessPool subclasses concurrent.futures' BrokenExecutor: imported on first use.
    ("_errors", "_pool_errors"),
    # install() can also put procly.futures in place of concurrent.futures.process.
    ("_install", "futures"),
    # The shared-memory tracker is a process of its own, started with the fork context;
    # the standard library's resource_tracker module is built on demand.
    ("shared_memory", "context"),
    ("shared_memory", "resource_tracker"),
    # The pool and the executor pick the default context when given none.
    ("_pool", "context"),
    ("_executor", "context"),
    ("_manager_base", "context"),
    # A manager's Pool is built in the server.
    ("managers", "pool"),
}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[0] in ("loadtest", "dask", "examples", "dummy"):
            continue  # add-ons on top of the public API
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[tuple[str, bool]]:
    """(module imported, at import time?) for each procly module *name* imports, outside
    ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[tuple[str, bool]] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    base += child.module.split(".") if child.module else []
                elif child.module and child.module.split(".")[0] == "procly":
                    base = child.module.split(".")[1:]
                else:
                    continue
                for alias in child.names:
                    target = ".".join([*base, alias.name])
                    found.add((target if target in modules else ".".join(base), top))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    found.discard(("", True))
    found.discard(("", False))
    return {(target, top) for target, top in found if target in modules and target != name}


def _violations() -> list[str]:
    modules = _modules()
    bad = []
    for name, path in sorted(modules.items()):
        rank = RANK.get(name, TOP)
        for target, top in sorted(_imports(name, path, modules)):
            if RANK.get(target, TOP) <= rank:
                continue
            if not top and (name, target) in ALLOWED_UPWARD:
                continue
            when = "at import" if top else "in a function"
            bad.append(f"{name} ({LAYERS[rank][0] if rank < TOP else 'facade'}) imports {target} {when}")
    return bad


def test_lower_layers_never_import_upper_ones():
    assert _violations() == []


def test_every_layered_module_exists():
    modules = _modules()
    assert {m for _, group in LAYERS for m in group} - set(modules) == set()


@pytest.mark.parametrize("module", ["_errors", "_wait", "_fds", "_methods"])
def test_leaves_import_nothing_of_procly_at_import_time(module):
    modules = _modules()
    assert {t for t, top in _imports(module, modules[module], modules) if top} == set()
