"""Logging, finalizers and after-fork hooks (``multiprocessing.util``)."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from . import _state
from ._finalize import Finalize as Finalize
from ._finalize import register_after_fork as register_after_fork

__all__ = [
    "Finalize",
    "debug",
    "get_logger",
    "get_temp_dir",
    "info",
    "is_exiting",
    "log_to_stderr",
    "register_after_fork",
    "sub_debug",
    "sub_warning",
]

LOGGER_NAME = "procly"
DEFAULT_LOGGING_FORMAT = "[%(levelname)s/%(processName)s] %(message)s"
SUBDEBUG = 5
SUBWARNING = 25


def get_logger() -> logging.Logger:
    """procly's logger; silent until configured or :func:`log_to_stderr` is called."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers and logger.level == logging.NOTSET:
        logger.propagate = False
    return logger


def log_to_stderr(level: int | str | None = None) -> logging.Logger:
    """Make procly's logger print to stderr (at *level*, if given) and return it."""
    logger = get_logger()
    if not any(getattr(h, "_procly", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(DEFAULT_LOGGING_FORMAT))
        handler._procly = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if level:
        logger.setLevel(level)
    return logger


def sub_debug(msg: str, *args: Any) -> None:
    get_logger().log(SUBDEBUG, msg, *args)


def debug(msg: str, *args: Any) -> None:
    get_logger().debug(msg, *args)


def info(msg: str, *args: Any) -> None:
    get_logger().info(msg, *args)


def sub_warning(msg: str, *args: Any) -> None:
    get_logger().log(SUBWARNING, msg, *args)


def is_exiting() -> bool:
    """Whether this process is running its exit clean-up."""
    return _state.get().exiting


_temp_dirs: dict[int, str] = {}


def get_temp_dir() -> str:
    """A private temporary directory for this process, removed at exit."""
    pid = os.getpid()
    path = _temp_dirs.get(pid)
    if path is None:
        import shutil

        path = _temp_dirs[pid] = tempfile.mkdtemp(prefix="procly-")
        Finalize(None, shutil.rmtree, args=(path, True), exitpriority=-100)
        _state.get().ensure_exit_hook()
    return path


def _exit_function() -> None:
    _state.run_exit_hook()


def _run_after_forkers() -> None:
    from ._finalize import run_after_forkers

    run_after_forkers()

