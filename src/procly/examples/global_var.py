"""Each process has its own memory: the child's change to a global stays in the child."""

import sys

from procly import Process, set_start_method

a = [2]


def func(i):
    global a
    a[i] += 1
    print("a[0] in child prcocess:", a[0])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    p = Process(target=func, args=(0,))
    p.start()
    p.join()
    print("a[0] in parent process:", a[0])
