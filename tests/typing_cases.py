"""What a type checker sees of procly's public API: checked by ``mypy --strict`` (tests/test_typing.py).

Not a test module (pytest does not collect it) and never run: every case is a function
that is only type-checked. ``assert_type`` fails the check when a type is not the one
expected; a line marked ``# type: ignore[code]`` must be an error (strict mode reports an
unused ignore), so misuse is checked to be rejected too.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
from concurrent.futures import Future
from typing import Any, Iterator, assert_type

import procly
from procly import queues, sharedctypes, synchronize
from procly.connection import Connection
from procly.futures import ProcessPoolExecutor
from procly.managers import AcquirerProxy, DictProxy, ListProxy, NamespaceProxy, SyncManager
from procly.pool import ApplyResult, AsyncResult, IMapIterator, MapResult, Pool, ThreadPool
from procly.process import BaseProcess


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def label(x: int) -> str:
    return str(x)


def queue_cases() -> None:
    q = procly.Queue[int]()
    assert_type(q, queues.Queue[int])
    assert_type(q.get(), int)
    assert_type(q.get(timeout=1.0), int)
    assert_type(q.get_nowait(), int)
    q.put(1)
    q.put("one")  # type: ignore[arg-type]
    assert_type(q.qsize(), int)

    simple = procly.SimpleQueue[str]()
    assert_type(simple.get(), str)
    simple.put("x")

    joinable = procly.JoinableQueue[bytes](10)
    assert_type(joinable.get(), bytes)
    joinable.task_done()
    joinable.join()

    # A context's factory: annotate what it holds.
    annotated: procly.Queue[float] = procly.get_context("spawn").Queue()
    assert_type(annotated.get(), float)
    assert_type(procly.get_context("fork").SimpleQueue(), queues.SimpleQueue[Any])


def pool_cases() -> None:
    with procly.Pool(2) as pool:
        assert_type(pool, Pool)
        assert_type(pool.map(square, range(3)), list[int])
        assert_type(pool.map(label, [1, 2]), list[str])
        assert_type(pool.map(square, [1], task_timeout=5.0, retries=1), list[int])
        assert_type(pool.starmap(add, [(1, 2)]), list[int])
        assert_type(pool.apply(square, (1,)), int)
        result = pool.apply_async(square, (1,))
        assert_type(result, AsyncResult[int])
        assert_type(result, ApplyResult[int])
        assert_type(result.get(timeout=1), int)
        assert_type(result.ready(), bool)
        mapped = pool.map_async(label, [1])
        assert_type(mapped, MapResult[str])
        assert_type(mapped.get(), list[str])
        assert_type(pool.starmap_async(add, [(1, 2)]).get(), list[int])
        assert_type(pool.imap(square, [1]), IMapIterator[int])
        assert_type(pool.imap(square, iter([1])).next(timeout=1), int)
        for text in pool.imap_unordered(label, [1]):
            assert_type(text, str)
        pool.map(square, ["a"])  # type: ignore[arg-type]
        pool.apply_async(square, (1,), callback=lambda value: print(value + 1))
    assert_type(procly.get_context("forkserver").Pool(1), Pool)
    with ThreadPool(2) as threads:
        assert_type(threads.map(square, [1]), list[int])
        assert_type(threads.apply_async(label, (1,)).get(), str)


async def async_cases(pool: Pool) -> None:
    assert_type(await pool.apply_async(square, (1,)), int)
    assert_type(await pool.map_async(square, [1]), list[int])
    async for item in pool.imap(label, [1]):
        assert_type(item, str)


def synchronize_cases() -> None:
    lock = procly.Lock()
    assert_type(lock, synchronize.Lock)
    assert_type(lock.acquire(timeout=1.0), bool)
    with lock:
        pass
    lock.release()
    assert_type(procly.RLock(), synchronize.RLock)
    assert_type(procly.Semaphore(2), synchronize.Semaphore)
    assert_type(procly.BoundedSemaphore(2), synchronize.BoundedSemaphore)
    event = procly.Event()
    assert_type(event, synchronize.Event)
    assert_type(event.wait(1.0), bool)
    assert_type(event.is_set(), bool)
    assert_type(procly.Condition(), synchronize.Condition)
    barrier = procly.Barrier(2)
    assert_type(barrier, synchronize.Barrier)
    assert_type(barrier.wait(), int)
    assert_type(procly.get_context("spawn").Lock(), synchronize.Lock)


def sharedctypes_cases() -> None:
    number = procly.Value("i", 0)
    assert_type(number, sharedctypes.Synchronized[int])
    assert_type(number.value, int)
    number.value += 1
    number.value = "x"  # type: ignore[assignment]
    with number.get_lock():
        pass
    assert_type(procly.Value("d", 0.5).value, float)
    assert_type(procly.Value(ctypes.c_double, 0.5).value, float)
    assert_type(procly.Value("c", b"x").value, bytes)
    array = procly.Array("i", 10)
    assert_type(array, sharedctypes.SynchronizedArray[int])
    assert_type(array[0], int)
    assert_type(array[:], list[int])
    assert_type(len(array), int)
    assert_type(procly.Array("d", [1.0]), sharedctypes.SynchronizedArray[float])
    assert_type(procly.Array("c", b"hi").value, bytes)
    assert_type(procly.RawValue(ctypes.c_int, 1), ctypes.c_int)
    assert_type(procly.get_context("fork").Value("q", 1).value, int)


def process_cases() -> None:
    process = procly.Process(target=square, args=(1,), daemon=True)
    assert_type(process, procly.Process)
    process.start()
    process.join(timeout=1.0)
    assert_type(process.exitcode, int | None)
    assert_type(process.pid, int | None)
    assert_type(process.is_alive(), bool)
    assert_type(process.name, str)
    assert_type(procly.current_process(), BaseProcess)
    assert_type(procly.active_children(), list[BaseProcess])
    assert_type(procly.cpu_count(), int)
    assert_type(procly.get_start_method(), str | None)
    reader, writer = procly.Pipe(duplex=False)
    assert_type(reader, Connection)
    writer.send(1)
    assert_type(reader.poll(1.0), bool)


def manager_cases() -> None:
    with procly.Manager() as manager:
        assert_type(manager, SyncManager)
        assert_type(manager.dict(), DictProxy[Any, Any])
        shared = manager.dict({"a": 1})
        assert_type(shared, DictProxy[str, int])
        assert_type(shared["a"], int)
        assert_type(shared.get("b"), int | None)
        shared["b"] = "x"  # type: ignore[assignment]
        numbers = manager.list([1, 2])
        assert_type(numbers, ListProxy[int])
        assert_type(numbers[0], int)
        assert_type(numbers[:], list[int])
        numbers.append(3)
        numbers += [4]
        assert_type(len(numbers), int)
        annotated: ListProxy[str] = manager.list()
        annotated.append("x")
        assert_type(manager.Namespace(x=1), NamespaceProxy)
        assert_type(manager.Lock(), AcquirerProxy)
    assert_type(procly.get_context("spawn").Manager(), SyncManager)


def executor_cases() -> None:
    with ProcessPoolExecutor(max_workers=2) as executor:
        assert_type(executor, ProcessPoolExecutor)
        future = executor.submit(square, 1)
        assert_type(future, Future[int])
        assert_type(future.result(timeout=1), int)
        assert_type(executor.submit(add, 1, b=2), Future[int])
        assert_type(executor.map(label, [1, 2]), Iterator[str])
        executor.submit(square, "a")  # type: ignore[arg-type]
        executor.submit(add, 1)  # type: ignore[call-arg]
    base: concurrent.futures.Executor = procly.ProcessPoolExecutor()
    base.shutdown()
