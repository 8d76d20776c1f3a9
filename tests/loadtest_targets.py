"""Callables for ``procly loadtest --call`` tests (importable as tests.loadtest_targets)."""

from __future__ import annotations

import asyncio
import os
import time

CALLS_DIR_ENV = "PROCLY_TEST_CALLS_DIR"


def quick() -> int:
    return sum(range(50))


async def quick_async() -> None:
    await asyncio.sleep(0)


def fails_every_third() -> None:
    # Each worker process counts its own calls.
    quick.calls = getattr(quick, "calls", 0) + 1
    if quick.calls % 3 == 0:
        raise KeyError("every third call")


def always_fails() -> None:
    raise ValueError("always")


async def always_fails_async() -> None:
    await asyncio.sleep(0)
    raise ValueError("always")


async def sleeps_50ms() -> None:
    await asyncio.sleep(0.05)


def blocks_200ms() -> None:
    time.sleep(0.2)


def first_worker_dies() -> None:
    """The first process to get here exits abruptly; the others go on calling."""
    flag = os.path.join(os.environ[CALLS_DIR_ENV], "died")
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        time.sleep(0.001)
        return
    os.close(fd)
    os._exit(7)
