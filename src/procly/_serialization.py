"""The one serializer every part of procly uses.

* pickle protocol 5 everywhere;
* cloudpickle for what plain pickle refuses: lambdas, closures, nested functions and
  classes, and objects of a ``__main__`` that a child cannot import (a REPL,
  ``python -c``, a notebook);
* objects of a ``__main__`` that children *can* import (a script, ``python -m``) are
  pickled by reference, as the standard library does, so classes keep their identity
  and ``isinstance`` works across processes;
* buffers at or above a threshold (numpy arrays, ``PickleBuffer``, large ``bytes`` /
  ``bytearray`` / ``memoryview`` at top level) can leave the pickle stream "out of band":
  :func:`dumps` hands them to the caller as memoryviews instead of copying them into the
  payload. The connection layer writes them straight from their memory to the pipe.

Extra reducers are registered with :func:`register` (``ForkingPickler.register`` in the
standard library).
"""

from __future__ import annotations

import _pickle as pickle  # the C module: pickle.py would also import re and enum
import importlib
import io
import sys
import types
import weakref

from . import _handoff
from ._errors import PicklingError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    import ast
    from typing import Any, Callable, Sequence, SupportsIndex

    from ._pickler import Pickler

PROTOCOL = 5
# What a pickler raises for an object it cannot pickle (beyond procly's own PicklingError).
_CANNOT_PICKLE = (pickle.PicklingError, TypeError, AttributeError, RecursionError)

#: Buffers at least this large travel out of band when the caller asks for it.
OUT_OF_BAND_THRESHOLD = 64 * 1024

# Types that plain C pickle always handles correctly and by value: a fast path.
_SCALARS = frozenset({bytes, str, int, float, bool, type(None), complex})
_SMALL_SCALARS = _SCALARS - {bytes}  # never out of band

_extra_reducers: dict[type, Callable[[Any], Any]] = {}

_OPEN_FILES = frozenset({io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.FileIO})


def register(type_: type, reduce: Callable[[Any], Any]) -> None:
    """Use ``reduce(obj)`` to pickle instances of *type_* in every procly message.

    Raises:
        TypeError: *type_* is not a class or *reduce* is not callable.
    """
    if not isinstance(type_, type):
        raise TypeError(f"register() needs a class, got {type_!r}")
    if not callable(reduce):
        raise TypeError(f"register() needs a callable reducer, got {reduce!r}")
    _extra_reducers[type_] = reduce
    global _plain_types, _small_types
    _plain_types = _PLAIN.difference(_extra_reducers)
    _small_types = _SMALL_SCALARS.difference(_extra_reducers)


# Reducers for classes of modules that may not be imported yet: registered once they are
# (see register_when_imported).
_pending_reducers: dict[tuple[str, str], Callable[[Any], Any]] = {}


def register_when_imported(module: str, name: str, reduce: Callable[[Any], Any]) -> None:
    """Use ``reduce(obj)`` for instances of the class *module.name* once *module* is imported.

    For classes of modules procly does not import itself at start-up (a spawned child
    that never makes a socket need not import :mod:`socket`): an instance cannot exist
    before its module is imported, and every Pickler checks for newly imported ones.
    """
    _pending_reducers[(module, name)] = reduce
    register_pending()


def register_pending() -> None:
    """Register the reducers of :func:`register_when_imported` whose module is imported now."""
    for (module, name), reduce in list(_pending_reducers.items()):
        found = sys.modules.get(module)
        if found is not None:
            del _pending_reducers[(module, name)]
            register(getattr(found, name), reduce)


def _main_module_importable() -> bool:
    """Whether a child can re-import ``__main__`` (and so resolve references into it)."""
    main = sys.modules.get("__main__")
    if main is None:
        return False
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in (None, "__main__"):
        return not spec.name.endswith(".__main__")  # see _start.prepare
    path = getattr(main, "__file__", None)
    return bool(path) and not str(path).startswith("<")


def _main_attr(qualname: str) -> Any:
    """Resolve *qualname* in whatever module this process runs as ``__main__``."""
    obj: Any = sys.modules["__main__"]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _main_attr_or_copy(qualname: str, copy: bytes) -> Any:
    """``__main__``'s *qualname* where this process has it (identity kept), else the copy
    made when it was pickled: a function or class defined inside the main script's
    ``if __name__ == "__main__":`` block, or after a pool's workers started."""
    try:
        return _main_attr(qualname)
    except AttributeError:
        return pickle.loads(copy)


_children_define: dict[str, frozenset[str] | None] = {}


def _names_children_define() -> frozenset[str] | None:
    """Top-level names that re-importing the main script defines: those bound outside
    its ``if __name__ == "__main__":`` blocks. None when the source cannot be read."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path:
        return None
    if path not in _children_define:
        _children_define[path] = _top_level_names(path)
    return _children_define[path]


_parsed: dict[str, ast.Module | None] = {}


def parse_main_script(path: str) -> ast.Module | None:
    """The syntax tree of the main script at *path*, parsed once per process (the
    ``__main__`` reference rule and the main-guard check both read it); None if the
    source cannot be read or parsed."""
    if path not in _parsed:
        import ast

        try:
            with open(path, "rb") as source:
                _parsed[path] = ast.parse(source.read(), path)
        except (OSError, SyntaxError, ValueError):
            _parsed[path] = None
    return _parsed[path]


def _top_level_names(path: str) -> frozenset[str] | None:
    tree = parse_main_script(path)
    if tree is None:
        return None
    names: set[str] = set()
    _collect_top_level_names(tree.body, names)
    return frozenset(names)


def _collect_top_level_names(statements: list[ast.stmt], names: set[str]) -> None:
    """Add to *names* the functions, classes and variables *statements* define when the
    script is imported as a module (outside ``if __name__ == "__main__":``)."""
    import ast

    for node in statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.If) and _is_main_guard(node.test):
            _collect_top_level_names(node.orelse, names)  # the body runs only in the parent
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            names.update(_assigned_names(node))
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                _collect_top_level_names(getattr(node, field, []), names)
        elif isinstance(node, ast.ExceptHandler):
            _collect_top_level_names(node.body, names)


def _assigned_names(node: ast.Assign | ast.AnnAssign | ast.AugAssign) -> set[str]:
    """The variable names an assignment binds."""
    import ast

    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}


def _is_main_guard(test: ast.expr) -> bool:
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def _lookup_main(obj: Any) -> str | None:
    qualname = getattr(obj, "__qualname__", None)
    if not qualname or "<" in qualname:
        return None
    try:
        return qualname if _main_attr(qualname) is obj else None
    except AttributeError:
        return None


class _Reduced:
    """Pickles as the call *reduced* names (the object itself leaves no trace)."""

    __slots__ = ("reduced",)

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.reduced = (func, args)

    def __reduce__(self) -> Any:
        return self.reduced


def _function_by_reference(func: Any, main_by_reference: bool) -> bytes | None:
    """The pickle of a function that travels by reference, as procly's Pickler would make
    it, made without importing cloudpickle (14 ms, the bulk of a first Pool's start);
    None where the Pickler must decide (lambdas, local functions, a function not found
    under its name, a ``__main__`` function copied by value, a custom reducer)."""
    if func.__module__ not in ("__main__", "__mp_main__"):
        return _global_by_reference(func)
    if "<" in func.__qualname__ or types.FunctionType in _extra_reducers or not main_by_reference:
        return None
    reference = _main_reference(func)
    return None if reference is None else pickle.dumps(_Reduced(*reference), PROTOCOL)


def _by_value_modules() -> bool:
    """Whether modules were registered with ``cloudpickle.register_pickle_by_value`` (then
    its Pickler decides what travels by reference)."""
    module = sys.modules.get("cloudpickle.cloudpickle")
    return bool(getattr(module, "_PICKLE_BY_VALUE_MODULES", None))


def _global_by_reference(obj: Any) -> bytes | None:
    """The pickle of a function, builtin or class found under its module and name outside
    ``__main__`` (``abs``, ``math.sqrt``, ``int``, ``json.dumps``): the C pickler's
    reference, as procly's Pickler would make it; None for anything else."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module in ("__main__", "__mp_main__"):
        return None
    if "<" in qualname or type(obj) in _extra_reducers or _by_value_modules():
        return None
    return pickle.dumps(obj, PROTOCOL) if _found_under(module, qualname) is obj else None


def _found_under(module: str, qualname: str) -> Any:
    """What the loaded module *module* holds under *qualname* (None where nothing): an
    object a child can find there travels by reference."""
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


class _OutOfBandBytes:
    """Top-level large bytes/bytearray, pickled as a PickleBuffer so they can leave the stream."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return (type(self.data), (pickle.PickleBuffer(self.data),))


_copies: weakref.WeakKeyDictionary[Any, bytes | None] = weakref.WeakKeyDictionary()


def _copy_of(obj: Any) -> bytes | None:
    """*obj* (a ``__main__`` function or class) pickled by value; None if it cannot be.

    A class's copy is made once (every message that holds an instance would otherwise
    pickle the whole class again); a function's each time (its globals may change)."""
    cached = isinstance(obj, type)
    if cached and obj in _copies:
        return _copies[obj]
    stream = io.BytesIO()
    pickler = _pickler_class()(stream, PROTOCOL)
    pickler.main_by_reference = False
    try:
        pickler.dump(obj)
        copy: bytes | None = stream.getvalue()
    except _CANNOT_PICKLE:
        copy = None
    if cached:
        _copies[obj] = copy
    return copy


def _main_reference(obj: Any) -> Any:
    """How a ``__main__`` function or class travels to a child that re-imports the main
    module: by reference (identity kept), carrying a by-value copy to fall back on where
    the child may lack the name (defined under the main guard, or after the child
    started) and a copy can be made (a class holding a lock cannot be copied: then the
    plain reference, as the standard library sends it). None: by value (cloudpickle)."""
    if not _main_module_importable():
        return None
    qualname = _lookup_main(obj)
    if qualname is None:
        return None
    defined = _names_children_define()
    if defined is not None and qualname.partition(".")[0] in defined:
        return _main_attr, (qualname,)
    copy = _copy_of(obj)
    if copy is None:
        return _main_attr, (qualname,)
    return _main_attr_or_copy, (qualname, copy)


class _NeedsFullPickler(Exception):
    """Raised inside :class:`_ReferencePickler`: an object there needs procly's Pickler."""


# What procly's Pickler treats in its own way (or cloudpickle copies by value): a start
# payload holding one of these goes to it.
_FULL_PICKLER_TYPES = frozenset(
    {types.MethodType, memoryview, types.ModuleType, types.CodeType, types.CellType, property, classmethod,
     staticmethod, *_OPEN_FILES}
)  # fmt: skip


class _ReferencePickler(pickle.Pickler):
    """The C pickler, with procly's reducers and ``__main__`` rule, for payloads in which
    every function and class travels by reference: anything else raises
    :class:`_NeedsFullPickler` (see :func:`dumps_for_start`)."""

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        custom = _extra_reducers.get(cls)
        if custom is not None:
            return custom(obj)
        if cls is types.FunctionType or isinstance(obj, type):
            qualname = getattr(obj, "__qualname__", "<")
            if "<" in qualname:
                raise _NeedsFullPickler
            if obj.__module__ in ("__main__", "__mp_main__"):
                reference = _main_reference(obj)
                if reference is None:
                    raise _NeedsFullPickler
                return reference
            if _found_under(obj.__module__, qualname) is not obj:
                raise _NeedsFullPickler
            return NotImplemented
        if cls is types.BuiltinFunctionType and not isinstance(obj.__self__, types.ModuleType):
            raise _NeedsFullPickler  # a bound builtin method (see _module_singleton_method)
        if cls in _FULL_PICKLER_TYPES:
            raise _NeedsFullPickler
        return NotImplemented


def dumps_for_start(obj: Any) -> bytes:
    """Serialize a Process that is being started (inside ``_handoff.collecting()``).

    The C pickler does it where every function and class in it travels by reference (a
    target defined at the top level of a module or of the main script, plain arguments,
    procly's own objects): then the parent does not import cloudpickle (14 ms) to start
    a child. Otherwise, as :func:`dumps`, with what the attempt collected forgotten.

    Raises:
        procly.PicklingError: as :func:`dumps`.
    """
    if _pending_reducers:
        register_pending()
    if not _by_value_modules():
        collected = _handoff.collected()
        stream = io.BytesIO()
        try:
            _ReferencePickler(stream, PROTOCOL).dump(obj)
            return stream.getvalue()
        except (_NeedsFullPickler, *_CANNOT_PICKLE):
            _handoff.forget_after(collected)
    return _dump_with_pickler(obj, None, True)


def _pickler_class() -> type[Pickler]:
    """procly's Pickler (its module imports cloudpickle: only once something needs it)."""
    from ._pickler import Pickler

    return Pickler


def __getattr__(name: str) -> Any:
    if name == "Pickler":
        return _pickler_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _module_singleton_method(method: Any) -> tuple[str, str] | None:
    """``(module, name)`` when ``method`` is a module attribute bound to a module-level object.

    ``random.random`` is such a method: copying it would copy the parent's generator and
    its state, so every worker would draw the same numbers. By reference, each process
    uses its own module's object, as a call in that process would.
    """
    owner = getattr(method, "__self__", None)
    if owner is None or isinstance(owner, (types.ModuleType, type)):
        return None
    name = getattr(method, "__name__", None)
    module_name = getattr(getattr(method, "__func__", None), "__module__", None) or type(owner).__module__
    if not name or module_name in (None, "__main__", "__mp_main__", "builtins"):
        return None
    module = sys.modules.get(module_name)
    candidate = getattr(module, name, None) if module is not None else None
    if candidate is not None and getattr(candidate, "__self__", None) is owner:
        return module_name, name
    return None


def _module_attr(module_name: str, name: str) -> Any:
    return getattr(importlib.import_module(module_name), name)


def dumps(obj: Any, out_of_band: list[memoryview] | None = None, *, main_by_reference: bool = True,
          plain: bool = False, out_of_band_from: int = OUT_OF_BAND_THRESHOLD) -> bytes:  # fmt: skip
    """Serialize *obj*.

    With *out_of_band* (a list), buffers of at least :data:`OUT_OF_BAND_THRESHOLD` bytes
    are not copied into the result: their raw memoryviews are appended to the list, in
    order, and must be handed to :func:`loads` along with the payload. With
    *main_by_reference* false, ``__main__`` functions and classes are copied by value.
    *plain* says that *obj* holds only built-in containers, scalars and PickleBuffers
    (an envelope procly builds itself): it goes straight to the C pickler.
    *out_of_band_from* is the size from which a buffer leaves the stream.

    Raises:
        procly.PicklingError: *obj* (or something inside it) cannot be serialized; the
            message names the offending object. It is both a ``pickle.PicklingError``
            and a ``TypeError``, so either ``except`` clause catches it.
    """
    cls = type(obj)
    if cls in _SCALARS and (out_of_band is None or cls is not bytes or len(obj) < OUT_OF_BAND_THRESHOLD):
        return pickle.dumps(obj, PROTOCOL)
    if (cls is list or cls is tuple) and only_small_scalars(obj):
        # A map chunk of numbers or text: nothing to inspect (the full pickler would call
        # back into Python for every item).
        return pickle.dumps(obj, PROTOCOL)
    callback = None if out_of_band is None else _keep_out_of_band(out_of_band, out_of_band_from)
    if callback is not None and cls in (bytes, bytearray) and len(obj) >= OUT_OF_BAND_THRESHOLD:
        obj = _OutOfBandBytes(obj)
    if plain or _is_plain(obj):
        # Only plain data (a pool's task envelope, small results): the C pickler alone
        # gives the same bytes, without building a cloudpickle Pickler (a few µs).
        return pickle.dumps(obj, PROTOCOL, buffer_callback=callback)
    if cls is types.FunctionType:
        by_reference = _function_by_reference(obj, main_by_reference)
        if by_reference is not None:
            return by_reference
    elif cls is types.BuiltinFunctionType or cls is type:
        by_reference = _global_by_reference(obj)
        if by_reference is not None:
            return by_reference
    return _dump_with_pickler(obj, callback, main_by_reference)


def _keep_out_of_band(out_of_band: list[memoryview], out_of_band_from: int) -> Callable[[pickle.PickleBuffer], bool]:
    """The pickler's buffer callback: buffers from *out_of_band_from* bytes go to *out_of_band*."""

    def callback(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < out_of_band_from:
            return True  # small: keep it in the stream
        out_of_band.append(view)
        return False

    return callback


def _dump_with_pickler(obj: Any, callback: Any, main_by_reference: bool) -> bytes:
    stream = io.BytesIO()
    try:
        pickler = _pickler_class()(stream, PROTOCOL, buffer_callback=callback)
        pickler.main_by_reference = main_by_reference
        pickler.dump(obj)
    except PicklingError:
        raise
    except _CANNOT_PICKLE as exc:
        raise PicklingError(f"cannot pickle {_describe(obj)}: {exc}") from exc
    return stream.getvalue()


_PLAIN = frozenset({int, float, str, bytes, bool, type(None), pickle.PickleBuffer})
# The same, less the types given a reducer of their own (register() keeps them current).
_plain_types = _PLAIN
_small_types = _SMALL_SCALARS


def only_small_scalars(items: Sequence[Any]) -> bool:
    """Whether every item is a number, text, bool or None (no custom reducer registered):
    chunks of them pickle with the C pickler alone, nothing out of band."""
    return set(map(type, items)) <= _small_types  # loops in C: ~20 ns an item


#: How many items a container, and all levels together, may hold, and how deep, to count
#: as plain: walking more costs more than building a cloudpickle Pickler (a few µs).
_PLAIN_LENGTH = 16
_PLAIN_ITEMS = 64
_PLAIN_DEPTH = 5


def _is_plain(obj: Any) -> bool:
    """Whether *obj* is a scalar, or small nested tuples/lists/dicts of scalars (see _PLAIN_ITEMS)."""
    return type(obj) in _plain_types or _plain_budget(obj, _PLAIN_ITEMS, 0) >= 0


def _plain_budget(obj: Any, budget: int, depth: int) -> int:
    """The item budget left once container *obj* is walked, or -1 where it is not plain data.

    Dictionary keys must be scalars; values and items may be containers again.
    """
    plain = _plain_types
    kind = type(obj)
    if (kind is not tuple and kind is not list and kind is not dict) or depth >= _PLAIN_DEPTH:
        return -1
    length = len(obj)
    budget -= length
    if budget < 0 or length > _PLAIN_LENGTH:
        return -1
    items = obj
    if kind is dict:
        if not set(map(type, obj)) <= plain:  # the keys
            return -1
        items = obj.values()
    for item in items:
        if type(item) not in plain:
            budget = _plain_budget(item, budget, depth + 1)
            if budget < 0:
                return -1
    return budget


def loads(data: bytes | bytearray | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Rebuild an object from :func:`dumps` output and its out-of-band buffers.

    Raises:
        pickle.UnpicklingError: *data* is not a valid pickle (or is truncated).
    """
    try:
        return pickle.loads(data, buffers=buffers)
    except (pickle.UnpicklingError, EOFError) as exc:
        raise pickle.UnpicklingError(f"received data is not a valid pickle: {exc}") from exc


def _describe(obj: Any) -> str:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(obj).__name__} object {text}"
