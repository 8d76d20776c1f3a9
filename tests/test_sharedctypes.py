"""Value, Array and friends in shared memory."""

from __future__ import annotations

import ctypes
import os

import pytest

import procly
from procly import sharedctypes

from . import targets


def test_value_and_array_written_by_child(ctx):
    n = ctx.Value("d", 0.0)
    a = ctx.Array("i", range(10))
    p = ctx.Process(target=targets.fill_array, args=(a, 100))
    p.start()
    p.join(10)
    assert a[:] == list(range(100, 110))
    assert a[2:4] == [102, 103] and len(a) == 10
    n.value = 2.5
    assert n.get_obj().value == 2.5
    assert n.get_lock().acquire() and n.get_lock().release() is None


def test_raw_and_lockless_variants():
    raw = procly.RawValue("i", 7)
    assert raw.value == 7 and not hasattr(raw, "get_lock")
    arr = procly.RawArray(ctypes.c_double, 3)
    assert list(arr) == [0.0, 0.0, 0.0]
    assert not hasattr(procly.Value("i", 1, lock=False), "get_lock")
    custom = procly.Lock()
    assert procly.Value("i", 1, lock=custom).get_lock() is custom
    with pytest.raises(AttributeError):
        procly.Value("i", 1, lock="not a lock")
    with pytest.raises(TypeError):
        procly.Value("z", 1)


def test_char_array_value_and_raw():
    s = procly.Array("c", b"hello")
    assert s.value == b"hello" and s.raw == b"hello"
    s.value = b"hi"
    assert s.value == b"hi"


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


def test_structure_copy_and_synchronized():
    p = procly.Value(Point, 1, 2.5)
    assert (p.x, p.y) == (1, 2.5)
    p.x = 5
    assert p.get_obj().x == 5
    raw = procly.RawValue(Point, 3, 4.0)
    dup = sharedctypes.copy(raw)
    raw.x = 9
    assert dup.x == 3
    wrapped = sharedctypes.synchronized(dup)
    assert wrapped.x == 3
    with pytest.raises(TypeError):
        sharedctypes.synchronized(wrapped)


def test_nothing_in_dev_shm():
    before = set(os.listdir("/dev/shm"))
    objs = [procly.Array("i", 1000), procly.Lock(), procly.Semaphore(), procly.Queue()]
    assert set(os.listdir("/dev/shm")) == before
    del objs
