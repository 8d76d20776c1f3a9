"""Functions and objects the executor tests send to workers (importable under spawn)."""

from __future__ import annotations

import os
import pickle
import sys
import time


def fail_init() -> None:
    """An initializer that raises."""
    raise ValueError("error in initializer")


def exit_now() -> None:
    sys.exit(4)


def _raise_unpickling_error() -> None:
    raise pickle.UnpicklingError("refuses to unpickle")


class BreaksOnUnpickle:
    """Pickles fine, raises when unpickled."""

    def __reduce__(self):
        return _raise_unpickling_error, ()


def make_breaks_on_unpickle(_=None) -> BreaksOnUnpickle:
    return BreaksOnUnpickle()


class ExitsOnPickle:
    """Raises SystemExit when pickled (a result sent back from a worker)."""

    def __reduce__(self):
        sys.exit(5)


def make_exits_on_pickle(_=None) -> ExitsOnPickle:
    return ExitsOnPickle()


def print_later(seconds: float, text: str) -> str:
    """Work still running when the interpreter starts to exit."""
    time.sleep(seconds)
    sys.stdout.flush()
    os.write(1, f"{text}\n".encode())  # one write: lines of two workers do not interleave
    return text


def block_on(event) -> bool:
    """Wait for *event* (bounded), so that a call is surely running."""
    return event.wait(60)


_events = None


def keep_events(started, release) -> None:
    """Initializer: the events signal_and_block uses."""
    global _events
    _events = (started, release)


def signal_and_block() -> bool:
    """Say that the call runs, then wait (bounded) to be released."""
    started, release = _events
    started.set()
    return release.wait(60)
