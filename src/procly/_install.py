"""``procly.install()``: make ``import multiprocessing`` resolve to procly.

After :func:`install`, ``sys.modules["multiprocessing"]`` is the ``procly`` package and
every ``multiprocessing.X`` submodule resolves, on first import, to ``procly.X`` (the
same module object: ``multiprocessing.pool.Pool is procly.pool.Pool``). A meta-path
finder does the mapping lazily, so installing stays cheap and a submodule nobody uses
is never imported. ``concurrent.futures.ProcessPoolExecutor`` is re-pointed at
:class:`procly.futures.ProcessPoolExecutor` when ``concurrent.futures`` is (or gets)
imported; ``concurrent.futures.process`` itself is never imported.

Children inherit the alias: a forked child has the parent's ``sys.modules``; spawned
children and the fork server find :func:`options` in their preparation data and call
:func:`install` with them before they import the parent's main module (see
:mod:`procly._start.prepare`). :func:`run_path` and :func:`run_module` are what
``python -m procly run`` executes the program with.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

__all__ = ["active", "install", "installed", "options", "run_module", "run_path", "uninstall"]

ALIAS = "multiprocessing"

# multiprocessing submodules that procly has no counterpart for, and why.
_UNAVAILABLE = {
    "popen_spawn_win32": "procly runs on Linux only",
}


def installed() -> bool:
    """Whether ``multiprocessing`` currently resolves to procly in this interpreter."""
    return getattr(sys.modules.get(ALIAS), "__name__", None) == "procly"


def active() -> bool:
    """Whether :func:`install` (not some other aliasing) is in force in this interpreter."""
    return installed() and _finder in sys.meta_path


def options() -> dict[str, bool]:
    """The options :func:`install` is in force with (sent to children, which install alike)."""
    return dict(_options)


class _AliasLoader(importlib.abc.Loader):
    """Load ``multiprocessing.X`` as the already imported ``procly.X`` module."""

    def __init__(self, target: types.ModuleType) -> None:
        self._target = target
        self._spec = target.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self._target

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system stamped the alias spec on the module: it keeps its own.
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Map ``multiprocessing.X`` to ``procly.X`` on import."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == ALIAS:
            module = sys.modules.get("procly") or importlib.import_module("procly")
        elif fullname.startswith(ALIAS + "."):
            rest = fullname[len(ALIAS) + 1 :]
            if rest in _UNAVAILABLE:
                raise ImportError(f"{fullname} is not available under procly: {_UNAVAILABLE[rest]}", name=fullname)
            try:
                module = importlib.import_module(f"procly.{rest}")
            except ModuleNotFoundError as exc:
                if exc.name != f"procly.{rest}":
                    raise
                raise ModuleNotFoundError(
                    f"No module named {fullname!r} (procly.install() maps multiprocessing to procly, "
                    f"which has no module {rest!r})",
                    name=fullname,
                ) from None
        elif fullname == "concurrent.futures" and _options["futures"] and not _futures_patched():
            # Let the real package import first, then point its ProcessPoolExecutor at procly's.
            return _wrap_futures_spec(self, fullname, path, target)  # type: ignore[no-any-return]
        else:
            return None
        is_package = hasattr(module, "__path__")
        spec = importlib.machinery.ModuleSpec(fullname, _AliasLoader(module), is_package=is_package)
        return spec


_finder = _AliasFinder()
_options = {"futures": True}


def _futures_patched() -> bool:
    futures = sys.modules.get("concurrent.futures")
    return futures is not None and getattr(futures, "_procly_installed", False)


def _wrap_futures_spec(finder: _AliasFinder, fullname: str, path: Any, target: Any) -> Any:
    """Find ``concurrent.futures`` with the other finders and patch it once it has run."""
    for other in sys.meta_path:
        if other is finder or not hasattr(other, "find_spec"):
            continue
        spec = other.find_spec(fullname, path, target)
        if spec is not None:
            break
    else:
        return None
    loader: Any = spec.loader
    original_exec = loader.exec_module

    def exec_module(module: types.ModuleType) -> None:
        original_exec(module)
        _patch_futures(module)

    # Wrap this one loader instance only.
    try:
        loader.exec_module = exec_module
    except AttributeError:  # pragma: no cover - frozen/builtin loaders are not used for this package
        return spec
    return spec


def _patch_futures(futures: types.ModuleType) -> None:
    """Point ``concurrent.futures.ProcessPoolExecutor`` at procly's executor.

    ``concurrent.futures`` resolves ``ProcessPoolExecutor`` lazily through its module
    ``__getattr__`` (importing ``concurrent.futures.process``); that hook is wrapped to
    give :class:`procly.futures.ProcessPoolExecutor` instead, imported on first use, so
    the standard library's process pool is never imported.
    """
    original = futures.__dict__.get("__getattr__")

    def __getattr__(name: str) -> Any:  # noqa: N807 - module __getattr__
        if name == "ProcessPoolExecutor":
            from .futures import ProcessPoolExecutor

            futures.ProcessPoolExecutor = ProcessPoolExecutor  # type: ignore[attr-defined]
            return ProcessPoolExecutor
        if original is not None:
            return original(name)
        raise AttributeError(f"module {futures.__name__!r} has no attribute {name!r}")

    if "ProcessPoolExecutor" in futures.__dict__:
        del futures.ProcessPoolExecutor  # the standard library's, already resolved: resolve again
    __getattr__._procly_original = original  # type: ignore[attr-defined]
    futures.__getattr__ = __getattr__  # type: ignore[method-assign]
    futures._procly_installed = True  # type: ignore[attr-defined]


def install(futures: bool = True) -> None:
    """Make ``import multiprocessing`` (and every submodule) give procly's modules.

    Call it before the code that imports multiprocessing runs (``python -m procly run
    script.py`` does it for you). Idempotent. With *futures* (the default),
    ``concurrent.futures.ProcessPoolExecutor`` becomes :class:`procly.futures.ProcessPoolExecutor`.
    Children started by procly (fork, spawn, forkserver) install it too.

    Raises:
        RuntimeError: the standard library's ``multiprocessing`` (or one of its submodules)
            was already imported in this interpreter: objects made from it would mix with
            procly's. Install earlier (first thing in the program, or through
            ``python -m procly run``).
    """
    import procly

    if futures:
        _options["futures"] = True
    if installed():
        if futures:
            _install_futures()
        return
    real = sorted(name for name in sys.modules if name == ALIAS or name.startswith(ALIAS + "."))
    if real:
        raise RuntimeError(
            f"procly.install(): the standard library's multiprocessing is already imported ({', '.join(real)}); "
            "call install() before anything imports multiprocessing, or run the program with "
            "'python -m procly run script.py'"
        )
    _options["futures"] = futures
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    sys.modules[ALIAS] = procly
    # Submodules procly already imported resolve at once (and are set as attributes,
    # as the import system would).
    for name, module in list(sys.modules.items()):
        if name.startswith("procly.") and module is not None:
            sys.modules.setdefault(ALIAS + name[len("procly") :], module)
    if futures:
        _install_futures()


def _install_futures() -> None:
    module = sys.modules.get("concurrent.futures")
    if module is not None and not getattr(module, "_procly_installed", False):
        _patch_futures(module)


def uninstall() -> None:
    """Undo :func:`install` in this interpreter (children already started keep it).

    The ``multiprocessing`` entries that point at procly are removed from ``sys.modules``;
    a later ``import multiprocessing`` imports the standard library's.
    """
    while _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    for name, module in list(sys.modules.items()):
        if (name == ALIAS or name.startswith(ALIAS + ".")) and getattr(module, "__name__", "").startswith("procly"):
            del sys.modules[name]
    futures = sys.modules.get("concurrent.futures")
    if futures is not None and getattr(futures, "_procly_installed", False):
        futures.__dict__.pop("ProcessPoolExecutor", None)
        original = getattr(futures.__getattr__, "_procly_original", None)
        if original is not None:
            futures.__getattr__ = original  # type: ignore[method-assign]
        else:
            del futures.__getattr__
        del futures._procly_installed


def _fresh_main(**attrs: Any) -> types.ModuleType:
    """A new ``__main__`` module in ``sys.modules``, as the interpreter makes for a program."""
    import builtins

    main = types.ModuleType("__main__")
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    for name, value in attrs.items():
        setattr(main, name, value)
    sys.modules["__main__"] = main
    return main


def run_path(path: str, args: list[str]) -> None:
    """Run the script at *path* as ``__main__`` with *args*, as ``python path args...`` would.

    ``sys.argv`` becomes ``[path, *args]`` and ``sys.path[0]`` the script's folder.

    Raises:
        OSError: the script cannot be read.
        BaseException: whatever the script raises.
    """
    import os

    with open(path, "rb") as f:
        source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    sys.argv[:] = [path, *args]
    folder = os.path.dirname(os.path.abspath(path))
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.append(folder)
    main = _fresh_main(__file__=path, __spec__=None, __loader__=None, __package__=None, __cached__=None)
    exec(code, main.__dict__)


def run_module(name: str, args: list[str]) -> None:
    """Run module *name* as ``__main__`` with *args*, as ``python -m name args...`` would.

    A package runs its ``__main__`` submodule. ``sys.argv[0]`` becomes the module's file
    and ``sys.path[0]`` the working directory.

    Raises:
        ImportError: the module cannot be found or has no code.
        BaseException: whatever the module raises.
    """
    import importlib.util
    import os

    cwd = os.getcwd()
    if sys.path:
        sys.path[0] = cwd
    else:
        sys.path.append(cwd)
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError(f"No module named {name}", name=name)
    if spec.submodule_search_locations is not None:
        name = f"{name}.__main__"
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise ImportError(f"No module named {name}; {name[: -len('.__main__')]!r} is a package", name=name)
    loader = spec.loader
    code = loader.get_code(name) if loader is not None and hasattr(loader, "get_code") else None
    if code is None:
        raise ImportError(f"No code object available for {name}", name=name)
    origin = spec.origin or name
    sys.argv[:] = [origin, *args]
    main = _fresh_main(
        __file__=origin, __spec__=spec, __loader__=loader, __package__=spec.parent, __cached__=spec.cached
    )
    exec(code, main.__dict__)
