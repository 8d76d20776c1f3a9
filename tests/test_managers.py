"""Managers: proxies across start methods, errors, authentication, lifetime."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

import procly
from procly.managers import BaseManager, SyncManager

from . import targets
from .conftest import descendants, pid_state, reducer_registered, shift_complex, wait_until


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


def test_proxy_calls_honour_a_reducer_registered_for_a_scalar_type():
    """Requests and replies of scalars take a short path past the full pickler, but
    not for a type given a reducer of its own (the server, forked, has it too)."""
    with reducer_registered(complex, shift_complex), procly.get_context("fork").Manager() as m:
        d = m.dict()
        d["k"] = 1j  # the request goes through the reducer: stored as 100+1j
        assert d["k"] == 200 + 1j  # and the reply through the server's
        d["n"] = 5
        assert d["n"] == 5


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


def test_autoproxy_asks_the_server_for_the_methods_when_not_told(manager):
    d = manager.dict({"a": 1})
    proxy = procly.managers.AutoProxy(d._token, manager=manager, authkey=manager._authkey)
    assert "keys" in proxy._exposed_ and "pop" in proxy._exposed_
    assert list(proxy.keys()) == ["a"]


def test_requests_go_through_the_handler_table(manager):
    server_type = procly.managers.Server
    assert {"call", "create", "incref", "decref", "methods", "shutdown"} <= set(server_type.handlers)
    with pytest.raises(procly.managers.RemoteError, match="unknown request 'nonsense'"):
        procly.managers._request(manager.address, manager._authkey, "nonsense")
    d = manager.dict()
    methods = procly.managers._request(manager.address, manager._authkey, "methods", d._id)
    assert "keys" in methods and "__init__" not in methods


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


@contextlib.contextmanager
def owner_process(tmp_path, main: str):
    """A Python process running *main* (the body of its ``__main__`` block, which ends by
    sleeping); killed at the end if it still runs."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import procly, time\nfrom procly.managers import SharedMemoryManager\n"
        "if __name__ == '__main__':\n" + textwrap.indent(main + "time.sleep(60)\n", "    ")
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        yield owner
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdout.close()


def test_manager_dies_with_its_owner(tmp_path):
    with owner_process(tmp_path, "m = procly.Manager()\nprint(m._process.pid, flush=True)\n") as owner:
        server_pid = int(owner.stdout.readline())
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert wait_until(lambda: pid_state(server_pid) in (None, "Z"), timeout=5)


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


def test_proxies_inside_their_own_server_count_references_in_place(ctx, manager):
    """A proxy that lives in its manager's server (an item of a shared list, a callback of
    the manager's pool) keeps its referent alive and gives it back when it goes, without
    connecting to its own server: such a connection, made from a finalizer, once waited
    20 s for a server thread that was itself waiting for that finalizer."""
    inner = manager.list([1])
    outer = manager.list([inner])
    del inner
    outer[0].append(2)  # the referent lives on through the proxy held in the server
    assert list(outer[0]) == [1, 2]
    collected = manager.list()
    pool = manager.Pool(1)
    pool.map_async(abs, [-1, -2], callback=collected.append).get(timeout=30)  # a proxy rebuilt in the server
    assert list(collected) == [[1, 2]]
    pool.terminate()
    del outer, collected, pool
    gc.collect()  # here: a proxy caught in a reference cycle gives its reference back now
    assert wait_until(lambda: manager._number_of_objects() == 0, timeout=10), manager._debug_info()


# --- the rest of SyncManager's types ------------------------------------------------------


def test_barrier_event_and_condition_across_processes(ctx, manager):
    barrier, results = manager.Barrier(3), manager.list()
    children = [ctx.Process(target=targets.manager_barrier_party, args=(barrier, results)) for _ in range(2)]
    for child in children:
        child.start()
    results.append(barrier.wait(10))
    for child in children:
        child.join(30)
    assert sorted(results) == [0, 1, 2] and barrier.parties == 3 and not barrier.broken
    barrier.abort()
    assert barrier.broken
    event = manager.Event()
    assert not event.is_set() and event.wait(0.01) is False
    event.set()
    assert event.wait(1) is True and "EventProxy" in repr(event)
    cond, flag = manager.Condition(), manager.Value("i", 0)
    child = ctx.Process(target=targets.manager_condition_setter, args=(cond, flag))
    with cond:
        child.start()
        # the predicate runs here, in the caller, against the shared value
        assert cond.wait_for(lambda: flag.value == 1, timeout=30)
    child.join(30)


def test_joinable_queue_task_done_and_join(ctx, manager):
    queue, done = manager.JoinableQueue(), manager.list()
    worker = ctx.Process(target=targets.manager_queue_worker, args=(queue, done))
    worker.start()
    for i in range(5):
        queue.put(i)
    queue.put(None)
    queue.join()  # returns once every item was marked done
    assert sorted(done) == [0, 2, 4, 6, 8]
    worker.join(30)
    with pytest.raises(ValueError):
        queue.task_done()  # too many task_done calls raise, as locally


def test_pool_in_the_manager(manager):
    with manager.Pool(2) as pool:
        assert pool.map(targets.square, range(5)) == [0, 1, 4, 9, 16]
        result = pool.apply_async(targets.square, (7,))
        assert result.get(30) == 49 and result.successful()
        assert sorted(pool.imap_unordered(targets.square, range(4))) == [0, 1, 4, 9]
    with pytest.raises(procly.managers.RemoteError, match="at least 1"):
        manager.Pool(0)


def test_dict_iteration_runs_in_the_server(manager):
    d = manager.dict(a=1, b=2)
    assert sorted(d) == ["a", "b"]
    it = iter(d)
    d.clear()
    with pytest.raises(RuntimeError):
        next(it)


def test_disallowed_methods_are_remote_errors():
    with CounterManager(address=("127.0.0.1", 0), authkey=b"k") as m:
        counter = m.Counter()
        with pytest.raises(procly.managers.RemoteError, match="not in the list of allowed methods"):
            counter._callmethod("_secret")
        assert m._number_of_objects() == 1


def test_xmlrpclib_serializer_unpickles_nothing():
    class XmlManager(BaseManager):
        pass

    XmlManager.register("dict", dict, procly.managers.DictProxy)
    with XmlManager(address=("127.0.0.1", 0), authkey=b"x", serializer="xmlrpclib") as m:
        d = m.dict()
        d["k"] = (1, b"bytes", None, "text")
        assert d["k"] == [1, b"bytes", None, "text"]  # xmlrpc's types: tuples become lists
        with pytest.raises(procly.managers.RemoteError, match="KeyError"):
            d["missing"]
    with pytest.raises(ValueError, match="serializer"):
        BaseManager(serializer="json")


def test_manager_holding_a_pool_still_dies_with_its_owner(tmp_path):
    main = "m = procly.Manager()\npool = m.Pool(2)\npool.map(abs, [-1, -2])\nprint(m._process.pid, flush=True)\n"
    with owner_process(tmp_path, main) as owner:
        server_pid = int(owner.stdout.readline())
        workers = sorted(descendants(server_pid))
        assert len(workers) >= 2
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert wait_until(lambda: all(pid_state(pid) in (None, "Z") for pid in [server_pid, *workers]), timeout=10)


# --- SharedMemoryManager ---------------------------------------------------------------------


def test_shared_memory_manager_owns_its_blocks(ctx):
    from procly.managers import SharedMemoryManager

    with SharedMemoryManager(ctx=ctx) as smm:
        block = smm.SharedMemory(128)
        numbers = smm.ShareableList([1, "two", 3.0])
        reader, writer = ctx.Pipe(duplex=False)
        child = ctx.Process(target=targets.create_manager_segment, args=(smm.address, bytes(smm._authkey), writer))
        child.start()
        child_block = reader.recv()
        child.join(30)
        reader.close()
        writer.close()
        # the child has exited, but the manager owns its block: it is still there
        assert child_block in os.listdir("/dev/shm")
        assert sorted(smm._list_segments()) == sorted([block.name, numbers.shm.name, child_block])
        assert numbers[1] == "two"
        names = [block.name, numbers.shm.name, child_block]
        block.close()
        numbers.shm.close()
    assert not set(names) & set(os.listdir("/dev/shm"))


def test_shared_memory_manager_killed_leaves_nothing(tmp_path):
    main = (
        "smm = SharedMemoryManager()\nsmm.start()\nblock = smm.SharedMemory(64)\n"
        "print(block.name, smm._process.pid, flush=True)\n"
    )
    with owner_process(tmp_path, main) as owner:
        name, server_pid = owner.stdout.readline().split()
        assert name in os.listdir("/dev/shm")
        os.kill(int(server_pid), signal.SIGKILL)  # the manager dies first, then its owner
        owner.kill()
        owner.wait(10)
        assert wait_until(lambda: name not in os.listdir("/dev/shm"), timeout=10)


@pytest.mark.parametrize("address", [None, ("127.0.0.1", 0)], ids=["unix", "tcp"])
def test_a_client_that_dies_gives_its_references_back(ctx, address):
    manager = ctx.Manager() if address is None else SyncManager(address=address, ctx=ctx)
    if address is not None:
        manager.start()
    shared = manager.list()
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=targets.hold_proxy_then_die, args=(shared, writer))
    child.start()
    assert reader.recv() == "holding"
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    reader.close()
    writer.close()
    del shared  # our reference goes; the dead child's is given back by the server itself
    assert wait_until(lambda: manager._number_of_objects() == 0, timeout=10)
    manager.shutdown()


def test_a_remote_client_that_dies_gives_its_references_back(tmp_path):
    """A client of a TCP manager that is not our child (as on another machine) dies holding proxies."""
    with SyncManager(address=("127.0.0.1", 0), authkey=b"lease-test") as manager:
        kept = manager.dict(alive=True)
        script = textwrap.dedent(f"""
            import os, signal
            from procly.managers import SyncManager
            m = SyncManager(address={manager.address!r}, authkey=b"lease-test")
            m.connect()
            held = [m.list(range(3)) for _ in range(5)] + [m.Lock()]
            print("holding", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        client = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert client.stdout.strip() == "holding", client.stderr
        assert client.returncode == -signal.SIGKILL
        assert wait_until(lambda: manager._number_of_objects() == 1, timeout=10)
        assert kept.get("alive") is True  # a live client's references stay


def test_a_forked_child_does_not_keep_its_parents_lease_alive():
    with SyncManager(address=("127.0.0.1", 0), authkey=b"lease-fork") as manager:
        script = textwrap.dedent(f"""
            import os, signal, time
            from procly.managers import SyncManager
            m = SyncManager(address={manager.address!r}, authkey=b"lease-fork")
            m.connect()
            held = m.list([1, 2])
            child = os.fork()
            if child == 0:
                os.close(1); os.close(2)
                time.sleep(60)  # holds the parent's descriptors, but not its lease
                os._exit(0)
            print(child, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        client = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        child = int(client.stdout.strip())
        try:
            assert wait_until(lambda: manager._number_of_objects() == 0, timeout=10)
            assert pid_state(child) not in (None, "Z")  # the child still runs
        finally:
            os.kill(child, signal.SIGKILL)


def test_python_314_proxy_additions(manager):
    """SyncManager.set(), list clear()/copy(), dict |, |=, reversed() and fromkeys()."""
    s = manager.set([1, 2])
    s |= {3}
    s -= {1}
    s ^= {4, 2}
    s.add(9)
    assert isinstance(s, procly.managers.SetProxy)
    assert sorted(s) == [3, 4, 9] and 3 in s and len(s) == 3
    assert s | {100} == {3, 4, 9, 100} and s & {4, 5} == {4}
    items = manager.list([1, 2])
    copy = items.copy()
    items.clear()
    assert list(items) == [] and copy == [1, 2]
    d = manager.dict(a=1, b=2)
    d |= {"c": 3}
    assert isinstance(d, procly.managers.DictProxy)
    assert dict(d) == {"a": 1, "b": 2, "c": 3}
    assert d | {"z": 0} == {"a": 1, "b": 2, "c": 3, "z": 0}
    assert {"q": 1} | d == {"q": 1, "a": 1, "b": 2, "c": 3}
    assert list(reversed(d)) == ["c", "b", "a"]
    assert d.fromkeys("xy", 0) == {"x": 0, "y": 0}


def test_a_tcp_proxy_made_while_the_last_other_one_goes_keeps_its_object(monkeypatch):
    """Over TCP, references are held under this process's lease, which ends with its last
    proxy of the manager. A proxy being made counts from its request on: the last other
    proxy dropped meanwhile (as by another thread) does not end the lease that the new
    object's first reference is held under."""
    with SyncManager(address=("127.0.0.1", 0), authkey=b"lease-race") as manager:
        others = [manager.list([1])]
        real_create = manager._create

        def create_then_drop_the_other(typeid, *args, **kwargs):
            made = real_create(typeid, *args, **kwargs)
            others.clear()  # the last other proxy goes before this one holds a reference
            gc.collect()
            return made

        monkeypatch.setattr(manager, "_create", create_then_drop_the_other)
        shared = manager.dict({"a": 1})
        monkeypatch.undo()
        shared["b"] = 2
        assert shared.copy() == {"a": 1, "b": 2}
        assert wait_until(lambda: manager._number_of_objects() == 1)
