"""Process: the object a user starts, joins and ends.

A Process knows nothing about *how* a child is created: it asks its start method's
starter (``_start``) for a :class:`~procly._start.base.ChildHandle` and forwards
poll/wait/signals to it. The same class therefore serves fork, spawn and forkserver.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref

from . import _finalize, _handoff, _state
from ._errors import signal_name
from ._start.prepare import check_main_guard
from ._wait import wait

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "AuthenticationString",
    "BaseProcess",
    "active_children",
    "current_process",
    "parent_process",
]


class AuthenticationString(bytes):
    """A process's authkey: bytes that refuse to be pickled except to start a child."""

    def __reduce__(self) -> Any:
        if not _handoff.is_collecting():
            raise TypeError("Pickling an AuthenticationString object is disallowed for security reasons")
        return AuthenticationString, (bytes(self),)


class BaseProcess:
    """A child process running ``target(*args, **kwargs)`` (or an overridden :meth:`run`).

    Same interface and semantics as ``multiprocessing.Process``. Precondition
    violations raise ``AssertionError`` with the standard library's messages (so code
    that catches them keeps working); using a closed process raises ``ValueError``.
    Differences: ``sentinel`` is a pidfd (immune to PID reuse), daemonic children that
    ignore SIGTERM at exit are killed after a grace period, and daemonic children end
    when the parent dies in any way (see ``procly._state``).
    """

    _start_method: str | None = None

    @staticmethod
    def _starter() -> Any:
        raise NotImplementedError(
            "this Process class has no procly start method: derive from a context's Process (or procly.Process); "
            "procly does not start processes through the standard library's _Popen hook"
        )

    def __init__(
        self,
        group: None = None,
        target: Callable[..., Any] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
    ) -> None:
        if group is not None:
            raise AssertionError("group argument must be None for now")
        state = _state.get()
        count = next(state.counter)
        parent = state.current
        self._identity: tuple[int, ...] = parent._identity + (count,)
        self._config: dict[str, Any] = parent._config.copy()
        self._parent_pid = os.getpid()
        self._parent_name = parent.name
        self._handle: Any = None
        self._closed = False
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._name = name or f"{type(self).__name__}-" + ":".join(str(i) for i in self._identity)
        if daemon is not None:
            self.daemon = daemon
        _dangling.add(self)

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> None:
        """Run the target in the child; override in subclasses."""
        if self._target:
            self._target(*self._args, **self._kwargs)

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("process object is closed")

    def start(self) -> None:
        """Start the child process.

        Raises:
            AssertionError: already started, not created by this process, or this
                process is daemonic (daemons may not have children).
            procly.StartError: the OS refused to create the process.
            procly.PicklingError: under spawn/forkserver, the target or arguments
                cannot be pickled (nothing is started).
        """
        self._check_closed()
        if self._handle is not None:
            raise AssertionError("cannot start a process twice")
        if self._parent_pid != os.getpid():
            raise AssertionError("can only start a process object created by current process")
        state = _state.get()
        if state.current._config.get("daemon") and not state.pool_worker:
            raise AssertionError("daemonic processes are not allowed to have children")
        if state.pool_worker:
            self._config["watch_lifeline"] = True  # ends with the worker, however it ends
        state.reap()
        starter = self._starter()
        check_main_guard(starter.method)
        self._handle = starter.start(self)
        self._sentinel = self._handle.sentinel
        # The target may hold a reference back to this object: break the cycle.
        del self._target, self._args, self._kwargs
        state.children.add(self)
        state.ensure_exit_hook()

    def _child_handle(self, action: str) -> Any:
        self._check_closed()
        if self._parent_pid != os.getpid():
            raise AssertionError(f"can only {action} a child process")
        return self._handle

    def terminate(self) -> None:
        """Send SIGTERM to the child (no effect once it has ended)."""
        handle = self._child_handle("terminate")
        if handle is not None:
            handle.terminate()

    def interrupt(self) -> None:
        """Send SIGINT to the child: KeyboardInterrupt in its Python code (no effect once
        it has ended). Python 3.14's ``Process.interrupt()``, on every version."""
        handle = self._child_handle("interrupt")
        if handle is not None:
            handle.interrupt()

    def kill(self) -> None:
        """Send SIGKILL to the child (no effect once it has ended)."""
        handle = self._child_handle("kill")
        if handle is not None:
            handle.kill()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the child ends, or at most *timeout* seconds.

        Raises:
            AssertionError: the process was not started, or is not our child.
        """
        handle = self._child_handle("join")
        if handle is None:
            raise AssertionError("can only join a started process")
        if handle.wait(timeout) is not None:
            _state.get().children.discard(self)

    def is_alive(self) -> bool:
        """Whether the child is running (reaps it if it has ended)."""
        self._check_closed()
        state = _state.get()
        if self is state.current:
            return True
        if self._parent_pid != os.getpid():
            raise AssertionError("can only test a child process")
        if self._handle is None:
            return False
        if self._handle.poll() is None:
            return True
        state.children.discard(self)
        return False

    def close(self) -> None:
        """Release the resources of an ended process; most methods then raise ValueError.

        Raises:
            ValueError: the child is still running.
        """
        if self._closed:
            return
        if self._handle is not None:
            if self._handle.poll() is None:
                raise ValueError(
                    "Cannot close a process while it is still running. You should first call join() or terminate()."
                )
            self._handle.close()
            self._handle = None
            del self._sentinel
            _state.get().children.discard(self)
        self._closed = True

    def _release_descriptors(self) -> None:
        """Close an ended child's descriptors but keep its exit code readable (unlike close())."""
        if self._handle is not None and self._handle.poll() is not None:
            self._handle.close()
            self.__dict__.pop("_sentinel", None)
            self._released = True

    # -- attributes ----------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        self._name = name

    @property
    def daemon(self) -> bool:
        """Whether the process is daemonic (ended with its parent, may not have children)."""
        return bool(self._config.get("daemon", False))

    @daemon.setter
    def daemon(self, daemonic: bool) -> None:
        if self._handle is not None:
            raise AssertionError("process has already started")
        self._config["daemon"] = bool(daemonic)

    @property
    def _watches_lifeline(self) -> bool:
        """Whether the child ends when this process dies: daemonic, or a pool worker's."""
        return bool(self._config.get("daemon") or self._config.get("watch_lifeline"))

    @property
    def authkey(self) -> bytes:
        return self._config["authkey"]  # type: ignore[no-any-return]

    @authkey.setter
    def authkey(self, authkey: bytes) -> None:
        self._config["authkey"] = AuthenticationString(authkey)

    @property
    def exitcode(self) -> int | None:
        """None while running; else 0, the sys.exit() code, 1 after an exception, or -signal."""
        self._check_closed()
        if self._handle is None:
            return None
        return self._handle.poll()  # type: ignore[no-any-return]

    @property
    def ident(self) -> int | None:
        """The process ID (None before start)."""
        self._check_closed()
        if self is _state.get().current:
            return os.getpid()
        return self._handle.pid if self._handle is not None else None

    pid = ident

    @property
    def sentinel(self) -> int:
        """A descriptor that becomes ready when the child ends (for ``procly.connection.wait``).

        Raises:
            ValueError: the process was not started (or is closed).
        """
        self._check_closed()
        try:
            return self._sentinel  # type: ignore[no-any-return]
        except AttributeError:
            if getattr(self, "_released", False):
                raise ValueError("the process has ended and its sentinel was released (a pool's worker)") from None
            raise ValueError("process not started") from None

    def __repr__(self) -> str:
        exitcode = None
        if self is _state.get().current:
            status = "started"
        elif self._closed:
            status = "closed"
        elif self._parent_pid != os.getpid():
            status = "unknown"
        elif self._handle is None:
            status = "initial"
        else:
            exitcode = self._handle.poll()
            status = "started" if exitcode is None else "stopped"
        info = [type(self).__name__, f"name={self._name!r}"]
        if self._handle is not None:
            info.append(f"pid={self._handle.pid}")
        info.append(f"parent={self._parent_pid}")
        info.append(status)
        if exitcode is not None:
            info.append(f"exitcode={_exitcode_text(exitcode)}")
        if self.daemon:
            info.append("daemon")
        return "<{}>".format(" ".join(info))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_handle", None)
        state.pop("_sentinel", None)
        state["_handle"] = None
        return state

    # -- in the child ----------------------------------------------------------

    def _bootstrap(self) -> int:
        """Run in the child: call run(), clean up like an interpreter exit, return the exit code."""
        try:
            if hasattr(threading.main_thread(), "_set_native_id"):
                threading.main_thread()._set_native_id()  # type: ignore[attr-defined]  # after fork it still holds the parent's
            _close_stdin()
            try:
                self.run()
                exitcode = 0
            finally:
                _state.run_exit_hook()
        except SystemExit as exc:
            if exc.code is None:
                exitcode = 0
            elif isinstance(exc.code, int):
                exitcode = exc.code
            else:
                sys.stderr.write(str(exc.code) + "\n")
                exitcode = 1
        except BaseException:
            exitcode = 1
            sys.stderr.write(f"Process {self.name}:\n")
            import traceback  # only now: importing it costs every process at start

            traceback.print_exc()
        finally:
            threading_shutdown = getattr(threading, "_shutdown", None)
            if threading_shutdown is not None:
                try:
                    threading_shutdown()
                except BaseException:
                    pass
            _flush_std_streams()
        return exitcode


def _exitcode_text(exitcode: int) -> str:
    return (signal_name(-exitcode) if exitcode < 0 else None) or str(exitcode)


def _close_stdin() -> None:
    if sys.stdin is None:
        return
    try:
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            sys.stdin = open(fd, closefd=False)
        except BaseException:
            os.close(fd)
            raise
    except (OSError, ValueError):
        pass


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


# Every Process created in this process, weakly (CPython's test suite inspects it).
_dangling: weakref.WeakSet[BaseProcess] = weakref.WeakSet()


class _MainProcess(BaseProcess):
    """The Process object that stands for the main process itself."""

    def __init__(self) -> None:
        self._identity = ()
        self._name = "MainProcess"
        self._parent_pid = None  # type: ignore[assignment]
        self._handle = None
        self._closed = False
        self._config = {"authkey": AuthenticationString(os.urandom(32)), "semprefix": "/mp"}

    def close(self) -> None:
        pass


class _ParentProcess(BaseProcess):
    """What a child sees as its parent: pid, name, sentinel, is_alive() and join()."""

    def __init__(self, name: str, pid: int) -> None:
        self._identity = ()
        self._name = name
        self._handle = None
        self._parent_pid = None  # type: ignore[assignment]
        self._pid = pid
        self._closed = False
        self._config = {}
        self._opened = False
        self._fd: int | None = None

    @property
    def _sentinel_fd(self) -> int | None:
        # Opened on first use: most children never ask, and start-up stays cheap.
        if not self._opened:
            self._opened = True
            try:
                self._fd = os.pidfd_open(self._pid)
            except (OSError, AttributeError):
                self._fd = None  # already gone
        return self._fd

    def is_alive(self) -> bool:
        if self._sentinel_fd is None:
            return False
        return not wait([self._sentinel_fd], timeout=0)

    @property
    def ident(self) -> int:
        return self._pid

    pid = ident

    @property
    def sentinel(self) -> int:
        if self._sentinel_fd is None:
            raise ValueError("parent is gone")
        return self._sentinel_fd

    def join(self, timeout: float | None = None) -> None:
        if self._sentinel_fd is not None:
            wait([self._sentinel_fd], timeout=timeout)


def open_parent(name: str, pid: int) -> _ParentProcess:
    """In a child: a _ParentProcess for *pid* (its pidfd sentinel is opened when first used)."""
    return _ParentProcess(name, pid)


def current_process() -> BaseProcess:
    """The Process object of the calling process (a ``MainProcess`` in the main one)."""
    return _state.get().current  # type: ignore[no-any-return]


def parent_process() -> BaseProcess | None:
    """The parent of the calling process as a Process-like object, or None in the main one."""
    return _state.get().parent  # type: ignore[no-any-return]


def active_children() -> list[BaseProcess]:
    """The children of this process still running (ended ones are reaped on the way)."""
    state = _state.get()
    state.reap()
    return list(state.children)


def _after_fork_in_child() -> None:
    _finalize.run_after_forkers()
