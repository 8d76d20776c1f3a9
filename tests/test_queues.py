"""Queue, JoinableQueue and SimpleQueue across processes."""

from __future__ import annotations

import os
import queue
import socket
import threading

import pytest

import procly

from . import targets
from .conftest import wait_until


def test_put_get_across_processes(ctx):
    q = ctx.Queue()
    items = [1, "two", [3], {"four": 4}, None, b"x" * 200_000]
    p = ctx.Process(target=targets.put_items, args=(q, items))
    p.start()
    assert [q.get(timeout=10) for _ in items] == items
    p.join(10)
    q.close()
    q.join_thread()


def test_items_of_an_exited_process_are_delivered(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=targets.put_then_exit, args=(q, 20, 10))
    p.start()
    got = [q.get(timeout=10) for _ in range(20)]
    p.join(10)
    assert p.exitcode == 0 and got[3] == bytes([3]) * 10


def test_join_before_get_does_not_deadlock(ctx):
    """The standard library's documented trap: join a child whose big items nobody read yet."""
    q = ctx.Queue()
    p = ctx.Process(target=targets.put_then_exit, args=(q, 3, 8 * 1024 * 1024))
    p.start()
    p.join(30)
    assert p.exitcode == 0, "the child must be able to exit before its items are read"
    items = [q.get(timeout=10) for _ in range(3)]
    assert [len(i) for i in items] == [8 * 1024 * 1024] * 3 and items[2][:1] == bytes([2])


@pytest.mark.parametrize("count, size", [(20_000, 10), (3_000, 1000), (40, 100_000)])
def test_join_before_get_with_many_small_items(ctx, count, size):
    """The same trap with small items: far more than the socket holds (its limit is ~280 tiny writes)."""
    q = ctx.Queue()
    p = ctx.Process(target=targets.put_then_exit, args=(q, count, size))
    p.start()
    p.join(30)
    assert p.exitcode == 0, "the child must be able to exit before its items are read"
    got = [q.get(timeout=10) for _ in range(count)]
    assert got == [bytes([i % 256]) * size for i in range(count)]  # all of them, in order
    assert q.empty() and q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)


@pytest.mark.parametrize("big_every", [0, 3], ids=["small", "with-big"])
def test_join_before_get_with_many_producers(ctx, big_every):
    """40 producers exit with their items unread: each sends its batch frame in the room kept
    for them (the 22nd used to block for ever, holding the write lock the others wait for)."""
    q = ctx.Queue()
    producers_count, per = 40, 1_000 if not big_every else 12
    producers = [ctx.Process(target=targets.put_tagged, args=(q, k, per, big_every, 140_000))
                 for k in range(producers_count)]  # fmt: skip
    for p in producers:
        p.start()
    for p in producers:
        p.join(60)
        assert p.exitcode == 0, "a producer must be able to exit before its items are read"
    got = [q.get(timeout=30) for _ in range(producers_count * per)]
    _check_per_producer_order(got, producers_count, per, big_every, 140_000)
    assert q.empty()


def test_items_left_at_exit_are_shared_by_every_consumer(ctx):
    """Items producers left in memfds at exit can be taken by any consumer, not only the first."""
    q = ctx.Queue()
    results = ctx.Queue()
    per_producer = 20_000  # ~500 KB each: more than the socket holds, so most go to a memfd at exit
    producers = [ctx.Process(target=targets.put_items, args=(q, [(k, i) for i in range(per_producer)]))
                 for k in range(2)]  # fmt: skip
    for p in producers:
        p.start()
    for p in producers:
        p.join(30)
        assert p.exitcode == 0
    consumer = ctx.Process(target=targets.take_some, args=(q, 30_000, results))
    consumer.start()
    first = results.get(timeout=30)
    consumer.join(30)
    rest = [q.get(timeout=10) for _ in range(2 * per_producer - 30_000)]
    assert q.empty()
    assert sorted(first + rest) == sorted((k, i) for k in range(2) for i in range(per_producer))
    for k in range(2):  # each producer's items are taken in the order they were put
        mine = [i for kk, i in first + rest if kk == k]
        assert mine == list(range(per_producer))


def test_feeder_waits_for_a_reader_while_the_process_lives(ctx):
    """Without exit, a full socket makes the feeder wait (no memfd): items arrive as the reader takes them."""
    q = ctx.Queue()
    for i in range(5_000):
        q.put(i)
    got = [q.get(timeout=10) for _ in range(5_000)]
    assert got == list(range(5_000))


def test_numpy_arrays_cross_out_of_band_and_are_snapshots(ctx):
    np = pytest.importorskip("numpy")
    q = ctx.Queue(1)
    a = np.arange(1_000_000, dtype=np.float64)
    q.put(a)
    a[:] = -1  # put() took a snapshot: the change does not reach the queue
    with pytest.raises(queue.Full):
        q.put(a, timeout=0.05)  # the memfd made for it is closed again (the leak check sees it)
    p = ctx.Process(target=targets.echo_queue, args=(q, 1))
    got = q.get(timeout=10)
    assert got.dtype == np.float64 and got.flags.writeable and np.array_equal(got, np.arange(1_000_000))
    q.put({"array": got * 2, "tag": "x"})
    p.start()
    p.join(30)
    back = q.get(timeout=10)
    assert back["tag"] == "x" and np.array_equal(back["array"], np.arange(1_000_000) * 4)
    q.close()
    q.join_thread()


def test_bounded_queue_full_empty_timeouts():
    q = procly.Queue(2)
    assert q.empty() and q.qsize() == 0
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert q.get() == 1 and q.get_nowait() == 2
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.put(1)
    with pytest.raises(ValueError, match="closed"):
        q.get()


def test_unpicklable_item_raises_at_put():
    q = procly.Queue()
    with pytest.raises(procly.PicklingError):
        q.put(threading.Lock())
    q.put("fine")
    assert q.get(timeout=5) == "fine"


def test_joinable_queue(ctx):
    q = ctx.JoinableQueue()
    results = ctx.Queue()
    worker = ctx.Process(target=targets.consume_and_mark, args=(q, results))
    worker.start()
    for i in range(5):
        q.put(i)
    q.put(None)
    q.join()
    assert sorted(results.get(timeout=10) for _ in range(5)) == [0, 2, 4, 6, 8]
    worker.join(10)
    with pytest.raises(ValueError, match="too many"):
        q.task_done()


def test_simple_queue(ctx):
    q = ctx.SimpleQueue()
    assert q.empty()
    p = ctx.Process(target=targets.put_items, args=(q, ["a", "b"]))
    p.start()
    assert [q.get(), q.get()] == ["a", "b"]
    p.join(10)
    q.close()


def test_spent_memfds_are_recycled_and_bounded():
    from procly.queues import _Recycler

    recycler = _Recycler()
    fd = os.memfd_create("spent")
    os.ftruncate(fd, 2 << 20)
    recycler.give(fd)
    again = recycler.take(1 << 20)
    assert again is not None and os.fstat(again).st_ino == os.fstat(fd).st_ino  # the same pages, reused
    assert recycler.take(1 << 20) is None  # nothing parked any more
    recycler.give(fd)
    assert recycler.take(1000) is None  # 2 MiB is too big to park for a 1000-byte item: closed
    parked = 0
    for _ in range(200):  # the tiny send buffer bounds how many wait: the rest are let go, silently
        recycler.give(fd)
    while (taken := recycler.take(1 << 20)) is not None:
        os.close(taken)
        parked += 1
    assert 1 <= parked < 50
    os.close(fd)
    os.close(again)
    recycler.close()


def test_big_items_reuse_their_memfds():
    q = procly.Queue()
    inodes = set()
    original = procly.queues._Held.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        inodes.add(os.fstat(self.fd).st_ino)

    procly.queues._Held.__init__ = spy
    try:
        for i in range(20):
            q.put(bytes([i]) * (1 << 20))
            assert q.get(timeout=10)[:1] == bytes([i])
    finally:
        procly.queues._Held.__init__ = original
    assert len(inodes) <= 3  # not one fresh memfd per item
    q.close()
    q.join_thread()


def test_queues_work_with_descriptors_past_1023(ctx, descriptors_past_1023):
    q = ctx.Queue()
    assert q._reader.fileno() > 1023
    items = [bytes([i % 256]) * 2000 for i in range(3000)]  # 6 MB: the feeder waits for room
    for item in items:
        q.put(item)
    assert [q.get(timeout=30) for _ in items] == items
    q.close()
    q.join_thread()


def _check_per_producer_order(items, producers: int, per_producer: int, big_every: int = 0, big_size: int = 0,
                              ordered: bool = True):  # fmt: skip
    """Every item of every producer once, each producer's in the order it put them (if *ordered*)."""
    assert sorted((k, i) for k, i, _ in items) == [(k, i) for k in range(producers) for i in range(per_producer)]
    for k in range(producers):
        if ordered:
            assert [i for kk, i, _ in items if kk == k] == list(range(per_producer))
    for _, i, payload in items:
        if big_every and i % big_every == big_every - 1:
            assert payload == bytes([i % 256]) * big_size
        else:
            assert payload is None


@pytest.mark.parametrize("join_first", [False, True], ids=["read-while-putting", "join-then-read"])
def test_four_producers_keep_their_order_with_big_and_small_items(ctx, join_first):
    """4 producers, small items with a 300 KB one (a memfd) every 97: nothing lost, each producer's order
    kept, whether the parent reads while they put or only after they exited (items left in batches)."""
    q = ctx.Queue()
    per, every, size = 3_000, 97, 300_000
    producers = [ctx.Process(target=targets.put_tagged, args=(q, k, per, every, size)) for k in range(4)]
    for p in producers:
        p.start()
    if join_first:
        for p in producers:
            p.join(60)
            assert p.exitcode == 0, "a producer must be able to exit before its items are read"
    got = [q.get(timeout=30) for _ in range(4 * per)]
    for p in producers:
        p.join(60)
        assert p.exitcode == 0
    _check_per_producer_order(got, 4, per, every, size)
    assert q.empty()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)


def test_several_consumers_share_what_one_read_ahead(ctx):
    """Workers stopped by sentinels: each gets one, none keeps another's (one read takes many items),
    and every worker sees each producer's items in order."""
    q, results = ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=targets.take_until_none, args=(q, results)) for _ in range(3)]
    for w in workers:
        w.start()
    producers = [ctx.Process(target=targets.put_tagged, args=(q, k, 5_000, 1_000, 200_000)) for k in range(2)]
    for p in producers:
        p.start()
    for p in producers:
        p.join(60)
        assert p.exitcode == 0
    for _ in workers:
        q.put(None)
    seen = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    _check_per_producer_order([item for part in seen for item in part], 2, 5_000, 1_000, 200_000, ordered=False)
    for part in seen:
        for k in range(2):
            mine = [i for kk, i, _ in part if kk == k]
            assert mine == sorted(mine)


def test_items_read_ahead_by_a_consumer_that_exits_stay_in_the_queue(ctx):
    """A consumer reads everything waiting in one call, takes one item and exits: the rest is not lost."""
    q, results = ctx.Queue(), ctx.Queue()
    for i in range(2_000):
        q.put((0, i, None))
    q.put((0, 2_000, b"m" * 300_000))  # a memfd item read along: its descriptor must not be lost either
    for i in range(2_001, 2_100):
        q.put((0, i, None))
    consumer = ctx.Process(target=targets.take_one, args=(q, results))
    consumer.start()
    first = results.get(timeout=30)
    consumer.join(30)
    rest = [q.get(timeout=10) for _ in range(2_099)]
    assert [first[1]] + [i for _, i, _ in rest] == list(range(2_100))
    assert rest[1_999][2] == b"m" * 300_000
    assert q.empty() and q.qsize() == 0


def test_producer_memory_stays_bounded_while_the_consumer_stalls(ctx):
    """A bounded queue whose consumer does not read: the producer blocks in put(), its resident memory
    stays near the queue's bound (the items it would put come to 200 MB)."""
    q, rss = ctx.Queue(maxsize=40), ctx.Queue()
    count, size = 2_000, 100_000  # small enough to travel through the socket, not in memfds
    producer = ctx.Process(target=targets.report_rss_then_put, args=(q, count, size, rss))
    producer.start()
    baseline = rss.get(timeout=30)
    assert wait_until(q.full, timeout=30), "the producer should fill the queue"
    assert wait_until(lambda: _state(producer.pid) == "S", timeout=10)  # blocked in put(), not spinning
    stalled = targets._rss_kib(producer.pid)
    # At most maxsize items are queued (4 MB here), in the producer's buffer or in the socket.
    assert stalled - baseline < 40 * 1024, f"producer grew by {stalled - baseline} KiB while the consumer stalled"
    got = [q.get(timeout=30) for _ in range(count)]
    producer.join(30)
    assert producer.exitcode == 0
    assert all(item == bytes([i % 256]) * size for i, item in enumerate(got))


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_empty_on_a_closed_queue():
    """As CPython 3.13 specifies: a queue closed before any put is empty; one closed
    after puts raises OSError naming the closed end; put/get raise ValueError."""
    for q in (procly.Queue(), procly.JoinableQueue()):
        q.close()
        q.join_thread()
        assert q.empty()
        with pytest.raises(ValueError, match="is closed"):
            q.put(1)
        with pytest.raises(ValueError, match="is closed"):
            q.get()
    for used in (procly.Queue(), procly.JoinableQueue()):
        used.put(1)
        used.close()
        used.join_thread()
        with pytest.raises(OSError, match="is closed"):
            used.empty()


def test_feeder_waits_in_poll_when_nobody_reads(ctx):
    """A full socket and no reader: the feeder blocks in poll() (no timed naps), then delivers everything."""
    q = ctx.Queue()
    q.put(0)
    feeder = q._thread
    assert feeder is not None
    if not os.path.exists(f"/proc/self/task/{feeder.native_id}/syscall"):
        assert q.get(timeout=10) == 0
        q.close()
        q.join_thread()
        pytest.skip("this kernel does not show a thread's system call")
    for i in range(1, 30_000):  # ~1 MB of tiny items: far more than the socket holds
        q.put(i)

    def blocked_in_poll() -> bool:
        try:
            with open(f"/proc/self/task/{feeder.native_id}/syscall") as f:
                number = f.read().split()[0]
        except (OSError, IndexError):
            return False
        return number in ("7", "271", "73")  # poll / ppoll (x86-64), ppoll (arm64)

    assert wait_until(blocked_in_poll, timeout=10)
    assert [q.get(timeout=10) for _ in range(30_000)] == list(range(30_000))
    q.close()
    q.join_thread()


def test_big_items_left_at_exit_travel_by_descriptor_and_by_copy(ctx):
    """A producer exits with 100 big items (memfds) behind a full socket: the batch carries the first
    ones' memfds with it and copies the rest in; all arrive, in order."""
    q = ctx.Queue()
    small, big, size = 10_000, 100, 150_000
    p = ctx.Process(target=targets.put_small_big_small, args=(q, small, big, size))
    p.start()
    p.join(60)
    assert p.exitcode == 0, "the child must be able to exit before its items are read"
    got = [q.get(timeout=30) for _ in range(2 * small + big)]
    assert [i for i, _ in got] == list(range(2 * small + big))
    assert all(payload == bytes([i % 256]) * (size if small <= i < small + big else 0) for i, payload in got)
    assert q.empty()


def _odd_buffers(i: int) -> dict:
    """An item with three out-of-band buffers of sizes that are no multiple of a page."""
    np = pytest.importorskip("numpy")
    return {
        "i": i,
        "a": np.full(70_001 + i, i % 251, dtype=np.uint8),
        "b": bytes([i % 256]) * (65_537 + 3 * i),
        "c": np.arange(9_000 + i, dtype=np.float64) * i,
    }


def _check_odd_buffers(got: dict, i: int) -> None:
    np = pytest.importorskip("numpy")
    expected = _odd_buffers(i)
    assert got["i"] == i and got["b"] == expected["b"]
    assert np.array_equal(got["a"], expected["a"]) and np.array_equal(got["c"], expected["c"])


def test_items_with_several_buffers_arrive_whole_directly_and_left_at_exit(ctx):
    """Each buffer of a big item starts on a page of its memfd (see page_aligned): items
    with several buffers of odd sizes arrive whole, whether read as they come, by
    descriptor in the batch a producer leaves at exit, or copied into that batch (past
    its first BATCH_DESCRIPTORS items)."""
    from procly import queues as queues_module

    q = ctx.Queue()
    q.put(_odd_buffers(0))
    _check_odd_buffers(q.get(timeout=10), 0)
    count, small = queues_module.BATCH_DESCRIPTORS + 6, 10_000
    # Behind small items that fill the socket: the child exits with the big ones unsent.
    items = list(range(small)) + [_odd_buffers(i) for i in range(1, count + 1)]
    p = ctx.Process(target=targets.put_items, args=(q, items))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert [q.get(timeout=30) for _ in range(small)] == list(range(small))
    for i in range(1, count + 1):
        _check_odd_buffers(q.get(timeout=30), i)
    assert q.empty()


def test_items_left_at_exit_come_before_items_put_later(ctx):
    """What a producer left in a batch at exit is all taken before a sentinel put after its join
    (the rest of a batch must not go behind later items while a consumer works through it)."""
    q = ctx.Queue()
    small, big, size = 10_000, 70, 150_000
    p = ctx.Process(target=targets.put_small_big_small, args=(q, small, big, size))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    q.put("sentinel")
    got = []
    while (item := q.get(timeout=30)) != "sentinel":
        got.append(item)
    assert [i for i, _ in got] == list(range(2 * small + big))
    assert q.empty()


def test_a_queue_lifts_the_descriptor_limit_its_big_items_need(tmp_path):
    # Every big item held by a producer is a memfd: 400 of them ahead of the consumer, under
    # a soft limit of 256 descriptors, failed put() with EMFILE (the standard library keeps
    # them in memory). A queue raises the soft limit to the hard one.
    import subprocess
    import sys

    script = tmp_path / "limit.py"
    script.write_text(
        "import resource, procly\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "q = procly.Queue()\n"
        "wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20\n"
        "limits = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "assert limits == (wanted, hard), limits\n"
        "for i in range(400):\n"
        "    q.put(bytes([i % 256]) * 70_000)\n"
        "got = [q.get(timeout=10) for _ in range(400)]\n"
        "assert got == [bytes([i % 256]) * 70_000 for i in range(400)]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_feeder_that_cannot_send_says_so_and_goes_on(monkeypatch, capfd):
    # A send the kernel refuses (ETOOMANYREFS, say): the item is lost as the standard
    # library's feeder loses one, said on standard error, its slot given back; the feeder
    # lives on for the next put (it used to end silently, and every later put went nowhere).
    import errno

    from procly import queues

    real = queues._Writer.send_descriptor
    refusals = [OSError(errno.ETOOMANYREFS, "Too many references")]

    def refuse_once(self, frame, fd):
        if refusals:
            raise refusals.pop()
        return real(self, frame, fd)

    monkeypatch.setattr(queues._Writer, "send_descriptor", refuse_once)
    q = procly.Queue(maxsize=2)
    q.put(b"a" * 200_000)  # refused
    q.put(b"b" * 200_000)
    assert q.get(timeout=10) == b"b" * 200_000
    q.put(b"c" * 10)  # its slot back: a queue of 2 takes two more
    q.put(b"d" * 10)
    assert [q.get(timeout=10), q.get(timeout=10)] == [b"c" * 10, b"d" * 10]
    q.close()
    q.join_thread()
    err = capfd.readouterr().err
    assert "could not send 1 item(s)" in err and "Too many references" in err


def test_get_interrupted_while_taking_a_big_items_descriptor_loses_nothing(monkeypatch):
    # Ctrl-C while get() takes the descriptor of a big item (in a memfd): the item stays the
    # next one, and the items after it keep their own descriptors.
    q = procly.Queue()
    items = [b"a" * 200_000, b"b" * 200_000, "small"]
    for item in items:
        q.put(item)
    from procly import queues

    real = queues.Queue._parked
    interruptions = [KeyboardInterrupt()]

    def interrupted_once(self):
        if interruptions:
            raise interruptions.pop()
        return real(self)

    monkeypatch.setattr(queues.Queue, "_parked", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        q.get(timeout=10)
    assert [q.get(timeout=10) for _ in items] == items
    q.close()
    q.join_thread()


def test_a_big_item_whose_descriptors_never_came_is_passed(monkeypatch):
    # The kernel drops the descriptors of a message received while the process is out of
    # them: that item is lost (MessageError says so once), and the queue goes on with the
    # next items instead of failing every get() on the same frame.
    from procly import queues
    from procly._errors import MessageError

    q = procly.Queue()
    for item in (b"a" * 200_000, "small", b"b" * 200_000):
        q.put(item)
    real = queues.Queue._parked
    missing = [MessageError("a queue item kept in a memfd arrived without its descriptors")]

    def missing_once(self):
        if missing:
            for fd in real(self):  # taken and dropped, as the kernel would have
                os.close(fd)
            raise missing.pop()
        return real(self)

    monkeypatch.setattr(queues.Queue, "_parked", missing_once)
    with pytest.raises(MessageError):
        q.get(timeout=10)
    assert [q.get(timeout=10), q.get(timeout=10)] == ["small", b"b" * 200_000]
    q.close()
    q.join_thread()


@pytest.mark.parametrize("wmem_max", [0, 50_000, 10 << 20])
def test_exit_room_never_shrinks_the_send_buffer(monkeypatch, wmem_max):
    # The room kept for exit batches doubles the send buffer where the system allows it; where
    # asking would give less than the usual buffer (a maximum below the default), it is not asked.
    from procly import queues

    monkeypatch.setattr(queues, "_wmem_max", lambda: wmem_max)
    reader, writer = procly.Pipe(duplex=True)
    probe = queues._socket_of(writer)
    usual = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert queues._make_exit_room(writer) == usual
    whole = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert whole == (2 * usual if wmem_max >= usual else usual)
    probe.close()
    reader.close()
    writer.close()
