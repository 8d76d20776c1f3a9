"""Scenario files: user flows written in Python, and the test data they use.

A scenario is a Python file with one or more ``async`` functions marked with
:func:`flow` (and optionally :func:`on_start`)::

    from procly.loadtest import User, flow, on_start

    @on_start
    async def log_in(user: User) -> None:
        r = await user.post("/login", json={"user": user.row["name"]}, name="login")
        user.check(r, "logged in", status=200)

    @flow(weight=3)
    async def browse(user: User) -> None:
        r = await user.get(f"/item/{user.rng.randint(1, 1000)}", name="/item/[id]")
        user.check(r, status=200, contains="ok")
        await user.think(0.5, 1.5)

The file is read once by the coordinator (so a syntax error, an import error or a file
without a flow stops the run at once, with exit code 2) and its source travels to every
worker process (and Dask worker), which runs it as a module of its own.
"""

from __future__ import annotations

import csv
import inspect
import io
import os
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_FLOW_ATTR = "__procly_flow__"
_ON_START_ATTR = "__procly_on_start__"


class ScenarioError(ValueError):
    """A scenario file or its data cannot be used (the message says what and where)."""


def flow(func: F | None = None, *, weight: int = 1, name: str | None = None) -> Any:
    """Mark an ``async def f(user)`` as a user flow.

    Each iteration of a virtual user runs one flow, chosen at random in proportion to
    the flows' ``weight``. Usable bare (``@flow``) or with arguments (``@flow(weight=3)``).

    Raises:
        TypeError: the function is not a coroutine function, or ``weight`` is not a positive int.
    """
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
        raise TypeError(f"@flow weight must be a positive whole number, got {weight!r}")

    def mark(function: F) -> F:
        _check_user_function("@flow", function)
        setattr(function, _FLOW_ATTR, (weight, name or function.__name__))
        return function

    return mark(func) if func is not None else mark


def on_start(func: F) -> F:
    """Mark an ``async def f(user)`` to run once per virtual user, before its first flow (e.g. a login).

    Raises:
        TypeError: the function is not a coroutine function.
    """
    _check_user_function("@on_start", func)
    setattr(func, _ON_START_ATTR, True)
    return func


def _check_user_function(decorator: str, function: Callable[..., Any]) -> None:
    """Check at import that *function* is an ``async def`` that can be called with the user
    alone (else every call of it would raise the same TypeError for the whole run)."""
    if not inspect.iscoroutinefunction(function):
        raise TypeError(
            f"{decorator} {getattr(function, '__name__', function)!r} must be an async function "
            "(async def name(user): ...)"
        )
    try:
        inspect.signature(function).bind(None)
    except TypeError:
        name = getattr(function, "__name__", function)
        raise TypeError(f"{decorator} {name!r} must take the user: async def {name}(user): ...") from None
    except ValueError:  # no signature to read (a builtin): let the call say
        pass


@dataclass(frozen=True)
class FlowSpec:
    name: str
    weight: int
    func: Callable[[Any], Any]


@dataclass(frozen=True)
class Scenario:
    """A scenario file's source and the test data rows; picklable, so it travels to the workers."""

    path: str
    source: str
    flow_names: tuple[str, ...] = ()
    rows: tuple[dict[str, str], ...] = ()
    random_rows: bool = False
    seed: int | None = None
    label: str | None = None
    #: Made by :meth:`single_request` for ramped users of the single-URL load (from a
    #: config's URL and request: LoadTestConfig makes it anew, see ``_ramp_users``).
    _single_url: bool = field(default=False, repr=False)
    _modules: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        data: str | os.PathLike[str] | None = None,
        random_rows: bool = False,
        seed: int | None = None,
    ) -> Scenario:
        """Read and check a scenario file (and its CSV data): it is imported once, here.

        Raises:
            ScenarioError: the file cannot be read, does not compile, raises while it is
                imported, defines no flow, or the data file is malformed.
        """
        file = Path(path)
        try:
            source = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(f"cannot read the scenario file {str(file)!r}: {exc}") from None
        scenario = cls(path=str(file.resolve()), source=source)
        flows, _ = scenario.flows()
        rows = load_rows(data) if data is not None else ()
        return cls(
            path=scenario.path,
            source=source,
            flow_names=tuple(f.name for f in flows),
            rows=rows,
            random_rows=random_rows,
            seed=seed,
        )

    def module(self) -> types.ModuleType:
        """The scenario run as a module (once per process).

        Raises:
            ScenarioError: it does not compile or raises while it runs.
        """
        cached = self._modules.get(os.getpid())
        if cached is not None:
            return cached
        stem = "".join(c if c.isalnum() else "_" for c in Path(self.path).stem)
        name = f"procly_scenario_{stem}"
        try:
            code = compile(self.source, self.path, "exec")
        except SyntaxError as exc:
            raise ScenarioError(f"{self.path}:{exc.lineno}: syntax error in the scenario: {exc.msg}") from None
        module = types.ModuleType(name)
        module.__file__ = self.path
        folder = str(Path(self.path).parent)
        if Path(self.path).is_file() and folder not in sys.path:
            sys.path.insert(0, folder)  # helpers next to the scenario can be imported
        sys.modules[name] = module
        try:
            exec(code, module.__dict__)  # noqa: S102 - running the user's scenario is the point
        except KeyboardInterrupt:
            sys.modules.pop(name, None)
            raise
        except BaseException as exc:  # SystemExit too: a scenario that exits is a broken scenario
            sys.modules.pop(name, None)
            line = next(
                (
                    frame.lineno
                    for frame in reversed(traceback.extract_tb(exc.__traceback__))
                    if frame.filename == self.path
                ),
                None,
            )
            where = f"{self.path}:{line}" if line else self.path
            raise ScenarioError(
                f"{where}: the scenario raised {type(exc).__name__} while it was imported: {exc}"
            ) from None
        self._modules[os.getpid()] = module
        return module

    def flows(self) -> tuple[list[FlowSpec], list[Callable[[Any], Any]]]:
        """The scenario's flows and on-start hooks, in the order of the file.

        Raises:
            ScenarioError: it defines no flow (or see :meth:`module`).
        """
        module = self.module()
        flows, starts = [], []
        for value in list(vars(module).values()):
            marked = getattr(value, _FLOW_ATTR, None) if callable(value) else None
            if marked is not None:
                flows.append(FlowSpec(name=marked[1], weight=marked[0], func=value))
            if callable(value) and getattr(value, _ON_START_ATTR, False):
                starts.append(value)
        if not flows:
            raise ScenarioError(
                f"{self.path} defines no flow: mark an async function with @flow (from procly.loadtest import flow)"
            )
        return flows, starts

    @classmethod
    def single_request(cls, url: str, method: str, headers: list[tuple[str, str]], body: bytes) -> Scenario:
        """A scenario of one flow that sends the single-URL load's request (``--stages`` without ``-f``)."""
        path = url.split("://", 1)[-1].partition("/")[2]
        name = f"{method} /{path.split('?', 1)[0]}"
        source = (
            "from procly.loadtest import flow\n\n"
            f"URL, METHOD, HEADERS, BODY, NAME = {url!r}, {method!r}, {dict(headers)!r}, {body!r}, {name!r}\n\n\n"
            "@flow(name=NAME)\n"
            "async def request(user):\n"
            "    await user.request(METHOD, URL, headers=HEADERS, data=BODY or None, name=NAME)\n"
        )
        return cls(path="<single URL>", source=source, flow_names=("request",), label=url, _single_url=True)

    @property
    def is_single_url(self) -> bool:
        """Made by :meth:`single_request` (ramped users of the single-URL load), not from a file."""
        return self._single_url

    def describe(self) -> str:
        if self.label is not None:
            return self.label
        return f"scenario {Path(self.path).name} ({', '.join(self.flow_names)})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_modules"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _column_names(header: list[str] | None, path: str | os.PathLike[str]) -> list[str]:
    """The column names of a CSV file's header line.

    Raises:
        ScenarioError: no header, a column without a name, or a name repeated.
    """
    if header is None or not any(cell.strip() for cell in header):
        raise ScenarioError(f"--data {str(path)!r}: the file is empty: its first line must name the columns")
    names = [cell.strip() for cell in header]
    for column, name in enumerate(names, 1):
        if not name:
            raise ScenarioError(f"--data {str(path)!r}, line 1: column {column} has no name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ScenarioError(f"--data {str(path)!r}, line 1: column names repeated: {', '.join(duplicates)}")
    return names


def load_rows(path: str | os.PathLike[str]) -> tuple[dict[str, str], ...]:
    """The rows of a CSV file with a header line, as dicts.

    Raises:
        ScenarioError: the file cannot be read, is empty, has no header, a duplicate or
            empty column name, or a row whose number of fields differs from the header's.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"--data: cannot read {str(path)!r}: {exc}") from None
    try:
        reader = csv.reader(io.StringIO(text))
        names = _column_names(next(reader, None), path)
        rows = []
        for values in reader:
            if not values:
                continue  # a blank line
            if len(values) != len(names):
                raise ScenarioError(
                    f"--data {str(path)!r}, line {reader.line_num}: {len(values)} fields, "
                    f"the header has {len(names)} ({', '.join(names)})"
                )
            rows.append(dict(zip(names, values, strict=True)))
    except csv.Error as exc:
        raise ScenarioError(f"--data {str(path)!r}, line {reader.line_num}: {exc}") from None
    if not rows:
        raise ScenarioError(f"--data {str(path)!r}: no data row after the header line")
    return tuple(rows)
