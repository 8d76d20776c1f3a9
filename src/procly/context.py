"""Contexts: the whole procly API bound to one start method.

``procly.get_context("spawn")`` returns a context whose ``Process``, ``Queue``,
``Lock``, ``Pool``... all start children with spawn; the functions at the top of the
``procly`` package belong to the default context, whose method is chosen once with
``set_start_method()`` (or on first use: the running Python's own default).
"""

from __future__ import annotations

import os
from types import GenericAlias, ModuleType

from . import _methods
from ._errors import AuthenticationError, BufferTooShort, ProcessError, TimeoutError
from ._process import BaseProcess, active_children, current_process, parent_process
from ._typing import overload

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from ctypes import _SimpleCData
    from logging import Logger
    from typing import Any, Callable, Iterable, Literal, TypeVar

    from . import queues, sharedctypes, synchronize
    from ._connection import Connection
    from .managers import SyncManager
    from .pool import Pool as _Pool

    _T = TypeVar("_T")
    _CT = TypeVar("_CT")
    _IntCode = Literal["b", "B", "h", "H", "i", "I", "l", "L", "q", "Q"]
    _FloatCode = Literal["f", "d"]


__all__ = [
    "AuthenticationError",
    "BaseContext",
    "BufferTooShort",
    "DefaultContext",
    "ForkContext",
    "ForkProcess",
    "ForkServerContext",
    "ForkServerProcess",
    "Process",
    "ProcessError",
    "SpawnContext",
    "SpawnProcess",
    "TimeoutError",
]


class BaseContext:
    """The API shared by every context (``multiprocessing.context.BaseContext``)."""

    _name: str | None = None
    Process: type[BaseProcess]
    starter: Any  # the concrete contexts' starter (procly._start)

    ProcessError = ProcessError
    BufferTooShort = BufferTooShort
    TimeoutError = TimeoutError
    AuthenticationError = AuthenticationError

    current_process = staticmethod(current_process)
    parent_process = staticmethod(parent_process)
    active_children = staticmethod(active_children)

    def cpu_count(self) -> int:
        """The number of CPUs in the system.

        Raises:
            NotImplementedError: the number cannot be determined.
        """
        count = os.cpu_count()
        if count is None:
            raise NotImplementedError("cannot determine number of cpus")
        return count

    def Pool(  # noqa: N802
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        **options: Any,
    ) -> _Pool:
        """A process pool whose workers start with this context's method (see :mod:`procly.pool`).

        ``backend="dask"`` (with ``address=`` or ``client=``, or neither for a local cluster)
        returns the same API on a Dask cluster instead (see :mod:`procly.dask`).

        Raises:
            ValueError: an unknown ``backend``.
        """
        backend = options.pop("backend", "local")
        if backend == "dask":
            from .dask import Pool as DaskPool

            return DaskPool(processes, initializer, initargs, maxtasksperchild, **options)  # type: ignore[return-value]
        if backend != "local":
            raise ValueError(f"unknown Pool backend {backend!r}: 'local' or 'dask'")
        from .pool import Pool

        return Pool(processes, initializer, initargs, maxtasksperchild, context=self.get_context(), **options)

    def Manager(self) -> SyncManager:  # noqa: N802
        """A started SyncManager: shared dict, list, Namespace, Queue, Lock... (see :mod:`procly.managers`)."""
        from .managers import SyncManager

        manager = SyncManager(ctx=self.get_context())
        manager.start()
        return manager

    @overload
    def RawValue(self, typecode_or_type: type[_CT], *args: Any) -> _CT: ...  # noqa: N802
    @overload
    def RawValue(self, typecode_or_type: str, *args: Any) -> Any: ...  # noqa: N802
    def RawValue(self, typecode_or_type: Any, *args: Any) -> Any:  # noqa: N802
        """A ctypes object in shared memory, without a lock (see :mod:`procly.sharedctypes`)."""
        from .sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any) -> Any:  # noqa: N802
        """A ctypes array in shared memory, without a lock (see :mod:`procly.sharedctypes`)."""
        from .sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    def Pipe(self, duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802
        """Two connected Connections (see :func:`procly.connection.Pipe`)."""
        from ._connection import Pipe

        return Pipe(duplex)

    def freeze_support(self) -> None:
        """No-op outside frozen Windows executables, as in the standard library."""

    def get_logger(self) -> Logger:
        """procly's logger (see :mod:`procly.util`)."""
        from .util import get_logger

        return get_logger()

    def log_to_stderr(self, level: int | str | None = None) -> Logger:
        """Send procly's log to stderr (see :mod:`procly.util`)."""
        from .util import log_to_stderr

        return log_to_stderr(level)

    def allow_connection_pickling(self) -> None:
        """Kept for compatibility: Connections always pickle for child processes."""

    def set_executable(self, executable: str) -> None:
        """Interpreter used by spawn and the fork server."""
        _concrete_contexts["spawn"].starter.executable = executable
        _concrete_contexts["forkserver"].starter.executable = executable

    def set_forkserver_preload(self, module_names: list[str]) -> None:
        """Modules the fork server imports once, so its children start with them loaded.

        Raises:
            TypeError: *module_names* is not a list of strings.
        """
        if not isinstance(module_names, (list, tuple)) or not all(isinstance(m, str) for m in module_names):
            raise TypeError("module_names must be a list of strings")
        _concrete_contexts["forkserver"].starter.preload = list(module_names)

    def get_context(self, method: str | None = None) -> BaseContext:
        """The context for *method* (this context's own method when None).

        Raises:
            ValueError: *method* is not one of :meth:`get_all_start_methods`.
        """
        if method is None:
            return self
        try:
            return _concrete_contexts[method]
        except KeyError:
            raise ValueError(f"cannot find context for {method!r}") from None

    def get_start_method(self, allow_none: bool = False) -> str | None:
        return self._name

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        raise ValueError("cannot set start method of concrete context")

    def get_all_start_methods(self) -> list[str]:
        """The available start methods, the default one first."""
        default = _default_method()
        return [default] + [m for m in ("fork", "spawn", "forkserver") if m != default]

    @property
    def reducer(self) -> ModuleType:
        """The serialization module (``procly.reduction``)."""
        from . import reduction

        return reduction

    @reducer.setter
    def reducer(self, reduction: ModuleType) -> None:
        raise ValueError("procly's serialization module cannot be replaced")

    def _check_available(self) -> None:
        pass

    if TYPE_CHECKING:
        # What the factories below (resolved at run time by __getattr__) look like to a type
        # checker: each calls the class or function of the same name with ctx=this context.
        def Lock(self) -> synchronize.Lock: ...  # noqa: N802
        def RLock(self) -> synchronize.RLock: ...  # noqa: N802
        def Semaphore(self, value: int = 1) -> synchronize.Semaphore: ...  # noqa: N802
        def BoundedSemaphore(self, value: int = 1) -> synchronize.BoundedSemaphore: ...  # noqa: N802
        def Condition(self, lock: Any = None) -> synchronize.Condition: ...  # noqa: N802
        def Event(self) -> synchronize.Event: ...  # noqa: N802
        def Barrier(self, parties: int, action: Callable[[], object] | None = None,  # noqa: N802
                    timeout: float | None = None) -> synchronize.Barrier: ...  # fmt: skip
        def Queue(self, maxsize: int = 0) -> queues.Queue[Any]: ...  # noqa: N802
        def JoinableQueue(self, maxsize: int = 0) -> queues.JoinableQueue[Any]: ...  # noqa: N802
        def SimpleQueue(self) -> queues.SimpleQueue[Any]: ...  # noqa: N802

        @overload
        def Value(self, typecode_or_type: Any, *args: Any, lock: Literal[False]) -> Any: ...  # noqa: N802
        @overload
        def Value(self, typecode_or_type: _IntCode, *args: Any,  # noqa: N802
                  lock: Any = True) -> sharedctypes.Synchronized[int]: ...  # fmt: skip
        @overload
        def Value(self, typecode_or_type: _FloatCode, *args: Any,  # noqa: N802
                  lock: Any = True) -> sharedctypes.Synchronized[float]: ...  # fmt: skip
        @overload
        def Value(self, typecode_or_type: Literal["c"], *args: Any,  # noqa: N802
                  lock: Any = True) -> sharedctypes.Synchronized[bytes]: ...  # fmt: skip
        @overload
        def Value(self, typecode_or_type: Literal["u"], *args: Any,  # noqa: N802
                  lock: Any = True) -> sharedctypes.Synchronized[str]: ...  # fmt: skip
        @overload
        def Value(self, typecode_or_type: type[_SimpleCData[_T]], *args: Any,  # noqa: N802
                  lock: Any = True) -> sharedctypes.Synchronized[_T]: ...  # fmt: skip
        @overload
        def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> Any: ...  # noqa: N802
        def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> Any: ...  # noqa: N802

        @overload
        def Array(self, typecode_or_type: Any, size_or_initializer: Any, *,  # noqa: N802
                  lock: Literal[False]) -> Any: ...  # fmt: skip
        @overload
        def Array(self, typecode_or_type: Literal["c"], size_or_initializer: Any, *,  # noqa: N802
                  lock: Any = True) -> sharedctypes.SynchronizedString: ...  # fmt: skip
        @overload
        def Array(self, typecode_or_type: _IntCode, size_or_initializer: Any, *,  # noqa: N802
                  lock: Any = True) -> sharedctypes.SynchronizedArray[int]: ...  # fmt: skip
        @overload
        def Array(self, typecode_or_type: _FloatCode, size_or_initializer: Any, *,  # noqa: N802
                  lock: Any = True) -> sharedctypes.SynchronizedArray[float]: ...  # fmt: skip
        @overload
        def Array(self, typecode_or_type: Literal["u"], size_or_initializer: Any, *,  # noqa: N802
                  lock: Any = True) -> sharedctypes.SynchronizedArray[str]: ...  # fmt: skip
        @overload
        def Array(self, typecode_or_type: type[_SimpleCData[_T]], size_or_initializer: Any, *,  # noqa: N802
                  lock: Any = True) -> sharedctypes.SynchronizedArray[_T]: ...  # fmt: skip
        @overload
        def Array(self, typecode_or_type: Any, size_or_initializer: Any, *,  # noqa: N802
                  lock: Any = True) -> Any: ...  # fmt: skip
        def Array(self, typecode_or_type: Any, size_or_initializer: Any, *,  # noqa: N802
                  lock: Any = True) -> Any: ...  # fmt: skip

    else:

        def __getattr__(self, name: str) -> Any:
            # The factories of later layers (Lock, Queue, Value, Manager, Pool...) live in
            # their own modules and are imported only when first used.
            factory = _lazy_factories.get(name)
            if factory is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            module_name, attr = factory
            module = __import__(f"procly.{module_name}", fromlist=[attr])
            return _BoundFactory(self, name, getattr(module, attr))


class _BoundFactory:
    """A context's ``Lock``, ``Queue``, ``Value``...: calls its class or function with ctx=.

    Subscripting it, as in ``procly.Queue[int]`` in an annotation, gives a generic alias
    (calling that calls the factory), and ``isinstance(q, procly.Queue)`` checks against the
    class, so that the names work the way a type checker sees them: as the classes.
    """

    def __init__(self, ctx: BaseContext, name: str, target: Any) -> None:
        self._ctx = ctx
        self._target = target
        self.__name__ = self.__qualname__ = name
        self.__doc__ = target.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target(*args, ctx=self._ctx.get_context(), **kwargs)

    def __getitem__(self, params: Any) -> GenericAlias:
        if not hasattr(self._target, "__class_getitem__"):
            raise TypeError(f"{self.__name__} is not a generic class")
        return GenericAlias(self, params)  # type: ignore[arg-type]

    def __instancecheck__(self, obj: object) -> bool:
        return isinstance(self._target, type) and isinstance(obj, self._target)

    def __subclasscheck__(self, cls: type) -> bool:
        return isinstance(self._target, type) and issubclass(cls, self._target)

    def __repr__(self) -> str:
        return f"<bound factory {self.__name__} of {self._ctx!r}>"


# name -> (module, factory taking ctx=); filled in as layers land.
_lazy_factories: dict[str, tuple[str, str]] = {
    name: ("synchronize", name)
    for name in ("Barrier", "BoundedSemaphore", "Condition", "Event", "Lock", "RLock", "Semaphore")
}
_lazy_factories.update({name: ("sharedctypes", name) for name in ("Array", "Value")})
_lazy_factories.update({name: ("queues", name) for name in ("JoinableQueue", "Queue", "SimpleQueue")})


class ForkProcess(BaseProcess):
    _start_method = "fork"

    @staticmethod
    def _starter() -> Any:
        return _concrete_contexts["fork"].starter


class SpawnProcess(BaseProcess):
    _start_method = "spawn"

    @staticmethod
    def _starter() -> Any:
        return _concrete_contexts["spawn"].starter


class ForkServerProcess(BaseProcess):
    _start_method = "forkserver"

    @staticmethod
    def _starter() -> Any:
        return _concrete_contexts["forkserver"].starter


class Process(BaseProcess):
    """A Process started with the default context's method (decided at ``start()``)."""

    _start_method = None

    @staticmethod
    def _starter() -> Any:
        return _default_context.get_context().starter


class _MethodContext(BaseContext):
    """A context for one start method; its starter comes from the registry (_methods),
    imported on first use."""

    _name: str

    @property
    def starter(self) -> Any:
        return _methods.starter(self._name)


class ForkContext(_MethodContext):
    _name = "fork"
    Process = ForkProcess


class SpawnContext(_MethodContext):
    _name = "spawn"
    Process = SpawnProcess


class ForkServerContext(_MethodContext):
    _name = "forkserver"
    Process = ForkServerProcess


_concrete_contexts: dict[str, BaseContext] = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
    "forkserver": ForkServerContext(),
}


def _default_method() -> str:
    # Mirror the running Python: fork until 3.14, forkserver from 3.14 on (Linux).
    return _methods.default_method()


class DefaultContext(BaseContext):
    """The context behind ``procly.*``: its method is fixed on first use (kept in the
    registry, _methods, which a child sets up without this facade)."""

    Process = Process

    def __init__(self, default: BaseContext) -> None:
        self._default_ctx = default

    @property
    def _actual(self) -> BaseContext | None:
        method = _methods.chosen()
        return None if method is None else _concrete_contexts[method]

    def get_context(self, method: str | None = None) -> BaseContext:
        if method is None:
            chosen = _methods.chosen()
            if chosen is None:
                chosen = str(self._default_ctx._name)
                _methods.choose(chosen)
            return _concrete_contexts[chosen]
        return super().get_context(method)

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """Choose the default start method once (again only with *force*).

        Raises:
            RuntimeError: the method was already chosen and *force* is false.
            ValueError: *method* is unknown.
        """
        if _methods.chosen() is not None and not force:
            raise RuntimeError("context has already been set")
        if method is None and force:
            _methods.choose(None)
            return
        _methods.choose(self.get_context(method)._name)

    def get_start_method(self, allow_none: bool = False) -> str | None:
        if _methods.chosen() is None and allow_none:
            return None
        return self.get_context()._name

    def _set_default(self, method: str) -> None:
        """In a child: use the parent's method unless one was already chosen."""
        _methods.adopt_parents(method)


_default_context = DefaultContext(_concrete_contexts[_default_method()])


# --------------------------------------------------------------------------- standard library names
# The helpers ``multiprocessing.context`` exports to the reducers of other modules.

import threading as _threading  # noqa: E402

from . import _handoff  # noqa: E402
from ._compat import lazy_submodules as _lazy_submodules  # noqa: E402

_spawning = _threading.local()


class _ChildBeingStarted:
    """What :func:`get_spawning_popen` returns while a child's start data is pickled.

    It hands descriptors to that child the way the standard library's Popen objects do:
    ``popen.DupFd(popen.duplicate_for_child(fd))`` pickles to an object whose
    ``detach()``, in the child, returns the child's own copy of *fd*.
    """

    def duplicate_for_child(self, fd: int) -> int:
        """*fd* itself: :meth:`DupFd` records it for the child."""
        return fd

    def DupFd(self, fd: int) -> Any:  # noqa: N802 - the standard library's name
        """A picklable handle on *fd* for the child being started (see :func:`procly.reduction.DupFd`).

        Raises:
            RuntimeError: no child is being started in this thread.
        """
        from .reduction import _HandedFd

        return _HandedFd(_handoff.share_fd(fd, "file descriptor"))


def get_spawning_popen() -> Any:
    """The child being started by this thread, while its start data is pickled; else None.

    A value set with :func:`set_spawning_popen` wins; otherwise procly's own start-up
    (spawn, forkserver) counts, as the standard library's Popen objects do.
    """
    popen = getattr(_spawning, "popen", None)
    if popen is not None:
        return popen
    return _ChildBeingStarted() if _handoff.is_collecting() else None


def set_spawning_popen(popen: Any) -> None:
    """Mark *popen* (None: nothing) as the child this thread is starting (see :func:`get_spawning_popen`)."""
    _spawning.popen = popen


def assert_spawning(obj: Any) -> None:
    """Check that *obj* is being pickled to start a child process.

    Raises:
        RuntimeError: it is not (objects such as locks and queues reach other processes
            only by inheritance), with the standard library's message.
    """
    if get_spawning_popen() is None:
        raise RuntimeError(f"{type(obj).__name__} objects should only be shared between processes through inheritance")


__getattr__ = _lazy_submodules(__name__, "process", "reduction")
__all__ += ["assert_spawning", "get_spawning_popen", "set_spawning_popen"]
