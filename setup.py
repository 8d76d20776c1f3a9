"""Build the one C extension (procly._semlock); everything else is in pyproject.toml.

The extension uses only the limited C API of CPython 3.11, so it is built once as
``_semlock.abi3.so`` and the wheel (``cp311-abi3``) serves every CPython from 3.11 on.

It is optional: when it cannot be built (no C compiler, no Python headers, not Linux,
or ``PROCLY_NO_EXTENSION=1`` in the environment) the build warns and goes on, and procly
runs on its pure-Python fallback (``procly._semlock_ctypes``: the same POSIX semaphores,
reached through ctypes). ``procly --version`` says which one an installation uses.
"""

from __future__ import annotations

import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

LIMITED_API = 0x030B0000  # CPython 3.11
SKIP_ENV = "PROCLY_NO_EXTENSION"


def _warn(message: str) -> None:
    bar = "*" * 78
    print(f"\n{bar}\n{message}\n{bar}\n", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """build_ext whose failure is a warning: procly then installs as pure Python."""

    def run(self) -> None:
        if os.environ.get(SKIP_ENV, "") not in ("", "0"):
            _warn(f"procly: {SKIP_ENV} is set, not building the C extension (pure-Python fallback)")
            self.extensions = []
            return
        try:
            super().run()
        except Exception as exc:  # no compiler at all, a broken toolchain, ...
            self._failed(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # compile or link error, missing Python.h, ...
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        _warn(
            "procly: the optional C extension procly._semlock could not be built\n"
            f"    ({type(exc).__name__}: {exc})\n"
            "procly will use its pure-Python fallback (same behaviour, slower locks).\n"
            "Install a C compiler and the Python headers, then reinstall, to get the extension."
        )


# A free-threaded CPython (3.13t, 3.14t) has no stable ABI: there the extension is built
# for that interpreter alone, and declares that it does not need the GIL.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _extensions() -> list[Extension]:
    if not sys.platform.startswith("linux"):
        return []
    return [
        Extension(
            "procly._semlock",
            sources=["src/procly/_semlock.c"],
            define_macros=[] if FREE_THREADED else [("Py_LIMITED_API", hex(LIMITED_API))],
            py_limited_api=not FREE_THREADED,
            extra_compile_args=["-O2", "-Wall"],
            libraries=["pthread", "dl"],
        )
    ]


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    options={} if FREE_THREADED else {"bdist_wheel": {"py_limited_api": "cp311"}},
)
