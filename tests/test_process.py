"""Process: the standard API, exit codes, reaping, daemons — under every start method."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

import procly
from procly.connection import wait

from . import targets
from .conftest import pid_state


def test_start_join_exitcode_zero(ctx):
    p = ctx.Process(target=targets.noop)
    assert p.exitcode is None and p.pid is None and not p.is_alive()
    p.start()
    assert p.pid > 0 and p.ident == p.pid
    p.join(10)
    assert p.exitcode == 0
    assert not p.is_alive()
    assert pid_state(p.pid) is None, "joined child must be reaped, not a zombie"


@pytest.mark.parametrize(("code", "expected"), [(None, 0), (0, 0), (3, 3), (255, 255), ("a message", 1), (True, 1)])
def test_sys_exit_codes(ctx, code, expected, capfd):
    p = ctx.Process(target=targets.exit_with, args=(code,))
    p.start()
    p.join(10)
    assert p.exitcode == expected
    if isinstance(code, str):
        assert "a message" in capfd.readouterr().err


def test_uncaught_exception_exits_1_with_traceback(ctx, capfd):
    p = ctx.Process(target=targets.raise_error, name="Boomer")
    p.start()
    p.join(10)
    assert p.exitcode == 1
    err = capfd.readouterr().err
    assert "Process Boomer:" in err
    assert "ValueError: boom from the child" in err
    assert "Traceback" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL, signal.SIGSEGV])
def test_signal_exit_code_is_negative(ctx, signum):
    p = ctx.Process(target=targets.kill_self, args=(signum,))
    p.start()
    p.join(10)
    assert p.exitcode == -signum
    assert f"exitcode={signal.Signals(signum).name}" in repr(p)


def test_terminate_and_kill(ctx):
    for method, expected in (("terminate", -signal.SIGTERM), ("kill", -signal.SIGKILL)):
        p = ctx.Process(target=targets.sleep, args=(30,))
        p.start()
        assert p.is_alive()
        getattr(p, method)()
        p.join(10)
        assert p.exitcode == expected
        getattr(p, method)()  # a no-op once ended, never a signal to a reused pid


def test_join_timeout_returns_while_running(ctx):
    p = ctx.Process(target=targets.sleep, args=(30,))
    p.start()
    p.join(0.2)
    assert p.is_alive() and p.exitcode is None  # join() returned although the child sleeps 30 s
    p.kill()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL


def test_identity_name_authkey_parent(ctx):
    r, w = ctx.Pipe()
    p = ctx.Process(target=targets.report_identity, args=(w,), name="worker-x")
    p.start()
    w.close()
    info = r.recv()
    p.join(10)
    assert info["name"] == "worker-x"
    assert info["pid"] == info["ident"] == p.pid
    assert info["authkey"] == bytes(procly.current_process().authkey)
    assert info["parent_pid"] == os.getpid()
    assert info["parent_name"] == procly.current_process().name
    assert info["parent_alive"] is True
    assert info["daemon"] is False


def test_default_names_count_up(ctx):
    a, b = ctx.Process(target=targets.noop), ctx.Process(target=targets.noop)
    prefix = type(a).__name__
    ia, ib = int(a.name.rsplit("-", 1)[1]), int(b.name.rsplit("-", 1)[1])
    assert a.name.startswith(prefix + "-") and ib == ia + 1
    with pytest.raises(TypeError):
        a.name = 42


def test_subclass_run(ctx):
    r, w = ctx.Pipe()
    p = targets.COUNTERS[ctx.get_start_method()](w, 100)
    p.start()
    w.close()
    assert r.recv() == sum(range(100))
    p.join(10)
    assert p.exitcode == 0


def test_lambda_and_closure_targets(ctx):
    r, w = ctx.Pipe()
    offset = 41

    def closure(conn):
        conn.send(offset + 1)

    for target in (closure, lambda conn: conn.send("lambda")):
        p = ctx.Process(target=target, args=(w,))
        p.start()
        p.join(10)
        assert p.exitcode == 0
    w.close()
    assert [r.recv(), r.recv()] == [42, "lambda"]


def test_sentinel_and_wait(ctx):
    fast = ctx.Process(target=targets.noop)
    slow = ctx.Process(target=targets.sleep, args=(30,))
    with pytest.raises(ValueError):
        _ = fast.sentinel
    fast.start()
    slow.start()
    ready = wait([fast.sentinel, slow.sentinel], timeout=10)
    assert ready == [fast.sentinel]
    slow.terminate()
    assert wait([slow.sentinel], timeout=10) == [slow.sentinel]
    fast.join()
    slow.join()


def test_active_children_reaps(ctx):
    p = ctx.Process(target=targets.sleep, args=(0.2,))
    p.start()
    assert p in procly.active_children()
    assert wait([p.sentinel], 10)
    assert p not in procly.active_children()
    assert pid_state(p.pid) is None


def test_preconditions(ctx):
    p = ctx.Process(target=targets.sleep, args=(30,))
    with pytest.raises(AssertionError, match="started process"):
        p.join()
    p.start()
    with pytest.raises(AssertionError, match="twice"):
        p.start()
    with pytest.raises(AssertionError, match="already started"):
        p.daemon = True
    with pytest.raises(ValueError, match="still running"):
        p.close()
    p.kill()
    p.join()
    p.close()
    p.close()
    for action in (p.is_alive, p.join, p.terminate, lambda: p.exitcode, lambda: p.pid, lambda: p.sentinel):
        with pytest.raises(ValueError, match="closed"):
            action()
    with pytest.raises(AssertionError, match="group"):
        ctx.Process(group=object())


def test_daemonic_process_cannot_have_children(ctx):
    r, w = ctx.Pipe()
    p = ctx.Process(target=targets.try_start_child, args=(w,), daemon=True)
    assert p.daemon
    p.start()
    w.close()
    assert r.recv() == ("AssertionError", "daemonic processes are not allowed to have children")
    p.join(10)


def test_non_daemonic_child_starts_grandchild(ctx):
    r, w = ctx.Pipe()
    p = ctx.Process(target=targets.start_grandchild, args=(w, ctx.get_start_method()))
    p.start()
    w.close()
    assert r.recv() == "from the grandchild"
    assert r.recv() == 0
    p.join(10)
    assert p.exitcode == 0


def test_start_from_thread_that_exits(ctx):
    """A daemonic child outlives the thread that started it (no PDEATHSIG pitfall)."""
    holder = {}

    def starter():
        holder["p"] = ctx.Process(target=targets.sleep, args=(30,), daemon=True)
        holder["p"].start()

    t = threading.Thread(target=starter)
    t.start()
    t.join()
    p = holder["p"]
    p.join(0.3)  # its sentinel must not fire: the end of the starting thread does not end it
    assert p.is_alive()
    p.terminate()
    p.join(10)


def test_unpicklable_target_fails_at_start(ctx):
    lock = threading.Lock()
    p = ctx.Process(target=targets.send_value, args=(None, lock))
    if ctx.get_start_method() == "fork":
        p.start()  # nothing is pickled under fork
        p.join(10)
    else:
        with pytest.raises(procly.PicklingError, match="lock"):
            p.start()
        assert p.exitcode is None and not p.is_alive()


def test_start_method_api():
    methods = procly.get_all_start_methods()
    assert sorted(methods) == ["fork", "forkserver", "spawn"]
    assert methods[0] == procly.get_start_method()
    with pytest.raises(ValueError):
        procly.get_context("nope")
    for method in methods:
        assert procly.get_context(method).get_start_method() == method
        with pytest.raises(ValueError):
            procly.get_context(method).set_start_method("fork")
    with pytest.raises(RuntimeError):
        procly.set_start_method("spawn")
    assert procly.cpu_count() == os.cpu_count()
    procly.freeze_support()


def test_current_process_in_main():
    me = procly.current_process()
    assert me.name == "MainProcess" and me.pid == os.getpid() and me.is_alive()
    assert procly.parent_process() is None
    assert isinstance(me.authkey, bytes) and len(me.authkey) >= 32
    with pytest.raises(TypeError, match="disallowed"):
        import pickle

        pickle.dumps(me.authkey)


def test_repr_states(ctx):
    p = ctx.Process(target=targets.noop, name="r")
    assert "initial" in repr(p)
    p.start()
    p.join(10)
    assert "stopped" in repr(p) and "exitcode=0" in repr(p)
    p.close()
    assert "closed" in repr(p)


def test_exit_waits_for_children_and_kills_stubborn_daemons(tmp_path, ctx):
    """At exit a non-daemonic child is joined; a daemon ignoring SIGTERM is killed."""
    script = tmp_path / "main.py"
    script.write_text(
        f"""
import sys, time, procly
from tests import targets

if __name__ == "__main__":
    ctx = procly.get_context({ctx.get_start_method()!r})
    r, w = ctx.Pipe()
    stubborn = ctx.Process(target=targets.ignore_sigterm_and_sleep, args=(w, 60), daemon=True)
    stubborn.start()
    assert r.recv() == "ready"
    worker = ctx.Process(target=targets.sleep, args=(0.5,))
    worker.start()
    print(stubborn.pid, worker.pid, flush=True)
"""
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert out.returncode == 0, out.stderr  # within run()'s bound: the exit waited for no one
    stubborn_pid, worker_pid = map(int, out.stdout.split())
    assert pid_state(stubborn_pid) is None and pid_state(worker_pid) is None


NO_GUARD = """
import sys, procly
procly.set_start_method(sys.argv[1])
def f(x):
    return x
{body}
print("done")
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize(
    "body",
    [
        "p = procly.Process(target=f, args=(1,))\np.start()\np.join()",
        "with procly.Pool(2) as pool:\n    pool.map(f, [1])",
    ],
)
def test_missing_main_guard_is_a_clear_error_once(tmp_path, method, body):
    script = tmp_path / "noguard.py"
    script.write_text(NO_GUARD.format(body=body))
    out = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=50)
    assert out.returncode == 1 and "done" not in out.stdout
    assert out.stderr.count("RuntimeError: ") == 1, out.stderr
    assert 'if __name__ == "__main__":' in out.stderr and "noguard.py, outside" in out.stderr


@pytest.mark.timeout(60)
def test_missing_main_guard_is_fine_under_fork(tmp_path):
    script = tmp_path / "noguard.py"
    script.write_text(NO_GUARD.format(body="p = procly.Process(target=f, args=(1,))\np.start()\np.join()"))
    out = subprocess.run([sys.executable, str(script), "fork"], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0 and out.stdout == "done\n", out.stderr


CHILD_STARTS_ON_IMPORT = """
import sys, procly
def f():
    pass
if __name__ != "__main__":  # runs only when a child imports this module
    procly.Process(target=f).start()
if __name__ == "__main__":
    p = procly.get_context(sys.argv[1]).Process(target=f)
    p.start()
    p.join()
    print("exit", p.exitcode)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_child_starting_processes_while_importing_main_is_refused(tmp_path, method):
    script = tmp_path / "child_starts.py"
    script.write_text(CHILD_STARTS_ON_IMPORT)
    out = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=50)
    assert "still importing its parent's main module" in out.stderr
    assert out.stdout == "exit 1\n"


@pytest.mark.timeout(30)
def test_interrupt_raises_keyboard_interrupt_in_the_child(ctx):
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=targets.wait_for_interrupt, args=(w,))
    p.start()
    w.close()
    assert r.recv() == "ready"
    p.interrupt()
    assert r.recv() == "interrupted"
    p.join(20)
    assert p.exitcode == 0
    p.interrupt()  # ended: no effect


def test_default_pool_size_follows_process_cpu_count(monkeypatch):
    from procly import _state

    if hasattr(os, "process_cpu_count"):
        monkeypatch.setattr(os, "process_cpu_count", lambda: 3)
        assert _state.usable_cpus() == 3
    else:
        assert _state.usable_cpus() == len(os.sched_getaffinity(0))


FORK_WHILE_POOL_RUNS = """import os, sys, procly, warnings
warnings.simplefilter("ignore", DeprecationWarning)
def sq(x): return x * x
if __name__ == "__main__":
    method = sys.argv[1]
    with procly.get_context(method).Pool(2) as pool:
        r = pool.map_async(sq, range(100000), chunksize=10)
        for i in range(5):
            pid = os.fork()
            if pid == 0:
                try:
                    with procly.get_context(method).Pool(2) as inner:
                        ok = inner.map(sq, range(50)) == [x*x for x in range(50)]
                    q = procly.Queue(); q.put(1); ok = ok and q.get(timeout=5) == 1
                    os._exit(0 if ok else 3)
                except BaseException:
                    import traceback; traceback.print_exc()
                    os._exit(4)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        assert r.get(timeout=60)[:3] == [0, 1, 4]
    print("ok")
"""


@pytest.mark.timeout(120)
def test_os_fork_while_a_pool_runs_leaves_a_usable_child(ctx, tmp_path):
    """procly's own threads (the pool's supervisor, queue feeders) hold nothing a child
    forked with os.fork() needs: it can start its own pools and queues."""
    script = tmp_path / "fork_while_pool_runs.py"
    script.write_text(FORK_WHILE_POOL_RUNS)
    out = subprocess.run([sys.executable, str(script), ctx.get_start_method()], capture_output=True, text=True,
                         timeout=100)  # fmt: skip
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr
