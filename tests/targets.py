"""Functions and classes that child processes run in the tests (importable by spawn)."""

from __future__ import annotations

import os
import signal
import sys
import time

import procly


def noop() -> None:
    pass


def exit_with(code: object) -> None:
    sys.exit(code)


def raise_error() -> None:
    raise ValueError("boom from the child")


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def kill_self(signum: int) -> None:
    import faulthandler

    faulthandler.disable()  # inherited from pytest; keep a deliberate SIGSEGV quiet
    os.kill(os.getpid(), signum)


def send_value(conn, value) -> None:
    conn.send(value)
    conn.close()


def echo(conn) -> None:
    """Send back everything received until None or EOF.

    (Under fork the child also inherits the parent's end, so EOF alone may never come.)
    """
    try:
        while (item := conn.recv()) is not None:
            conn.send(item)
    except EOFError:
        pass


def echo_bytes(conn) -> None:
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass


def report_identity(conn) -> None:
    me = procly.current_process()
    parent = procly.parent_process()
    conn.send(
        {
            "name": me.name,
            "pid": os.getpid(),
            "ident": me.ident,
            "daemon": me.daemon,
            "authkey": bytes(me.authkey),
            "parent_pid": parent.pid if parent else None,
            "parent_name": parent.name if parent else None,
            "parent_alive": parent.is_alive() if parent else None,
            "start_method": procly.get_start_method(allow_none=True),
        }
    )
    conn.close()


def try_start_child(conn) -> None:
    """Report what happens when this (daemonic) process starts a child."""
    try:
        procly.Process(target=noop).start()
    except AssertionError as exc:
        conn.send(("AssertionError", str(exc)))
    else:
        conn.send(("started", ""))
    conn.close()


def start_grandchild(conn, method: str) -> None:
    child = procly.get_context(method).Process(target=send_value, args=(conn, "from the grandchild"))
    child.start()
    child.join()
    conn.send(child.exitcode)


def ignore_sigterm_and_sleep(conn, seconds: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send("ready")
    time.sleep(seconds)


class Counter(procly.Process):
    """A Process subclass overriding run() (default start method)."""

    def __init__(self, conn, n: int) -> None:
        super().__init__()
        self.conn = conn
        self.n = n

    def run(self) -> None:
        self.conn.send(sum(range(self.n)))
        self.conn.close()


class ForkCounter(Counter, procly.context.ForkProcess):
    pass


class SpawnCounter(Counter, procly.context.SpawnProcess):
    pass


class ForkServerCounter(Counter, procly.context.ForkServerProcess):
    pass


COUNTERS = {"fork": ForkCounter, "spawn": SpawnCounter, "forkserver": ForkServerCounter}


def write_file_later(path: str, seconds: float) -> None:
    """After *seconds*, write "done" to *path*, whole or not at all (a reader polling for
    the file never sees it empty)."""
    time.sleep(seconds)
    with open(path + ".part", "w") as f:
        f.write("done")
    os.replace(path + ".part", path)


def connect_and_send(address, value) -> None:
    from procly.connection import Client

    with Client(address, authkey=bytes(procly.current_process().authkey)) as conn:
        conn.send(value)


def hold_lock(lock, conn, seconds: float) -> None:
    with lock:
        conn.send("held")
        time.sleep(seconds)


def add_many(counter, lock, n: int) -> None:
    for _ in range(n):
        with lock:
            counter.value += 1


def semaphore_release(sem, times: int) -> None:
    for _ in range(times):
        sem.release()


def condition_notifier(cond, flag) -> None:
    with cond:
        flag.value = 1
        cond.notify_all()


def event_setter(event, delay: float) -> None:
    time.sleep(delay)
    event.set()


def barrier_wait(barrier, queue) -> None:
    queue.put(barrier.wait(10))


def fill_array(arr, start: int) -> None:
    for i in range(len(arr)):
        arr[i] = start + i


def put_items(queue, items) -> None:
    for item in items:
        queue.put(item)


def echo_queue(queue, n: int) -> None:
    """Take *n* items and put each back doubled (numpy arrays under "array")."""
    for _ in range(n):
        item = queue.get(timeout=10)
        item["array"] *= 2
        queue.put(item)


def take_some(queue, n: int, results) -> None:
    """Take *n* items and report them."""
    results.put([queue.get(timeout=10) for _ in range(n)])


def put_then_exit(queue, n: int, size: int) -> None:
    for i in range(n):
        queue.put(bytes([i % 256]) * size)


def consume_and_mark(queue, results) -> None:
    while True:
        item = queue.get()
        if item is None:
            queue.task_done()
            return
        results.put(item * 2)
        queue.task_done()


def square(x):
    return x * x


def identity(x, *rest):
    return x


def add(a, b):
    return a + b


def die_on(x, bad, how="sigkill"):
    """Return x, except for x == bad, where the worker dies."""
    if x == bad:
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit":
            os._exit(3)
        elif how == "segfault":
            import ctypes
            import faulthandler

            faulthandler.disable()
            ctypes.string_at(0)
    return x


def die_once(marker_path, x):
    """Die the first time (no marker file yet), succeed on the retry."""
    if not os.path.exists(marker_path):
        open(marker_path, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def raise_value_error(x):
    raise ValueError(f"bad value {x}")


class TwoArgError(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_two_arg_error(x):
    raise TwoArgError(x, x + 1)


def return_unpicklable(x):
    import threading

    return threading.Lock()


def worker_pid(_=None):
    return os.getpid()


def init_state(value):
    from procly.pool import worker_state

    worker_state["value"] = value


def read_state(_):
    from procly.pool import worker_state

    return worker_state.get("value")


def double(a):
    return a * 2


def mutate_shared(d, lst, ns, value):
    d["child"] = os.getpid()
    lst.append("from child")
    ns.flag = True
    value.value = 42


def use_manager_lock(lock, lst):
    with lock:
        lst.append("locked")


def write_through_received_fd(conn, data: bytes) -> None:
    from procly import reduction

    fd = reduction.recv_handle(conn)
    os.write(fd, data)
    os.close(fd)


def write_shared(name_or_shm, data: bytes) -> None:
    from procly.shared_memory import SharedMemory

    shm = SharedMemory(name_or_shm) if isinstance(name_or_shm, str) else name_or_shm
    shm.buf[: len(data)] = data
    shm.close()


def bump_list(shared_list) -> None:
    shared_list[0] += 1
    shared_list[1] = "changed"


def fill_rows(array, start: int, stop: int, value: float) -> int:
    array[start:stop] = value
    return os.getpid()


def append_to_nested(d) -> None:
    d["inner"].append("from child")


def manager_barrier_party(barrier, results) -> None:
    results.append(barrier.wait(10))


def manager_queue_worker(queue, done) -> None:
    while True:
        item = queue.get(timeout=10)
        if item is None:
            queue.task_done()
            return
        done.append(item * 2)
        queue.task_done()


def manager_condition_setter(cond, flag) -> None:
    with cond:
        flag.value = 1
        cond.notify_all()


def create_manager_segment(address, authkey: bytes, conn) -> None:
    from procly.managers import SharedMemoryManager

    manager = SharedMemoryManager(address=address, authkey=authkey)
    manager.connect()
    block = manager.SharedMemory(64)
    block.buf[:5] = b"child"
    conn.send(block.name)
    block.close()


_hoard: list = []


def grow_and_report_pid(megabytes: int) -> int:
    """Keep ``megabytes`` of touched memory alive in this worker; return its pid."""
    _hoard.append(bytearray(megabytes * 1024 * 1024))
    return os.getpid()


def worker_rss(_=None) -> int:
    from procly._pool_worker import resident_bytes

    return resident_bytes()


def double_and_send_back(conn) -> None:
    """Receive an array (or a list of them), double each in place (they must be
    writable), send it back."""
    received = conn.recv()
    for array in received if isinstance(received, list) else [received]:
        array *= 2
    conn.send(received)
    conn.close()


def hold_proxy_then_die(proxy, conn) -> None:
    """Take a reference to the manager's object, then die without giving it back."""
    assert len(proxy) == 0
    conn.send("holding")
    os.kill(os.getpid(), signal.SIGKILL)


def use_lent_connection(queue) -> None:
    """Take a Connection and a socket out of *queue* (pickled outside process start-up) and use them."""
    conn = queue.get(timeout=10)
    sock = queue.get(timeout=10)
    conn.send(("via the connection", os.getpid()))
    sock.sendall(b"via the socket")
    conn.close()
    sock.close()


def sum_or_die(a, bad):
    """The sum of array *a*, except when its first element is *bad*: the worker dies."""
    if a[0] == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return float(a.sum())


_runs = None  # a shared array of run counts, one per task, set by keep_run_counts


def keep_run_counts(runs) -> None:
    """Pool initializer: where counted_nap records that a task started."""
    global _runs
    _runs = runs


def nap_then_square(i: int, seconds: float) -> int:
    """Sleep *seconds*, return i * i."""
    time.sleep(seconds)
    return i * i


def nap_then_pid(seconds: float) -> int:
    """Sleep *seconds*, return this process's pid."""
    time.sleep(seconds)
    return os.getpid()


def counted_nap(i: int, seconds: float) -> int:
    """Count a run of task *i*, sleep, return i * i."""
    _runs[i] += 1
    time.sleep(seconds)
    return i * i


def wait_for_interrupt(conn):
    """Tell the parent it is ready, then wait until SIGINT arrives as KeyboardInterrupt."""
    try:
        conn.send("ready")
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        conn.send("interrupted")


def run_inner_pool(method, n):
    """A pool started inside a pool worker."""
    import procly

    with procly.get_context(method).Pool(2) as inner:
        return inner.map(square, range(n))


def run_inner_process(method):
    import procly

    p = procly.get_context(method).Process(target=square, args=(2,))
    p.start()
    p.join()
    return p.exitcode


def start_grandchildren_and_sleep(method, pids_path):
    """Start a procly child and a subprocess that both sleep, record their pids, then sleep."""
    import subprocess

    import procly

    child = procly.get_context(method).Process(target=sleep, args=(60,))
    child.start()
    proc = subprocess.Popen(["sleep", "60"])
    with open(pids_path, "w") as f:
        f.write(f"{child.pid} {proc.pid}\n")
    time.sleep(60)


def thread_environment():
    """What a pool worker's numeric libraries would read."""
    return {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def blas_threads():
    """Threads of the BLAS library numpy loaded here (threadpoolctl's view)."""
    import numpy  # noqa: F401 - loads the BLAS library
    from threadpoolctl import threadpool_info

    return sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})


def native_threads_after_matmul() -> int:
    """Threads of this process that Python did not start, after a BLAS matrix product
    (every thread with a Python thread state has a frame here, ``_thread`` ones too)."""
    import numpy

    a = numpy.ones((300, 300))
    a @ a
    return len(os.listdir("/proc/self/task")) - len(sys._current_frames())


def put_tagged(queue, k: int, n: int, big_every: int = 0, big_size: int = 0) -> None:
    """Put (k, i, payload) for i in range(n): payload is *big_size* bytes every *big_every* items, else None."""
    for i in range(n):
        big = big_every and i % big_every == big_every - 1
        queue.put((k, i, bytes([i % 256]) * big_size if big else None))


def take_until_none(queue, results) -> None:
    """Take items until None; report them."""
    got = []
    while (item := queue.get(timeout=30)) is not None:
        got.append(item)
    results.put(got)


def take_one(queue, results) -> None:
    """Take one item, report it, exit (whatever was read ahead stays for others)."""
    results.put(queue.get(timeout=10))


def report_rss_then_put(queue, n: int, size: int, rss) -> None:
    """Report this process's resident memory, then put *n* items of *size* bytes."""
    rss.put(_rss_kib(os.getpid()))
    for i in range(n):
        queue.put(bytes([i % 256]) * size)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def put_small_big_small(queue, small: int, big: int, big_size: int) -> None:
    """(i, payload) items: *small* tiny ones, *big* of *big_size* bytes, *small* tiny ones again."""
    i = 0
    for count, size in ((small, 0), (big, big_size), (small, 0)):
        for _ in range(count):
            queue.put((i, bytes([i % 256]) * size))
            i += 1


def exit_if_open(link: str) -> None:
    """Exit with code 3 if a descriptor of this process is *link* (``socket:[inode]``)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == link:
                os._exit(3)
        except OSError:
            pass
