"""Hostile peers and bad input (issue 17): peers without the key, oversized headers.

Loopback and Unix sockets only; every test is bounded. A slow-drip peer sleeps between
its own bytes (that is the attack); the tests wait on results, never on time.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import procly
from procly import _listener, _state
from procly.connection import Client, Listener

from .conftest import wait_until

KEY = b"hostile-test-key"
SRC = str(Path(procly.__file__).resolve().parent.parent)


def _accept_until_connection(listener, results: list, stop: threading.Event) -> threading.Thread:
    """accept() in a thread until it returns a Connection; errors are kept in *results*."""

    def run():
        while not stop.is_set():
            try:
                conn = listener.accept()
            except procly.AuthenticationError as exc:
                results.append(exc)
                continue
            except OSError:
                return
            results.append(conn)
            return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _dripper(address, family, payload: bytes, pause: float, stop: threading.Event) -> threading.Thread:
    """A peer that sends *payload* one byte per *pause* seconds until cut off or stopped."""
    sock = socket.socket(family)
    sock.connect(address)

    def run():
        with sock:
            for i in range(len(payload)):
                if stop.wait(pause):
                    return
                try:
                    sock.send(payload[i : i + 1])
                except OSError:
                    return  # cut off by the server: the point of the test

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- 1. the handshake: one deadline, handshake frames only, a cap -----------------


def test_slow_drip_is_cut_off_at_the_handshake_deadline():
    """One byte every 0.2 s used to restart a per-read timeout for ever."""
    stop = threading.Event()
    with Listener(authkey=KEY) as listener:
        listener.handshake_timeout = 1.0
        # a plausible frame: a 200-byte answer, dripped
        drip = _dripper(listener.address, socket.AF_UNIX, struct.pack("!i", 200) + b"a" * 200, 0.2, stop)
        with pytest.raises(procly.AuthenticationError, match="in time"):
            listener.accept()
        stop.set()
        drip.join(10)
        # the listener goes on
        results: list = []
        thread = _accept_until_connection(listener, results, stop := threading.Event())
        with Client(listener.address, authkey=KEY) as client:
            thread.join(10)
            client.send("after the drip")
            assert results[-1].recv() == "after the drip"
            results[-1].close()


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack("!iIQ", -4, 1, 12345),  # "memfds named back": used to be read in a loop before auth
        struct.pack("!iI", -2, 1) + struct.pack("!QQ", 10, 2**33),  # out-of-band object
        struct.pack("!iQ", -1, 6 * 2**30),  # large frame, 6 GiB announced
    ],
    ids=["named-back", "out-of-band", "large"],
)
def test_only_handshake_frames_before_authentication(frame):
    with Listener(authkey=KEY) as listener:
        peer = socket.socket(socket.AF_UNIX)
        peer.connect(listener.address)
        peer.sendall(frame)
        with pytest.raises(procly.AuthenticationError, match="invalid handshake frame") as info:
            listener.accept()
        assert str(struct.unpack("!i", frame[:4])[0]) in str(info.value)
        peer.close()


def test_public_challenge_functions_over_a_pipe():
    from procly.connection import answer_challenge, deliver_challenge

    a, b = procly.Pipe()
    errors: list = []
    thread = threading.Thread(target=lambda: errors.append(answer_challenge(b, KEY)))
    thread.start()
    deliver_challenge(a, KEY)
    thread.join(10)
    assert errors == [None]
    os.write(b.fileno(), struct.pack("!iIQ", -4, 1, 99))  # "memfds named back" instead of an answer
    with pytest.raises(procly.AuthenticationError, match="invalid handshake frame"):
        answer_challenge(a, KEY)
    a.close()
    b.close()


def test_flood_of_silent_peers_does_not_starve_authenticated_clients():
    """200 silent connections: the listener holds at most its cap in handshake and
    the authenticating client gets through while they are all still open."""
    gate = _listener.HandshakeGate()
    cap = gate.max_per_peer * gate.hard  # they all come from this process, within a second or so
    stop = threading.Event()
    silent = []
    with Listener(authkey=KEY, backlog=256) as listener:
        listener.handshake_timeout = 60.0  # longer than the test: only the cap can free room
        results: list = []
        thread = _accept_until_connection(listener, results, stop)
        try:
            for _ in range(200):
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(listener.address)
                silent.append(sock)
            assert wait_until(lambda: listener.handshake_gate.evicted >= 200 - cap)
            assert len(listener.handshake_gate) <= cap
            with Client(listener.address, authkey=KEY) as client:
                thread.join(20)
                conn = results[-1]
                assert isinstance(conn, procly.connection.Connection), results[-1]
                client.send("served")
                assert conn.recv() == "served"
                conn.close()
            assert all(isinstance(r, procly.AuthenticationError) for r in results[:-1])
            assert "too many connections in handshake" in str(results[0])
        finally:
            stop.set()
            for sock in silent:
                sock.close()
        assert len(listener._pending) <= cap


def test_gate_caps_in_total_and_per_peer():
    gate = _listener.HandshakeGate(max_total=4, max_per_peer=2, grace=0.0)
    pairs = [socket.socketpair() for _ in range(6)]
    try:
        shakes = [_listener._Handshake(a, KEY, True, 0.0, peer=("host", i % 3)) for i, (a, _) in enumerate(pairs)]
        for h in shakes[:4]:
            assert gate.admit(h) == []
        assert gate.admit(shakes[4]) == [shakes[0]]  # full: the oldest goes
        assert shakes[0].evicted and pairs[0][1].recv(1) == b""  # shut down: its reader sees the end
        gate.release(shakes[1])
        assert gate.admit(shakes[5]) == []  # room again
        assert len(gate) == 4 and gate.evicted == 1
        # held: 2 (host 2), 3 (host 0), 4 (host 1), 5 (host 2). A third from host 2 pushes out
        # host 2's oldest, not the oldest of all; a newcomer from host 1 then the oldest of all.
        assert gate.admit(_listener._Handshake(pairs[0][0], KEY, True, 0.0, peer=("host", 2))) == [shakes[2]]
        assert gate.admit(_listener._Handshake(pairs[1][0], KEY, True, 0.0, peer=("host", 1))) == [shakes[3]]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_gate_lets_a_burst_through_up_to_its_hard_cap():
    """Connections younger than the grace period are pushed out only past hard x cap."""
    gate = _listener.HandshakeGate(max_total=100, max_per_peer=2, grace=3600.0, hard=3)
    pairs = [socket.socketpair() for _ in range(7)]
    try:
        shakes = [_listener._Handshake(a, KEY, True, 0.0, peer="one") for a, _ in pairs]
        assert [gate.admit(h) for h in shakes[:6]] == [[]] * 6  # 6 = 3 x 2: a burst, all kept
        assert gate.admit(shakes[6]) == [shakes[0]]
        assert len(gate) == 6
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def _threads_and_fds(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def test_manager_server_survives_a_flood_of_silent_and_dripping_peers():
    """The manager server authenticates each connection in a thread: the gate bounds them."""
    from procly.managers import SyncManager

    stop = threading.Event()
    held = []
    drips = []
    with SyncManager(authkey=KEY) as manager:
        shared = manager.dict()
        pid = manager._process.pid
        base_threads, base_fds = _threads_and_fds(pid)
        try:
            for _ in range(100):
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(manager.address)
                held.append(sock)
            for _ in range(20):
                drips.append(_dripper(manager.address, socket.AF_UNIX, struct.pack("!i", 64) + b"d" * 64, 0.2, stop))
            cap = _listener.MAX_IN_HANDSHAKE_PER_PEER * _listener.HandshakeGate().hard
            # The server drops all but the newest 64 of this process's connections in
            # handshake (16 once they are a second old and more come).
            assert wait_until(lambda: _threads_and_fds(pid)[0] <= base_threads + cap + 4, timeout=20)
            threads, fds = _threads_and_fds(pid)
            assert fds <= base_fds + cap + 4
            shared["still"] = "served"  # a new authenticated connection gets through
            assert manager.dict({"x": 1}).copy() == {"x": 1}
            assert shared["still"] == "served"
        finally:
            stop.set()
            for sock in held:
                sock.close()
            for drip in drips:
                drip.join(10)


# -- 2. memory follows the data, not the header ------------------------------------

_PROBE = r"""
import socket, struct, sys, threading
sys.path.insert(0, sys.argv[1])
from procly.connection import Connection

def hwm_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM"))

header = bytes.fromhex(sys.argv[2])
sent = int(sys.argv[3])
a, b = socket.socketpair()
conn = Connection(a.detach())

def peer():
    try:
        b.sendall(header)
        b.sendall(b"x" * sent)
    except OSError:
        pass
    b.close()

threading.Thread(target=peer).start()
before = hwm_mib()
try:
    conn.recv()
    outcome = "no error"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(hwm_mib() - before)
print(outcome)
"""


def _receive_in_a_fresh_process(header: bytes, sent: int) -> tuple[int, str]:
    """(peak RSS growth in MiB, the error) of a process that receives *header* and *sent* bytes."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, SRC, header.hex(), str(sent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    growth, outcome = done.stdout.strip().splitlines()
    return int(growth), outcome


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("!iQ", -1, 6 * 2**30),  # a plain frame of 6 GiB
        struct.pack("!iI", -2, 1) + struct.pack("!QQ", 100, 6 * 2**30),  # an out-of-band buffer of 6 GiB
    ],
    ids=["plain", "out-of-band"],
)
def test_a_6_gib_header_costs_what_arrives(header):
    if os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") < 7 * 2**30:
        pytest.skip("needs a machine with more than 6 GiB of memory, or the header is refused at once")
    # 32 MiB arrive, then the peer hangs up: the receiver may hold about twice that.
    growth, outcome = _receive_in_a_fresh_process(header, 32 * 2**20 + 100)
    assert outcome.startswith("EOFError"), outcome
    assert growth < 200, f"peak RSS grew by {growth} MiB for 32 MiB received"


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("!iQ", -1, 2**40),
        struct.pack("!iI", -2, 2) + struct.pack("!QQQ", 100, 2**39, 2**39),
    ],
    ids=["plain", "out-of-band"],
)
def test_an_impossible_size_is_a_message_error_naming_it(header):
    growth, outcome = _receive_in_a_fresh_process(header, 1000)
    assert outcome.startswith("MessageError"), outcome
    assert str(2**40 if struct.unpack("!i", header[:4])[0] == -1 else 2**40 + 100) in outcome
    assert growth < 50


def test_max_message_size_names_the_announced_size():
    a, b = procly.Pipe()
    b.max_message_size = 1000
    a.send_bytes(b"x" * 2000)
    with pytest.raises(procly.MessageError, match="2000 bytes announced, at most 1000"):
        b.recv_bytes()
    a.close()
    b.close()


# -- 3. the descriptor-lending desk ------------------------------------------------


def test_silent_peers_do_not_hold_up_a_borrower():
    """Three silent same-user connections used to make the next borrower fail after 5 s."""
    from procly import _fd_sharer, _state

    sharer = _state.get().fd_sharer()
    r, w = os.pipe()
    silent = []
    try:
        key = sharer.lend(w)
        for _ in range(_fd_sharer.MAX_PEERS + 8):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(sharer.address)
            silent.append(sock)
        fd = _fd_sharer.borrow(sharer.address, key)
        os.write(fd, b"x")
        os.close(fd)
        assert os.read(r, 1) == b"x"
        assert wait_until(lambda: len(sharer._gate) <= _fd_sharer.MAX_PEERS * sharer._gate.hard)
    finally:
        for sock in silent:
            sock.close()
        os.close(r)
        os.close(w)
    # the desk's threads close their ends of those connections as they see them go
    assert wait_until(lambda: len(sharer._gate) == 0)


def test_a_failed_borrow_keeps_the_loan():
    """A borrower that takes the descriptor but never says so: it is lent again, and a
    retry gets it (it used to be gone: 'unpickled already')."""
    from procly import _fd_sharer, _state

    sharer = _state.get().fd_sharer()
    r, w = os.pipe()
    try:
        key = sharer.lend(w)
        with socket.socket(socket.AF_UNIX) as rogue:
            rogue.connect(sharer.address)
            rogue.sendall(key)
            _, fds, _, _ = socket.recv_fds(rogue, 1, 1)
            for fd in fds:
                os.close(fd)
        assert wait_until(lambda: key in sharer._lent)
        fd = _fd_sharer.borrow(sharer.address, key)
        os.write(fd, b"y")
        os.close(fd)
        assert os.read(r, 1) == b"y"
        with pytest.raises(procly.ProcessError, match="unpickled already"):
            _fd_sharer.borrow(sharer.address, key)
    finally:
        os.close(r)
        os.close(w)
    assert wait_until(lambda: len(sharer._gate) == 0)


# -- 4. the fork server ---------------------------------------------------------------


def _fork_server():
    from procly import _state

    ctx = procly.get_context("forkserver")
    p = ctx.Process(target=abs, args=(1,))  # makes sure the server runs
    p.start()
    p.join(30)
    assert p.exitcode == 0
    return ctx, _state.get().forkserver


def test_a_silent_peer_of_the_fork_server_delays_no_start():
    """A same-user process that connects and says nothing used to block every start."""
    ctx, server = _fork_server()
    silent = []
    try:
        for _ in range(3):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(server.address)
            silent.append(sock)
        p = ctx.Process(target=abs, args=(-1,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert server.alive()
    finally:
        for sock in silent:
            sock.close()


def test_the_fork_server_forks_nothing_without_the_key():
    from procly._start import forkserver

    ctx, server = _fork_server()
    r, w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX) as peer:
            peer.settimeout(30)
            peer.connect(server.address)
            nonce = peer.recv(forkserver._NONCE_SIZE, socket.MSG_WAITALL)
            assert len(nonce) == forkserver._NONCE_SIZE
            forged = forkserver._digest(b"a guess", nonce) + b"N"
            socket.send_fds(peer, [forged], [r, w, w])
            assert peer.recv(8) == b""  # closed: no pid, no child
        p = ctx.Process(target=abs, args=(-1,))  # and the server goes on
        p.start()
        p.join(30)
        assert p.exitcode == 0
    finally:
        os.close(r)
        os.close(w)


def test_a_child_forked_ahead_that_dies_waiting_is_replaced():
    """The fork server forks each child before its request comes; one killed while it
    waits costs nothing: the next request goes to a new one, on the same server."""
    from .conftest import child_pids, pid_state

    ctx, server = _fork_server()
    waiting = child_pids(server._process.pid)
    assert len(waiting) == 1  # forked ahead, right after the last child was handed out
    (ahead,) = waiting
    os.kill(ahead, signal.SIGKILL)
    assert wait_until(lambda: pid_state(ahead) is None)  # reaped by the server
    p = ctx.Process(target=abs, args=(-1,))
    p.start()
    p.join(30)
    assert p.exitcode == 0 and p.pid != ahead
    assert server.alive() and _state.get().forkserver is server


def test_a_connection_made_ahead_and_pushed_out_replaces_no_server():
    """The owner connects ahead for its next start; peers that push that connection out
    of the server's queue cost a new connection, not a new server."""
    from procly._start import forkserver

    ctx, server = _fork_server()
    assert server._spare is not None
    peers = []
    try:
        for _ in range(forkserver.MAX_PENDING + 2):
            peer = socket.socket(socket.AF_UNIX)
            peer.settimeout(30)
            peer.connect(server.address)
            assert len(peer.recv(forkserver._NONCE_SIZE, socket.MSG_WAITALL)) == forkserver._NONCE_SIZE
            peers.append(peer)  # accepted: the connection made ahead, the oldest, is pushed out
        p = ctx.Process(target=abs, args=(-1,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert _state.get().forkserver is server and server.alive()
    finally:
        for peer in peers:
            peer.close()


def test_a_stale_connection_made_ahead_is_closed_not_used(monkeypatch):
    """One older than SPARE_SECONDS may have been timed out by the server: a new one is made."""
    from procly._start import forkserver

    ctx, server = _fork_server()
    stale = os.readlink(f"/proc/self/fd/{server._spare[0]}")  # socket:[inode]
    monkeypatch.setattr(forkserver, "SPARE_SECONDS", 0.0)
    p = ctx.Process(target=abs, args=(-1,))
    p.start()
    p.join(30)
    assert p.exitcode == 0 and _state.get().forkserver is server
    open_now = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            open_now.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the listing's own descriptor, closed since
    assert stale not in open_now


def test_a_forked_child_does_not_keep_the_connection_made_ahead():
    from . import targets

    _, server = _fork_server()
    link = os.readlink(f"/proc/self/fd/{server._spare[0]}")
    p = procly.get_context("fork").Process(target=targets.exit_if_open, args=(link,))
    p.start()
    p.join(30)
    assert p.exitcode == 0


_OWNER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import procly
from procly import _state
ctx = procly.get_context("forkserver")
p = ctx.Process(target=abs, args=(1,))
p.start()
p.join(30)
server = _state.get().forkserver
print(server._process.pid, server.address, flush=True)
sys.stdin.read()
"""


@pytest.mark.allow_leaks  # the owner's fork server is not our child; the test checks it ends
def test_the_fork_server_ends_with_its_owner_even_while_a_peer_holds_it():
    from .conftest import child_pids, pid_state

    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, SRC], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    peer = socket.socket(socket.AF_UNIX)
    try:
        pid_text, address = owner.stdout.readline().split()
        server_pid = int(pid_text)
        ahead = child_pids(server_pid)  # the child forked ahead, waiting for a request
        assert len(ahead) == 1
        peer.connect(address)  # and says nothing
        owner.kill()
        owner.wait(30)
        assert wait_until(lambda: pid_state(server_pid) in (None, "Z"), timeout=30), "the server outlived its owner"
        assert wait_until(lambda: all(pid_state(pid) in (None, "Z") for pid in ahead), timeout=30)
    finally:
        peer.close()
        if owner.poll() is None:
            owner.kill()
            owner.wait(30)
        owner.stdin.close()
        owner.stdout.close()
