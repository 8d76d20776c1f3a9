"""Server process: a Manager holds a dict and a list that a child changes."""

import sys

from procly import Manager, Process, set_start_method


def func(d, l):
    d["1"] = 2
    d[2] = "str"
    d[3.0] = None
    for i in range(len(l)):
        l[i] = -i


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    m = Manager()
    l = m.list(range(10))
    d = m.dict()
    p = Process(target=func, args=(d, l))
    p.start()
    p.join()

    print(d)
    print(l)
