"""Build the one C extension (procly._semlock); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "procly._semlock",
            sources=["src/procly/_semlock.c"],
            extra_compile_args=["-O2", "-Wall"],
            libraries=["pthread"],
        )
    ]
)
