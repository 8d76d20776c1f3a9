"""The command line: info, and a manager served from it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

import procly
from procly.managers import BaseManager


def test_info():
    out = subprocess.run([sys.executable, "-m", "procly.cli", "info"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "start methods" in out.stdout and procly.__version__ in out.stdout


class Client(BaseManager):
    pass


Client.register("dict")
Client.register("Counter")


@pytest.mark.timeout(60)
def test_manager_command_serves_registered_types():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PROCLY_AUTHKEY": "cli-secret", "PYTHONPATH": os.getcwd()}
    server = subprocess.Popen(
        [sys.executable, "-m", "procly.cli", "manager", "--address", f"127.0.0.1:{port}",
         "--register", "Counter=tests.test_managers:Counter"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert "serving on 127.0.0.1" in server.stdout.readline()
        manager = Client(address=("127.0.0.1", port), authkey=b"cli-secret")
        manager.connect()
        counter = manager.Counter()
        assert counter.bump() == 1
        d = manager.dict()
        d["k"] = "v"
        assert d.get("k") == "v"
        with pytest.raises(procly.AuthenticationError):
            Client(address=("127.0.0.1", port), authkey=b"wrong").connect()
        del counter, d
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(10)
        server.stdout.close()


def test_manager_command_refuses_without_authkey():
    env = {k: v for k, v in os.environ.items() if k != "PROCLY_AUTHKEY"}
    out = subprocess.run([sys.executable, "-m", "procly.cli", "manager"], capture_output=True, text=True,
                         env=env, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "authkey" in out.stderr
