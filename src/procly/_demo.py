"""``procly tutorial`` (formerly ``procly demo``, still accepted): the tutorial's examples, run live.

The tutorial is Mars Loo's "使用multiprocessing进行多进程编程" ("Multi-process programming
with multiprocessing", on his CSDN blog), the walk through ``multiprocessing`` this
project started from. Its examples are rewritten for Python 3 with procly in place of
``multiprocessing`` and run under every start method.

Each example is a real script in :mod:`procly.examples`, run in its own interpreter
(so ``if __name__ == "__main__":`` and spawn's re-import of the main module are
exercised for real). Its output is printed and checked against what the tutorial says
it shows.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Callable

METHODS = ("fork", "spawn", "forkserver")

# The tutorial the examples come from (its title, author and where to find it).
TUTORIAL_TITLE = "使用multiprocessing进行多进程编程"
TUTORIAL_TITLE_EN = "Multi-process programming with multiprocessing"
TUTORIAL_AUTHOR = "Mars Loo"
TUTORIAL_URL = "https://so.csdn.net/so/search?q=%E4%BD%BF%E7%94%A8multiprocessing%E8%BF%9B%E8%A1%8C%E5%A4%9A%E8%BF%9B%E7%A8%8B%E7%BC%96%E7%A8%8B"


@dataclass(frozen=True)
class Example:
    script: str
    section: str
    shows: str
    check: Callable[[list[str]], bool]


def _order(lines: list[str], *prefixes: str) -> bool:
    """The lines starting with *prefixes* appear, in this order, and nothing else of theirs."""
    picked = [line for line in lines if line.startswith(("Parent process", "Child process"))]
    return len(picked) == len(prefixes) and all(line.startswith(p) for line, p in zip(picked, prefixes, strict=False))


EXAMPLES = [
    Example(
        "process_info",
        "Process object",
        "the child reports its own pid and its parent's",
        lambda out: len({line for line in out if line.startswith("Process ID:")}) == 2 and "Hello, marsloo" in out,
    ),
    Example(
        "no_join",
        "Process object: no join()",
        "the parent ends first, the child still finishes a second later",
        lambda out: _order(
            out, "Parent process start", "Child process start", "Parent process end", "Child process end"
        ),
    ),
    Example(
        "join",
        "Process object: join()",
        "the parent waits for the child to end",
        lambda out: _order(
            out, "Parent process start", "Child process start", "Child process end", "Parent process end"
        ),
    ),
    Example(
        "daemon",
        "Process object: daemon",
        "the daemonic child is ended with its parent: no 'Child process end'",
        lambda out: _order(out, "Parent process start", "Child process start", "Parent process end"),
    ),
    Example(
        "daemon_join",
        "Process object: daemon + join()",
        "joining a daemonic child still waits for it",
        lambda out: _order(
            out, "Parent process start", "Child process start", "Child process end", "Parent process end"
        ),
    ),
    Example(
        "global_var",
        "Sharing state: globals are not shared",
        "the child sees 3, the parent keeps 2",
        lambda out: out == ["a[0] in child prcocess: 3", "a[0] in parent process: 2"],
    ),
    Example(
        "queue_example",
        "Queue",
        "the parent gets [1, 'str', None] put by the child",
        lambda out: out == ["[1, 'str', None]"],
    ),
    Example(
        "queue_bounded",
        "Queue(n)",
        "a Queue(2) holds two items; the producer waits for room",
        lambda out: (
            out == ["full: True", "put on a full Queue(2) raised queue.Full", "a b", "received: [0, 1, 2, 3, 4]"]
        ),
    ),
    Example(
        "pipe",
        "Pipe",
        "the parent receives [1, 'str', None] from the child",
        lambda out: out == ["[1, 'str', None]"],
    ),
    Example(
        "pipe_oneway",
        "Pipe(duplex=False)",
        "p[0] only receives, p[1] only sends",
        lambda out: out[0] == "[1, 'str', None]" and out[1].startswith("receiver.send refused"),
    ),
    Example(
        "lock",
        "Lock",
        "ten processes print whole lines, one at a time",
        lambda out: sorted(out) == sorted(f"Number is: {n}" for n in range(10)),
    ),
    Example(
        "value_array",
        "Shared memory: Value and Array",
        "the parent sees 3.1415926 and [0, -1, ..., -9] written by the child",
        lambda out: out == ["3.1415926", str([-i for i in range(10)])],
    ),
    Example(
        "manager",
        "Server process (Manager)",
        "the parent sees the dict and list the child changed through proxies",
        lambda out: out == ["{'1': 2, 2: 'str', 3.0: None}", str([-i for i in range(10)])],
    ),
    Example(
        "pool",
        "Process pool",
        "map in order, imap_unordered in any order, apply_async results, then 'Timeout error!'",
        lambda out: (
            out[0] == str([x * x for x in range(10)])
            and sorted(map(int, out[1].split())) == [x * x for x in range(10)]
            and out[2] == "400"
            and out[3].isdigit()
            and out[4].startswith("[")
            and out[5] == "Timeout error!"
        ),
    ),
]


def _run(script: str, method: str) -> tuple[int, list[str], float]:
    path = resources.files("procly.examples").joinpath(f"{script}.py")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(path), method], capture_output=True, text=True, timeout=60)
    lines = [line.rstrip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return proc.returncode, lines, time.monotonic() - started


def main(methods: list[str] | None = None, only: list[str] | None = None) -> int:
    """Run the examples; return 0 if every one showed what the tutorial says."""
    methods = methods or list(METHODS)
    examples = [e for e in EXAMPLES if not only or e.script in only]
    failures = 0
    print(f"procly tutorial: {len(examples)} examples from the tutorial x {len(methods)} start methods")
    title = f'"{TUTORIAL_TITLE}" ({TUTORIAL_TITLE_EN})'
    try:
        title.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        title = f'"{TUTORIAL_TITLE_EN}"'  # a terminal that cannot show the original title
    print(f"the tutorial: {title} by {TUTORIAL_AUTHOR}, on CSDN ({TUTORIAL_URL})\n")
    with ThreadPoolExecutor(len(methods)) as runner:
        for example in examples:
            print(f"== {example.section}  (procly/examples/{example.script}.py)")
            print(f"   the tutorial says: {example.shows}")
            results = list(runner.map(lambda m, s=example.script: _run(s, m), methods))
            for method, (code, lines, seconds) in zip(methods, results, strict=False):
                ok = code == 0 and example.check(lines)
                failures += not ok
                mark = "ok  " if ok else "FAIL"
                print(f"   [{mark}] {method:<10} exit={code} {seconds:.1f}s")
                for line in lines:
                    print(f"          | {line}")
            print()
    total = len(examples) * len(methods)
    print(f"{total - failures}/{total} runs showed what the tutorial says.")
    return 1 if failures else 0
