"""The per-process state of procly, in one object.

Everything procly must remember about *this* process (which Process object it is, its
parent, the children it started, its lifeline, its fork server, its exit hook) lives in
one :class:`ProcessState`. A child gets a fresh one at start-up (:func:`reset_for_child`)
instead of scrubbing module globals one by one.

The lifeline
------------
Each process that starts children owns one pipe. It keeps the write end to itself
(close-on-exec, and closed in every process forked from it); daemonic children and
helper processes get the read end and watch it from a thread. The kernel closes the
write end however the owner dies, SIGKILL included, so the watchers read EOF and end
themselves: no orphaned daemon, pool worker or fork server. Non-daemonic children do
not watch, so they finish their work as the standard library promises.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any

    from ._process import BaseProcess

# Grace a daemonic child gets after SIGTERM at its parent's exit, before SIGKILL.
DAEMON_TERMINATE_GRACE = 1.0
# Grace a watcher gives its own process after SIGTERM when the parent died.
ORPHAN_TERMINATE_GRACE = 2.0


class ProcessState:
    """What procly knows about the current process."""

    def __init__(self, current: Any, parent: Any = None) -> None:
        self.current = current  # the BaseProcess (or _MainProcess) running here
        self.parent = parent  # a _ParentProcess, or None in the main process
        self.children: set[BaseProcess] = set()  # started, not yet known to be reaped
        self.counter = itertools.count(1)  # numbers the children: Process-1, -2, ...
        self.lifeline_read: int | None = None
        self.lifeline_write: int | None = None
        self.forkserver: Any = None  # _start.forkserver.ForkServer, started on demand
        self._fd_sharer: Any = None  # _fd_sharer.FdSharer, started on demand
        self.exiting = False
        self._exit_hook = False
        # A pool worker: it may start children although it is daemonic, every child it
        # starts watches its lifeline, and it leads a process group of its own, so that
        # whatever its tasks started (subprocesses too) ends with it.
        self.pool_worker = False
        # managers._ClientState: this process's connections, leases and live proxies of
        # the managers it uses, created on first use (a forked child starts without).
        self.manager_clients: Any = None
        self.lock = threading.RLock()
        self.pid = os.getpid()

    def lifeline(self) -> int:
        """The read end of this process's lifeline, created on first use."""
        with self.lock:
            if self.lifeline_read is None:
                self.lifeline_read, self.lifeline_write = os.pipe()
                os.register_at_fork(after_in_child=_close_inherited_lifeline_write)
            return self.lifeline_read

    def fd_sharer(self) -> Any:
        """This process's FdSharer (lends descriptors of pickled Connections), started on first use."""
        from ._fd_sharer import FdSharer

        with self.lock:
            if self._fd_sharer is None or self._fd_sharer.pid != os.getpid():
                self._fd_sharer = FdSharer()
            return self._fd_sharer

    def ensure_exit_hook(self) -> None:
        """Join/terminate children at interpreter exit (registered on first start)."""
        if not self._exit_hook and self.pid == os.getpid():
            self._exit_hook = True
            atexit.register(run_exit_hook)

    def reap(self) -> None:
        """Forget children that have ended (``active_children()`` and every start call this).

        One poll() over the children's sentinels finds those that ended, so that a start
        does not cost a system call per live child (Pool(1000) would start in O(n²)).
        """
        children = list(self.children)
        if len(children) < 8:
            ready = None
        else:
            import select

            poller = select.poll()
            for child in children:
                sentinel = getattr(child._handle, "sentinel", None)
                if sentinel is not None:
                    poller.register(sentinel, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(0)}
        for child in children:
            handle = child._handle
            if handle is None:
                self.children.discard(child)
                continue
            sentinel = getattr(handle, "sentinel", None)
            if ready is not None and sentinel is not None and sentinel not in ready:
                continue  # still running
            if handle.poll() is not None:
                self.children.discard(child)


_state: ProcessState | None = None
# This process's pid, kept current by a fork hook: get() runs on every proxy call and
# message, and os.getpid() is a system call (a few hundred ns on a VM). An at-fork hook
# registered before procly was imported runs ahead of this one: in the child it would
# still get the parent's state from get() (procly's own hooks use inherited()).
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_fork)


def get() -> ProcessState:
    """The state of the current process (created on first use in the main process)."""
    global _state
    state = _state
    if state is None or state.pid != _pid:
        from ._process import _MainProcess

        # First use, or a process forked by user code (os.fork): start afresh.
        state = _state = ProcessState(_MainProcess(), None)
    return state


def inherited() -> ProcessState | None:
    """The state as it is now, without a check of the pid: in an at-fork hook of a
    child, the parent's (copied), before the child gets its own."""
    return _state


def reset_for_child(current: Any, parent: Any, lifeline: int | None, watch: bool) -> ProcessState:
    """Install a fresh state in a child; watch *lifeline* if it is daemonic or a helper."""
    global _state
    old = _state
    if old is not None and old.lifeline_write is not None:
        _close_quietly(old.lifeline_write)
        if old.lifeline_read is not None and old.lifeline_read != lifeline:
            _close_quietly(old.lifeline_read)
    _state = ProcessState(current, parent)
    if lifeline is not None:
        if watch:
            watch_lifeline(lifeline)
        else:
            _close_quietly(lifeline)
    return _state


def watch_lifeline(fd: int) -> None:
    """End this process when *fd* reads EOF (the owner of the lifeline died)."""
    thread = threading.Thread(target=_watch, args=(fd,), name="procly-lifeline", daemon=True)
    thread.start()


def _watch(fd: int) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    # A pool worker ends its whole group: what its tasks started goes with it.
    group = _state is not None and _state.pool_worker and os.getpgid(0) == os.getpid()

    def end(signum: int) -> None:
        if group:
            os.killpg(0, signum)
        else:
            os.kill(os.getpid(), signum)

    import signal  # here, not at the top: it imports enum, a noticeable share of a child's start-up

    end(signal.SIGTERM)
    time.sleep(ORPHAN_TERMINATE_GRACE)
    end(signal.SIGKILL)


def become_pool_worker() -> None:
    """Make this process a pool worker (see ProcessState.pool_worker)."""
    get().pool_worker = True
    try:
        os.setpgid(0, 0)
    except OSError:
        pass  # e.g. a session leader: its children are still ended through the lifeline


def end_process_group(pid: int) -> None:
    """SIGKILL what is left of the process group a pool worker led (call it while the
    worker is dead but not yet reaped, so the group id cannot have been reused)."""
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass  # no such group: the worker had not made one, or nothing is left


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _close_inherited_lifeline_write() -> None:
    # Any process forked from the owner (by procly or by user code) must not hold the
    # write end, or the owner's death would go unnoticed while it lives.
    state = _state
    if state is not None and state.lifeline_write is not None and state.pid != os.getpid():
        _close_quietly(state.lifeline_write)
        state.lifeline_write = None


def run_exit_hook() -> None:
    """What the standard library does at exit: terminate daemonic children, join all.

    Beyond it: a daemonic child that ignores SIGTERM is killed after
    :data:`DAEMON_TERMINATE_GRACE` seconds instead of hanging the exit.
    """
    state = _state
    if state is None or state.pid != os.getpid() or state.exiting:
        return
    state.exiting = True
    from . import _finalize

    _finalize.run_finalizers(0)
    # Take each handle once: other threads (a pool's supervisor) may close processes.
    children = [(c, c._handle) for c in list(state.children) if c._handle is not None]
    for child, handle in children:
        if child.daemon and handle.poll() is None:
            handle.terminate()
    for child, handle in children:
        if child.daemon:
            if handle.wait(DAEMON_TERMINATE_GRACE) is None:
                handle.kill()
                handle.wait(None)
        else:
            handle.wait(None)
        state.children.discard(child)
    _finalize.run_finalizers()
    if state.forkserver is not None:
        state.forkserver.stop()
        state.forkserver = None


def usable_cpus() -> int:
    """The CPUs this process may use: the default size of pools and executors.

    ``os.process_cpu_count()`` where it exists (Python 3.13+: it honours
    ``PYTHON_CPU_COUNT`` and ``-X cpu_count``), else the CPU affinity mask.
    """
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return count() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1
