"""Listener / Client: families, authentication, and hostile peers."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading

import pytest

import procly
from procly.connection import Client, Listener

from . import targets

KEY = b"s3cret-key"


def _accept_in_thread(listener, results):
    def run():
        try:
            conn = listener.accept()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results.append(exc)
        else:
            results.append(conn)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("family", ["AF_UNIX", "AF_INET", "AF_INET6"])
def test_round_trip_with_authkey(family):
    with Listener(family=family, authkey=KEY) as listener:
        if family == "AF_UNIX":
            assert os.path.exists(listener.address)
        else:
            assert listener.address[0] in ("127.0.0.1", "::1"), "must bind to loopback by default"
        results: list = []
        thread = _accept_in_thread(listener, results)
        with Client(listener.address, authkey=KEY) as client:
            thread.join(10)
            server = results[0]
            client.send({"hello": [1, 2]})
            assert server.recv() == {"hello": [1, 2]}
            server.send_bytes(b"back")
            assert client.recv_bytes() == b"back"
            assert listener.last_accepted is not None
            server.close()
        path = listener.address
    if family == "AF_UNIX":
        assert not os.path.exists(path), "socket file must be removed on close"


def test_no_authkey_means_no_handshake():
    with Listener() as listener:
        results: list = []
        thread = _accept_in_thread(listener, results)
        with Client(listener.address) as client:
            thread.join(10)
            client.send(1)
            assert results[0].recv() == 1
            results[0].close()


def test_wrong_authkey_fails_both_sides_and_listener_goes_on():
    with Listener(authkey=KEY) as listener:
        results: list = []
        thread = _accept_in_thread(listener, results)
        with pytest.raises(procly.AuthenticationError):
            Client(listener.address, authkey=b"wrong")
        thread.join(10)
        assert isinstance(results[0], procly.AuthenticationError)
        thread = _accept_in_thread(listener, results)
        with Client(listener.address, authkey=KEY) as good:
            thread.join(10)
            good.send("fine")
            assert results[1].recv() == "fine"
            results[1].close()


def _raw_peer(address, payload: bytes, *, close: bool = True):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    sock.sendall(payload)
    if close:
        sock.close()
    return sock


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # garbage (huge length prefix)
        struct.pack("!i", 2**31 - 2) + b"x",  # oversized frame
        struct.pack("!i", 32) + b"short",  # truncated frame
        struct.pack("!i", -1) + struct.pack("!Q", 2**40),  # 1 TiB announced
    ],
)
def test_hostile_bytes_cost_one_connection(garbage):
    with Listener(authkey=KEY) as listener:
        results: list = []
        thread = _accept_in_thread(listener, results)
        _raw_peer(listener.address, garbage)
        thread.join(10)
        assert isinstance(results[0], procly.AuthenticationError)
        thread = _accept_in_thread(listener, results)
        with Client(listener.address, authkey=KEY):
            thread.join(10)
            assert isinstance(results[1], procly.connection.Connection)
            results[1].close()


def test_half_open_connection_times_out():
    with Listener(authkey=KEY) as listener:
        listener.handshake_timeout = 0.3
        results: list = []
        thread = _accept_in_thread(listener, results)
        silent = _raw_peer(listener.address, b"", close=False)
        thread.join(10)
        assert isinstance(results[0], procly.AuthenticationError)
        assert "in time" in str(results[0])
        silent.close()


def test_pickle_before_authentication_is_never_loaded(tmp_path):
    """A pickle that would run code, sent instead of the handshake, is not unpickled."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = pickle.dumps(Exploit())
    with Listener(authkey=KEY) as listener:
        results: list = []
        thread = _accept_in_thread(listener, results)
        _raw_peer(listener.address, struct.pack("!i", len(evil)) + evil)
        thread.join(10)
        assert isinstance(results[0], procly.AuthenticationError)
    assert not marker.exists()


def test_client_to_nowhere_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        Client(str(tmp_path / "nobody"))
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        Client(("127.0.0.1", port))
    with pytest.raises(TypeError, match="byte string"):
        Listener(authkey="text")
    with pytest.raises(ValueError):
        Listener(("127.0.0.1", 0), family="AF_UNIX")
    with pytest.raises(ValueError):
        Client(12345)


def test_listener_in_child(ctx):
    """A child connects back to a Listener in the parent with the shared authkey."""
    with Listener(authkey=bytes(procly.current_process().authkey)) as listener:
        p = ctx.Process(target=targets.connect_and_send, args=(listener.address, "from the child"))
        p.start()
        with listener.accept() as conn:
            assert conn.recv() == "from the child"
        p.join(10)
        assert p.exitcode == 0
