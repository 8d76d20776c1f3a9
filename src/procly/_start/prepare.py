"""What a fresh interpreter (spawn, forkserver) needs to look like its parent.

The parent sends :func:`preparation_data` (plain builtins only, so it can be read
before anything else is imported); the child applies it with :func:`prepare`: same
``sys.path``, ``sys.argv`` and working directory, and the parent's main module imported
under the name ``__mp_main__`` so that its ``if __name__ == "__main__":`` block does not
run again, while references to ``__main__`` objects resolve.
"""

from __future__ import annotations

import io
import os
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any

MAIN_ALIAS = "__mp_main__"


def preparation_data(name: str, start_method: str) -> dict[str, Any]:
    """Describe this process for a child named *name*."""
    from .. import _state

    data: dict[str, Any] = {
        "name": name,
        "start_method": start_method,
        "sys_path": list(sys.path),
        "sys_argv": list(sys.argv),
        "dir": os.getcwd(),
        "authkey": bytes(_state.get().current.authkey),
        "parent_name": _state.get().current.name,
        "parent_pid": os.getpid(),
    }
    installer = sys.modules.get("procly._install")
    if installer is not None and installer.active():
        # procly.install() is in force: the child installs it too, with the same options.
        data["install_multiprocessing"] = installer.options()
    logging = sys.modules.get("logging")  # not imported: procly's logger cannot be configured
    if logging is not None and "procly" in logging.Logger.manager.loggerDict:  # configured: children log alike
        data["log_level"] = logging.getLogger("procly").getEffectiveLevel()
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in (None, "__main__"):
        # ``python -m pkg`` runs pkg/__main__.py, which is a program, not a module with
        # definitions: it is not re-imported (its code would run again in the child).
        if not spec.name.endswith(".__main__"):
            data["main_module_name"] = spec.name
    else:
        path = getattr(main, "__file__", None)
        if path and not str(path).startswith("<") and os.path.exists(path):
            data["main_path"] = os.path.abspath(path)
    return data


def prepare(data: dict[str, Any]) -> None:
    """Apply :func:`preparation_data` in the child (idempotent for the main module)."""
    os.environ.update(data.get("env", {}))  # before the main module imports anything
    sys.path[:] = data["sys_path"]
    sys.argv[:] = data["sys_argv"]
    try:
        os.chdir(data["dir"])
    except OSError:
        pass
    install_options = data.get("install_multiprocessing")
    if install_options is not None:
        # Before the main module is imported: its ``import multiprocessing`` must find procly.
        from .._install import install

        install(**install_options)
    if "main_module_name" in data:
        _import_main(data["main_module_name"], None)
    elif "main_path" in data:
        _import_main(None, data["main_path"])


def _import_main(module_name: str | None, path: str | None) -> None:
    current = sys.modules.get("__main__")
    if current is not None and current.__name__ == MAIN_ALIAS:
        if (path and getattr(current, "__file__", None) == path) or (
            module_name and getattr(getattr(current, "__spec__", None), "name", None) == module_name
        ):
            return  # already imported (the fork server preloaded it)
    if path is not None:
        # Scripts run through a console-script wrapper need no re-import.
        if os.path.basename(path) in ("ipython", "ipython3"):
            return
    main_module = types.ModuleType(MAIN_ALIAS)
    sys.modules["__main__"] = sys.modules[MAIN_ALIAS] = main_module
    global _importing_main
    _importing_main = True
    try:
        if module_name is None and path is not None and path.endswith(".py") and os.path.isfile(path):
            namespace = _run_script(path, main_module)
        else:
            import runpy

            if module_name is not None:
                namespace = runpy.run_module(module_name, run_name=MAIN_ALIAS, alter_sys=True)
            else:
                namespace = runpy.run_path(path, run_name=MAIN_ALIAS)  # type: ignore[arg-type]
    except BaseException:
        if current is not None:
            sys.modules["__main__"] = current
        raise
    finally:
        _importing_main = False
    main_module.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules[MAIN_ALIAS] = main_module


def _run_script(path: str, module: types.ModuleType) -> dict[str, Any]:
    """Run the source file *path* in *module*, as ``runpy.run_path`` runs a script (the
    same module attributes), without runpy: it imports pkgutil and typing, a few
    milliseconds of every spawned child's start."""
    with io.open_code(path) as f:
        code = compile(f.read(), path, "exec")
    namespace = module.__dict__
    namespace.update(__file__=path, __cached__=None, __loader__=None, __package__="", __spec__=None, __doc__=None)
    exec(code, namespace)  # noqa: S102 - the parent's own main script, as runpy would run it
    return namespace


_importing_main = False  # this child is importing its parent's main module right now

_GUARD_ADVICE = (
    "Under the 'spawn' and 'forkserver' start methods every child imports the main module "
    "again, so code there that starts processes would run in each child too. Put it under "
    '`if __name__ == "__main__":` (after freeze_support() in a frozen program), or use the '
    "'fork' start method."
)

_guarded_lines: dict[str, list[tuple[int, int]] | None] = {}


def check_main_guard(method: str) -> None:
    """Refuse to start a child from code that children would run again: (in a child)
    while the parent's main module is being imported, or, under spawn and forkserver,
    from the main module's top level outside ``if __name__ == "__main__":``.

    Raises:
        RuntimeError: naming the line and the fix.
    """
    if _importing_main:
        raise RuntimeError(
            "a new process was started while this child was still importing its parent's main "
            'module (the parent started processes outside `if __name__ == "__main__":`). ' + _GUARD_ADVICE
        )
    if method == "fork":
        return
    main = sys.modules.get("__main__")
    path = _reimported_main_path(main) if main is not None else None
    if main is None or path is None:
        return
    frame = _main_top_level_frame(sys._getframe(1), main.__dict__)
    if frame is None:
        return  # not started from the main module's top level
    guarded = _guarded_lines.get(path, ())
    if guarded == ():
        guarded = _guarded_lines[path] = _main_guard_lines(path)
    if guarded is None:
        return
    line = frame.f_lineno
    if not any(first <= line <= last for first, last in guarded):
        raise RuntimeError(
            f"a new process was started at line {line} of {path}, outside `if __name__ == "
            f'"__main__":`. ' + _GUARD_ADVICE
        )


def _reimported_main_path(main: types.ModuleType) -> str | None:
    """The main script's path, if children import it again (under spawn and forkserver)."""
    path = getattr(main, "__file__", None)
    if not path or str(path).startswith("<") or getattr(main, "__name__", None) != "__main__":
        return None  # python -c, a REPL, a notebook: children do not import it again
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if spec_name.endswith(".__main__") or os.path.basename(path) in ("ipython", "ipython3"):
        return None  # python -m package, or a console-script wrapper: not imported again either
    return str(path)


def _main_top_level_frame(frame: types.FrameType | None, namespace: dict[str, object]) -> types.FrameType | None:
    """The frame running the main module's top level, among *frame* and its callers."""
    while frame is not None:
        if frame.f_globals is namespace and frame.f_code.co_name == "<module>":
            return frame
        frame = frame.f_back
    return None


def _main_guard_lines(path: str) -> list[tuple[int, int]] | None:
    """Line ranges of the bodies of the main script's ``if __name__ == "__main__":`` blocks."""
    import ast

    from .._serialization import _is_main_guard, parse_main_script

    tree = parse_main_script(path)
    if tree is None:
        return None
    ranges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_guard(node.test) and node.body:
            ranges.append((node.body[0].lineno, node.body[-1].end_lineno or node.body[-1].lineno))
    return ranges
