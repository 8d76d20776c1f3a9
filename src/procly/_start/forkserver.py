"""The forkserver start method: a clean helper process forks the children.

Data flow for one child::

    parent                           fork server                    child (forked ahead)
    connect(unix socket) ───────────> accept                        waits for a request
    <──────────────────── 32-byte nonce
    send_fds(HMAC + kind,
             [pipe_r, *arg fds]) ──> send_fds(kind, fds) ─────────> reads pipe_r:
    write prep + pickle to pipe_w                                   prepare, unpickle, run
    <────────── pid + pidfd (SCM_RIGHTS)
    connect (for the next child)      fork() (the next child)
    ...                               SIGCHLD -> waitpid
    <────────── exit code (i32)  ──── (the parent waits on this socket)

Forking and connecting ahead take the fork and the nonce's round trip off the way of
``Process.start()``: each is done while the child just started runs.

The server is started on first use by spawn, preloads the main module and
``set_forkserver_preload()`` modules, and watches its owner's lifeline: when the owner
dies, the server ends (its daemonic children watch the same lifeline and end too).

Every request is authenticated: the owner gives the server a random key at start (in
the start data, through a pipe only the server reads), and a request must carry
HMAC-SHA256(key, nonce) for the nonce the server sent on that connection. The server
never blocks on a peer: connections wait in its event loop (at most ``MAX_PENDING``,
the oldest pushed out first) and one that has not sent its request within
``REQUEST_SECONDS`` is closed; so a silent peer delays no ``Process.start()``, and the
server still sees its owner's death at once.
"""

from __future__ import annotations

import _pickle as pickle  # the C module: pickle.py would also import re and enum
import hmac
import os
import selectors
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

from .. import _handoff, _serialization, _state
from .._connection import Connection
from .._errors import StartError
from .._wait import wait
from .base import DirectChild, PidfdSignals
from .child import run_from_pipe, write_start_data
from .prepare import preparation_data, prepare
from .spawn import interpreter_command, launch

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time

if TYPE_CHECKING:
    from typing import Any, NoReturn

_STATUS = struct.Struct("!i")
_PID = struct.Struct("!q")
_SERVER_CODE = "from procly._start.forkserver import serve; serve()"
_MAX_FDS = 256
_NONCE_SIZE = 32
_TAG = b"procly-forkserver/1 "
_DIGEST_SIZE = 32
REQUEST_SECONDS = 20.0  # the server closes a connection whose request has not come by then
CLIENT_SECONDS = 60.0  # the owner gives up on a server that does not answer by then
MAX_PENDING = 64  # connections waiting for their request; a newcomer pushes out the oldest
# The owner keeps one connection made ahead for the next start (see ForkServer.start);
# one older than this may have been dropped by the server and is not used.
SPARE_SECONDS = REQUEST_SECONDS / 2


def _digest(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, _TAG + nonce, "sha256").digest()


class _NotSent(StartError):
    """The request never reached the fork server: asking a new one cannot start the child twice."""


class ForkServerChild(PidfdSignals):
    """A child forked by the fork server: its pidfd is the sentinel and the target of
    signals, its exit code arrives on a socket from the server (255 if the server died
    before it could tell: the child itself lives on when its server dies).

    The socket is kept as a bare descriptor: a socket object caught in a reference cycle
    could be finalized before this handle and warn about a socket left open.
    """

    def __init__(self, pid: int, pidfd: int, sock: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd: int | None = pidfd
        self._fd: int | None = sock.detach()
        self.sentinel = pidfd
        self._lock = threading.Lock()

    def _read_status(self) -> int | None:
        with self._lock:
            if self.returncode is None and self._fd is not None:
                data = b""
                while len(data) < _STATUS.size:
                    chunk = os.read(self._fd, _STATUS.size - len(data))
                    if not chunk:
                        break
                    data += chunk
                # EOF without a status: the server died before reporting.
                self.returncode = _STATUS.unpack(data)[0] if len(data) == _STATUS.size else 255
            return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None and self._pidfd is not None and not wait([self._pidfd], 0):
            return None
        return self._read_status()

    def wait(self, timeout: float | None) -> int | None:
        # The server reports the exit code right after reaping the child: waiting on its
        # socket takes one wake-up (the pidfd first would take two). At the socket's end
        # (the server died) the child may run on: its pidfd says when it has ended.
        if self.returncode is None and self._pidfd is not None:
            remaining = timeout
            if self._fd is not None:
                started = time.monotonic()
                if not wait([self._fd], timeout):
                    return None
                if timeout is not None:
                    remaining = max(0.0, timeout - (time.monotonic() - started))
            if not wait([self._pidfd], remaining):
                return None
        return self._read_status()

    def close(self, _close: Any = os.close) -> None:
        # os.close is bound now: at interpreter exit the os module may be cleared first.
        if self._pidfd is not None:
            _close(self._pidfd)
            self._pidfd = None
        if self._fd is not None:
            _close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None or getattr(self, "_pidfd", None) is not None:
            self.close()


class ForkServer:
    """The parent's handle on its fork server."""

    def __init__(self, preload: list[str], executable: str | None) -> None:
        state = _state.get()
        lifeline = state.lifeline()
        self._dir = tempfile.mkdtemp(prefix="procly-forkserver-")
        self.address = os.path.join(self._dir, "sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        read_fd, write_fd = os.pipe()
        try:
            listener.bind(self.address)
            os.chmod(self.address, 0o600)
            listener.listen(128)
            argv = interpreter_command(executable) + [
                "-c",
                _SERVER_CODE,
                str(listener.fileno()),
                str(lifeline),
                str(read_fd),
            ]
            self._process = DirectChild(launch(argv, [listener.fileno(), lifeline, read_fd]))
        except BaseException:
            os.close(write_fd)
            self._remove_dir()
            raise
        finally:
            listener.close()
            os.close(read_fd)
        self._key = os.urandom(32)
        self._lock = threading.Lock()
        self._spare: tuple[int, float] | None = None  # (descriptor, when made) of the connection made ahead
        data = preparation_data("ForkServer", "forkserver")
        data["preload"] = list(preload)
        data["forkserver_key"] = self._key
        with Connection(write_fd, readable=False) as conn:
            try:
                conn.send_bytes(pickle.dumps(data, _serialization.PROTOCOL))
            except BrokenPipeError:
                pass

    def alive(self) -> bool:
        return self._process.poll() is None

    def start(self, process: Any) -> ForkServerChild:
        """Ask the server to fork *process*.

        Each request goes on a connection of its own, signed with the nonce the server
        sent on it. Once a child is started, the connection for the next one is made
        ahead: the server accepts it and sends its nonce while this process goes on, so
        the next start does not wait for that round trip.
        """
        data = preparation_data(process.name, "forkserver")
        if process._config.get("env"):
            data["env"] = process._config["env"]
        with _handoff.collecting() as handoff:
            payload = _serialization.dumps_for_start(process)
        data["fds"] = handoff.fds  # renumbered by the server
        sock, nonce, ahead = self._connection()
        try:
            try:
                child = self._start(sock, nonce, process, data, payload, handoff.fds)
            except _NotSent:
                if not ahead:
                    raise
                # The server dropped the connection made ahead after it was checked (other
                # peers pushed it out): the request did not reach it; send it on a new one.
                sock.close()
                sock, nonce, _ = self._connection()
                child = self._start(sock, nonce, process, data, payload, handoff.fds)
        except BaseException:
            sock.close()
            raise
        self._connect_ahead()
        return child

    def _connection(self) -> tuple[socket.socket, bytes, bool]:
        """A connection to the server, its nonce, and whether it was made ahead (it is
        used if it is fresh and still open).

        Raises:
            _NotSent: the server cannot be reached, or did not answer in time.
        """
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            sock = socket.socket(fileno=spare[0])
            if time.monotonic() - spare[1] < SPARE_SECONDS:
                try:
                    nonce = self._read_nonce(sock)
                    if not _dropped(sock):
                        return sock, nonce, True
                except _NotSent:
                    pass  # pushed out by the server (too many peers waiting): a new one
            sock.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.connect(self.address)  # blocking: with a timeout a full backlog is EAGAIN at once
            except OSError as exc:
                raise _NotSent(f"cannot reach the fork server: {exc}") from exc
            return sock, self._read_nonce(sock), False
        except BaseException:
            sock.close()
            raise

    def _connect_ahead(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            return  # the next start connects itself, and finds out what is wrong
        with self._lock:
            old, self._spare = self._spare, (sock.detach(), time.monotonic())
        if old is not None:
            os.close(old[0])

    def forget_spare(self) -> None:
        """Close the connection made ahead (at stop, and in a forked child, which must not use it)."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            os.close(spare[0])

    def _start(
        self, sock: socket.socket, nonce: bytes, process: Any, data: dict[str, Any], payload: bytes, fds: list[int]
    ) -> ForkServerChild:
        read_fd, write_fd = os.pipe()
        # The child writes to *our* stdout/stderr as they are now, not to the ones the
        # server inherited when it started.
        stdio = [_stdio_fd(1), _stdio_fd(2)]
        request = _digest(self._key, nonce) + (b"D" if process._watches_lifeline else b"N")
        try:
            socket.send_fds(sock, [request], [read_fd, *stdio, *fds])
        except OSError as exc:
            os.close(write_fd)
            raise _NotSent(f"the fork server dropped the request: {exc}") from exc
        finally:
            for fd in (read_fd, *stdio):
                os.close(fd)
        with Connection(write_fd, readable=False) as conn:
            try:
                write_start_data(conn, data, payload)
            except BrokenPipeError:
                pass
        return _started_child(sock)

    def _read_nonce(self, sock: socket.socket) -> bytes:
        """The nonce the server sent on *sock*, to be signed.

        Raises:
            _NotSent: the server closed the connection, or did not answer in time.
        """
        try:
            sock.settimeout(CLIENT_SECONDS)
            nonce = sock.recv(_NONCE_SIZE, socket.MSG_WAITALL)
        except TimeoutError:
            raise _NotSent(f"the fork server did not answer within {CLIENT_SECONDS} s") from None
        except OSError as exc:
            raise _NotSent(f"cannot reach the fork server: {exc}") from exc
        if len(nonce) != _NONCE_SIZE:
            raise _NotSent("the fork server closed the connection before the request")
        return nonce

    def stop(self) -> None:
        """End the server and reap it (called at exit, after children were joined)."""
        self.forget_spare()
        self._process.terminate()
        if self._process.wait(2.0) is None:
            self._process.kill()
            self._process.wait(None)
        self._process.close()
        self._remove_dir()

    def _remove_dir(self) -> None:
        for path in (self.address, self._dir):
            try:
                (os.unlink if path == self.address else os.rmdir)(path)
            except OSError:
                pass


def _dropped(sock: socket.socket) -> bool:
    """Whether the server has closed *sock* (after sending its nonce)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False  # open, nothing to read: as it should be
    except OSError:
        return True
    finally:
        sock.settimeout(CLIENT_SECONDS)


def _started_child(sock: socket.socket) -> ForkServerChild:
    """The child the server forked, from its answer on *sock* (its pid and status pipe).

    Raises:
        StartError: the server failed to start the child, or did not answer in time.
    """
    try:
        msg, fds, _, _ = socket.recv_fds(sock, _PID.size, 1, socket.MSG_WAITALL)
    except TimeoutError:
        raise StartError(f"the fork server did not start the child within {CLIENT_SECONDS} s") from None
    except OSError as exc:
        raise StartError(f"the fork server failed while starting the child: {exc}") from exc
    sock.setblocking(True)  # the handle reads the exit status from it with plain os.read
    if len(msg) != _PID.size or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise StartError("the fork server failed to start the child")
    return ForkServerChild(_PID.unpack(msg)[0], fds[0], sock)


def _stdio_fd(fd: int) -> int:
    try:
        return os.dup(fd)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)


class ForkServerStarter:
    """Ask this process's fork server (started on first use) to fork the child."""

    method = "forkserver"

    def __init__(self) -> None:
        self.preload: list[str] = ["__main__"]
        self.executable: str | None = None

    def ensure_running(self, replace: ForkServer | None = None) -> ForkServer:
        """This process's fork server, (re)started if it is not running or is *replace*."""
        state = _state.get()
        with state.lock:
            server = state.forkserver
            if server is None or server is replace or not server.alive():
                # A live server being replaced cannot be reached any more (its socket was
                # removed): children it forked run on, but their exit codes are lost (255).
                if server is not None:
                    server.stop()
                server = state.forkserver = ForkServer(self.preload, self.executable)
        return server

    def start(self, process: Any) -> ForkServerChild:
        """Start *process* through the fork server; a server that died or stopped
        answering (killed, its socket gone) is replaced once and asked again.

        Raises:
            StartError: the child could not be started, even by a fresh fork server.
        """
        server = self.ensure_running()
        try:
            return server.start(process)
        except _NotSent:
            # Asked again only if the old server cannot have forked the child already.
            return self.ensure_running(replace=server).start(process)


# --------------------------------------------------------------------------- server


def serve() -> None:
    """Main loop of the fork server process (argv: LISTENER_FD LIFELINE_FD DATA_FD)."""
    listener = socket.socket(fileno=int(sys.argv[1]))
    lifeline = int(sys.argv[2])
    key = _prepare_as_parent(int(sys.argv[3]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _Server(listener, lifeline, key).run()


def _prepare_as_parent(data_fd: int) -> bytes:
    """Read the parent's preparation data, prepare this process (and import what it
    preloads) as the parent is; return the key requests are signed with."""
    with Connection(data_fd, writable=False) as conn:
        data = pickle.loads(conn.recv_bytes())
    key: bytes = data.pop("forkserver_key")
    preload = data.pop("preload", [])
    if "__main__" not in preload:
        data.pop("main_path", None)
        data.pop("main_module_name", None)
    try:
        prepare(data)
    except BaseException:  # the child will import main itself and show the error
        pass
    for name in preload:
        if name != "__main__":
            try:
                __import__(name)
            except ImportError:
                pass
    return key


class _Server:
    """The fork server's event loop: new connections, their requests, children's exits,
    and the lifeline; each kind of event has its handler.

    A child is forked ahead of its request and waits for it (:func:`_await_request`):
    a request is then answered without a fork on its way, and the next child is forked
    while the one just handed out runs.
    """

    def __init__(self, listener: socket.socket, lifeline: int, key: bytes) -> None:
        self.listener, self.lifeline, self.key = listener, lifeline, key
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *args: None)
        self.clients: dict[int, socket.socket] = {}
        # Connections waiting for their request: descriptor -> (socket, deadline, nonce), oldest first.
        self.pending: dict[int, tuple[socket.socket, float, bytes]] = {}
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, self._on_listener)
        self.selector.register(lifeline, selectors.EVENT_READ, self._on_lifeline)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._on_sigchld)
        self.ready: tuple[int, socket.socket] | None = None  # (pid, socket to it) of the child forked ahead
        try:
            self._fork_ahead()
        except OSError:
            pass  # the first request forks it

    def run(self) -> None:
        while True:
            timeout = None
            if self.pending:
                timeout = max(0.0, min(deadline for _, deadline, _ in self.pending.values()) - time.monotonic())
            for event, _ in self.selector.select(timeout):
                event.data(event.fd)
            now = time.monotonic()
            for fd in [fd for fd, (_, deadline, _) in self.pending.items() if deadline <= now]:
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        client = self.pending.pop(fd)[0]
        self.selector.unregister(client)
        client.close()

    def _on_lifeline(self, fd: int) -> None:
        if not os.read(fd, 1):
            os._exit(0)  # the owner died (and the child forked ahead sees its socket end)

    def _on_sigchld(self, fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass
        _report_exits(self.clients)

    def _on_listener(self, fd: int) -> None:
        try:
            client, _ = self.listener.accept()
            client.setblocking(False)
            client.send(nonce := os.urandom(_NONCE_SIZE))
        except OSError:
            return
        if len(self.pending) >= MAX_PENDING:
            self._drop(next(iter(self.pending)))
        self.pending[client.fileno()] = (client, time.monotonic() + REQUEST_SECONDS, nonce)
        self.selector.register(client, selectors.EVENT_READ, self._on_request)

    def _on_request(self, fd: int) -> None:
        """Hand a request that comes whole, signed for its nonce, to the child forked ahead."""
        client, _, nonce = self.pending.pop(fd)
        self.selector.unregister(client)
        try:
            msg, fds, _, _ = socket.recv_fds(client, _DIGEST_SIZE + 1, _MAX_FDS, socket.MSG_DONTWAIT)
        except OSError:
            client.close()
            return
        if (
            len(msg) != _DIGEST_SIZE + 1
            or not hmac.compare_digest(msg[:_DIGEST_SIZE], _digest(self.key, nonce))
            or msg[_DIGEST_SIZE:] not in (b"D", b"N")
            or len(fds) < 3
        ):
            for fd in fds:
                os.close(fd)
            client.close()
            return
        client.setblocking(True)
        try:
            pid = self._hand_over(msg[_DIGEST_SIZE:], fds)
        except OSError:
            client.close()  # no child (no fork possible now): the owner's start fails, the server goes on
            return
        finally:
            for fd in fds:
                os.close(fd)
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(client, [_PID.pack(pid)], [pidfd])
        except OSError:
            pass
        finally:
            os.close(pidfd)
        self.clients[pid] = client
        try:
            self._fork_ahead()
        except OSError:
            pass  # out of processes or memory for now: the next request tries again

    def _hand_over(self, kind: bytes, fds: list[int]) -> int:
        """Give the request to the child forked ahead (a new one if that one died); its pid."""
        for _ in range(2):
            self._fork_ahead()  # none when the one forked ahead is still there
            assert self.ready is not None
            pid, sock = self.ready
            self.ready = None
            try:
                socket.send_fds(sock, [kind], fds)
                return pid
            except OSError:
                continue  # it died waiting (killed): its exit is reaped unreported
            finally:
                sock.close()
        raise OSError("the fork server's children die before they can start")

    def _fork_ahead(self) -> None:
        if self.ready is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            server_fds = [self.listener.fileno(), self.wake_r, self.wake_w, *self.pending]
            _await_request(theirs, self.lifeline, server_fds, list(self.clients.values()))
        theirs.close()
        self.ready = (pid, ours)


def _report_exits(clients: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        client = clients.pop(pid, None)
        if client is not None:
            try:
                client.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass
            client.close()


def _await_request(sock: socket.socket, lifeline: int, server_fds: list[int], clients: list[socket.socket]) -> NoReturn:
    """In a child forked ahead: drop the server's descriptors, wait for a request on
    *sock*, take its descriptors and run the Process it brings (see the module doc)."""
    exitcode = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in server_fds:
            os.close(fd)
        for other in clients:
            other.close()
        # Blocks until the server hands a request over; an empty read: the server died.
        kind, fds, _, _ = socket.recv_fds(sock, 1, _MAX_FDS)
        sock.close()
        if not kind:
            exitcode = 0
        else:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored while it waited, as by the server
            keep = os.dup(lifeline) if kind == b"D" else None
            os.close(lifeline)
            for target, fd in ((1, fds[1]), (2, fds[2])):
                os.dup2(fd, target)
                os.close(fd)
            exitcode = run_from_pipe(fds[0], keep, fds[3:])
    except SystemExit as exc:
        exitcode = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(exitcode)


def _forget_spare_in_child() -> None:
    # A forked child must not use its parent's connection made ahead, nor keep it open.
    # (No lock: another thread of the parent may have held it at the fork.)
    state = _state._state
    server = state.forkserver if state is not None else None
    if server is not None and server._spare is not None:
        os.close(server._spare[0])
        server._spare = None


os.register_at_fork(after_in_child=_forget_spare_in_child)
