"""The ``procly`` command line: ``procly demo``, ``procly info``."""

from __future__ import annotations

import argparse
import os
import platform
import sys


def _info() -> int:
    import procly

    print(f"procly {procly.__version__} on Python {platform.python_version()} ({sys.executable})")
    print(f"platform: {platform.platform()}")
    print(f"cpus: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})")
    print(f"start methods: {', '.join(procly.get_all_start_methods())} (default first)")
    print(f"pidfd: {'yes' if hasattr(os, 'pidfd_open') else 'no'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``procly`` console script."""
    parser = argparse.ArgumentParser(prog="procly", description="Process-based parallelism for Python.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the tutorial's examples under every start method")
    demo.add_argument("--method", action="append", choices=["fork", "spawn", "forkserver"], help="only this method")
    demo.add_argument("--only", action="append", help="only this example (script name)")
    commands.add_parser("info", help="what procly sees on this machine")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import main as demo_main

        return demo_main(args.method, args.only)
    return _info()


if __name__ == "__main__":
    sys.exit(main())
