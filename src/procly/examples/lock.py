"""Lock: ten processes print one at a time."""

import sys

from procly import Lock, Process, set_start_method


def lock_func(l, number):
    l.acquire()
    print("Number is: %d" % number, flush=True)
    l.release()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    l = Lock()
    for number in range(10):
        Process(target=lock_func, args=(l, number)).start()
