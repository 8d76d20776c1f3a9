"""Pipe: the two ends of a (duplex by default) channel between two processes."""

import sys

from procly import Pipe, Process, set_start_method


def func(p):
    p.send([1, "str", None])
    p.close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    parent_side, child_side = Pipe()
    p = Process(target=func, args=(child_side,))
    p.start()
    print(parent_side.recv())
    p.join()
