"""What the start-up benchmarks' children run.

A spawned child imports the module of its target. This one imports nothing, so the
child's start-up is the library's own: not numpy's, nor that of the other library the
benchmark modules import to compare with.
"""


def noop() -> None:
    """Return at once."""
