"""Managers: proxies across start methods, errors, authentication, lifetime."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys

import pytest

import procly
from procly.managers import BaseManager, SyncManager

from . import targets
from .conftest import pid_state, wait_until


@pytest.fixture
def manager(ctx):
    m = ctx.Manager()
    yield m
    m.shutdown()


def test_proxies_cross_to_children(ctx, manager):
    d, lst, ns, value = manager.dict(), manager.list([1]), manager.Namespace(flag=False), manager.Value("i", 0)
    p = ctx.Process(target=targets.mutate_shared, args=(d, lst, ns, value))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert d["child"] == p.pid and list(lst) == [1, "from child"]
    assert ns.flag is True and value.value == 42
    assert str(d) == repr({"child": p.pid}) and len(d) == 1 and "child" in d


def test_manager_lock_and_queue(ctx, manager):
    lock, lst = manager.Lock(), manager.list()
    p = ctx.Process(target=targets.use_manager_lock, args=(lock, lst))
    p.start()
    p.join(30)
    assert list(lst) == ["locked"]
    q = manager.Queue()
    q.put("item")
    assert q.get(timeout=5) == "item"


def test_remote_exceptions_keep_their_type(manager):
    d = manager.dict()
    with pytest.raises(KeyError):
        d["missing"]
    lst = manager.list()
    with pytest.raises(IndexError):
        lst.pop()
    assert d.get("missing", 5) == 5  # the connection is still in step


def test_objects_are_freed_with_their_last_proxy(manager):
    d = manager.dict()
    assert procly.managers._request(manager.address, manager._authkey, "ping") == manager._process.pid
    ident = d._id
    del d
    import gc

    gc.collect()
    with pytest.raises(procly.managers.RemoteError):
        procly.managers._request(manager.address, manager._authkey, "call", ident, "keys", (), {})


class Counter:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n


class CounterManager(BaseManager):
    pass


CounterManager.register("Counter", Counter)


def test_custom_registration_and_wrong_key():
    with CounterManager(address=("127.0.0.1", 0), authkey=b"secret") as m:
        c = m.Counter()
        assert c.bump() == 1 and c.bump() == 2
        assert m.address[0] == "127.0.0.1"
        with pytest.raises(procly.AuthenticationError):
            BaseManager(address=m.address, authkey=b"wrong").connect()
        # garbage and oversized frames cost one connection, never the server
        for junk in (b"GET / HTTP/1.0\r\n\r\n", struct.pack("!i", 2**31 - 2)):
            with socket.create_connection(m.address) as s:
                s.sendall(junk)
        # a silent peer (half-open connection) does not hold up anyone else
        with socket.create_connection(m.address):
            BaseManager(address=m.address, authkey=b"secret").connect()
        assert c.bump() == 3


def test_manager_dies_with_its_owner(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(
        "import procly, time\n"
        "if __name__ == '__main__':\n"
        "    m = procly.Manager()\n"
        "    print(m._process.pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(owner.stdout.readline())
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert wait_until(lambda: pid_state(server_pid) in (None, "Z"), timeout=5)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdout.close()


def test_sync_manager_context_manager():
    with SyncManager() as m:
        assert m.list([3, 1, 2])._getvalue() == [3, 1, 2]
    assert os.getpid()


def test_nested_proxies_are_shared_everywhere(ctx, manager):
    d = manager.dict()
    d["inner"] = manager.list([1])
    d["inner"].append(2)  # mutates the list in the server, not a copy
    p = ctx.Process(target=targets.append_to_nested, args=(d,))
    p.start()
    p.join(30)
    assert list(d["inner"]) == [1, 2, "from child"]
