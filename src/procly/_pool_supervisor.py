"""The pool's supervisor: the workers, the poller, deadlines, retiring and restarts.

One thread runs ``Supervisor.run``; callers' threads only submit (``Pool``), wake it
up, dispatch (``dispatch()``, under the pool's lock), and read the reply to a call they
wait for (``serve_reply()``, under that worker's reader lock, which the supervisor holds
while it reads from or retires the worker)::

    poll(worker conns, worker sentinels, wake-up pipe; nearest deadline)
        ├── wake-up: cancelled tasks stop, pending tasks go out (dispatch)
        ├── replies from a worker ──> each task settles (its sink: AsyncResult, map chunk,
        │       imap iterator, future); the measured time per item is updated
        ├── BYE ──> the worker is retired (RetireReason.LEFT) and replaced
        ├── a worker's sentinel fires ──> RetireReason.LOST: its first unanswered task
        │       fails with WorkerLostError (or is retried), the rest go back to the queue,
        │       a new worker replaces it
        └── a task's deadline passes ──> RetireReason.TIMEOUT: its worker is killed, the
                task fails with TaskTimeoutError, the rest go back, a new worker replaces it

A worker that cannot be started (the fork server died, no memory for a fork) is tried
again after a growing pause; with no worker left, repeated failures fail the queued
tasks. A ``ProcessPoolExecutor`` under spawn or forkserver starts its workers on demand,
as the standard library's does: ``grow()``, from the submitting thread, starts one for
each task outstanding that no worker has yet, up to the pool's size. Which pending task
goes where is ``_pool_dispatch.plan``; what goes on the wire is ``_pool_messages``.
Nothing polls with sleep: one ``poll()`` over a persistent set.
"""

from __future__ import annotations

import collections
import itertools
import os
import pickle
import select
import sys
import threading
import time

from . import _errors, _inner_threads
from . import _pool_messages as messages
from ._connection import BufferedConnection, Pipe, lend_scratch, return_scratch

# BrokenProcessPool and WorkerLostError are looked up on _errors where they are raised:
# they subclass concurrent.futures' BrokenExecutor, whose module (and logging with it) a
# pool imports only when it has one to raise.
from ._errors import PoolTerminatedError, StartError, TaskTimeoutError, rebuild_exception, signal_name
from ._pool_api import PoolState
from ._pool_dispatch import plan
from ._pool_messages import RetireReason, Task, WorkerCounters
from ._pool_worker import worker_main
from ._spin import Spinner
from ._state import end_process_group
from ._wait import poll_ms, wait

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without the lookup at run time
if TYPE_CHECKING:
    from typing import Any, Callable

    from ._pool import Pool

__all__ = ["Supervisor"]


def _cancelled_error(message: str) -> BaseException:
    """concurrent.futures.CancelledError(*message*), its module imported when first needed."""
    from concurrent.futures import CancelledError

    return CancelledError(message)


WATCH_TASKS_UNDER = 0.001  # tasks shorter than this (seconds each): see watch_for_reply
ENVELOPE_OUT_OF_BAND = 4096  # task payloads from this size travel beside the envelope
TERMINATE_GRACE = 1.0
# A worker that cannot be started is tried again after RESTART_PAUSE * 2**failures seconds
# (at most RESTART_PAUSE_MAX); with no worker left, START_ATTEMPTS failures in a row fail
# the queued tasks. SUPERVISOR_ERRORS unexpected errors in a row end the pool.
RESTART_PAUSE = 0.025
RESTART_PAUSE_MAX = 2.0
START_ATTEMPTS = 3
SUPERVISOR_ERRORS = 100
_READY = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR  # the same bits as EPOLLIN...
_HAVE_EPOLL = hasattr(select, "epoll")

_Task = Task


class _Worker:
    __slots__ = ("process", "conn", "fd", "inflight", "funcs", "sent", "sentinel", "ended_poll", "done", "queued_in",
                 "queued_out", "reader", "reply_poll", "held", "cut")  # fmt: skip

    def __init__(self, process: Any, conn: Any, done: WorkerCounters) -> None:
        self.process = process
        self.conn = conn
        self.fd = conn.fileno()  # kept: a connection that closes itself on bad bytes has none
        self.sentinel = process.sentinel
        # Asked at every dispatch to an idle worker (under the pool lock: one poll at a time).
        self.ended_poll = select.poll()
        self.ended_poll.register(self.sentinel, _READY)
        self.inflight: collections.deque[_Task] = collections.deque()
        self.funcs: set[int] = set()
        self.sent = 0
        # Bytes of the tasks in flight, as they went on the socket: counted in by dispatch
        # (under the pool lock) and out by whoever settles or drops them (under reader), in
        # two counters so that neither side's update can overwrite the other's.
        self.queued_in = 0
        self.queued_out = 0
        self.done = done  # shared with Supervisor._done, by the worker's name
        # Held by the thread reading its replies or retiring it: the supervisor, or a
        # caller's thread reading its own reply (serve_reply). Reentrant: retiring happens
        # while replies are read.
        self.reader = threading.RLock()
        self.reply_poll: Any = None  # its conn and sentinel (see wait_for_reply)
        # Messages other than results that a caller's thread read (see serve_reply): the
        # supervisor handles them, first thing when it next drains this worker.
        self.held: list[tuple[Any, ...]] = []
        self.cut = False  # a read was interrupted half-way: its stream cannot be trusted

    @property
    def queued(self) -> int:
        """Bytes of the tasks in flight (see queued_in)."""
        return self.queued_in - self.queued_out

    def wait_for_reply(self, seconds: float) -> bool:
        """Wait up to *seconds* for bytes from this worker; False if none came (time is
        up, or the worker died: the supervisor takes over)."""
        if self.reply_poll is None:
            self.reply_poll = select.poll()
            self.reply_poll.register(self.fd, _READY)
            self.reply_poll.register(self.sentinel, _READY)
        events = self.reply_poll.poll(poll_ms(max(0.0, seconds)))
        return any(fd != self.sentinel for fd, _ in events)


def _signal_text(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown status"
    if exitcode < 0:
        return f"signal {signal_name(-exitcode) or -exitcode}"
    return f"exit code {exitcode}"


class Supervisor:
    """Owns a pool's workers and runs its supervisor thread (see the module).

    Shares with *pool* its lock, its pending queue and its outstanding tasks (by
    reference), and reads and sets its state (``_state``, ``_broken``); the rest of what
    the workers need comes from *pool*'s settings, read once here.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._lock = pool._lock
        self._pending: collections.deque[_Task] = pool._pending
        self._outstanding: dict[int, _Task] = pool._outstanding
        self._ctx = pool._ctx
        self._initializer = pool._initializer
        self._initargs = pool._initargs
        self._maxtasks = pool._maxtasks
        self._max_memory = pool._max_memory
        self._executor_mode = pool._executor_mode
        self._inner_threads = pool._inner_threads
        self._worker_env = pool._worker_env
        # Moving average of the time an item takes to compute (None: none timed yet): how
        # deep tasks queue at a worker, and how long imap's adaptive chunks are.
        self._item_seconds: float | None = None
        self._done: dict[str, WorkerCounters] = {}  # by worker name, past and present
        self._cancelled: list[_Task] = []
        self._wake_r: int
        self._wake_w: int | None
        self._wake_r, self._wake_w = os.pipe()
        self._wake_pending = False  # one byte in the pipe is enough to wake the supervisor
        self._asleep = False  # blocked in poll() (not spinning)
        os.set_blocking(self._wake_w, False)
        self._workers: dict[Any, _Worker] = {}
        # One poll set for the supervisor's whole life: worker connections and sentinels
        # are added and removed as workers come and go.
        # epoll where there is one: a caller's thread reading its own reply (serve_reply)
        # takes that worker out of the set, which an epoll_wait in progress sees.
        self._poller: Any = select.epoll() if _HAVE_EPOLL else select.poll()
        self._spinner = Spinner(poller=self._poller)
        self._poller.register(self._wake_r, _READY)
        self._fds: dict[int, tuple[str, _Worker]] = {}
        self._missing = 0  # workers to start again after a failed start, at _restart_at
        self.size = pool._processes
        # Workers started as tasks come (see grow) instead of all at once. Not with fork:
        # a worker forked later, from a thread, would copy whatever the other threads hold.
        self.on_demand = self._executor_mode and self._start_method() not in (None, "fork")
        # Held for every start of a worker, from whichever thread: the counts grow() goes
        # by must not change while it starts what they say is missing. Reentrant: starts
        # that keep failing fail the queued tasks, whose callbacks may submit more.
        self._start_lock = threading.RLock()
        self._starts_ended = False  # set by _shutdown: no worker starts after it
        # Set by _shutdown under the pool's lock: a task submitted after it is refused at
        # once (nobody would ever send or settle it).
        self.finished = False
        self._start_failures = 0  # failed starts in a row
        self._start_error: BaseException | None = None  # the last one's
        self._give_up = False  # set by a failed start: the queued tasks fail
        self._restart_at = 0.0
        self.thread: threading.Thread | None = None

    # -- what the pool asks of it ------------------------------------------------------

    def spawn(self, processes: int) -> None:
        """Start the first *processes* workers.

        Raises:
            BaseException: whatever starting a worker raised (the workers started are
                ended and joined first, and the wake-up pipe closed).
        """
        started: list[tuple[Any, Any]] = []
        try:
            with self._start_lock:
                # All started before any is watched: a start that fails leaves nothing to
                # unregister, only processes to end.
                for _ in range(processes):
                    started.append(self._start_process())
                for process, conn in started:
                    self._watch(process, conn)
        except BaseException:
            for process, conn in started:
                self._discard(process, conn)
            os.close(self._wake_r)
            os.close(self._wake_w)  # type: ignore[arg-type]
            self._close_poller()
            raise

    def start(self) -> threading.Thread:
        """Start the supervisor thread, and return it."""
        self.thread = threading.Thread(target=self._supervise, name="procly-pool-supervisor", daemon=True)
        self.thread.start()
        return self.thread

    def wake(self) -> None:
        """Wake the supervisor thread up (cheap when a wake-up is on its way already)."""
        with self._lock:
            if self._wake_w is None or self._wake_pending:
                return  # the supervisor is gone, or a wake-up is already on its way
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:  # full: the supervisor has a wake-up pending anyway
                pass

    def cancel(self, tasks: list[_Task]) -> None:
        """Stop *tasks*: the supervisor drops the queued ones and ends the worker running
        one, which is replaced."""
        with self._lock:
            self._cancelled.extend(tasks)
        self.wake()

    def signal_workers(self, kill: bool) -> None:
        """SIGTERM (SIGKILL with *kill*) every worker, from the caller's thread: they exit
        while the supervisor wakes up to reap them."""
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            try:
                if kill:
                    worker.process.kill()
                else:
                    worker.process.terminate()
            except (OSError, ValueError):
                pass  # already reaped and closed by the supervisor

    def grow(self) -> None:
        """Start the workers missing, now, in the calling thread: up to the pool's size or,
        on demand (``on_demand``), one for each task outstanding that no worker has yet
        (they exist when ``submit()`` returns, as with the standard library). A start that
        fails is tried again by the supervisor, as a replacement's is."""
        if len(self._workers) + self._missing >= self._wanted():
            return  # the common case, seen without the locks: whatever lowers the count comes here again
        started = False
        with self._start_lock:
            if self._starts_ended:
                return
            with self._lock:
                missing = self._wanted() - len(self._workers) - self._missing
            for _ in range(missing):
                self._replace_worker()
                started = True
        if started:
            self.wake()  # the supervisor polls the new workers' descriptors from its next round

    def start_missing_now(self) -> None:
        """grow(), without waiting for the pause after a failed start."""
        with self._start_lock:
            self._missing = 0  # counted again by grow() if a start fails again
        self.grow()

    def _wanted(self) -> int:
        """How many workers the pool should have now."""
        return min(self.size, len(self._outstanding)) if self.on_demand else self.size

    @property
    def item_seconds(self) -> float | None:
        """The measured time per item (a moving average), None until a task is timed."""
        return self._item_seconds

    def processes(self) -> list[Any]:
        """The worker Process objects."""
        return [worker.process for worker in list(self._workers.values())]

    def statistics(self) -> dict[str, Any]:
        """Workers, tasks in flight and per-worker counters (the pool's lock held)."""
        return {
            "workers": len(self._workers),
            "in_flight": sum(len(w.inflight) for w in self._workers.values()),
            "per_worker": {name: counters.as_dict() for name, counters in self._done.items()},
        }

    # -- the supervisor thread -------------------------------------------------------------

    def _spawn_worker(self) -> None:
        process, conn = self._start_process()
        try:
            self._watch(process, conn)
        except BaseException:  # a KeyboardInterrupt in the submitting thread, say
            self._discard(process, conn)
            raise

    def _discard(self, process: Any, conn: Any) -> None:
        """End a started worker that is not (or only partly) watched, and forget it."""
        with self._lock:
            self._workers.pop(conn, None)
        for fd in (conn.fileno(), getattr(process, "sentinel", None)):
            if fd is not None and self._fds.pop(fd, None) is not None:
                self._poller.unregister(fd)
        getattr(process, "kill", process.terminate)()  # a context's own Process may only terminate
        process.join()
        conn.close()

    def _start_process(self) -> tuple[Any, BufferedConnection]:
        """Start a worker process; it and the parent's end of its connection."""
        parent_end, child_end = Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(child_end, self._initializer, self._initargs, self._maxtasks, self._max_memory, self._executor_mode),
            kwargs={"inner_threads": self._inner_threads, "env": self._worker_env},
            name=f"PoolWorker-{next(_worker_numbers)}",
            daemon=True,
        )
        config = getattr(process, "_config", None)  # a context's own Process class may lack it
        if self._worker_env and config is not None:
            config["env"] = self._worker_env  # set before a spawned worker imports anything
        if self._inner_threads and self._start_method() == "fork":
            _inner_threads.prepare_to_fork(self._inner_threads)  # found once here, not in every worker
        try:
            process.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        return process, BufferedConnection.adopt(parent_end)  # one read takes every reply waiting

    def _watch(self, process: Any, parent_end: BufferedConnection) -> None:
        """Supervise a started worker: poll its connection and sentinel, dispatch to it."""
        with self._lock:  # statistics() reads _done under it
            done = self._done.setdefault(process.name, WorkerCounters())
        worker = _Worker(process, parent_end, done)
        for fd, kind in ((parent_end.fileno(), "conn"), (worker.sentinel, "sentinel")):
            self._fds[fd] = (kind, worker)
            self._poller.register(fd, _READY)
        with self._lock:  # a caller's thread may be dispatching (grow() starts workers there)
            self._workers[parent_end] = worker

    def _start_method(self) -> str | None:
        try:
            return self._ctx.get_start_method()  # type: ignore[no-any-return]
        except (AttributeError, TypeError):
            return None

    def _replace_worker(self) -> None:
        """Start a worker (start lock held). A start that fails (the fork server died, no
        memory for a fork) is tried again later with a growing pause; see also
        _fail_if_no_worker."""
        try:
            self.pool._spawn_worker()  # through the pool: see Pool._spawn_worker
        except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any start failure
            self._missing += 1
            self._start_failures += 1
            self._start_error = exc
            # With no worker at all, the tasks queued now fail (see _fail_if_no_worker).
            self._give_up = not self._workers and self._start_failures >= START_ATTEMPTS
            self._restart_at = time.monotonic() + min(RESTART_PAUSE_MAX, RESTART_PAUSE * 2**self._start_failures)
        else:
            self._start_failures = 0

    def _fail_if_no_worker(self) -> None:
        """After a start that failed once too often while the pool has no worker at all,
        fail the tasks queued then with the error instead of leaving them waiting (the
        next start is tried later all the same). Supervisor thread only, no start lock
        held: the tasks' callbacks may do anything, shutting the pool down included."""
        if not self._give_up:
            return
        self._give_up = False
        error = f"the pool could not start a worker ({self._start_failures} attempts): {self._start_error}"
        with self._lock:
            failed = list(self._pending)
            self._pending.clear()
        for task in failed:
            self._finish(task, False, StartError(error))

    def _restart_missing(self) -> None:
        if self._missing and time.monotonic() >= self._restart_at:
            with self._start_lock:
                missing, self._missing = self._missing, 0
                for _ in range(missing):
                    self._replace_worker()

    def _supervise(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    if not self._step():
                        break
                    failures = 0
                except Exception:  # noqa: BLE001 - a bug in one step must not end the supervisor
                    failures += 1
                    import traceback

                    print("procly: the pool's supervisor survived an unexpected error:", file=sys.stderr)
                    traceback.print_exc()
                    if failures >= SUPERVISOR_ERRORS:
                        raise
        except BaseException:  # nothing works any more: callers must not wait for ever
            with self._lock:
                self.pool._state = PoolState.TERMINATED
            raise
        finally:
            self._shutdown()

    def _step(self) -> bool:
        """One round of the supervisor loop; False when the pool is done."""
        if self.pool._state is PoolState.TERMINATED:
            return False
        if self._cancelled:
            self._stop_cancelled()
        self.pool._restart_missing()  # through the pool: see Pool._spawn_worker
        self._fail_if_no_worker()
        self.dispatch()
        if self.pool._state is PoolState.CLOSED and not self._busy() and self._end_intake(unless_busy=True):
            return False
        ms = poll_ms(self._until_next_deadline())
        replies_due = self._replies_due()
        # With replies due, spin first: one often comes within µs of the last event. With
        # none, sleep at once, leaving the GIL to a caller's thread that is submitting the
        # next task (it sends it itself, and wakes this thread to watch for the reply).
        events = self._spinner.wait() if replies_due else None
        if not events:
            self._asleep = True
            try:
                events = self._poller.poll((None if ms < 0 else ms / 1000) if _HAVE_EPOLL else ms)
            finally:
                self._asleep = False
        self._handle(events)
        self._expire()
        return True

    def _handle(self, events: list[tuple[int, int]]) -> None:
        # Each descriptor is looked up before any event is handled: a worker retired by an
        # earlier event closes its descriptors, and its replacement may get the same
        # numbers, so a later event of the old worker must not be taken as the new one's.
        for fd, (kind, worker) in [(fd, self._fds.get(fd, (None, None))) for fd, _ in events]:
            if fd == self._wake_r:
                self._woken()
                self.dispatch()  # what the wake-up was for (submitted work): now, not next round
                for left in list(self._workers.values()):
                    if left.held or left.conn.buffered():  # left by a caller's thread (serve_reply)
                        with left.reader:
                            self._drain(left)
            elif worker is None or worker.conn not in self._workers:
                continue  # retired earlier in this round
            else:
                with worker.reader:
                    self._drain(worker)
                    if kind == "sentinel" and worker.conn in self._workers:
                        self._lost(worker)

    def _replies_due(self) -> bool:
        return any(worker.inflight for worker in list(self._workers.values()))

    def watch_for_reply(self) -> None:
        """A caller's thread has just sent a task: if this thread sleeps and tasks are short,
        wake it now, so that it is watching when the reply comes (its wake-up overlaps the
        task instead of following the reply)."""
        if self._asleep and (self._item_seconds is None or self._item_seconds < WATCH_TASKS_UNDER):
            self.wake()

    def server_for(self, task: _Task, ready: Callable[[], bool]) -> Callable[[float], None] | None:
        """A function that reads *task*'s reply in the calling thread for up to the
        seconds it is given (see serve_reply); *ready()* says whether the outcome is in.
        None where a caller's thread cannot read its own reply (no epoll)."""
        if not _HAVE_EPOLL:
            return None
        return lambda seconds: self.serve_reply(task, ready, seconds)

    def serve_reply(self, task: _Task, ready: Callable[[], bool], seconds: float) -> None:
        """Read *task*'s reply in the calling thread, for up to *seconds*, if *task* is its
        worker's only one in flight; return once ``ready()`` is true, or to let the caller
        wait for the supervisor instead.

        A caller blocked in ``get()`` on a short task would otherwise wait for the
        supervisor thread to wake, read the reply and wake it in turn: two thread
        wake-ups, with the two threads taking the GIL from each other. Reading the reply
        itself, the caller pays for neither. Only this task's reply is settled here:
        anything after it (a later task's reply, a worker leaving after maxtasksperchild)
        is left to the supervisor, which is woken for it, so callbacks and retiring stay
        in the supervisor's thread. The supervisor goes on with the other workers.
        """
        if not _HAVE_EPOLL or threading.current_thread() is self.thread:
            return  # (a callback waiting for a result would read under its own drain)
        deadline = time.monotonic() + seconds
        worker = next((w for w in list(self._workers.values()) if w.inflight and w.inflight[0] is task), None)
        if worker is None or len(worker.inflight) != 1 or worker.held or ready():
            return
        # (Waiting for the lock, not just trying it: the supervisor may hold it only
        # because it waits for the GIL that this thread holds, having just read the
        # previous reply.)
        if not worker.reader.acquire(True, max(0.0, deadline - time.monotonic())):
            return
        try:
            conn = worker.conn
            if (
                conn not in self._workers
                or worker.held
                or worker.cut
                or not worker.inflight
                or worker.inflight[0] is not task
            ):
                return  # retired or answered meanwhile
            # Out of the supervisor's set meanwhile, or its epoll_wait would wake for this
            # reply too; put back, a reply left unread wakes it.
            try:
                self._poller.modify(worker.fd, 0)
            except OSError:  # not registered yet: a worker being started by another thread
                return
            try:
                self._read_own_reply(worker, task, ready, deadline)
            finally:
                self._poller.modify(worker.fd, _READY)
            if worker.held or conn.buffered():
                self.wake()
        finally:
            worker.reader.release()

    def _read_own_reply(self, worker: _Worker, task: _Task, ready: Callable[[], bool], deadline: float) -> None:
        """serve_reply's loop (the worker's reader lock held)."""
        conn = worker.conn
        lent = lend_scratch()
        try:
            while not ready():
                if not conn.buffered() and not worker.wait_for_reply(deadline - time.monotonic()):
                    return
                try:
                    replies = self._read_replies(worker)
                    if replies is None:
                        return  # lost: the supervisor sees it too
                    # Only a result is settled here; a "bye" (or anything else) and what
                    # follows it are left for the supervisor's thread.
                    if messages.is_result(replies[0]):
                        self._settle_replies(worker, replies[:1])
                        del replies[0]
                    worker.held.extend(replies)
                except BaseException:
                    # Interrupted (Ctrl-C in this thread) half-way through a reply: the
                    # stream may be cut. The worker is ended, and the supervisor retires
                    # it unread (its task fails, or is tried again).
                    worker.cut = True
                    if not ready() and task not in worker.inflight:
                        worker.inflight.appendleft(task)  # taken off, not settled: it fails with the worker
                    worker.process.kill()
                    raise
                if worker.held:
                    return
        finally:
            if lent:
                return_scratch()

    def _until_next_deadline(self) -> float | None:
        """Seconds until the first task's deadline or the next restart; None: no deadline."""
        now = time.monotonic()
        workers = list(self._workers.values())  # one step: grow() may add a worker meanwhile
        deadlines = [w.inflight[0].deadline for w in workers if w.inflight and w.inflight[0].deadline]
        if self._missing:
            deadlines.append(self._restart_at)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _woken(self) -> None:
        """Empty the wake-up pipe; a caller's next wake-up writes to it again."""
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        with self._lock:
            self._wake_pending = False

    def dispatch(self) -> None:
        """Send pending tasks to workers, as the dispatch rules (_pool_dispatch) say.

        Runs in the supervisor and, right after a submission, in the caller's thread (one
        thread hop less per task); the lock keeps the two apart."""
        with self._lock:
            pending = self._pending
            if not pending or self.finished:  # finished: the workers are being sent STOP
                return
            workers = self._workers.values()
            taken, dropped, sends = plan(workers, pending, self._item_seconds, self._maxtasks, _has_ended)
            popleft = pending.popleft
            for _ in range(taken):
                popleft()
            for task in dropped:
                self._outstanding.pop(task.id, None)
            for worker, bundles in sends:
                inflight = worker.inflight
                for n, bundle in enumerate(bundles):
                    for task, first_use, wire in bundle:
                        # In flight *before* it is sent: the supervisor may read the reply
                        # before a caller's thread that dispatches it gets here again.
                        if not inflight and task.timeout:
                            self._start_clock(task)
                        inflight.append(task)
                        task.send_function = first_use
                        task.wire = wire
                    worker.sent += len(bundle)
                    worker.queued_in += sum(wire for _, _, wire in bundle)
                    worker.funcs.update(task.func_key for task, first_use, _ in bundle if first_use)
                    if not self._send_bundle(worker, bundle):
                        # The worker is dying (its sentinel will tell): this bundle and the
                        # ones after it go back, first in line.
                        pending.extendleft(reversed([task for later in bundles[n:] for task, _, _ in later]))
                        break

    def _send_bundle(self, worker: _Worker, bundle: list[tuple[_Task, bool, int]]) -> bool:
        """Send tasks to *worker* in one message (lock held); it replies to each in turn.
        False if the worker is dying: the tasks are no longer in flight there."""
        # PickleBuffer: a large payload is written from its own memory.
        make = messages.task
        message = [
            make(task.id, task.func_key, task.func_bytes if task.send_function else None, task.mode,
                 pickle.PickleBuffer(task.payload) if len(task.payload) >= ENVELOPE_OUT_OF_BAND else task.payload,
                 [pickle.PickleBuffer(b) for b in task.buffers] if task.buffers else [])
            for task, _, _ in bundle
        ]  # fmt: skip
        try:
            # Ints, bytes and PickleBuffers: no inspection; payloads of 4 KiB and more are
            # written from their own memory instead of being copied into the envelope.
            worker.conn._send_object(message, plain=True, out_of_band_from=ENVELOPE_OUT_OF_BAND)
        except OSError:
            for task, _, _ in bundle:
                try:
                    worker.inflight.remove(task)
                except ValueError:
                    pass
                if task.send_function:
                    worker.funcs.discard(task.func_key)
                worker.sent -= 1
                worker.queued_in -= task.wire
            return False
        return True

    def _stop_cancelled(self) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, []
            ids = {task.id for task in cancelled}
            dropped = [task for task in self._pending if task.id in ids]
            for task in dropped:
                self._pending.remove(task)
        for worker in list(self._workers.values()):
            with worker.reader:  # a caller's thread may be settling its tasks now
                for task in list(worker.inflight)[1:]:
                    if task.id in ids:
                        # Sent, not started: its reply will find no task waiting for it.
                        worker.inflight.remove(task)
                        worker.queued_out += task.wire
                        dropped.append(task)
                if worker.inflight and worker.inflight[0].id in ids and worker.conn in self._workers:
                    worker.process.kill()
                    self._retire(worker, RetireReason.CANCELLED)
        for task in dropped:
            self._finish(task, False, _cancelled_error(f"task {task.label} was cancelled"))

    def _start_clock(self, task: _Task) -> None:
        task.deadline = time.monotonic() + task.timeout * task.count if task.timeout else None

    def _drain(self, worker: _Worker) -> None:
        """Collect every reply waiting from *worker* (also those a dead worker sent before
        dying). The supervisor's hot path: one pass over every reply read ahead."""
        if worker.cut:
            self._lost(worker)  # its worker was killed: nothing more is read from it
            return
        if worker.held:  # read by a caller's thread, left for this one
            held, worker.held = worker.held, []
            self._settle_replies(worker, held)
        conn = worker.conn
        while conn in self._workers:
            if not (conn.buffered() or conn.poll(0)):
                return
            replies = self._read_replies(worker)
            if replies is None:
                self._lost(worker)
                return
            self._settle_replies(worker, replies)

    def _read_replies(self, worker: _Worker) -> list[tuple[Any, ...]] | None:
        """The replies ready on *worker*'s connection; None if it is closed."""
        try:
            return worker.conn.recv_ready()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            return None
        except BaseException as exc:  # noqa: BLE001 - a result that does not unpickle in the parent
            if self._executor_mode:
                error = _errors.BrokenProcessPool(f"a result could not be unpickled: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                exc = error
            elif not isinstance(exc, Exception):
                raise
            inflight = worker.inflight
            return [messages.result(inflight[0].id if inflight else -1, False, (exc, ""), 0.0, 0.0, 0.0)]

    def _settle_replies(self, worker: _Worker, replies: list[tuple[Any, ...]]) -> None:
        """Settle the tasks *replies* answer (a caller's thread passes results only)."""
        inflight = worker.inflight
        # Two threads settling two workers' replies may each write back their own update:
        # one loses a few samples of a moving average, no more.
        item_seconds = self._item_seconds
        tasks = wire = 0
        computing = serializing = waiting = 0.0
        try:
            is_result = messages.is_result
            for reply in replies:
                if not is_result(reply):
                    if messages.kind_of(reply) is messages.MessageKind.BYE:
                        # It left after maxtasksperchild or max_memory_per_child.
                        self._retire(worker, RetireReason.LEFT)
                        return
                    # An executor's initializer raised. The worker exits by itself: let it
                    # finish (flush what its initializer queued, a log record for instance)
                    # before the pool breaks and ends the others.
                    worker.process.join(5)
                    text = messages.init_failed_text(reply)
                    self.pool._broken = f"the initializer failed in a worker ({text}); the executor is broken"
                    self.pool._terminate(kill=False)
                    return
                task_id, success, values, seconds, serializing_one, waiting_one = reply
                if not inflight or inflight[0].id != task_id:
                    continue  # a cancelled task's
                task = inflight.popleft()
                wire += task.wire
                per_item = seconds / (task.count or 1)
                item_seconds = per_item if item_seconds is None else item_seconds + 0.2 * (per_item - item_seconds)
                tasks += 1
                computing += seconds
                serializing += serializing_one
                waiting += waiting_one
                if inflight and inflight[0].timeout:
                    self._start_clock(inflight[0])
                if not success:
                    exc, tb = values
                    values = rebuild_exception(exc, tb) if tb else exc
                self._finish(task, success, values)
        finally:
            self._item_seconds = item_seconds
            worker.queued_out += wire
            done = worker.done
            done.tasks += tasks
            done.compute_seconds += computing
            done.serialize_seconds += serializing
            done.wait_seconds += waiting

    def _finish(self, task: _Task, success: bool, values: Any) -> None:
        # Supervisor thread only. No lock: the callers' threads only add entries, and a
        # dict's pop is atomic; taking the lock here made every reply wait for a caller
        # submitting a batch of tasks.
        self._outstanding.pop(task.id, None)
        task.settle(success, values)

    def _lost(self, worker: _Worker) -> None:
        self._retire(worker, RetireReason.LOST)

    def _expire(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if not _overdue(worker, now):
                continue
            with worker.reader:  # a caller's thread may be settling that task now
                if worker.conn in self._workers and _overdue(worker, now):
                    worker.process.kill()
                    self._retire(worker, RetireReason.TIMEOUT)

    def _error(self, why: RetireReason, task: _Task, name: str, pid: int, exitcode: int | None) -> BaseException:
        if why is RetireReason.CANCELLED:
            return _cancelled_error(f"task {task.label} was cancelled; worker {name} (pid {pid}) was stopped")
        if why is RetireReason.TIMEOUT:
            return TaskTimeoutError(
                f"task {task.label} ran longer than its timeout of {task.timeout}s per item; "
                f"worker {name} (pid {pid}) was stopped"
            )
        return _errors.WorkerLostError(
            f"worker {name} (pid {pid}) died with {_signal_text(exitcode)} while running task {task.label}",
            exitcode,
        )

    def _retire(self, worker: _Worker, why: RetireReason) -> None:
        """Remove *worker*; fail (or retry) its running task, requeue the rest, replace it
        (*why*: see RetireReason)."""
        with worker.reader:  # a caller's thread reading a reply from it lets go first
            with self._lock:
                # Under the lock: a dispatch from a caller's thread either finished before this
                # (its tasks are in worker.inflight, requeued below) or will not see this worker.
                self._workers.pop(worker.conn, None)
            for fd in (worker.fd, worker.sentinel):
                self._fds.pop(fd, None)
                self._poller.unregister(fd)
            worker.conn.close()
            if worker.held:  # replies a caller's thread read ahead: they count, the worker goes anyway
                held, worker.held = worker.held, []
                self._settle_replies(worker, [reply for reply in held if messages.is_result(reply)])
            process = worker.process
            name, pid = process.name, process.pid
            if why is not RetireReason.LEFT:
                # Dead or being killed, not yet reaped: what its task started goes too.
                if not wait([worker.sentinel], 5):
                    process.kill()
                    wait([worker.sentinel])
                end_process_group(pid)
            process.join(5)
            if process.exitcode is None:  # "bye" came before the exit: make sure
                process.kill()
                process.join()
            exitcode = process.exitcode
            # Its descriptors go now; the object stays usable (join(), exitcode) for a caller
            # that kept it (the executor's _processes), as with the standard library.
            _release(process)
            requeue = list(worker.inflight)
            # After terminate() (which signals the workers itself), a worker's death is not a
            # loss: its tasks stay outstanding and _shutdown fails them as terminated.
            if why is not RetireReason.LEFT and requeue and self.pool._state is not PoolState.TERMINATED:
                task = requeue.pop(0)
                if why is RetireReason.LOST and task.retries > 0:
                    task.retries -= 1
                    requeue.insert(0, task)
                else:
                    self._finish(task, False, self._error(why, task, name, pid, exitcode))
            with self._lock:
                for task in reversed(requeue):
                    task.deadline = None
                    self._pending.appendleft(task)
            state = self.pool._state
            if state is not PoolState.TERMINATED and (state is PoolState.RUNNING or self._outstanding):
                # (On demand, only if a task needs it: the next submit starts one otherwise.)
                self.grow()

    def _busy(self) -> bool:
        """Whether tasks are outstanding or imap feeders still read input."""
        return bool(self._outstanding or self.pool._active_feeds)

    def _end_intake(self, unless_busy: bool = False) -> bool:
        """End the pool's intake: no worker starts from here on (a grow() finishes first),
        and nothing is submitted or dispatched. *unless_busy*: only if there is no work
        left, decided under the lock, so that a submission that got in first (a call
        being pickled while close() ran) is run rather than refused. Whether it ended."""
        with self._start_lock, self._lock:
            if unless_busy and self._busy():
                return False
            self._starts_ended = True
            self.finished = True
        return True

    def _shutdown(self) -> None:
        """Stop every worker; fail what is left if the pool was terminated."""
        terminated = self.pool._state is PoolState.TERMINATED
        self._end_intake()
        with self._lock:  # no worker is added after _end_intake(): this is every one
            workers = list(self._workers.values())
        for worker in workers:
            try:
                if terminated:
                    worker.process.terminate()
                else:
                    worker.conn.send(messages.STOP)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + TERMINATE_GRACE
        for worker in workers:
            if terminated:
                if not wait([worker.sentinel], max(0.0, deadline - time.monotonic())):
                    worker.process.kill()
                    wait([worker.sentinel])
                end_process_group(worker.process.pid)  # before it is reaped: see _retire
            worker.process.join()
            with worker.reader:  # a caller's thread reading a reply from it lets go first
                worker.conn.close()
            _release(worker.process)
        with self._lock:  # statistics() may be reading it
            self._workers.clear()
        self._fail_leftovers(terminated)
        with self._lock:
            wake_w, self._wake_w = self._wake_w, None
        os.close(self._wake_r)
        if wake_w is not None:
            os.close(wake_w)
        self._close_poller()
        self.pool._exit_finalizer.cancel()

    def _close_poller(self) -> None:
        if _HAVE_EPOLL:
            self._poller.close()

    def _fail_leftovers(self, terminated: bool) -> None:
        """Fail the tasks still outstanding once the workers are gone."""
        with self._lock:
            leftovers = list(self._outstanding.values())
            self._outstanding.clear()
            self._pending.clear()
        for task in leftovers:
            if self.pool._broken is not None:
                task.settle(False, _errors.BrokenProcessPool(self.pool._broken))
            elif terminated:
                task.settle(False, PoolTerminatedError(f"the pool was terminated before task {task.label} finished"))
            else:  # submitted as the pool shut down
                task.settle(False, PoolTerminatedError(f"the pool was shut down before task {task.label} could run"))


_worker_numbers = itertools.count(1)


def _overdue(worker: _Worker, now: float) -> bool:
    """Whether the task *worker* is running has passed its deadline."""
    task = worker.inflight[0] if worker.inflight else None
    return task is not None and task.deadline is not None and task.deadline <= now


def _has_ended(worker: _Worker) -> bool:
    """Whether *worker* has died (and the supervisor has not seen it yet)."""
    return bool(worker.ended_poll.poll(0))


def _release(process: Any) -> None:
    """Close an ended worker's descriptors, keeping join() and exitcode usable (a context's
    own Process class may only have close())."""
    getattr(process, "_release_descriptors", process.close)()
