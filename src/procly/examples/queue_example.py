"""Queue: a child puts a list, the parent gets it after join()."""

import sys

from procly import Process, Queue, set_start_method


def func(q):
    q.put([1, "str", None])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    q = Queue()
    p = Process(target=func, args=(q,))
    p.start()
    p.join()
    print(q.get())
