"""The ``procly`` command line: ``run``, ``tutorial`` (alias ``demo``), ``info``, ``manager``, ``loadtest``,
``serve-target``."""

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
    facts = procly.info()
    why = f" ({facts['semlock_reason']})" if facts["semlock_reason"] else ""
    print(f"semlock: {facts['semlock']}{why}")
    return 0


def _manager(args: argparse.Namespace) -> int:
    """Serve a SyncManager (plus registered types) until interrupted."""
    import importlib

    from .managers import SyncManager

    authkey = os.environ.get(args.authkey_env, "")
    if not authkey:
        print(f"procly manager: set the authkey in ${args.authkey_env} (it is a secret)", file=sys.stderr)
        return 2
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        print(f"procly manager: --address must be HOST:PORT, got {args.address!r}", file=sys.stderr)
        return 2

    class CommandLineManager(SyncManager):
        pass

    for spec in args.register or []:
        typeid, _, target = spec.partition("=")
        module_name, _, attr = target.partition(":")
        if not typeid or not module_name or not attr:
            print(f"procly manager: --register wants TYPEID=MODULE:CALLABLE, got {spec!r}", file=sys.stderr)
            return 2
        CommandLineManager.register(typeid, getattr(importlib.import_module(module_name), attr))
    server = CommandLineManager(address=(host, int(port)), authkey=authkey.encode()).get_server()
    print(f"procly manager serving on {server.address[0]}:{server.address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


class _VersionAction(argparse.Action):
    """``--version``: one unwrapped line (version, SemLock backend, Python), then exit 0."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from ._info import version_line

        print(version_line())
        parser.exit()


RUN_USAGE = "procly run [--start-method METHOD] (SCRIPT | -m MODULE) [ARGS...]"


def _run(argv: list[str]) -> int:
    """``procly run``: run a script or module with ``multiprocessing`` resolving to procly.

    Exceptions of the program propagate (the interpreter prints them and exits 1), as
    ``python script.py`` would; ``SystemExit`` keeps its code.
    """
    method = None
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-m":
        option = args.pop(0)
        if option in ("-h", "--help"):
            print(f"usage: {RUN_USAGE}")
            print("Run SCRIPT (or MODULE, as python -m does) with procly.install() in force: 'import multiprocessing'")
            print("and its submodules give procly, in this process and in every child it starts.")
            return 0
        if option == "--start-method" and args:
            method = args.pop(0)
        elif option.startswith("--start-method="):
            method = option.partition("=")[2]
        else:
            print(f"usage: {RUN_USAGE}\nprocly run: unknown option {option!r}", file=sys.stderr)
            return 2
    if not args or (args[0] == "-m" and len(args) < 2):
        print(f"usage: {RUN_USAGE}\nprocly run: nothing to run", file=sys.stderr)
        return 2
    from ._install import install, run_module, run_path

    install()
    if method is not None:
        import procly

        if method not in procly.get_all_start_methods():
            print(f"procly run: unknown start method {method!r}", file=sys.stderr)
            return 2
        procly.set_start_method(method, force=True)
    if args[0] == "-m":
        run_module(args[1], args[2:])
    else:
        run_path(args[0], args[1:])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``procly`` console script (and of ``python -m procly``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run":
        return _run(argv[1:])
    if list(argv[:2]) == ["loadtest", "compare"]:
        from .loadtest._compare import main as compare_main

        return compare_main(argv[2:])
    parser = argparse.ArgumentParser(prog="procly", description="Process-based parallelism for Python.")
    parser.add_argument("--version", action=_VersionAction, help="show procly's version, SemLock backend and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    # "demo" is the former name, kept as an alias for scripts ("python3 tasks.py demo" is the load test).
    demo = commands.add_parser(
        "tutorial", aliases=["demo"], help="run the tutorial's examples under every start method"
    )
    demo.add_argument("--method", action="append", choices=["fork", "spawn", "forkserver"], help="only this method")
    demo.add_argument("--only", action="append", help="only this example (script name)")
    commands.add_parser("info", help="what procly sees on this machine")
    commands.add_parser("run", help="run a script with multiprocessing resolving to procly", usage=RUN_USAGE)
    manager = commands.add_parser("manager", help="serve a manager (dict, list, Queue, ... and your types) over TCP")
    manager.add_argument("--address", default="127.0.0.1:50000", help="HOST:PORT (default: loopback)")
    manager.add_argument("--authkey-env", default="PROCLY_AUTHKEY", help="environment variable holding the authkey")
    manager.add_argument("--register", action="append", metavar="TYPEID=MODULE:CALLABLE", help="serve this type too")
    from .loadtest._cli import add_commands

    add_commands(commands)
    args = parser.parse_args(argv)
    if args.command in ("loadtest", "serve-target"):
        try:
            import hdrh  # noqa: F401
            import httptools  # noqa: F401
            import uvloop  # noqa: F401
        except ImportError as exc:
            print(
                f"procly {args.command} needs the loadtest extra: pip install 'procly[loadtest]' ({exc})",
                file=sys.stderr,
            )
            return 2
    if args.command == "loadtest":
        from .loadtest._cli import loadtest_command

        return loadtest_command(args)
    if args.command == "serve-target":
        from .loadtest._cli import serve_target_command

        return serve_target_command(args)
    if args.command in ("tutorial", "demo"):
        from ._demo import main as demo_main

        return demo_main(args.method, args.only)
    if args.command == "manager":
        return _manager(args)
    return _info()


if __name__ == "__main__":
    sys.exit(main())
